"""`dvc plots show` renders offline: the repo's HTML template (.dvc/plots/offline.html, built by
.dvc/plots/build_offline_html.py) inlines vega, vega-lite and vega-embed, where DVC's default page loads them from a
CDN and, without internet, shows only the PNG plots. The page also fits a 1,440-px window (its CSS), and the trilemma
table is a labelled chart with a log time axis (.dvc/plots/trilemma.json)."""

from __future__ import annotations

import html as html_lib
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from configobj import ConfigObj  # what DVC reads its config with

from conftest import ROOT, run

# Each library's UMD wrapper assigns its browser global: a page that inlines the library holds this once.
LIBRARIES = {"vega": ").vega={}", "vega-lite": ").vegaLite={}", "vega-embed": ").vegaEmbed="}

# A trilemma.csv in small (the columns the chart reads): the ceiling `data` at 0 s (no place on a log axis), rows of
# two families over three decades of time, a row without a family (the figures leave it out) and one without quality
# (Vega-Lite would draw an empty string at 0).
TRILEMMA_CSV = """cell,nfe,wall_s_per_1k,hq_fraction,recall,family
data,0,0.0,0.988,0.977,
ddpm-1000,1000,7.593,0.994,0.969,DDPM / iDDPM ancestral
ddpm-10,10,0.077,0.056,0.895,DDPM / iDDPM ancestral
ddgan-4,4,0.007,0.793,0.983,DDGAN
ddgan-1,1,0.002,0.969,0.144,DDGAN
cond-row,100,0.8,0.9,0.5,
no-quality,50,0.4,,0.9,DDGAN
"""
TRILEMMA_DRAWN = ("ddpm-1000", "ddpm-10", "ddgan-4", "ddgan-1")
# One plot per kind of template dvc.yaml uses: DVC's linear and scatter, and the repo's own by_t.json and trilemma.json.
CSVS = {
    "loss.csv": "step,loss\n0,0.912345\n10,0.512345\n20,0.312345\n",
    "acc.csv": "t_mid,accuracy\n0.1,0.75\n0.5,0.625\n",
    "by_t.csv": "step,t,term,value\n0,0,d_real,0.7\n0,1,d_real,0.6\n10,0,g,1.25\n10,1,g,1.5\n",
    "trilemma.csv": TRILEMMA_CSV,
}
# Images as the pipeline makes them: a figure wider than the window and a sampler cell's scatter per cell.
WIDE_PNG, SAMPLE_PNGS = "wide.png", [f"plots/samples/cell-{i:02d}.png" for i in range(12)]
DVC_YAML = """plots:
  - loss.csv: {x: step, y: loss, template: linear}
  - acc.csv: {x: t_mid, y: accuracy, template: scatter}
  - by_t.csv: {x: step, y: value, template: by_t}
  - trilemma.csv: {x: wall_s_per_1k, y: hq_fraction, template: trilemma}
""" + "".join(f"  - {png}\n" for png in [WIDE_PNG, *SAMPLE_PNGS])

# Renders each spec of a plots page the way vegaEmbed does (vega-lite compile, vega parse, a view) to SVG, with the
# page's inlined libraries in a bare V8 context: no DOM, no fetch, so nothing can come from the network.
RENDER_JS = r"""
const fs = require("fs"), vm = require("vm");
const html = fs.readFileSync(process.argv[2], "utf8");
const libs = [...html.matchAll(/<script>([\s\S]*?)<\/script>/g)].map(m => m[1]);
const specs = [...html.matchAll(/var spec = (.*);\n/g)].map(m => JSON.parse(m[1]));
const ctx = vm.createContext({console, setTimeout, clearTimeout, setInterval, clearInterval, structuredClone, URL,
                              TextEncoder, TextDecoder});
libs.forEach((code, i) => {
  try { vm.runInContext(code, ctx); } catch (e) { console.error(`library ${i}: ${e.message}`); process.exit(1); }
});
(async () => {
  const {vega, vegaLite, vegaEmbed} = ctx, svgs = [];
  for (const spec of specs) {
    const view = new vega.View(vega.parse(vegaLite.compile(spec).spec), {renderer: "none"});
    svgs.push(await view.toSVG());
  }
  console.log(JSON.stringify({vega: vega.version, "vega-lite": vegaLite.version,
                              "vega-embed": typeof vegaEmbed === "function" && vegaEmbed.version, svgs}));
})().catch(e => { console.error(e.stack); process.exit(1); });
"""


def _template_setting() -> str:
    return ConfigObj(str(ROOT / ".dvc" / "config"))["plots"]["html_template"]


def test_repo_config_points_at_an_existing_template():
    # DVC resolves a relative plots.html_template against .dvc/ and, when no file is there, takes the setting
    # itself for the page's text and fails on the missing {plot_divs}.
    template = ROOT / ".dvc" / _template_setting()
    assert template.is_file(), template
    assert "{plot_divs}" in template.read_text(encoding="utf8")


