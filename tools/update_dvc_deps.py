"""Write each dvc.yaml stage's code deps: the code folders its command can import (each bmtard
subpackage as a whole, the package's and the stage's own files), from the static imports of its
script (bmtard.experiments.workflow.code_closure; for the distillation every method's module,
which it imports by name).

    python tools/update_dvc_deps.py           # rewrite dvc.yaml (comments and anchors kept)
    python tools/update_dvc_deps.py --check   # exit 1 and name the stages whose deps are stale

Data deps (the files a stage reads) are left as they are. tests/test_pipeline_defs.py runs the
check, so a new folder cannot be forgotten.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ruamel.yaml import YAML  # comes with DVC; keeps comments, anchors and layout

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bmtard.config import method_table  # noqa: E402
from bmtard.experiments.workflow import (  # noqa: E402
    code_closure,
    code_folders,
    is_code,
    stage_module,
)


def wanted(stage: dict) -> list[str]:
    """The code deps of a dvc.yaml stage, in dvc.yaml's order: its script first."""
    module = stage_module(stage["cmd"])
    modules = [module]
    if module == "stages.distill":
        modules += [f"bmtard.methods.{m.module}" for m in method_table.METHODS]
    script = module.replace(".", "/") + ".py"
    folders = code_folders(code_closure(ROOT, modules))
    return [script] + [f for f in folders if f != script]


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
        want = wanted(stage)
        have = [d for d in deps if is_code(str(d))]
        if have == want:
            continue
        stale.append(name)
        data = [d for d in deps if not is_code(str(d))]
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
