"""Shared start-up of the stage scripts and commands: arguments, logging, one-line errors."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from bmtard.config import Params, load_params
from bmtard.errors import BmtardError


def run_main(body: Callable[[], None]) -> int:
    """Run ``body`` with logging set up; a BmtardError becomes one line on stderr, exit code 2."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        body()
    except BmtardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run_stage(
    doc: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    body: Callable[[Params, argparse.Namespace], None],
) -> None:
    """Parse a stage's arguments, validate the whole params file before any work, run ``body``."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument(
        "--params", default="params.yaml", help="parameter file (default: %(default)s)"
    )
    add_arguments(parser)
    args = parser.parse_args()
    sys.exit(run_main(lambda: body(load_params(args.params), args)))
