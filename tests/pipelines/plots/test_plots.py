"""The sample figure picks a scatter for points and a grid for images (any trailing shape); the trilemma figure
draws one panel pair per family of rows, labels only the marked rows, legibly and without overlaps, for any subset
of rows, and fits a 1,440-px screen as saved."""

import csv
import io
import struct

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text

from conftest import ROOT
from pipelines.claims.spec import load_claims
from pipelines.plots.samples import samples_figure
from pipelines.plots.trilemma import FAMILIES, IMAGE_TRILEMMA_METRICS, row_family, trilemma_figure


def test_points_become_a_scatter():
    fig = samples_figure(np.random.default_rng(0).normal(size=(100, 2)), "points")
    assert len(fig.axes) == 1 and len(fig.axes[0].collections) == 1


def test_images_become_a_grid():
    images = np.random.default_rng(0).integers(0, 256, size=(70, 1, 8, 8)).astype(np.float32)
    fig = samples_figure(images, "digits")
    assert len(fig.axes) == 64  # an 8x8 grid: the first 64 of 70 images
    assert sum(len(ax.images) for ax in fig.axes) == 64


# The README's trilemma table (data row first, then its 43 cells), with the columns the figure reads; wall times as
# printed there (the number before ±).
TABLE = """cell,model,sampler,steps,eta,variance,scale,wall_s_per_1k,hq_fraction,modes,recall
data,,train split,,,,,0.000,0.988,25,0.977
ddpm-1000,ddpm,ddpm,1000,,small,,11.344,0.994,25,0.969
ddpm-100,ddpm,ddpm,100,,small,,1.338,0.977,25,0.933
ddpm-50,ddpm,ddpm,50,,small,,0.609,0.924,25,0.903
ddpm-10,ddpm,ddpm,10,,small,,0.127,0.056,19,0.895
ddpm-4,ddpm,ddpm,4,,small,,0.052,0.028,9,0.569
ddpm-large-1000,ddpm,ddpm,1000,,large,,11.591,0.978,25,0.979
ddpm-large-100,ddpm,ddpm,100,,large,,1.097,0.604,25,0.982
ddpm-large-50,ddpm,ddpm,50,,large,,0.577,0.271,25,0.985
ddpm-large-10,ddpm,ddpm,10,,large,,0.105,0.027,1,0.988
iddpm-1000,iddpm,ddpm,1000,,learned,,11.520,0.986,25,0.975
iddpm-100,iddpm,ddpm,100,,learned,,1.402,0.937,25,0.981
iddpm-50,iddpm,ddpm,50,,learned,,0.644,0.804,25,0.988
iddpm-10,iddpm,ddpm,10,,learned,,0.146,0.058,18,0.988
iddpm-small-100,iddpm,ddpm,100,,small,,1.358,0.980,25,0.941
iddpm-small-50,iddpm,ddpm,50,,small,,0.571,0.925,25,0.907
ddim-100,ddpm,ddim,100,0.0,,,1.054,0.950,25,0.963
ddim-50,ddpm,ddim,50,0.0,,,0.487,0.898,25,0.903
ddim-10,ddpm,ddim,10,0.0,,,0.111,0.072,25,0.937
ddim-4,ddpm,ddim,4,0.0,,,0.041,0.032,9,0.687
ddim-eta1-50,ddpm,ddim,50,1.0,,,0.649,0.924,25,0.903
sd2015-1000,sd2015,ddpm,1000,,learned,,5.440,0.954,25,0.983
ddgan-1,ddgan-1,ddgan,1,,,,0.003,0.969,1,0.144
ddgan-2,ddgan-2,ddgan,2,,,,0.007,0.804,25,0.983
ddgan-4,ddgan-4,ddgan,4,,,,0.014,0.793,25,0.983
ddim-50-s0,ddpm,ddim,50,0.0,,0,0.511,0.898,25,0.903
ddim-50-s0_5,ddpm,ddim,50,0.0,,0.5,0.951,0.775,25,0.972
ddim-50-s1,ddpm,ddim,50,0.0,,1,1.050,0.910,25,0.931
ddim-50-s2,ddpm,ddim,50,0.0,,2,1.076,0.994,25,0.387
ddim-50-s5,ddpm,ddim,50,0.0,,5,1.051,0.903,25,0.090
ddim-50-s10,ddpm,ddim,50,0.0,,10,0.988,0.746,20,0.136
ddpm-250-s0,ddpm,ddpm,250,,small,0,3.133,0.994,25,0.946
ddpm-250-s0_5,ddpm,ddpm,250,,small,0.5,4.214,0.989,25,0.953
ddpm-250-s1,ddpm,ddpm,250,,small,1,4.313,0.988,25,0.965
ddpm-250-s2,ddpm,ddpm,250,,small,2,4.816,0.998,25,0.932
ddpm-250-s5,ddpm,ddpm,250,,small,5,3.907,1.000,25,0.917
ddpm-250-s10,ddpm,ddpm,250,,small,10,4.656,0.999,25,0.910
exact-ddpm-1000,exact,ddpm,1000,,small,,2.447,0.999,25,0.948
exact-ddim-100,exact,ddim,100,0.0,,,0.207,0.993,25,0.950
exact-ddim-50,exact,ddim,50,0.0,,,0.087,0.976,25,0.943
exact-ddpm-4,exact,ddpm,4,,small,,0.008,0.027,9,0.512
exact-ddim-4,exact,ddim,4,0.0,,,0.011,0.029,9,0.549
exact-ddim-50-s1,exact,ddim,50,0.0,,1,0.282,1.000,25,0.846
exact-ddpm-250-s1,exact,ddpm,250,,small,1,1.433,1.000,25,0.904
"""

