"""The acceptance report: one JSON with every part's status and numbers, and one Markdown page
with a line per part, then its numbers (what failed is at the top)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.acceptance.parts import FAIL, TIMEOUT, Part


def passed(parts: list[Part]) -> bool:
    """Whether no part failed or ran out of time (skipped parts do not fail the run)."""
    return all(p.status not in (FAIL, TIMEOUT) for p in parts)


def write(out: Path, header: dict[str, Any], parts: list[Part]) -> tuple[Path, Path]:
    """``acceptance.json`` and ``acceptance.md`` in ``out``; returns their paths."""
    record = {**header, "passed": passed(parts), "parts": [asdict(p) for p in parts]}
    js, md = out / "acceptance.json", out / "acceptance.md"
    js.write_text(json.dumps(record, indent=2, default=str) + "\n")
    md.write_text(markdown(record, parts))
    return js, md


def markdown(record: dict[str, Any], parts: list[Part]) -> str:
    verdict = "**PASSED**" if record["passed"] else "**FAILED**"
    lines = [
        f"# GPU acceptance: {verdict}",
        "",
        f"`{record['command']}` on {record['device_name']}, torch {record['torch']}, "
        f"{record['started']}; {record['total_s']:.0f} s of a {record['budget_s']:.0f} s budget.",
        "",
        "| part | status | seconds (limit) | result |",
        "|---|---|---:|---|",
    ]
    for p in parts:
        lines.append(
            f"| {p.name} | {p.status} | {p.seconds:.0f} ({p.limit_s:.0f}) | "
            f"{p.summary.replace('|', '/')} |"
        )
    for p in parts:
        lines += ["", f"## {p.name}: {p.status}", "", p.summary]
        if p.numbers:
            lines += ["", "```json", json.dumps(p.numbers, indent=1, default=str)[:6000], "```"]
        if p.log_tail and p.status in (FAIL, TIMEOUT):
            lines += ["", "The end of its output:", "", "```", p.log_tail[-2500:], "```"]
    return "\n".join(lines) + "\n"
