"""The HTML pages of the Snakemake report, each self-contained (no script, no network): the
comparison's tables (``comparison_page``) and a model card (``card_page``; a JSON file is only
offered for download in the report).

Usage (``python -m bmtard card`` is the same command):
  python -m bmtard.experiments.pages results/method-bmtard_seed-0/models/student.card.json \\
      --out results/method-bmtard_seed-0/card.html
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from bmtard.core.errors import BmtardError
from bmtard.core.io import write_atomic

STYLE = (
    "body{font-family:sans-serif;font-size:13px;margin:12px}"
    "table{border-collapse:collapse;margin:6px 0}"
    "th,td{border:1px solid #bbb;padding:3px 6px;vertical-align:top}"
    "th{background:#eee;text-align:left}td.n{text-align:right}"
)


def _text(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:.2g}"
    return str(value)


def table(rows: Sequence[dict[str, Any]], empty: str = "No finished experiment found.") -> str:
    """Rows of the same columns as one table (numbers right-aligned, two decimals)."""
    if not rows:
        return f"<p>{escape(empty)}</p>"
    head = "".join(f"<th>{escape(str(h))}</th>" for h in rows[0])
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='n'>{escape(_text(v))}</td>"
            if isinstance(v, int | float) and not isinstance(v, bool)
            else f"<td>{escape(_text(v))}</td>"
            for v in row.values()
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def nested(value: Any) -> str:
    """Any JSON value as HTML: a mapping as a two-column table (recursively), a list of scalars
    on one line."""
    if isinstance(value, dict):
        if not value:
            return "—"
        rows = "".join(
            f"<tr><th>{escape(str(k))}</th><td>{nested(v)}</td></tr>" for k, v in value.items()
        )
        return f"<table>{rows}</table>"
    if isinstance(value, list):
        if all(not isinstance(v, dict | list) for v in value):
            return escape(", ".join(_text(v) for v in value)) or "—"
        return "".join(nested(v) for v in value)
    return escape(_text(value))


def document(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{body}</body></html>\n"
    )


def comparison_page(rows: list[dict[str, Any]], summary: list[dict[str, Any]], note: str) -> str:
    """The comparison: every run, then every setting over its seeds, then ``note``."""
    return document(
        "comparison",
        f"<h2>Every run</h2>{table(rows)}<h2>Over seeds</h2>{table(summary)}<p>{escape(note)}</p>",
    )


def cost_rows(cost: dict[str, Any]) -> list[dict[str, Any]]:
    """A card's ``cost`` as one row per stage: what the student's training, each teacher and
    the evaluation cost."""
    parts = [("student's training", cost.get("training"))]
    parts += [(f"{role} teacher", c) for role, c in (cost.get("teachers") or {}).items()]
    parts.append(("evaluation", cost.get("evaluation")))
    rows = []
    for what, c in parts:
        c = c or {}
        seconds = c.get("seconds")
        rows.append({
            "Stage": what,
            "Device": c.get("device") or "—",
            "Minutes": None if seconds is None else seconds / 60,
            "Images/s": c.get("images_per_second"),
            "Peak MB": c.get("peak_memory_mb"),
            "Memory": c.get("memory") or "—",
            "GPU-h": None if c.get("gpu_seconds") is None else c["gpu_seconds"] / 3600,
            "Starts": c.get("starts"),
        })  # fmt: skip
    return rows


def card_page(card: dict[str, Any]) -> str:
    """A model card as a page: the headline numbers, what it cost, then every field."""
    training = card.get("training") or {}
    name = card.get("checkpoint", "model")
    head = {
        "method": training.get("method"),
        "architecture": f"{card.get('architecture')} ×{card.get('width')}",
        "dataset": card.get("dataset"),
        "eps": card.get("eps"),
        "clean (%)": card.get("clean_acc"),
        "AutoAttack (%)": card.get("autoattack_acc"),
        "test points": card.get("n_test_points"),
        "epoch": training.get("epoch"),
    }
    body = f"<h2>{escape(str(name))}</h2>{nested(head)}"
    if card.get("cost"):
        # a section of its own: the one part of the page that differs between two runs alike
        body += f'<section class="cost"><h3>What it cost</h3>{table(cost_rows(card["cost"]))}'
        body += "</section>"
    rest = {k: v for k, v in card.items() if k != "cost"}
    body += f"<h3>Every field of the card</h3>{nested(rest)}"
    return document(f"model card: {name}", body)


def main(argv: Sequence[str] | None = None) -> int:
    from bmtard.runtime.cli import run_main

    p = argparse.ArgumentParser(
        prog="python -m bmtard card",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("card", help="a model card (<model>.card.json, the evaluation writes it)")
    p.add_argument("--out", required=True, help="the page to write")
    args = p.parse_args(argv)

    def body() -> None:
        try:
            card = json.loads(Path(args.card).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise BmtardError(f"{args.card}: not a readable model card ({e})") from e
        if not isinstance(card, dict):
            raise BmtardError(f"{args.card}: not a model card (a JSON object)")
        text = card_page(card)
        write_atomic(Path(args.out), lambda tmp: tmp.write_text(text, encoding="utf-8"))
        print(f"wrote {args.out}")

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
