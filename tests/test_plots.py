"""The sample figure picks a scatter for points and a grid for images (any trailing shape); the trilemma figure
draws one column per family of rows, labels only the marked rows, without overlaps, for any subset of rows."""

import csv
import io

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.text import Text

from pipelines.plots import FAMILIES, row_family, samples_figure, trilemma_figure


def test_points_become_a_scatter():
    fig = samples_figure(np.random.default_rng(0).normal(size=(100, 2)), "points")
    assert len(fig.axes) == 1 and len(fig.axes[0].collections) == 1


def test_images_become_a_grid():
    images = np.random.default_rng(0).integers(0, 256, size=(70, 1, 8, 8)).astype(np.float32)
    fig = samples_figure(images, "digits")
    assert len(fig.axes) == 64  # an 8x8 grid: the first 64 of 70 images
    assert sum(len(ax.images) for ax in fig.axes) == 64


# The README's trilemma table (data row first, then its 42 cells), with the columns the figure reads.
TABLE = """cell,model,sampler,steps,eta,variance,scale,wall_s_per_1k,hq_fraction,modes,recall
data,,train split,,,,,0.000,0.988,25,0.977
ddpm-1000,ddpm,ddpm,1000,,small,,7.466,0.994,25,0.969
ddpm-100,ddpm,ddpm,100,,small,,0.769,0.977,25,0.933
ddpm-50,ddpm,ddpm,50,,small,,0.386,0.924,25,0.903
ddpm-10,ddpm,ddpm,10,,small,,0.080,0.056,19,0.895
ddpm-4,ddpm,ddpm,4,,small,,0.032,0.028,9,0.569
ddpm-large-1000,ddpm,ddpm,1000,,large,,8.029,0.978,25,0.979
ddpm-large-100,ddpm,ddpm,100,,large,,0.734,0.604,25,0.982
ddpm-large-50,ddpm,ddpm,50,,large,,0.375,0.271,25,0.985
ddpm-large-10,ddpm,ddpm,10,,large,,0.083,0.027,1,0.988
iddpm-1000,iddpm,ddpm,1000,,learned,,7.356,0.986,25,0.975
iddpm-100,iddpm,ddpm,100,,learned,,0.780,0.937,25,0.981
iddpm-50,iddpm,ddpm,50,,learned,,0.416,0.804,25,0.988
iddpm-10,iddpm,ddpm,10,,learned,,0.071,0.058,18,0.988
iddpm-small-100,iddpm,ddpm,100,,small,,0.716,0.980,25,0.941
iddpm-small-50,iddpm,ddpm,50,,small,,0.369,0.925,25,0.907
ddim-100,ddpm,ddim,100,0.0,,,0.727,0.950,25,0.963
ddim-50,ddpm,ddim,50,0.0,,,0.383,0.898,25,0.903
ddim-10,ddpm,ddim,10,0.0,,,0.071,0.072,25,0.937
ddim-4,ddpm,ddim,4,0.0,,,0.041,0.032,9,0.687
ddim-eta1-50,ddpm,ddim,50,1.0,,,0.344,0.924,25,0.903
ddgan-1,ddgan-1,ddgan,1,,,,0.007,0.824,5,0.666
ddgan-2,ddgan-2,ddgan,2,,,,0.014,0.917,3,0.124
ddgan-4,ddgan-4,ddgan,4,,,,0.026,0.361,15,0.913
ddim-50-s0,ddpm,ddim,50,0.0,,0,0.361,0.898,25,0.903
ddim-50-s0_5,ddpm,ddim,50,0.0,,0.5,0.562,0.775,25,0.972
ddim-50-s1,ddpm,ddim,50,0.0,,1,0.556,0.910,25,0.932
ddim-50-s2,ddpm,ddim,50,0.0,,2,0.570,0.994,25,0.387
ddim-50-s5,ddpm,ddim,50,0.0,,5,0.529,0.903,25,0.091
ddim-50-s10,ddpm,ddim,50,0.0,,10,0.575,0.746,20,0.135
ddpm-250-s0,ddpm,ddpm,250,,small,0,1.759,0.994,25,0.946
ddpm-250-s0_5,ddpm,ddpm,250,,small,0.5,2.603,0.989,25,0.953
ddpm-250-s1,ddpm,ddpm,250,,small,1,2.550,0.988,25,0.965
ddpm-250-s2,ddpm,ddpm,250,,small,2,2.708,0.998,25,0.932
ddpm-250-s5,ddpm,ddpm,250,,small,5,2.779,1.000,25,0.917
ddpm-250-s10,ddpm,ddpm,250,,small,10,2.820,0.999,25,0.910
exact-ddpm-1000,exact,ddpm,1000,,small,,1.215,0.999,25,0.948
exact-ddim-100,exact,ddim,100,0.0,,,0.111,0.993,25,0.950
exact-ddim-50,exact,ddim,50,0.0,,,0.056,0.976,25,0.943
exact-ddpm-4,exact,ddpm,4,,small,,0.005,0.027,9,0.512
exact-ddim-4,exact,ddim,4,0.0,,,0.007,0.029,9,0.549
exact-ddim-50-s1,exact,ddim,50,0.0,,1,0.136,1.000,25,0.846
exact-ddpm-250-s1,exact,ddpm,250,,small,1,0.692,1.000,25,0.904
"""

