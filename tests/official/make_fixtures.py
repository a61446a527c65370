"""Write the fixtures of tests/test_published_teachers.py: for each architecture of a published
teacher (bmtard/config/teacher_table.py), the official definition's state_dict keys and shapes,
and its logits on a fixed input with seeded weights (tests/official/seeded.py), in float64.

The official definitions are run, never copied into this repository:
- RobustBench's WideResNet and DMWideResNet (robustbench 1.1.1 from PyPI, MIT licence:
  robustbench/model_zoo/architectures/wide_resnet.py and dm_wide_resnet.py, loaded by path so
  that the package's __init__, which needs the git AutoAttack, never runs);
- the reference AutoAttack's example ResNet-18 (pyautoattack 0.2.0, a dependency of this
  project: pyautoattack/examples/resnet.py);
- the ResNet-56 of MTARD's code (zhaoshiji123/MTARD, cifar10_nat_teacher_models/resnet.py, from
  chenyaofo/pytorch-cifar-models, BSD-3-Clause), a copy of which the caller names.

Usage (once, in any environment with torch; the fixtures are committed):
  pip install --no-deps --target /tmp/rb robustbench==1.1.1
  git -C <a clone of zhaoshiji123/MTARD> show 6480a1b:cifar10_nat_teacher_models/resnet.py \
      > /tmp/mtard_resnet.py
  python tests/official/make_fixtures.py --robustbench /tmp/rb/robustbench \
      --mtard-resnet /tmp/mtard_resnet.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from seeded import N_IMAGES, SEED, fixed_input, key_list, seeded_state  # noqa: E402

MTARD_COMMIT = "6480a1b40d6195e437a876639ea37b7b40c46a58"


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # MTARD's file looks itself up there
    spec.loader.exec_module(module)
    return module


def cases(robustbench: Path, mtard_resnet: Path) -> list[dict]:
    """Each fixture: our arch, classes, the official constructors (one or two activations)."""
    arch = robustbench / "model_zoo" / "architectures"
    wrn = _module("rb_wide_resnet", arch / "wide_resnet.py")
    dm = _module("rb_dm_wide_resnet", arch / "dm_wide_resnet.py")
    aa = importlib.util.find_spec("pyautoattack").submodule_search_locations[0]
    aa_resnet = _module("aa_resnet", Path(aa) / "examples" / "resnet.py")
    mtard = _module("mtard_resnet", mtard_resnet)
    rb = f"robustbench 1.1.1 {arch.relative_to(robustbench.parent)}"
    c10, c100 = (dm.CIFAR10_MEAN, dm.CIFAR10_STD), (dm.CIFAR100_MEAN, dm.CIFAR100_STD)

    def dmw(classes, depth, width, stats):
        return {
            "SiLU": lambda: dm.DMWideResNet(classes, depth, width, nn.SiLU, *stats),
            "Swish": lambda: dm.DMWideResNet(classes, depth, width, dm.Swish, *stats),
        }

    return [
        {"arch": "wrn34_10", "classes": 10, "official": f"{rb}/wide_resnet.py WideResNet("
         "depth=34, widen_factor=10, sub_block1=True)",
         "build": {"": lambda: wrn.WideResNet(34, 10, 10, sub_block1=True)}},
        {"arch": "wrn34_10", "classes": 100, "official": f"{rb}/wide_resnet.py WideResNet("
         "depth=34, widen_factor=10, num_classes=100, sub_block1=True)",
         "build": {"": lambda: wrn.WideResNet(34, 100, 10, sub_block1=True)}},
        {"arch": "wrn34_10_nosub", "classes": 10, "official": f"{rb}/wide_resnet.py WideResNet("
         "depth=34, widen_factor=10, sub_block1=False)",
         "build": {"": lambda: wrn.WideResNet(34, 10, 10, sub_block1=False)}},
        {"arch": "wrn34_20_nosub", "classes": 10, "official": f"{rb}/wide_resnet.py WideResNet("
         "depth=34, widen_factor=20, sub_block1=False)",
         "build": {"": lambda: wrn.WideResNet(34, 10, 20, sub_block1=False)}},
        {"arch": "dm_wrn28_10_cifar10", "classes": 10, "official": f"{rb}/dm_wide_resnet.py "
         "DMWideResNet(num_classes=10, depth=28, width=10, activation_fn=nn.SiLU | Swish, "
         "mean=CIFAR10_MEAN, std=CIFAR10_STD)", "build": dmw(10, 28, 10, c10)},
        {"arch": "dm_wrn28_10_cifar100", "classes": 100, "official": f"{rb}/dm_wide_resnet.py "
         "DMWideResNet(num_classes=100, depth=28, width=10, activation_fn=nn.SiLU | Swish, "
         "mean=CIFAR100_MEAN, std=CIFAR100_STD)", "build": dmw(100, 28, 10, c100)},
        {"arch": "dm_wrn70_16_cifar10", "classes": 10, "official": f"{rb}/dm_wide_resnet.py "
         "DMWideResNet(num_classes=10, depth=70, width=16, activation_fn=nn.SiLU | Swish, "
         "mean=CIFAR10_MEAN, std=CIFAR10_STD)", "build": dmw(10, 70, 16, c10)},
        {"arch": "wrn70_16", "classes": 100, "official": f"{rb}/dm_wide_resnet.py "
         "DMWideResNet(num_classes=100, depth=70, width=16, activation_fn=nn.SiLU | Swish, "
         "mean=CIFAR100_MEAN, std=CIFAR100_STD)", "build": dmw(100, 70, 16, c100)},
        {"arch": "resnet18", "classes": 10, "official": "pyautoattack 0.2.0 "
         "pyautoattack/examples/resnet.py ResNet18()", "build": {"": aa_resnet.ResNet18}},
        {"arch": "resnet56", "classes": 10, "official": f"zhaoshiji123/MTARD {MTARD_COMMIT[:7]} "
         "cifar10_nat_teacher_models/resnet.py cifar10_resnet56() (chenyaofo/pytorch-cifar-"
         "models' CifarResNet(BasicBlock, [9, 9, 9]))",
         "build": {"": lambda: mtard.CifarResNet(mtard.BasicBlock, [9, 9, 9], num_classes=10)}},
    ]  # fmt: skip


def fixture(case: dict) -> dict:
    x = fixed_input()
    out = {
        "arch": case["arch"],
        "num_classes": case["classes"],
        "official": case["official"],
        "how": (
            "tests/official/make_fixtures.py: the official definition built, its state_dict "
            "replaced by seeded_state(its keys) (tests/official/seeded.py, seed "
            f"{SEED}), eval mode, float64, logits of fixed_input() ({N_IMAGES} images of 32 x "
            f"32); torch {torch.__version__}, Python {platform.python_version()}"
        ),
        "logits": {},
    }
    for activation, build in case["build"].items():
        model = build().double().eval()
        keys = key_list(model.state_dict())
        out.setdefault("keys", keys)
        assert out["keys"] == keys, "two activations, two key lists"
        model.load_state_dict(seeded_state(keys), strict=True)
        with torch.no_grad():
            out["logits"][activation or "logits"] = model(x).tolist()
        del model
    return out


def to_json(data: dict) -> str:
    """The fixture as JSON, one line per top-level field and per state_dict key (readable
    diffs); floats as Python writes them (they read back exactly)."""
    lines = []
    for key, value in data.items():
        if key == "keys":
            inner = ",\n".join(json.dumps(k) for k in value)
            lines.append(f'"keys": [\n{inner}\n]')
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--robustbench", type=Path, required=True, help="the robustbench package folder")
    p.add_argument("--mtard-resnet", type=Path, required=True, help="MTARD's resnet.py")
    p.add_argument("--only", help="one arch")
    args = p.parse_args()
    torch.set_num_threads(2)
    for case in cases(args.robustbench, args.mtard_resnet):
        if args.only and case["arch"] != args.only:
            continue
        name = f"{case['arch']}-{case['classes']}.json"
        (HERE / name).write_text(to_json(fixture(case)))
        print("wrote", name, flush=True)


if __name__ == "__main__":
    main()
