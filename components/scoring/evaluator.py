"""The image evaluator: a LeNet digit classifier whose penultimate features drive FID, KID and precision/recall and
whose logits give the classifier score, as a torch-fidelity feature extractor; and torch-fidelity's InceptionV3
(CIFAR-10) from a local weights file.

Every extractor maps uint8 images (N, C, H, W) in data units [0, 255] to (features, logits). The digit classifier
reads ONE digit, so it is applied to each channel on its own: a 3-channel StackedMNIST stack gives its three digits'
features concatenated (N, 3 F) and their logits (N, 3, 10). Inception reads the whole RGB image: logits (N, 1, 1008).

Both are `FeatureExtractorBase` subclasses, so torch-fidelity's `calculate_metrics(feature_extractor=name, ...)`
computes its FID, KID, precision/recall and Inception Score with them; the pipeline calls `extract` directly and
scores the features with components/scoring/metrics.py's functions, `kid` and `classifier_score`, which return the same
numbers. A digit extractor is registered under `lenet-<8 hex of the weights' sha256>`, so two sets of weights
never share a name (torch-fidelity caches features by name).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch_fidelity import register_feature_extractor
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, isc_features_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from components.data.dataset import IMAGE_SCALE, IMAGE_SHIFT
from components.training.state import TrainState, optimizer_step

MAX_SHIFT = 2  # augmentation: random translations of up to 2 pixels each way

# torch-fidelity's feature names: what each metric reads (get_default_feature_layer_for_metric)
FEATURES = "features"  # (B, C F) float64 penultimate features: FID and KID
FEATURES_FLOAT32 = "features_float32"  # the same values in float32: precision/recall, which cdist-s them in float32
LOGITS = "logits_unbiased"  # torch-fidelity's name for the Inception Score's logits (see DigitFeatures.forward)
INCEPTION_FEATURES = "2048"  # InceptionV3's pool features, FID's standard layer (Heusel et al. 2017)


class LeNet(nn.Module):
    """A LeNet-style digit classifier for (B, C, 28, 28) images in model space [-1, 1] (LeCun et al. 1998).

    Two 5x5 valid convolutions of `channels` filters with ReLU and 2x2 max pooling, a ReLU layer of
    `features` units (the penultimate features the metrics read) and a linear layer to `n_classes` logits.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 10, features: int = 128,
                 channels: tuple[int, int] = (16, 32)):
        super().__init__()
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, channels[0], 5)
        self.conv2 = nn.Conv2d(channels[0], channels[1], 5)
        self.fc = nn.Linear(channels[1] * 4 * 4, features)
        self.out = nn.Linear(features, n_classes)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, 28, 28) -> penultimate features (B, features) and logits (B, n_classes)."""
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, channels[0], 12, 12)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)  # (B, channels[1], 4, 4)
        f = F.relu(self.fc(h.flatten(1)))  # (B, features)
        return f, self.out(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)[1]


# --- training ------------------------------------------------------------------------------------------------------


def translate(x: torch.Tensor, shifts: torch.Tensor, fill: float = -1.0, max_shift: int = MAX_SHIFT) -> torch.Tensor:
    """Each image of x (B, C, H, W) moved by its own (down, right) shift (B, 2), each |shift| <= max_shift; pixels
    moved in are `fill`.

    out[b, :, i, j] = x[b, :, i - dy_b, j - dx_b] where that lies inside the image. fill = -1 is black in
    model space, the digits' background. The padding is max_shift wide whatever the draws, so nothing is read
    back from the device.
    """
    b, _, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s), value=fill)  # (B, C, H + 2s, W + 2s)
    rows = (s - shifts[:, 0, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1) rows of padded
    cols = (s - shifts[:, 1, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
    return padded[torch.arange(b, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)


def evaluator_train_step(state: TrainState, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, lr: float,
                         grad_clip: float, ema_decay: float, augment: bool = True) -> dict[str, torch.Tensor | float]:
    """One cross-entropy step of the digit classifier on a minibatch of x (N, C, 28, 28) (model space), labels y (N,).

    With `augment`, each image is first translated by up to MAX_SHIFT pixels each way: on 4,000 training
    digits it lifts held-out accuracy from about 97% to about 98.5% at the same budget.
    """
    g, share = state.generator, state.replicas.share  # the whole batch drawn, this rank's share kept
    idx = torch.randint(len(x), (batch_size,), generator=g, device=g.device)
    if augment:
        idx, shifts = share(idx, torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (batch_size, 2), generator=g,
                                               device=g.device))
        xb = translate(x[idx], shifts)
    else:
        (idx,) = share(idx)
        xb = x[idx]
    yb = y[idx]
    logits = state.model(xb)
    metrics = optimizer_step(state, F.cross_entropy(logits, yb), lr=lr, grad_clip=grad_clip, ema_decay=ema_decay)
    return {**metrics, "accuracy": (logits.argmax(-1) == yb).float().mean()}


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of `model` on x (N, C, H, W) (model space) with labels y (N,)."""
    correct = sum(int((model(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).sum())
                  for i in range(0, len(x), batch_size))
    return correct / len(x)


# --- the feature extractors ----------------------------------------------------------------------------------------

# data units -> model space per pixel value, components/data/dataset.py's float64 arithmetic then float32, as `to_model`
_MODEL_SPACE = ((torch.arange(256, dtype=torch.float64, device="cpu") - IMAGE_SHIFT) * IMAGE_SCALE).float()


def to_model_space(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (data units) -> float32 model space, exactly as components/data/dataset.py's `to_model`."""
    if x.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images in [0, 255], got {x.dtype}")
    return _MODEL_SPACE.to(x.device)[x.long()]


class DigitFeatures(FeatureExtractorBase):
    """The digit classifier as a torch-fidelity feature extractor, applied to each group of `in_channels` channels.

    A subclass per set of weights (`digit_extractor`) carries them as class attributes, because
    torch-fidelity builds extractors from the registered class alone: cls(name, features_list, **kwargs).
    Features: FEATURES (float64, FID and KID), FEATURES_FLOAT32 (precision/recall, computed in float32 by
    torch-fidelity and components/scoring/metrics.py alike, so the two agree bit for bit) and LOGITS, torch-fidelity's
    name for the Inception Score's input; here they are the classifier's logits, bias included (Inception's
    "unbiased" logits drop the bias of its 1008-way layer; the digit classifier's bias is part of p(y|x)).
    """

    weights: ClassVar[Mapping[str, torch.Tensor]] = {}
    config: ClassVar[Mapping[str, int]] = {}

    def __init__(self, name: str, features_list: list[str], **kwargs):
        super().__init__(name, features_list)
        self.net = LeNet(**self.config)
        self.net.load_state_dict(self.weights)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return FEATURES, FEATURES_FLOAT32, LOGITS

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"fid": FEATURES, "kid": FEATURES, "prc": FEATURES_FLOAT32, "isc": LOGITS}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 1, 28, 28, dtype=torch.uint8, device="cpu")

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, C, H, W) -> features (B, (C / k) F) float32 and logits (B, C / k, K), k = in_channels."""
        b, c, h, w = x.shape
        k = self.net.in_channels
        if c % k:
            raise ValueError(f"{c} channels do not split into groups of the classifier's {k}")
        f, logits = self.net.embed(to_model_space(x).reshape(b * c // k, k, h, w))  # one digit a row
        return f.reshape(b, -1), logits.reshape(b, c // k, -1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The requested features, in features_list order. LOGITS come one row per digit, (B C / k, K):
        torch-fidelity's Inception Score then pools the channels' digits (`classifier_score` averages
        per-channel scores; the two agree for one channel)."""
        f, logits = self.embed(x)
        out = {FEATURES: f.double(), FEATURES_FLOAT32: f, LOGITS: logits.flatten(0, 1)}
        return tuple(out[name] for name in self.features_list)


