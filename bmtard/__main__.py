"""The package's commands: ``python -m bmtard evaluate ...`` (any checkpoint, the pipeline's
protocol; ``bmtard.evaluation.command``), ``python -m bmtard compare ...`` (every finished run in
one table and picture; ``bmtard.experiments.compare``) and ``python -m bmtard curves ...`` (a
run's temperatures and loss weights; ``bmtard.experiments.curves``), ``python -m bmtard check``
(params.yaml and a grid validated, with the stages' one-line message; ``bmtard.experiments.check``)
``python -m bmtard teachers`` (the published teachers, their files and where to get them;
``bmtard.experiments.published``), ``python -m bmtard card`` (a model card as a page;
``bmtard.experiments.pages``) and ``python -m bmtard offline-plots`` (``dvc plots show``
without a network; ``bmtard.experiments.offline_plots``).
``--help`` after a command lists its options."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


def _evaluate(argv: Sequence[str]) -> int:
    from bmtard.evaluation.command import main

    return main(argv)


def _compare(argv: Sequence[str]) -> int:
    from bmtard.experiments.compare import main

    return main(argv)


def _check(argv: Sequence[str]) -> int:
    from bmtard.experiments.check import main

    return main(argv)


def _teachers(argv: Sequence[str]) -> int:
    from bmtard.experiments.published import main

    return main(argv)


def _curves(argv: Sequence[str]) -> int:
    from bmtard.experiments.curves import main

    return main(argv)


def _card(argv: Sequence[str]) -> int:
    from bmtard.experiments.pages import main

    return main(argv)


def _offline_plots(argv: Sequence[str]) -> int:
    from bmtard.experiments.offline_plots import main

    return main(argv)


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "evaluate": _evaluate,
    "compare": _compare,
    "curves": _curves,
    "check": _check,
    "teachers": _teachers,
    "card": _card,
    "offline-plots": _offline_plots,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        given = f"unknown command {args[0]!r}; " if args and args[0] not in ("-h", "--help") else ""
        print(
            f"usage: python -m bmtard {{{','.join(COMMANDS)}}} [options]\n{given}"
            f"commands: {', '.join(COMMANDS)} (each with --help)",
            file=sys.stderr if given else sys.stdout,
        )
        return 2 if given or not args else 0
    return COMMANDS[args[0]](args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
