"""Feature extractors for FID, KID, precision/recall and the classifier score (components/scoring/features.py), by
name (the one pattern: components/registry.py): points are their own features; digits go through the classifier
stage evaluator trains; CIFAR-10 through torch-fidelity's Inception, from a local weights file."""

from __future__ import annotations

from components.registry import Registry

FEATURE_EXTRACTORS = Registry("feature extractor", {
    "identity": "components.scoring.features:identity_extractor",
    "lenet": "components.scoring.features:lenet_extractor",
    "inception": "components.scoring.features:inception_extractor",
})
