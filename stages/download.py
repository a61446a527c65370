"""Stage download: CIFAR-10/100 or Tiny-ImageNet train/test splits as compact .npz files plus a
manifest (params: data; run.state_dir keeps the last good data)."""

from bmtard.data.download import run_download
from bmtard.runtime.cli import run_stage


def add_arguments(p):
    p.add_argument("--out", required=True, help="folder for train.npz, test.npz, manifest.json")


def main(params, args, stop=None):
    run_download(params.data, params.run, args.out)


if __name__ == "__main__":
    run_stage(__doc__, add_arguments, main, name="download", graceful=False)