def _write_png(path: Path, width: int, height: int) -> None:
    from PIL import Image  # matplotlib's dependency

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (200, 220, 240)).save(path)


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    """dvc_plots/index.html of a plain `dvc plots show` in a fresh git + DVC repo configured like this one."""
    repo = tmp_path_factory.mktemp("plots_offline")
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo, DVC_NO_ANALYTICS="1")
    setting = _template_setting()
    (repo / ".dvc" / setting).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / ".dvc" / setting, repo / ".dvc" / setting)
    for template in ("by_t.json", "trilemma.json"):
        shutil.copy2(ROOT / ".dvc" / "plots" / template, repo / ".dvc" / "plots" / template)
    run(["dvc", "config", "plots.html_template", setting], repo, DVC_NO_ANALYTICS="1")  # DVC checks the key name
    for name, text in CSVS.items():
        (repo / name).write_text(text)
    _write_png(repo / WIDE_PNG, 2500, 400)
    for png in SAMPLE_PNGS:
        _write_png(repo / png, 441, 449)  # the size of a sample scatter
    (repo / "dvc.yaml").write_text(DVC_YAML)
    run(["dvc", "plots", "show"], repo, DVC_NO_ANALYTICS="1")
    return repo / "dvc_plots" / "index.html"


def _specs(html: str) -> dict[str, dict]:
    """The Vega-Lite spec of each plot div, by div id (dvc_render's VegaRenderer.DIV)."""
    found = re.findall(r'<div id = "([^"]+)">\s*<script type = "text/javascript">\s*var spec = (.*);\n', html)
    return {div: json.loads(spec) for div, spec in found}


def test_page_inlines_the_libraries_and_loads_nothing(page: Path):
    html = page.read_text(encoding="utf8")
    script_tags = re.findall(r"<script\b[^>]*>", html, re.I)
    assert not [tag for tag in script_tags if re.search(r"\bsrc\s*=", tag, re.I)], "a script is loaded, not inlined"
    assert "cdn.jsdelivr.net" not in html
    for library, marker in LIBRARIES.items():
        assert html.count(marker) == 1, library
    for placeholder in ("{plot_divs}", "{refresh_tag}", "{scripts}"):
        assert placeholder not in html, placeholder


def test_page_holds_each_plot_and_its_data(page: Path):
    specs = _specs(page.read_text(encoding="utf8"))
    assert set(specs) == {"loss_csv", "acc_csv", "by_t_csv", "trilemma_csv"}
    assert [(r["step"], r["loss"]) for r in specs["loss_csv"]["data"]["values"]] == [
        ("0", "0.912345"), ("10", "0.512345"), ("20", "0.312345")]
    assert [(r["t_mid"], r["accuracy"]) for r in specs["acc_csv"]["data"]["values"]] == [("0.1", "0.75"),
                                                                                        ("0.5", "0.625")]
    assert specs["by_t_csv"]["encoding"]["row"]["field"] == "term"  # the repo's template, not a default one
    assert len(specs["by_t_csv"]["data"]["values"]) == 4


@pytest.fixture(scope="module")
def rendered(page: Path, tmp_path_factory) -> dict:
    """RENDER_JS's output on the page: the library versions that ran and each spec's SVG, in the page's order."""
    if shutil.which("node") is None:
        pytest.skip("needs node to run the inlined libraries headless")
    script = tmp_path_factory.mktemp("render") / "render.js"
    script.write_text(RENDER_JS)
    return json.loads(run(["node", str(script), str(page)], script.parent).stdout.strip().splitlines()[-1])


def test_inlined_libraries_render_each_plot(page: Path, rendered: dict):
    html = page.read_text(encoding="utf8")
    for library in LIBRARIES:  # the builds that ran are the ones the template's banners name
        assert f"/*! {library}@{rendered[library]} " in html, library
    assert len(rendered["svgs"]) == len(CSVS)
    for svg in rendered["svgs"]:
        assert svg.startswith("<svg") and svg.count("<path") >= 10, svg[:200]  # axes, lines, points drawn


def _texts(svg: str) -> list[str]:
    """The text of each SVG <text> element: tick labels, titles, legend entries, the chart's labels."""
    return [html_lib.unescape(t) for t in re.findall(r"<text\b[^>]*>([^<]*)</text>", svg)]


