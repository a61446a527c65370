"""Write each dvc.yaml stage's code deps: exactly the bmtard/ and stages/ files its command
imports (found by importing the stage's module in a fresh interpreter).

    python tools/update_dvc_deps.py           # rewrite dvc.yaml (comments and anchors kept)
    python tools/update_dvc_deps.py --check   # exit 1 and name the stages whose deps are stale

Data deps (the files a stage reads) are left as they are. tests/test_pipeline_defs.py runs the
check, so a new module cannot be forgotten.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from ruamel.yaml import YAML  # comes with DVC; keeps comments, anchors and layout

ROOT = Path(__file__).resolve().parents[1]
CODE = re.compile(r"^(bmtard|stages)/.*\.py$")
PROBE = (
    "import importlib, os, sys\n"
    "importlib.import_module(sys.argv[1])\n"
    "for m in list(sys.modules.values()):\n"
    "    f = getattr(m, '__file__', None)\n"
    "    if f and m.__name__.split('.')[0] in ('bmtard', 'stages'):\n"
    "        print(os.path.relpath(f))\n"
)


def imported_code(module: str) -> list[str]:
    """The bmtard/stages files that importing ``module`` loads, sorted (stage script first)."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, module], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    script = module.replace(".", "/") + ".py"
    return [script] + sorted(set(out) - {script})


def stage_module(cmd: str) -> str:
    return re.search(r"python -m (\S+)", cmd).group(1)


def main(argv: list[str]) -> int:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 100
    yaml.indent(mapping=2, sequence=4, offset=2)  # the layout dvc.yaml is written in
    path = ROOT / "dvc.yaml"
    doc = yaml.load(path.read_text())
    stale = []
    for name, stage in doc["stages"].items():
        deps = stage["deps"]
        want = imported_code(stage_module(stage["cmd"]))
        have = [d for d in deps if CODE.match(str(d))]
        if have == want:
            continue
        stale.append(name)
        data = [d for d in deps if not CODE.match(str(d))]
        deps[:] = want + data  # in place: a shared anchor (&teacher_deps) stays shared
    if "--check" in argv:
        if stale:
            print(f"dvc.yaml: code deps out of date for {', '.join(stale)}; run {__file__}")
            return 1
        return 0
    if stale:
        with open(path, "w") as f:
            yaml.dump(doc, f)
        print(f"dvc.yaml: updated the code deps of {', '.join(stale)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
