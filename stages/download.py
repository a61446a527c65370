"""Stage download: CIFAR-10/100 or Tiny-ImageNet train/test splits as compact .npz files plus a
manifest (params: data)."""

from pathlib import Path

from bmtard.core.io import write_json
from bmtard.data.datasets import prepare
from bmtard.runtime.cli import run_stage


def add_arguments(p):
    p.add_argument("--out", required=True, help="folder for train.npz, test.npz, manifest.json")


def main(params, args, stop=None):
    manifest = prepare(params.data, args.out)
    write_json(Path(args.out) / "manifest.json", manifest)


if __name__ == "__main__":
    run_stage(__doc__, add_arguments, main, name="download", graceful=False)
