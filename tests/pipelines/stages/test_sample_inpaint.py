"""An inpaint cell in the sample stage: each batch gets its own sources through draw's per-batch kwargs, its scores
read the evaluator's logits against the source labels and the sampled pixels only, its figure shows three rows."""

import numpy as np
import pytest
import torch

from components.data.dataset import Dataset, image_split
from components.sampling.guidance import Known
from components.scoring.metrics import evaluator_labels, label_accuracy, masked_mse
from pipelines.params.cells import ConditionParams
from pipelines.plots.samples import inpaint_figure
from pipelines.plumbing.errors import InputError
from pipelines.stages.sample import check_condition, draw, factor, hidden_pixels, inpaint_scores

SHAPE = (1, 4, 4)
BOTTOM = ConditionParams(factor="inpaint", mask="bottom", rule="clamp")


def _ref(n: int = 5) -> Dataset:
    x = np.random.default_rng(0).integers(0, 256, (n, *SHAPE), dtype=np.uint8)
    return image_split(x, np.arange(n) % 10)


def _logits(labels, K: int = 10) -> torch.Tensor:
    """Logits (N, 1, K) whose argmax is each label."""
    return torch.nn.functional.one_hot(torch.as_tensor(labels), K).float()[:, None]


def test_draw_gives_each_batch_its_own_sources():
    """Sample i gets source i (model space), across batches; a longer run (timing) wraps round the split."""
    ref, seen = _ref(), []

    def sampler(model, sched, x_T, *, generator, progress, known, **kw):
        seen.append(known)
        return torch.where(known.mask, known.values, x_T)

    per_batch = factor(BOTTOM, ref, SHAPE)
    x = draw(sampler, None, None, 5, 2, SHAPE, torch.Generator().manual_seed(0), {}, False, per_batch)
    assert [len(k.values) for k in seen] == [2, 2, 1] and all(k.rule == "clamp" for k in seen)
    known = ~torch.from_numpy(hidden_pixels(BOTTOM, SHAPE))
    assert torch.equal(x[:, known], torch.from_numpy(ref.to_model(ref.x))[:, known])
    x7 = draw(sampler, None, None, 7, 7, SHAPE, torch.Generator().manual_seed(0), {}, False, per_batch)
    assert torch.equal(x7[5:, known], x[:2, known])


def test_other_factors_are_the_same_for_every_batch():
    delta = factor(ConditionParams(factor="delta", coordinate=0, value=0.0), _ref(), SHAPE)
    assert isinstance(delta(slice(0, 2))["known"], Known) and delta(slice(0, 2)) is delta(slice(2, 4))
    assert factor(None, _ref(), SHAPE) is None


def test_inpaint_scores_count_source_labels_and_sampled_pixels_only():
    """Accuracy: the evaluator's argmax against ref.y[:N]; MSE in model space ([-1, 1]) over the hidden pixels: a
    changed known pixel does not count, a hidden pixel off by 255 counts as 2^2 over its share."""
    ref, hidden = _ref(), hidden_pixels(BOTTOM, SHAPE)
    x = ref.x[:4].copy()
    x[0, 0, 0, 0] = 255 - x[0, 0, 0, 0]  # a known pixel: not scored
    x[1, 0, 3, 3], ref.x[1, 0, 3, 3] = 255, 0  # a sampled one, off by the whole range: (2)^2
    predicted = np.array([0, 1, 7, 7])  # labels are 0, 1, 2, 3
    out = inpaint_scores(x, _logits(predicted), ref, hidden, n_classes=10)
    assert out["inpaint_accuracy"] == 0.5
    assert out["inpaint_mse"] == pytest.approx(4.0 / (4 * hidden.sum()))
    assert "inpaint_accuracy" not in inpaint_scores(x, _logits(predicted, 1008), ref, hidden, n_classes=10)
    assert "inpaint_accuracy" not in inpaint_scores(x, None, ref, hidden, n_classes=10)


def test_evaluator_labels_read_stacked_digits_channel_zero_first():
    logits = torch.stack([_logits([3, 0])[:, 0], _logits([1, 0])[:, 0], _logits([4, 9])[:, 0]], dim=1)  # (2, 3, 10)
    assert evaluator_labels(logits).tolist() == [314, 9]
    assert label_accuracy(logits, np.array([314, 8])) == 0.5
    assert masked_mse(np.ones((2, 1, 2, 2)), np.zeros((2, 1, 2, 2)), np.eye(2, dtype=bool)[None]) == 1.0


def test_inpaint_cells_need_images_and_enough_sources():
    check_condition("c", BOTTOM, 5, "ref.npz", _ref())
    with pytest.raises(InputError, match="ref.npz: c draws 6 samples, one per source image; the split holds 5"):
        check_condition("c", BOTTOM, 6, "ref.npz", _ref())
    points = Dataset(x=np.zeros((5, 2), np.float32), y=np.zeros(5, np.int64), shift=0.0, scale=1.0)
    with pytest.raises(InputError, match="inpaints images"):
        check_condition("c", BOTTOM, 5, "ref.npz", points)


def test_inpaint_figure_has_three_rows():
    ref = _ref(8)
    fig = inpaint_figure(ref.x, hidden_pixels(BOTTOM, SHAPE), 255 - ref.x, "t")
    assert len(fig.axes) == 3 * 8
    masked = fig.axes[8].images[0].get_array()
    assert np.all(masked[2:] == 128) and np.array_equal(masked[:2], ref.x[0, 0, :2])


def test_score_adds_the_inpaint_scores_from_the_extractors_logits():
    """score() embeds the completions once: the row's FID etc. and inpaint_accuracy read the same extractor's output
    (the evaluator, not a guidance classifier)."""
    from types import SimpleNamespace

    from components.scoring.features import Extractor, identity_features
    from components.scoring.metrics import reference_set
    from pipelines.params import load_params
    from pipelines.stages.sample import score
    from conftest import ROOT

    ref, calls = _ref(8), []

    def embed(x):
        calls.append(len(x))
        return identity_features(x), _logits(ref.y[: len(x)])  # the evaluator reads every source's label

    extractor = Extractor("hand-made", embed)
    reference = reference_set(ref.x, "identity", 3)
    params = SimpleNamespace(evaluate=load_params(ROOT / "params.yaml").evaluate, data=SimpleNamespace(name="mnist"))
    row = score(ref.x[:6], ref, reference, params, None, BOTTOM, extractor)
    assert calls == [6] and row["inpaint_accuracy"] == 1.0 and row["inpaint_mse"] == 0.0 and "fid" in row
