"""The networks params.yaml names, by name (the one pattern: components/registry.py), with their declared options.

Denoisers eps_theta(x_t, t) (DDPM, iDDPM with a variance output), ADM's noise-aware classifiers p_phi(y | x_t, t),
and DDGAN's generators G(x_t, z, t) and discriminators D(x_{t-1}, x_t, t).
"""

from __future__ import annotations

from components.networks import options
from components.registry import Registry

NETWORKS = Registry("network", {"mlp": "components.networks.mlp:MLP", "unet": "components.networks.unet:UNet"},
                    {"mlp": options.MLP, "unet": options.UNET})
CLASSIFIERS = Registry("classifier", {"mlp": "components.networks.mlp:MLPClassifier",
                                      "unet": "components.networks.encoder:EncoderClassifier"},
                       {"mlp": options.MLP_CLASSIFIER, "unet": options.ENCODER_CLASSIFIER})
GENERATORS = Registry("generator", {"mlp": "components.networks.mlp:MLPGenerator",
                                    "plain_mlp": "components.networks.mlp:PlainMLPGenerator",
                                    "unet": "components.networks.generator:UNetGenerator"},
                      {"mlp": options.MLP_GENERATOR, "plain_mlp": options.PLAIN_MLP_GENERATOR,
                       "unet": options.UNET_GENERATOR})
DISCRIMINATORS = Registry("discriminator", {"mlp": "components.networks.mlp:MLPDiscriminator",
                                            "plain_mlp": "components.networks.mlp:PlainMLPDiscriminator",
                                            "conv": "components.networks.generator:ConvDiscriminator"},
                          {"mlp": options.MLP_DISCRIMINATOR, "plain_mlp": options.PLAIN_MLP_DISCRIMINATOR,
                           "conv": options.CONV_DISCRIMINATOR})