# Rows the papers' claims read: the figure labels these and no other, as the table stage marks them.
MARKED = frozenset(load_claims(ROOT / "claims.yaml").rows) & {line.split(",")[0] for line in TABLE.splitlines()[2:]}

# The mnist profile's rows (docs/images.md), FID and recall; its ddim rows are uniform or quadratic. images.md does not
# print wall times: these are read off the run's figure (docs/mnist-trilemma.png), to about 3%.
MNIST = """cell,model,sampler,steps,eta,variance,trajectory,wall_s_per_1k,fid,recall
data,,train split,,,,,0,16.3,0.904
ddpm-1000,ddpm,ddpm,1000,,small,uniform,2100,114.7,0.833
ddpm-large-1000,ddpm,ddpm,1000,,large,uniform,2200,116.1,0.832
ddpm-250,ddpm,ddpm,250,,small,uniform,630,91.2,0.907
ddpm-large-250,ddpm,ddpm,250,,large,uniform,545,97.0,0.898
ddpm-100,ddpm,ddpm,100,,small,uniform,216,74.6,0.879
ddpm-large-100,ddpm,ddpm,100,,large,uniform,474,88.0,0.848
ddpm-50,ddpm,ddpm,50,,small,uniform,206,72.3,0.877
ddpm-large-50,ddpm,ddpm,50,,large,uniform,375,99.9,0.820
ddpm-10,ddpm,ddpm,10,,small,uniform,114,116.3,0.773
iddpm-100,iddpm,ddpm,100,,learned,uniform,265,69.0,0.894
iddpm-50,iddpm,ddpm,50,,learned,uniform,123,70.2,0.879
ddim-100,ddpm,ddim,100,0.0,,uniform,229,114.9,0.854
ddim-50,ddpm,ddim,50,0.0,,uniform,103,116.5,0.837
ddim-20,ddpm,ddim,20,0.0,,uniform,43,126.2,0.815
ddim-10,ddpm,ddim,10,0.0,,uniform,19.9,150.4,0.778
ddim-quad-100,ddpm,ddim,100,0.0,,quadratic,196,110.7,0.850
ddim-quad-50,ddpm,ddim,50,0.0,,quadratic,98,113.8,0.838
ddim-quad-20,ddpm,ddim,20,0.0,,quadratic,39,130.7,0.801
ddim-quad-10,ddpm,ddim,10,0.0,,quadratic,22.4,168.9,0.709
"""
MNIST_MARKED = (frozenset(load_claims(ROOT / "profiles" / "image_claims.yaml").rows)
                & {line.split(",")[0] for line in MNIST.splitlines()[2:]})


def read_rows(table: str) -> list[dict]:
    """A table as table.py hands it over: settings as str or None, numbers as float or None."""
    rows = []
    for r in csv.DictReader(io.StringIO(table)):
        rows.append({k: (v or None) if k in ("cell", "model", "sampler", "variance", "trajectory")
                     else (float(v) if v else None) for k, v in r.items()})
    return rows


def table_rows() -> list[dict]:
    """The README's table: the data row, then the cells."""
    return read_rows(TABLE)


def panels(fig) -> list:
    """The figure's data panels (the colour bar left out)."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.get_subplotspec() is not None]


def labels(fig) -> list[str]:
    """Every row named by a text label on a data panel (rows whose markers coincide share a label, a line each)."""
    return [line for ax in panels(fig) for t in ax.texts for line in t.get_text().split("\n")]


def saved_width(fig) -> int:
    """The PNG's width in pixels as atomic_save_figure saves it (dpi 110, bbox tight), from its IHDR header."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return struct.unpack(">I", buf.getvalue()[16:20])[0]


