"""Regenerate offline.html: DVC's plots page with vega, vega-lite and vega-embed inlined, so that `dvc plots show`
renders the CSV (Vega-Lite) plots without reaching a CDN.

Usage: edit VERSIONS, then `python .dvc/plots/build_offline_html.py` (needs npm and the npm registry, nothing else),
then `pytest tests/pipelines/plots/test_plots_offline.py`.

The majors are those of the CDN scripts of dvc_render's VegaRenderer (vega 5.20.2, vega-lite 5.2.0, vega-embed 6.18.2
in dvc-render 1.0.2), at their latest releases: the specs DVC 3.x emits declare Vega-Lite v5 (vega-embed warns when
the loaded vega-lite's major differs), and vega 6 / vega-lite 6 / vega-embed 7 are untested with DVC's templates.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

VERSIONS = {"vega": "5.33.1", "vega-lite": "5.23.0", "vega-embed": "6.29.0"}  # load order: each needs the previous
OUT = Path(__file__).with_name("offline.html")

# dvc_render's HTML.embed() str.replaces these three names in braces over the whole template, comments and inlined
# code included. The scripts placeholder is left out on purpose: DVC would fill it with the CDN <script src> tags.
PLOTS, REFRESH, SCRIPTS = "{plot_divs}", "{refresh_tag}", "{scripts}"

# Added to DVC's page style (whose only rule is the table's spacing above) so that the page fits the window.
# dvc_render (image.py) puts each image plot in a <div id="<its path, / and . as _>"> whose inline style says
# `white-space: nowrap; overflow-y: hidden`, holding one inline-block <div> per revision (a <p> naming it, then the
# <img> at its natural size): an image wider than the window was cut off. An inline style beats a style sheet unless
# the sheet says !important. vega-embed makes each Vega-Lite chart's div an inline-block of the chart's own width.
STYLE = """\
        /* Every image at most its plot's width, the plot at most the page's: a 2,000-px figure shrinks to fit. */
        body > div:has(> div > img) {
            white-space: normal !important;
        }
        body > div > div:has(> img) {
            max-width: calc(100% - 12px);  /* dvc_render's margins (8 px left, 2 px right) and borders */
            box-sizing: border-box;
        }
        body > div > div > img {
            max-width: 100%;
            height: auto;
        }
        /* The sample scatters (plots/samples/<cell>.png, one plot per sampler cell, 43 in a full run) flow four to a
           row, each with its title, where one per row made the page 16,000 px long. */
        body > div[id^="plots_samples_"] {
            display: inline-block;
            vertical-align: top;
            box-sizing: border-box;
            width: calc(25% - 8px);
            margin: 2px;
        }
        body > div[id^="plots_samples_"] p {
            margin: 4px 0;
            font-size: 13px;
            overflow-wrap: anywhere;
        }
        /* Charts side by side line up at their tops, not at their baselines (a short chart left a gap above). */
        .vega-embed {
            vertical-align: top;
        }
"""


def licence_text(pkg_dir: Path) -> str | None:
    files = sorted(p for p in pkg_dir.iterdir() if re.match(r"(licen[cs]e|copying)", p.name, re.I) and p.is_file())
    return "\n\n".join(p.read_text(encoding="utf8").strip() for p in files) or None


def build() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        specs = [f"{name}@{version}" for name, version in VERSIONS.items()]
        # npm checks each tarball against the registry's integrity hash; --ignore-scripts: no install hooks run.
        subprocess.run(["npm", "install", "--prefix", tmp, "--ignore-scripts", "--no-audit", "--no-fund", *specs],
                       check=True, stdout=subprocess.DEVNULL)
        modules = Path(tmp, "node_modules")
        tree = json.loads(subprocess.run(["npm", "query", "*", "--prefix", tmp], check=True, capture_output=True,
                                         text=True).stdout)

        scripts, notices = [], []
        for name, version in VERSIONS.items():
            pkg = modules / name
            meta = json.loads((pkg / "package.json").read_text())
            assert meta["version"] == version, (name, meta["version"])
            code = (pkg / "build" / f"{name}.min.js").read_text(encoding="utf8")
            # The .map files are not inlined: drop the comment that would send devtools looking for them.
            code = re.sub(r"\n//# sourceMappingURL=\S+\s*$", "\n", code)
            # An inline script ends at the first "</script"; "<!--" can switch the parser into escaped mode.
            assert not re.search(r"</script|<!--|<script", code, re.I), name
            scripts.append(f"<script>/*! {name}@{version} ({meta['license']}, notice above) */\n{code.strip()}\n"
                           "</script>")
            # vega's npm tarball ships no LICENSE; the vega monorepo's LICENSE is the one its sub-packages ship.
            text = licence_text(pkg) or (licence_text(modules / "vega-view") if name == "vega" else None)
            assert text, f"no licence text for {name}"
            notices.append(f"{name}@{version} ({meta['license']}):\n\n{text}")

        # The minified builds bundle their dependencies (d3, vega's sub-packages, vega-tooltip, ...); npm's
        # dependency closure covers them (plus a few CLI/Node-only ones that the browser builds leave out).
        by_text: dict[str, list[str]] = {}
        for node in tree:
            if not node.get("location", "").startswith("node_modules/") or node["name"] in VERSIONS:
                continue  # the root (the temporary prefix) or one of the three packages, noticed above
            text = licence_text(Path(tmp, node["location"]))
            text = text or f"(no licence file in the npm package; package.json says {node.get('license')})"
            by_text.setdefault(text, []).append(f"{node['name']}@{node['version']}")
        third = [f"{textwrap.fill(', '.join(sorted(set(pkgs))), 118)}:\n\n{text}" for text, pkgs in
                 sorted(by_text.items(), key=lambda kv: sorted(kv[1])[0])]

    versions = ", ".join(f"{n} {v}" for n, v in VERSIONS.items())
    sep = "\n\n" + "=" * 100 + "\n\n"
    header = (f"DVC plots page that works offline: {versions}\n"
              "are inlined from their npm builds (build/*.min.js) instead of loaded from a CDN.\n"
              "Generated by .dvc/plots/build_offline_html.py: edit that, not this.\n"
              "\nLicence notices of the inlined code follow: first the three packages, then what their builds bundle.")
    comment = sep.join([header, *notices, *third])
    for bad in ("-->", "<!--", "--!>", PLOTS, REFRESH, SCRIPTS):
        assert bad not in comment, bad
    scripts_html = "\n".join(scripts)
    for placeholder in (PLOTS, REFRESH, SCRIPTS):
        assert placeholder not in scripts_html + STYLE, placeholder
    return f"""<!DOCTYPE html>
<!--
{comment}
-->
<html>
<head>
    <meta charset="utf-8">
    {REFRESH}
    <title>DVC Plot</title>
{scripts_html}
    <style>
        table {{
            border-spacing: 15px;
        }}
{STYLE}    </style>
</head>
<body>
    {PLOTS}
</body>
</html>
"""


if __name__ == "__main__":
    html = build()
    OUT.write_text(html, encoding="utf8")
    print(f"{OUT}: {len(html.encode()):,} bytes", file=sys.stderr)
