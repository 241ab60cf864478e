"""Feature extractors for the image-level metrics: identity for points, a CNN for images.

Chosen by name through components/registry.py's FEATURE_EXTRACTORS, which imports this module only
when an extractor is used.
"""

from __future__ import annotations

import numpy as np
import torch


def identity_features(x: np.ndarray) -> torch.Tensor:
    """Points are their own features: (N, ...) -> (N, D) float64."""
    return torch.from_numpy(np.asarray(x, dtype=np.float64).reshape(len(x), -1))