def weights_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 (hex) of a state dict: every entry's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def digit_extractor(weights_state_dict: Mapping[str, torch.Tensor], config: Mapping[str, int]) -> DigitFeatures:
    """The digit classifier with these weights (a LeNet state dict; config = LeNet's constructor options) as a
    torch-fidelity extractor of FEATURES and LOGITS, registered as `lenet-<8 hex of the weights' sha256>`
    (weights already registered keep their class: their shapes fix the config)."""
    name = f"lenet-{weights_digest(weights_state_dict)[:8]}"
    cls = FEATURE_EXTRACTORS_REGISTRY.get(name)
    if cls is None:
        weights = {k: v.detach().cpu().clone() for k, v in weights_state_dict.items()}
        cls = type(f"DigitFeatures_{name[6:]}", (DigitFeatures,), {"weights": weights, "config": dict(config)})
        register_feature_extractor(name, cls)
    return cls(name, [FEATURES, LOGITS])


def load_weights(path: str) -> dict[str, torch.Tensor]:
    """A state dict read with torch.load(weights_only=True): tensors in plain containers, no code run.

    Missing or unreadable files raise a one-line error naming the path.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load fails in many kinds of exception
        raise ValueError(f"cannot read weights file {path}: {_load_failure(err)}") from err
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"weights file {path} holds no state dict of tensors (got {type(state).__name__})")
    return dict(state)


def _load_failure(err: Exception) -> str:
    """One line saying why torch.load failed: for weights_only's refusal, the reason among its boilerplate lines."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    if not lines[0].startswith("Weights only load failed"):
        return lines[0]
    reasons = [line for line in lines[1:] if not line.startswith(("Please file an issue", "Check the documentation"))]
    return "not a weights-only torch checkpoint" + (f" ({reasons[0]})" if reasons else "")