# The figures users see, drawn once (at the saved dpi) for the tests that only look at them: the README's rows with
# the claims' marks and with none (each series' endpoints labelled), and the mnist profile's with its claims' marks.
@pytest.fixture(scope="module")
def figures() -> dict:
    rows, mnist = table_rows(), read_rows(MNIST)
    figs = {"marked": trilemma_figure(rows[1:], ceiling=rows[0], marked=MARKED),
            "endpoints": trilemma_figure(rows[1:], ceiling=rows[0]),
            "mnist": trilemma_figure(mnist[1:], ceiling=mnist[0], marked=MNIST_MARKED, metrics=IMAGE_TRILEMMA_METRICS)}
    for fig in figs.values():
        plt.close(fig)  # out of pyplot's hands, so that closing all figures after each test leaves these be
        fig.set_dpi(110)  # as saved
        FigureCanvasAgg(fig).draw()
    return figs


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_trilemma_full_table_has_a_panel_pair_per_family(figures):
    axes = panels(figures["marked"])
    assert len(axes) == 10  # 5 families: quality above coverage
    titles = [ax.get_title() for ax in axes if ax.get_title()]
    assert titles == ["DDPM / iDDPM ancestral  (16 rows)", "DDIM  (5 rows)", "DDGAN  (3 rows)",
                      "classifier-guided  (12 rows)", "exact eps* (ceilings)  (7 rows)"]
    assert sum(len(c.get_offsets()) for ax in axes for c in ax.collections) == 2 * 43  # each row in 2 panels
    assert all(ax.get_xscale() == "log" for ax in axes) and len({ax.get_xlim() for ax in axes}) == 1


def ceilings(ax) -> list[float]:
    """The heights of a panel's rules across its whole width (x in axes coordinates: axhline's; a series' line is
    in data coordinates)."""
    rules = [line for line in ax.get_lines() if line.get_transform() == ax.get_yaxis_transform()]
    assert all(len(set(line.get_ydata())) == 1 and line.get_linestyle() == "--" for line in rules)
    return [float(line.get_ydata()[0]) for line in rules]


@pytest.mark.parametrize("which, quality, coverage", [("marked", 0.988, 0.977), ("mnist", 16.3, 0.904)])
def test_trilemma_ceiling_is_each_panels_own(figures, which, quality, coverage):
    """The data row's quality is the ceiling of every quality panel and its recall of every coverage panel: one
    dashed line each, at that panel's own metric (a quality line drawn in a coverage panel, or the other way round,
    fails)."""
    axes = panels(figures[which])
    assert len(axes) % 2 == 0 and axes
    for ax in axes:
        own = quality if ax.get_subplotspec().rowspan.start == 0 else coverage  # quality above coverage
        assert ceilings(ax) == [pytest.approx(own)], (ax.get_title(), ax.get_ylabel(), ceilings(ax))


def test_trilemma_families_come_from_model_sampler_and_scale():
    families = {r["cell"]: row_family(r) for r in table_rows()[1:]}
    assert families["ddpm-large-50"] == families["iddpm-small-50"] == families["sd2015-1000"] == FAMILIES[0]
    assert families["ddim-eta1-50"] == FAMILIES[1]
    assert families["ddgan-4"] == FAMILIES[2]
    assert families["ddim-50-s0"] == families["ddpm-250-s10"] == FAMILIES[3]
    assert families["exact-ddim-50-s1"] == families["exact-ddpm-4"] == FAMILIES[4]
    assert row_family({"cell": "flow-1", "model": "flow", "sampler": "euler", "scale": float("nan")}) == FAMILIES[5]


def test_trilemma_labels_the_marked_rows_only(figures):
    assert sorted(labels(figures["marked"])) == sorted(2 * list(MARKED))  # each once in each of its two panels
    for ax in panels(figures["marked"]):
        assert all(t.get_fontweight() == "bold" for t in ax.texts)
    assert sorted(labels(figures["mnist"])) == sorted(2 * list(MNIST_MARKED))


def test_trilemma_coincident_markers_share_a_label():
    rows = {r["cell"]: r for r in table_rows()}
    fig = trilemma_figure([rows["ddpm-1000"], rows["ddpm-large-1000"], rows["ddpm-4"]], ceiling=rows["data"],
                          marked={"ddpm-1000", "ddpm-large-1000", "ddpm-4"})
    quality = panels(fig)[0]  # the two 1000-step rows at 7.6 s and 0.99 / 0.98: one marker on the other
    assert sorted(t.get_text() for t in quality.texts) == ["ddpm-1000\nddpm-large-1000", "ddpm-4"]


