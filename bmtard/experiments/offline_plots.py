"""DVC's plots without a network. ``dvc plots show`` writes a page that loads Vega, Vega-Lite and
vega-embed from a CDN, which a cluster node often cannot reach: the page stays blank. This
command writes a page template with the three libraries inline, taken from the
``vl-convert-python`` package that set-up installed (its bundle of them, with no network), and
points this project's local DVC config (``.dvc/config.local``, never committed) at it; plain
``dvc plots show`` (and ``dvc plots diff``) then render offline.

Usage (``python -m bmtard offline-plots`` is the same command):
  python -m bmtard.experiments.offline_plots     # in the project; then: dvc plots show
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from bmtard.core.errors import BmtardError
from bmtard.core.io import write_atomic

#: the template's name in .dvc/ (DVC reads a relative ``plots.html_template`` from there)
TEMPLATE = "offline-plots.html"
#: DVC's plot templates are Vega-Lite v5 specifications
VEGA_LITE = "5.21"
#: where DVC puts its plots in the page (dvc_render's placeholder)
PLOTS = "{plot_divs}"


def page(bundle: str) -> str:
    """The page template: the libraries' bundle (a classic script that sets ``window.vegaEmbed``,
    which DVC's plot divs call) before DVC's plots. DVC's ``{scripts}`` placeholder is left out:
    it would add the CDN's script tags."""
    if "</script" in bundle.lower() or PLOTS in bundle:
        raise BmtardError("the Vega bundle of vl-convert-python cannot be inlined in a page")
    return (
        "<!DOCTYPE html>\n<html>\n<head>\n<meta charset='utf-8'>\n{refresh_tag}\n"
        "<title>DVC plots (offline)</title>\n"
        f"<script>\n{bundle}\n</script>\n"
        "<style>table { border-spacing: 15px; }</style>\n</head>\n"
        f"<body>\n{PLOTS}\n</body>\n</html>\n"
    )


def vega_bundle() -> str:
    """Vega, Vega-Lite and vega-embed as one script, from the installed vl-convert-python."""
    try:
        import vl_convert
    except ImportError as e:
        raise BmtardError(
            "vl-convert-python is not installed: pip install -r requirements.txt"
        ) from e
    return vl_convert.javascript_bundle(vl_version=VEGA_LITE)


def install(root: Path) -> Path:
    """Write ``.dvc/offline-plots.html`` in the DVC project at ``root`` and set it as the
    project's local ``plots.html_template``; returns the template's path."""
    dvc_dir = root / ".dvc"
    if not dvc_dir.is_dir():
        raise BmtardError(f"{root.resolve()} is no DVC project (no .dvc/): run this in one")
    exe = shutil.which("dvc")
    if exe is None:
        raise BmtardError("dvc is not installed: pip install -r requirements.txt")
    text = page(vega_bundle())
    path = dvc_dir / TEMPLATE
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    proc = subprocess.run(
        [exe, "config", "--local", "plots.html_template", TEMPLATE],
        cwd=root, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise BmtardError(f"dvc config --local plots.html_template failed: {last[:200]}")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    from bmtard.runtime.cli import run_main

    p = argparse.ArgumentParser(
        prog="python -m bmtard offline-plots",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--project", default=".", help="the DVC project (default: the cwd)")
    args = p.parse_args(argv)

    def body() -> None:
        path = install(Path(args.project))
        print(f"wrote {path}; dvc plots show now renders without a network")

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