def test_trilemma_chart_labels_each_row_on_a_log_time_axis(page: Path, rendered: dict):
    specs = _specs(page.read_text(encoding="utf8"))
    spec, svg = specs["trilemma_csv"], rendered["svgs"][list(specs).index("trilemma_csv")]  # RENDER_JS: page order
    texts = _texts(svg)
    for cell in TRILEMMA_DRAWN:  # each drawn row labelled with its cell
        assert texts.count(cell) == 1, cell
    # data: 0 s, no place on a log axis (a dashed rule instead); no family: not in the figures; no quality: not at a
    # made-up 0
    for cell in ("data", "cond-row", "no-quality"):
        assert cell not in texts, cell
    assert re.search(r'<line aria-label="[^"]*cell: data[;"]', svg)  # the ceiling's rule
    # a point's aria label is its tooltip (Vega-Lite derives one from the other): the row's cell, nfe and recall
    point = re.search(r'<path aria-label="([^"]*cell: ddgan-4;[^"]*)"', svg)
    assert point and "nfe: 4;" in point[1] and "recall: 0.983" in point[1], point
    assert {"DDGAN", "DDPM / iDDPM ancestral", "family"} <= set(texts)  # the colour legend
    # the time axis is logarithmic: its ticks span decades (a linear axis over 0.002-7.6 s has no 0.01 tick)
    assert {"0.01", "0.1", "1"} <= set(texts), texts
    assert "<DVC_METRIC" not in json.dumps(spec)  # DVC filled every placeholder (title: the path, labels: the fields)


# Written into a copy of the page, after the page's own scripts: once the images have loaded and the charts drawn,
# it records the layout on <body> for --dump-dom to print. The CSS under test is the template's, untouched.
LAYOUT_PROBE = """<script>
addEventListener("load", () => setTimeout(() => {
  const imgs = [...document.images].map(img => {
    const box = img.getBoundingClientRect();
    return {plot: img.closest("body > div").id, left: box.left, right: box.right, top: box.top, width: box.width};
  });
  document.body.dataset.layout = JSON.stringify({window: innerWidth, page: document.documentElement.scrollWidth, imgs});
}, 500));
</script>
"""
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WINDOW = 1440  # px: the screen the page must fit


def _layout(page: Path, width: int) -> dict:
    """The page's layout in headless Chromium, `width` px wide: the window's and the page's width, each image's box."""
    text = page.read_text(encoding="utf8")
    end = text.rindex("</body>")  # the last one: the inlined libraries hold the string too
    probe = page.with_name("layout_probe.html")  # beside the page, so that its static/ images load
    probe.write_text(text[:end] + LAYOUT_PROBE + text[end:], encoding="utf8")
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--window-size={width},900", "--virtual-time-budget=5000", "--dump-dom",
             probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'data-layout="([^"]*)"', dom)
    assert found, f"the probe did not run: {dom[-500:]}"
    return json.loads(html_lib.unescape(found.group(1)))


@pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="needs Chromium (/usr/bin/chromium) to lay the page out")
def test_page_fits_the_window_and_lays_samples_in_a_grid(page: Path):
    layout = _layout(page, WINDOW)
    assert layout["page"] <= layout["window"] == WINDOW  # nothing runs off to the right: no horizontal scrolling
    imgs = {img["plot"]: img for img in layout["imgs"]}
    assert len(imgs) == 1 + len(SAMPLE_PNGS)
    for img in imgs.values():
        assert 0 <= img["left"] and img["right"] <= layout["page"], img
    wide = imgs["wide_png"]  # a 2,500-px figure takes about the page's width: shrunk, still readable
    assert 0.9 * layout["page"] <= wide["width"] < 2500, wide
    rows: dict[float, list[dict]] = {}
    for name, img in imgs.items():
        if name.startswith("plots_samples_"):
            rows.setdefault(round(img["top"]), []).append(img)
    assert max(len(row) for row in rows.values()) >= 4, sorted(rows)  # a grid, not one per row
    assert len(rows) <= 3, sorted(rows)
    assert min(img["width"] for row in rows.values() for img in row) >= 250  # each still big enough to read


def test_table_csv_names_the_family_of_each_row_the_figures_draw(tmp_path: Path):
    # The chart colours and selects its points by trilemma.csv's `family`; the claims still read the file.
    import pandas as pd

    from pipelines.stages.claims import read_table
    from pipelines.claims.columns import METRICS, SETTINGS
    from pipelines.stages.table import with_families

    rows = [{"cell": "data", "sampler": "train split", "wall_s_per_1k": 0.0},
            {"cell": "ddim-50", "model": "ddpm", "sampler": "ddim", "steps": 50, "wall_s_per_1k": 0.38},
            {"cell": "ddgan-4", "model": "ddgan-4", "sampler": "ddgan", "steps": 4, "wall_s_per_1k": 0.007},
            {"cell": "ddpm-100-x1-at-0", "model": "ddpm", "sampler": "ddpm", "condition": "x[0] = 0"}]
    df = pd.DataFrame(rows).reindex(columns=[*SETTINGS, *METRICS])
    csv = with_families(df, drawn=rows[1:3])  # the table stage passes the rows trilemma.png draws
    assert list(csv.columns) == [*SETTINGS, "family", *METRICS]  # one column more, with the row's settings
    (tmp_path / "trilemma.csv").write_text(csv.to_csv(index=False))
    table = read_table(tmp_path / "trilemma.csv")
    assert {cell: row["family"] for cell, row in table.items()} == {
        "data": None, "ddim-50": "DDIM", "ddgan-4": "DDGAN", "ddpm-100-x1-at-0": None}
