"""Feature extractors for the image-level metrics, chosen by name: identity for points, a CNN for images.

Kept apart from metrics.py so that naming an extractor (params validation) does not import
torch-fidelity.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch


def identity_features(x: np.ndarray) -> torch.Tensor:
    """Points are their own features: (N, ...) -> (N, D) float64."""
    return torch.from_numpy(np.asarray(x, dtype=np.float64).reshape(len(x), -1))


from components.registry import FEATURE_EXTRACTORS  # noqa: E402  (names identity_features above)
