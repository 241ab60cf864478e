"""`dvc plots show` renders offline: the repo's HTML template (.dvc/plots/offline.html, built by
.dvc/plots/build_offline_html.py) inlines vega, vega-lite and vega-embed, where DVC's default page loads them from a
CDN and, without internet, shows only the PNG plots."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from configobj import ConfigObj  # what DVC reads its config with

from conftest import ROOT, run

# Each library's UMD wrapper assigns its browser global: a page that inlines the library holds this once.
LIBRARIES = {"vega": ").vega={}", "vega-lite": ").vegaLite={}", "vega-embed": ").vegaEmbed="}

# One plot per kind of template dvc.yaml uses: DVC's linear and scatter, and the repo's own by_t.json.
CSVS = {
    "loss.csv": "step,loss\n0,0.912345\n10,0.512345\n20,0.312345\n",
    "acc.csv": "t_mid,accuracy\n0.1,0.75\n0.5,0.625\n",
    "by_t.csv": "step,t,term,value\n0,0,d_real,0.7\n0,1,d_real,0.6\n10,0,g,1.25\n10,1,g,1.5\n",
}
DVC_YAML = """plots:
  - loss.csv: {x: step, y: loss, template: linear}
  - acc.csv: {x: t_mid, y: accuracy, template: scatter}
  - by_t.csv: {x: step, y: value, template: by_t}
"""

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


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    """dvc_plots/index.html of a plain `dvc plots show` in a fresh git + DVC repo configured like this one."""
    repo = tmp_path_factory.mktemp("plots_offline")
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo, DVC_NO_ANALYTICS="1")
    setting = _template_setting()
    (repo / ".dvc" / setting).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / ".dvc" / setting, repo / ".dvc" / setting)
    shutil.copy2(ROOT / ".dvc" / "plots" / "by_t.json", repo / ".dvc" / "plots" / "by_t.json")
    run(["dvc", "config", "plots.html_template", setting], repo, DVC_NO_ANALYTICS="1")  # DVC checks the key name
    for name, text in CSVS.items():
        (repo / name).write_text(text)
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
    assert set(specs) == {"loss_csv", "acc_csv", "by_t_csv"}
    assert [(r["step"], r["loss"]) for r in specs["loss_csv"]["data"]["values"]] == [
        ("0", "0.912345"), ("10", "0.512345"), ("20", "0.312345")]
    assert [(r["t_mid"], r["accuracy"]) for r in specs["acc_csv"]["data"]["values"]] == [("0.1", "0.75"),
                                                                                        ("0.5", "0.625")]
    assert specs["by_t_csv"]["encoding"]["row"]["field"] == "term"  # the repo's template, not a default one
    assert len(specs["by_t_csv"]["data"]["values"]) == 4


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the inlined libraries headless")
def test_inlined_libraries_render_each_plot(page: Path, tmp_path: Path):
    script = tmp_path / "render.js"
    script.write_text(RENDER_JS)
    out = json.loads(run(["node", str(script), str(page)], tmp_path).stdout.strip().splitlines()[-1])
    html = page.read_text(encoding="utf8")
    for library in LIBRARIES:  # the builds that ran are the ones the template's banners name
        assert f"/*! {library}@{out[library]} " in html, library
    assert len(out["svgs"]) == 3
    for svg in out["svgs"]:
        assert svg.startswith("<svg") and svg.count("<path") >= 10, svg[:200]  # axes, lines, points drawn
