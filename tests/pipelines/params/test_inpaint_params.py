"""Params of an inpaint condition: its own keys, one-line errors naming the key, and the rules between sections (images
only, a square that fits, one reference image per sample)."""

import pytest

from pipelines.orchestration.profile import load_profile, profile_params
from pipelines.params import ParamsError, parse_params
from pipelines.params.cells import ConditionParams

from conftest import edited
from test_params import error_of, with_change

INPAINT = {"factor": "inpaint", "mask": "square", "rule": "noised"}


@pytest.mark.parametrize("fields,expected", [
    ({"mask": "top"}, "mask: unknown mask 'top'; allowed: bottom, left, square"),
    ({"rule": "resample"}, "rule: unknown rule 'resample'; allowed: clamp, noised"),
    ({"rule": None}, "rule: required for factor 'inpaint' (it takes mask and rule)"),
    ({"mask": None}, "mask: required for factor 'inpaint' (it takes mask and rule)"),
    ({"value": 0.0}, "value: not an option for factor 'inpaint' (it takes mask and rule)"),
    ({"size": 0}, "size: must be in [1, 65,536], got 0"),
    ({"mask": "bottom", "size": 4}, "size: applies to factor 'inpaint' with mask 'square' only"),
    ({"factor": "delta", "coordinate": 0, "value": 0.0, "mask": None, "rule": "clamp"},
     "rule: not an option for factor 'delta' (it takes coordinate and value)"),
    ({"factor": "gaussian", "center": [0.0], "std": 1.0, "rule": None, "mask": "left"},
     "mask: not an option for factor 'gaussian' (it takes center and std)"),
])
def test_condition_errors_are_one_line_naming_the_key(fields, expected):
    with pytest.raises(ParamsError) as e:
        ConditionParams(**{k: v for k, v in {**INPAINT, **fields}.items() if v is not None})
    assert str(e.value) == expected


def test_describe():
    assert ConditionParams(factor="inpaint", mask="bottom", rule="noised").describe() == "inpaint bottom (noised)"
    assert ConditionParams(**INPAINT, size=10).describe() == "inpaint square 10 (noised)"


def test_inpainting_points_is_refused_at_validation():
    assert error_of(with_change("sweep.ddpm-100.condition", INPAINT)) == (
        "params.yaml: sweep.ddpm-100.condition.factor: 'inpaint' masks a region of an image; gaussians25 holds points "
        "of shape (2,)")


def _mnist(path: str, value) -> dict:
    """The mnist profile's params (28 x 28 digits, 1,000 reference images) with one key set."""
    return edited(profile_params(load_profile("mnist")), path.split("."), value)


def test_an_inpaint_cell_on_digits_is_valid():
    raw = _mnist("sweep.ddim-20-inpaint", {"model": "ddpm", "sampler": "ddim", "steps": 20, "eta": 0.0,
                                          "clip_x0": True, "condition": {**INPAINT, "size": 14}})
    assert parse_params(raw).sweep["ddim-20-inpaint"].condition.size == 14


@pytest.mark.parametrize("cell,expected", [
    ({"condition": {**INPAINT, "size": 29}}, "sweep.ddim-20.condition.size: 29 exceeds mnist's image side 28"),
    ({"condition": INPAINT, "n": 1001}, "sweep.ddim-20: 1001 samples inpaint as many reference images; "
                                        "data.n_reference = 1000"),
])
def test_inpaint_cells_fit_the_images_and_the_reference_split(cell, expected):
    raw = _mnist("sweep.ddim-20", {"model": "ddpm", "sampler": "ddim", "steps": 20, "eta": 0.0, **cell})
    with pytest.raises(ParamsError) as e:
        parse_params(raw)
    assert expected in str(e.value) and "\n" not in str(e.value)
