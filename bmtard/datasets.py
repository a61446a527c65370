"""Getting CIFAR-10/100 onto disk as one compact file per split, plus a manifest.

The raw files come from torchvision (download with its MD5 checks) or from an existing local folder
in the original python-pickle layout. Each split is written as ``<split>.npz`` holding ``images``
(uint8, N x 32 x 32 x 3, HWC as in the CIFAR files) and ``labels`` (int64, N).
"""

from __future__ import annotations

import os
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torchvision import datasets as tvd

from bmtard.config import DataConfig
from bmtard.errors import DataError
from bmtard.io import sha256_file, write_atomic

#: dataset name -> (torchvision class, folder inside the root, number of classes)
DATASETS: dict[str, tuple[type, str, int]] = {
    "cifar10": (tvd.CIFAR10, "cifar-10-batches-py", 10),
    "cifar100": (tvd.CIFAR100, "cifar-100-python", 100),
}


@dataclass(frozen=True)
class Split:
    """One split in memory: images uint8 (N, H, W, C), labels int64 (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def n_first(self, limit: int | None) -> int:
        """How many images "the first ``limit``" are here (all of them for None)."""
        return len(self) if limit is None else min(limit, len(self))


def save_split(path: str | Path, split: Split) -> None:
    """Write a split as an uncompressed .npz, atomically."""

    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: numpy appends no suffix
            np.savez(f, images=split.images, labels=split.labels)

    write_atomic(path, writer)


def load_split(path: str | Path) -> Split:
    """Read a split written by ``save_split``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found; run the download stage first")
    with np.load(path, allow_pickle=False) as z:
        images, labels = z["images"], z["labels"].astype(np.int64)
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
        raise DataError(f"{path}: not a split file (uint8 images N x H x W x C and N labels)")
    return Split(images, labels)


def balanced_indices(
    labels: np.ndarray, limit: int | None, num_classes: int, what: str
) -> np.ndarray:
    """Indices of the first ``limit`` images, balanced per class, in their original order.

    Each class gets limit // K images; the first limit % K classes get one more. ``what`` names the
    parameter in error messages.
    """
    if limit is None:
        return np.arange(len(labels))
    base, extra = divmod(limit, num_classes)
    keep = []
    for c in range(num_classes):
        want = base + (1 if c < extra else 0)
        have = np.flatnonzero(labels == c)
        if len(have) < want:
            raise DataError(
                f"{what} = {limit}: class {c} has only {len(have)} images here, "
                f"so at most {len(have) * num_classes} can be balanced"
            )
        keep.append(have[:want])
    return np.sort(np.concatenate(keep))


def _unverified(cls: type) -> type:
    """torchvision's loader for ``cls`` minus its MD5 checks (files must still exist)."""

    class Unverified(cls):  # type: ignore[misc, valid-type]
        def _check_integrity(self) -> bool:
            folder = os.path.join(self.root, self.base_folder)
            names = [f for f, _ in self.train_list + self.test_list] + [self.meta["filename"]]
            return all(os.path.isfile(os.path.join(folder, f)) for f in names)

        def _load_meta(self) -> None:
            import pickle

            with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    Unverified.__name__ = f"Unverified{cls.__name__}"
    return Unverified


def locate_local_root(local_root: str, folder: str) -> Path:
    """The folder that holds ``folder`` (e.g. cifar-10-batches-py), given it or its parent."""
    p = Path(local_root).expanduser()
    if p.name == folder and p.is_dir():
        return p.parent
    if (p / folder).is_dir():
        return p
    raise DataError(
        f"data.local_root = {local_root!r}: no {folder!r} folder there "
        f"(point it at the {folder} folder itself or at the folder that holds it)"
    )


def _open(cfg: DataConfig, train: bool) -> tuple[Any, Path]:
    """Open one split with torchvision; return the dataset object and the root folder used."""
    cls, folder, _ = DATASETS[cfg.dataset]
    if cfg.local_root is not None:
        root = locate_local_root(cfg.local_root, folder)
        loader = cls if cfg.verify_md5 else _unverified(cls)
        try:
            return loader(str(root), train=train, download=False), root
        except RuntimeError as e:
            raise DataError(
                f"data.local_root = {cfg.local_root!r}: {e.args[0].split('.')[0]} under the "
                f"official MD5 check; for a subset (such as cifar10-sample) set "
                f"data.verify_md5: false"
            ) from None
        except (OSError, KeyError, ValueError, EOFError) as e:
            raise DataError(f"data.local_root = {cfg.local_root!r}: cannot read ({e})") from None
    if not cfg.verify_md5:
        raise DataError(
            "data.verify_md5 = false needs data.local_root: downloads are always MD5-checked"
        )
    root = Path(cfg.download_root)
    try:
        return cls(str(root), train=train, download=True), root
    except RuntimeError as e:  # torchvision's MD5 check of the archive or of the batches
        raise DataError(
            f"{cfg.dataset} in {root} fails the official MD5 check ({e}); delete {root} and retry"
        ) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise DataError(
            f"cannot download {cfg.dataset} into {root} ({reason}). Without internet, set "
            f"data.local_root in params.yaml to a folder holding {folder} "
            f"(e.g. ../shared/data/cifar10-sample, with data.verify_md5: false for a subset)"
        ) from None


def prepare(cfg: DataConfig, out_dir: str | Path) -> dict[str, Any]:
    """Write ``train.npz`` and ``test.npz`` into ``out_dir``; return the manifest (unwritten)."""
    out_dir = Path(out_dir)
    _, folder, num_classes = DATASETS[cfg.dataset]
    manifest: dict[str, Any] = {
        "dataset": cfg.dataset,
        "num_classes": num_classes,
        "source": "local" if cfg.local_root is not None else "download",
        "verify_md5": cfg.verify_md5,
        "splits": {},
    }
    for split_name, train, limit in (
        ("train", True, cfg.train_limit),
        ("test", False, cfg.test_limit),
    ):
        ds, root = _open(cfg, train)
        labels = np.asarray(ds.targets, dtype=np.int64)
        key = f"data.{split_name}_limit"
        if limit is not None and limit > len(labels):
            raise DataError(f"{key} = {limit}: only {len(labels)} {split_name} images here")
        idx = balanced_indices(labels, limit, num_classes, key)
        split = Split(np.ascontiguousarray(ds.data[idx]), labels[idx])
        path = out_dir / f"{split_name}.npz"
        save_split(path, split)
        files = [f for f, _ in (ds.train_list if train else ds.test_list)]
        manifest["classes"] = list(ds.classes)
        manifest["root"] = str(root.resolve() / folder)
        manifest["splits"][split_name] = {
            "file": path.name,
            "count": len(split),
            "per_class": np.bincount(split.labels, minlength=num_classes).tolist(),
            "indices": "all" if limit is None else "first per class, original order",
            "sha256": sha256_file(path),
            "read": {f: sha256_file(root / folder / f) for f in files + [ds.meta["filename"]]},
        }
    return manifest
