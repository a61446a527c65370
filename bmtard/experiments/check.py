"""``python -m bmtard check``: validate a params file (and a grid file) as every stage would, with
our one-line message, before an engine runs. DVC reads ``params.yaml`` itself before any stage
runs, so an empty or partial file gets DVC's own message first (``Could not find
'distill.method'``, ``Parameters 'data' are missing from 'params.yaml'``); this command names
the problem."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from bmtard.config.params import load_params
from bmtard.core.errors import ParamsError
from bmtard.experiments import grid as grids
from bmtard.runtime.cli import run_main


def check(params: str | Path, grid_file: str | Path | None = None) -> str:
    """Validate ``params`` and, if given, every experiment of ``grid_file`` over it; return a
    one-line summary (a ParamsError names the first problem)."""
    load_params(params)
    if grid_file is None:
        return f"{params}: valid"
    try:
        raw_grid = yaml.safe_load(Path(grid_file).read_text())
    except (OSError, yaml.YAMLError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ParamsError(f"{grid_file}: cannot be read as YAML ({first})") from None
    if not isinstance(raw_grid, dict) or set(raw_grid) != {"grid"}:
        raise ParamsError(f"{grid_file}: must hold one key, grid (see presets/grid.yaml)")
    experiments = grids.expand(raw_grid["grid"])
    base = yaml.safe_load(Path(params).read_text())
    for exp in experiments:
        grids.experiment_params(base, exp)
    return f"{params}: valid; {grid_file}: {len(experiments)} valid experiments"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bmtard check", description="validate params.yaml (and a grid file)"
    )
    p.add_argument("--params", default="params.yaml", help="(default: %(default)s)")
    p.add_argument("--grid", help="a grid file for Snakemake's --configfile")
    args = p.parse_args(argv)
    return run_main(lambda: print(check(args.params, args.grid), file=sys.stdout))


if __name__ == "__main__":
    raise SystemExit(main())
