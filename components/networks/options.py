"""Each network's constructor options, declared once and torch-free, and where networks run.

Validating params (pipelines/params/) checks a network's keys against these without importing torch;
tests/pipelines/params/test_params.py checks each against the imported class's own signature, so a constructor and
its declaration cannot drift apart. An option is (annotation text, default or NO_DEFAULT).
"""

from __future__ import annotations

from components.registry import NO_DEFAULT, Options

SHAPE = ("tuple[int, ...]", NO_DEFAULT)  # the data's shape: from the data, never from params

# Denoisers eps_theta(x_t, t) (DDPM; iDDPM's variance output doubles out_mult).
MLP: Options = {"data_shape": SHAPE, "width": ("int", 256), "depth": ("int", 3), "temb_dim": ("int", 128),
                "out_mult": ("int", 1)}
UNET: Options = {"data_shape": SHAPE, "ch": ("int", 128), "ch_mult": ("tuple[int, ...]", (1, 2, 2, 2)),
                 "num_res_blocks": ("int", 2), "attn_resolutions": ("tuple[int, ...]", (16,)),
                 "dropout": ("float", 0.1), "out_mult": ("int", 1)}  # DDPM appendix B

# ADM's noise-aware classifier p_phi(y | x_t, t).
MLP_CLASSIFIER: Options = {"data_shape": SHAPE, "n_classes": ("int", NO_DEFAULT), "width": ("int", 128),
                           "depth": ("int", 2), "temb_dim": ("int", 64)}
# ADM's image classifier: the UNet's downsampling trunk and an attention pool (components/networks/encoder.py);
# ch 16 keeps ~2000 steps at batch 64 within minutes on 2 CPU cores.
ENCODER_CLASSIFIER: Options = {"data_shape": SHAPE, "n_classes": ("int", NO_DEFAULT), "ch": ("int", 16),
                               "ch_mult": ("tuple[int, ...]", (1, 2, 2)), "num_res_blocks": ("int", 1),
                               "attn_resolutions": ("tuple[int, ...]", (7,)), "dropout": ("float", 0.0),
                               "pool_heads": ("int", 1)}

# DDGAN's generators G(x_t, z, t) and discriminators D(x_{t-1}, x_t, t).
MLP_GENERATOR: Options = {"data_shape": SHAPE, "nz": ("int", 16), "width": ("int", 128), "depth": ("int", 3),
                          "temb_dim": ("int", 64), "zemb_dim": ("int", 64), "mapping_depth": ("int", 2),
                          "fourier_octaves": ("int", 0)}
PLAIN_MLP_GENERATOR: Options = {"data_shape": SHAPE, "nz": ("int", 2), "width": ("int", 128), "depth": ("int", 3),
                                "temb_dim": ("int", 64), "fourier_octaves": ("int", 0)}
MLP_DISCRIMINATOR: Options = {"data_shape": SHAPE, "width": ("int", 128), "depth": ("int", 2),
                              "temb_dim": ("int", 64), "fourier_octaves": ("int", 0)}
PLAIN_MLP_DISCRIMINATOR: Options = {"data_shape": SHAPE, "width": ("int", 128), "depth": ("int", 3),
                                    "temb_dim": ("int", 64), "fourier_octaves": ("int", 0)}
# DDGAN's image networks (components/networks/generator.py): DDPM's UNet with z through a mapping network into
# adaptive GroupNorm, and a time-conditioned residual conv discriminator; the defaults are sized for 28x28 digits on
# a CPU.
UNET_GENERATOR: Options = {"data_shape": SHAPE, "nz": ("int", 32), "ch": ("int", 16),
                           "ch_mult": ("tuple[int, ...]", (1, 2, 2)), "num_res_blocks": ("int", 1),
                           "attn_resolutions": ("tuple[int, ...]", ()), "dropout": ("float", 0.0),
                           "zemb_dim": ("int", 64), "mapping_depth": ("int", 2)}
CONV_DISCRIMINATOR: Options = {"data_shape": SHAPE, "ch": ("int", 32), "ch_mult": ("tuple[int, ...]", (1, 2, 2)),
                               "temb_dim": ("int", 64), "stddev_group": ("int", 4)}

# Where networks run (components/networks/runtime.py): auto is the GPU lent to the stage, else the CPU; bf16
# autocasts the network's forward pass.
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