# Rows the papers' claims read, in every family: the figure labels these and no other.
MARKED = {"ddpm-1000", "ddpm-50", "ddpm-10", "ddpm-large-50", "iddpm-50", "iddpm-100", "ddim-50", "ddim-10",
          "ddgan-1", "ddgan-2", "ddgan-4", "ddim-50-s2", "ddim-50-s10", "ddpm-250-s5", "exact-ddpm-1000",
          "exact-ddim-50"}


def table_rows() -> list[dict]:
    """The table as table.py hands it over: settings as str or None, numbers as float or None."""
    rows = []
    for r in csv.DictReader(io.StringIO(TABLE)):
        rows.append({k: (v or None) if k in ("cell", "model", "sampler", "variance")
                     else (float(v) if v else None) for k, v in r.items()})
    return rows


def panels(fig) -> list:
    """The figure's data panels (the colour bar left out)."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.get_subplotspec() is not None]


def labels(fig) -> list[str]:
    """Every text label drawn on a data panel."""
    return [t.get_text() for ax in panels(fig) for t in ax.texts]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_trilemma_full_table_has_a_panel_pair_per_family():
    rows = table_rows()
    fig = trilemma_figure(rows[1:], ceiling=rows[0], marked=MARKED)
    axes = panels(fig)
    assert len(axes) == 10  # 5 families: quality above coverage
    titles = [ax.get_title() for ax in axes if ax.get_title()]
    assert titles == ["DDPM / iDDPM ancestral  (15 rows)", "DDIM  (5 rows)", "DDGAN  (3 rows)",
                      "classifier-guided  (12 rows)", "exact eps* (ceilings)  (7 rows)"]
    assert sum(len(c.get_offsets()) for ax in axes for c in ax.collections) == 2 * 42  # each row in 2 panels
    for ax in axes:  # the train split's ceiling as a horizontal line in each panel
        assert any(np.allclose(line.get_ydata(), [0.988, 0.988]) or np.allclose(line.get_ydata(), [0.977, 0.977])
                   for line in ax.get_lines())
    assert axes[0].get_xscale() == "log"


def test_trilemma_families_come_from_model_sampler_and_scale():
    families = {r["cell"]: row_family(r) for r in table_rows()[1:]}
    assert families["ddpm-large-50"] == families["iddpm-small-50"] == FAMILIES[0]
    assert families["ddim-eta1-50"] == FAMILIES[1]
    assert families["ddgan-4"] == FAMILIES[2]
    assert families["ddim-50-s0"] == families["ddpm-250-s10"] == FAMILIES[3]
    assert families["exact-ddim-50-s1"] == families["exact-ddpm-4"] == FAMILIES[4]
    assert row_family({"cell": "flow-1", "model": "flow", "sampler": "euler", "scale": float("nan")}) == FAMILIES[5]


def test_trilemma_labels_the_marked_rows_only():
    rows = table_rows()
    fig = trilemma_figure(rows[1:], ceiling=rows[0], marked=MARKED)
    drawn = labels(fig)
    assert sorted(drawn) == sorted(2 * list(MARKED))  # each marked row once in each of its two panels
    for ax in panels(fig):
        assert all(t.get_fontweight() == "bold" for t in ax.texts)


def test_trilemma_lines_join_a_series_in_order_of_steps():
    rows = table_rows()
    fig = trilemma_figure(rows[1:], ceiling=rows[0], marked=MARKED)
    ancestral = panels(fig)[0]  # quality, DDPM / iDDPM: the ddpm small-Σ series first
    x, y = ancestral.get_lines()[1].get_data()  # after the ceiling
    assert list(x) == [0.032, 0.080, 0.386, 0.769, 7.466] and list(y) == [0.028, 0.056, 0.924, 0.977, 0.994]


@pytest.mark.parametrize("marked", [MARKED, ()], ids=["marked", "endpoints"])
def test_trilemma_labels_do_not_overlap(marked):
    rows = table_rows()
    fig = trilemma_figure(rows[1:], ceiling=rows[0], marked=marked)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in panels(fig):
        frame = ax.get_window_extent(renderer)
        boxes = [Text.get_window_extent(t, renderer) for t in ax.texts]
        for i, box in enumerate(boxes):
            assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            assert not any(box.overlaps(other) for other in boxes[i + 1:]), (ax.texts[i].get_text(), ax.get_title())


def test_trilemma_without_marks_labels_each_series_endpoints():
    rows = table_rows()
    fig = trilemma_figure(rows[1:], ceiling=rows[0])
    drawn = set(labels(fig))
    assert {"ddpm-4", "ddpm-1000", "ddgan-1", "ddgan-4", "ddim-50-s0", "ddim-50-s10", "ddim-eta1-50"} <= drawn
    assert not {"ddpm-50", "ddgan-2", "ddim-50-s2"} & drawn


def test_trilemma_three_row_subset():
    rows = {r["cell"]: r for r in table_rows()}
    fig = trilemma_figure([rows["ddpm-4"], rows["ddgan-1"], rows["exact-ddim-50"]], ceiling=rows["data"],
                          marked={"ddgan-1", "ddim-50"})  # a marked cell that is not in the rows is ignored
    assert [ax.get_title() for ax in panels(fig) if ax.get_title()] == [
        "DDPM / iDDPM ancestral  (1 row)", "DDGAN  (1 row)", "exact eps* (ceilings)  (1 row)"]
    assert labels(fig) == ["ddgan-1", "ddgan-1"]


def test_trilemma_survives_missing_and_zero_values():
    rows = {r["cell"]: r for r in table_rows()}
    odd = [dict(rows["ddpm-50"], wall_s_per_1k=0.0), dict(rows["ddpm-100"], wall_s_per_1k=float("nan")),
           dict(rows["ddpm-1000"], recall=None), dict(rows["ddim-4"], modes=None, scale=float("nan")),
           {"cell": "flow-1", "sampler": "euler", "wall_s_per_1k": 0.3, "hq_fraction": 0.5}]
    fig = trilemma_figure(odd, ceiling={"cell": "data", "hq_fraction": 0.99, "recall": None},
                          marked={r["cell"] for r in odd})
    quality, coverage = panels(fig)[0], panels(fig)[len(panels(fig)) // 2]
    zero = [t for t in quality.texts if t.get_text() == "ddpm-50"][0]
    assert quality.get_xlim()[0] < zero.xy[0] < 0.041  # a zero time: at the axis' left end, left of every row
    assert sorted(t.get_text() for t in quality.texts) == ["ddpm-1000", "ddpm-50"]  # no time: not drawn
    assert [t.get_text() for t in coverage.texts] == ["ddpm-50"]  # no recall: not drawn
    assert "flow-1" in labels(fig) and "ddim-4" in labels(fig)
    fig.canvas.draw()
    for rows_ in ([], [dict(rows["ddgan-1"], wall_s_per_1k=None)]):
        trilemma_figure(rows_, ceiling=rows["data"]).canvas.draw()


def test_trilemma_figure_is_deterministic():
    rows = table_rows()

    def png() -> bytes:
        buf = io.BytesIO()
        fig = trilemma_figure(rows[1:], ceiling=rows[0], marked=MARKED)
        fig.savefig(buf, format="png", dpi=60, metadata={"Software": None})
        plt.close(fig)
        return buf.getvalue()

    assert png() == png()