def test_trilemma_lines_join_a_series_in_order_of_steps(figures):
    ancestral = panels(figures["marked"])[0]  # quality, DDPM / iDDPM: the ddpm small-Σ series first
    x, y = ancestral.get_lines()[1].get_data()  # after the ceiling
    series = sorted((r for r in table_rows() if r["cell"] in {f"ddpm-{n}" for n in (4, 10, 50, 100, 1000)}),
                    key=lambda r: r["steps"])  # ddpm-4 .. ddpm-1000: the small-Σ ancestral cells, by steps
    assert list(x) == [r["wall_s_per_1k"] for r in series] and list(y) == [r["hq_fraction"] for r in series]


@pytest.mark.parametrize("which", ["marked", "endpoints", "mnist"])
def test_trilemma_labels_do_not_overlap(figures, which):
    """As drawn at the saved dpi: no two labels' text boxes in a panel overlap, and each lies inside its panel."""
    fig = figures[which]
    renderer = fig.canvas.get_renderer()
    for ax in panels(fig):
        frame = ax.get_window_extent(renderer)
        boxes = [Text.get_window_extent(t, renderer) for t in ax.texts]  # the text alone, not its leader line
        for i, box in enumerate(boxes):
            where = (ax.texts[i].get_text(), ax.get_title() or ax.get_ylabel())
            assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, where
            assert not any(box.overlaps(other) for other in boxes[i + 1:]), where


@pytest.mark.parametrize("which", ["marked", "mnist"])
def test_trilemma_fits_a_1440_px_screen(figures, which):
    assert saved_width(figures[which]) <= 1440  # as saved: no viewer has to shrink it on a 1,440-px screen


def test_trilemma_text_is_legible(figures):
    """Labels and legend text at least 8.5 pt: about 13 px at the saved dpi (110)."""
    for fig in figures.values():
        legends = list(fig.legends) + [ax.get_legend() for ax in panels(fig) if ax.get_legend()]
        texts = [t for legend in legends for t in legend.get_texts()] + [t for ax in panels(fig) for t in ax.texts]
        assert texts and min(t.get_fontsize() for t in texts) >= 8.5


def test_trilemma_without_marks_labels_each_series_endpoints(figures):
    drawn = set(labels(figures["endpoints"]))
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
    quality, coverage = panels(fig)[0], panels(fig)[1]  # a band's first column: quality above coverage
    zero = [t for t in quality.texts if t.get_text() == "ddpm-50"][0]
    assert quality.get_xlim()[0] < zero.xy[0] < 0.031  # a zero time: at the axis' left end, left of every row
    assert sorted(t.get_text() for t in quality.texts) == ["ddpm-1000", "ddpm-50"]  # no time: not drawn
    assert [t.get_text() for t in coverage.texts] == ["ddpm-50"]  # no recall: not drawn
    assert "flow-1" in labels(fig) and "ddim-4" in labels(fig)
    fig.canvas.draw()
    for rows_ in ([], [dict(rows["ddgan-1"], wall_s_per_1k=None)]):
        trilemma_figure(rows_, ceiling=rows["data"]).canvas.draw()


def test_trilemma_figure_is_deterministic(figures):
    rows = table_rows()

    def png(fig) -> bytes:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=60, metadata={"Software": None})
        return buf.getvalue()

    assert png(trilemma_figure(rows[1:], ceiling=rows[0], marked=MARKED)) == png(figures["marked"])


def test_the_guidance_figure_reads_the_classifier_score_on_images():
    """Image rows have no high-quality fraction (a mixture's): the fourth panel is the classifier score there."""
    from pipelines.plots.sweeps import guidance_figure

    rows = [{"scale": s, "model": "ddpm", "precision": 0.5, "recall": 0.5, "target_hit": 0.1 * s,
             "classifier_score": 5 + s} for s in (0.0, 1.0, 10.0)]
    fig = guidance_figure({"ddpm ddim-50": rows})
    assert [ax.get_ylabel() for ax in fig.axes][-1] == "classifier score"
    assert fig.axes[-1].get_ylim()[1] > 10  # not clipped to a share's [0, 1]
    points = guidance_figure({"ddpm ddim-50": [{**r, "hq_fraction": 0.9} for r in rows]})
    assert points.axes[-1].get_ylabel() == "high-quality fraction"