def inception_from_state(state_dict: Mapping[str, torch.Tensor]) -> FeatureExtractorInceptionV3:
    """torch-fidelity's InceptionV3 ("inception-v3-compat", FID's network, Heusel et al. 2017) with these weights,
    extracting INCEPTION_FEATURES (B, 2048) and LOGITS (B, 1008); ValueError (one line) if they do not fit it.

    torch-fidelity only takes weights as a file, which it reads with torch.load(weights_only=False): it
    would run any code a pickle holds. It is handed instead the bytes torch.save writes from this dict of
    tensors (read with `load_weights`, weights_only=True), which hold nothing else.
    """
    buffer = io.BytesIO()
    torch.save(dict(state_dict), buffer)
    buffer.seek(0)
    try:
        return FeatureExtractorInceptionV3("inception-v3-compat", [INCEPTION_FEATURES, LOGITS],
                                           feature_extractor_weights_path=buffer)
    except RuntimeError as err:  # load_state_dict's key or shape mismatches, one line each after a heading
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(err).__name__
        detail = detail if len(detail) <= 200 else detail[:200] + "..."
        raise ValueError(f"the weights do not fit torch-fidelity's InceptionV3: {detail}") from err


def inception_extractor(weights_path: str) -> FeatureExtractorInceptionV3:
    """`inception_from_state` with the weights file at `weights_path` (torch-fidelity's is
    weights-inception-2015-12-05-6726825d.pth, a torch.save'd dict of tensors). A missing or unreadable file
    fails at once, before the network is built, with a one-line error naming the path."""
    state = load_weights(weights_path)
    try:
        return inception_from_state(state)
    except ValueError as err:
        raise ValueError(f"weights file {weights_path}: {err}") from err


@torch.no_grad()
def extract(extractor: FeatureExtractorBase, x_uint8: torch.Tensor | np.ndarray,
            batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, D) float64 and logits (N, G, K) of uint8 images (N, C, H, W), on the extractor's device.

    An extractor built by `digit_extractor` (D = C F, G = C digits per image) or `inception_extractor`
    (D = 2048, G = 1). Features come back on the CPU as float64 (exact casts of the networks' float32).
    """
    names = list(extractor.get_requested_features_list())
    if len(names) != 2 or names[1] != LOGITS:
        raise ValueError(f"extract needs an extractor of (features, {LOGITS}), got {names}")
    x = torch.as_tensor(x_uint8, device="cpu")  # batches move to the extractor's device one at a time
    device = next(extractor.parameters()).device
    features, logits = [], []
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        f, lg = extractor(batch.to(device))
        features.append(f.cpu().double())
        logits.append(lg.cpu().reshape(len(batch), -1, lg.shape[-1]))  # digit rows regrouped per image
    return torch.cat(features), torch.cat(logits)


# --- metrics on features -------------------------------------------------------------------------------------------


def kid(features: torch.Tensor | np.ndarray, ref_features: torch.Tensor | np.ndarray, subsets: int = 100,
        subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID (Binkowski et al. 2018 §3): mean and std over `subsets` random subset pairs of the unbiased MMD^2 with
    the cubic polynomial kernel k(x, y) = (x.y / F + 1)^3; generated first, reference second.

    torch-fidelity's `kid_features_to_metric`: each subset pair draws `subset_size` rows of each set without
    replacement (np.random.RandomState(seed).choice, generated then reference, pair after pair);
    subset_size is clipped to the smaller set. The std is over subsets (np.std), not an error of the mean.
    The kernel is not scale-free: KIDs compare only under one extractor.
    """
    f, r = torch.as_tensor(features, device="cpu"), torch.as_tensor(ref_features, device="cpu")  # float64 on the host
    size = min(subset_size, len(f), len(r))
    out = kid_features_to_metric(f, r, kid_subsets=subsets, kid_subset_size=size, rng_seed=seed, verbose=False)
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD]


def classifier_score(logits: torch.Tensor | np.ndarray) -> float:
    """Inception Score (Salimans et al. 2016 §4), exp(E_x KL(p(y|x) || p(y))), with p(y) the mean of p(y|x) over all
    N samples (one split) and a classifier's logits (N, K) or (N, G, K) in place of Inception's.

    torch-fidelity's `isc_features_to_metric` with one split. Stacked images (G digits each, StackedMNIST)
    get one score per channel, each against that channel's own p(y), averaged over the G channels: a
    channel that covers all K classes confidently scores K, whatever the other channels do.
    """
    lg = torch.as_tensor(logits, device="cpu")
    lg = lg[:, None] if lg.ndim == 2 else lg  # (N, G, K)
    scores = [isc_features_to_metric(lg[:, g], splits=1, shuffle=False)[KEY_METRIC_ISC_MEAN]
              for g in range(lg.shape[1])]
    return float(np.mean(scores))
