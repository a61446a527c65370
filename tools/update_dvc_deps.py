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
# One interpreter imports the heavy third-party libraries once, then forks a child per stage
# module: each child imports only that stage's code and lists the bmtard/stages files it loaded.
PROBE = """
import importlib, os, sys
CODE = ("bmtard", "stages")
for heavy in ("torch", "torchvision", "numpy", "yaml", "tqdm", "tensorboard"):
    try:
        importlib.import_module(heavy)
    except ImportError:
        pass
for module in sys.argv[1:]:
    read, write = os.pipe()
    if os.fork() == 0:
        os.close(read)
        importlib.import_module(module)
        ours = [m for m in list(sys.modules.values()) if m.__name__.split(".")[0] in CODE]
        files = [os.path.relpath(m.__file__) for m in ours if getattr(m, "__file__", None)]
        os.write(write, " ".join(files).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        print(module + ":" + f.read())
    if os.wait()[1] != 0:
        sys.exit(f"importing {module} failed")
"""


def imported_code(modules: list[str]) -> dict[str, list[str]]:
    """For each module, the bmtard/stages files importing it loads, sorted (its script first)."""
    cmd = [sys.executable, "-c", PROBE, *modules]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    found = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    result = {}
    for module in modules:
        script = module.replace(".", "/") + ".py"
        result[module] = [script] + sorted(set(found[module].split()) - {script})
    return result


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
    code = imported_code(sorted({stage_module(s["cmd"]) for s in doc["stages"].values()}))
    for name, stage in doc["stages"].items():
        deps = stage["deps"]
        want = code[stage_module(stage["cmd"])]
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
