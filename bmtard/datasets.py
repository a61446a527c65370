"""Getting CIFAR-10/100 onto disk as one compact file per split, plus a manifest.

The raw files come from torchvision's download (the archive and every file MD5-checked) or from an
existing local folder in the original python-pickle layout; either way they are read by
``bmtard.cifar_files``, which lets no file run code. Each split is written as ``<split>.npz``
holding ``images`` (uint8, N x 32 x 32 x 3, HWC as in the CIFAR files) and ``labels`` (int64, N)
(``bmtard.splits``, which the later stages read them with; they do not import torchvision).
"""

from __future__ import annotations

import http.client
import tarfile
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torchvision import datasets as tvd
from torchvision.datasets.utils import check_integrity, download_and_extract_archive

from bmtard.cifar_files import read_batches, read_class_names
from bmtard.config import DataConfig
from bmtard.errors import DataError
from bmtard.io import sha256_file
from bmtard.splits import Split, save_split


@dataclass(frozen=True)
class Layout:
    """One dataset's files. ``tv`` is the torchvision class whose table (``base_folder``,
    ``train_list``, ``test_list``, ``meta``, ``url``, ``filename``, ``tgz_md5``) names the files and
    their official MD5s; it is read when used, never its loader (which unpickles without limits)."""

    tv: Any
    label_key: str
    num_classes: int

    @property
    def folder(self) -> str:
        return str(self.tv.base_folder)

    def files(self, train: bool) -> list[str]:
        """The batch files of one split, in their order."""
        return [name for name, _ in (self.tv.train_list if train else self.tv.test_list)]

    def md5s(self) -> list[tuple[str, str]]:
        """(file name, official MD5) of every file read: all batches and the meta file."""
        pairs = [(n, m) for n, m in self.tv.train_list + self.tv.test_list]
        return pairs + [(self.tv.meta["filename"], self.tv.meta["md5"])]


DATASETS: dict[str, Layout] = {
    "cifar10": Layout(tvd.CIFAR10, "labels", 10),
    "cifar100": Layout(tvd.CIFAR100, "fine_labels", 100),
}


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


#: where DVC runs a queued or temporary experiment: a copy of the project at <project>/DVC_TEMP/<id>
DVC_TEMP = (".dvc", "tmp", "exps")


def from_project(path: Path, cwd: Path | None = None) -> Path:
    """A relative path as the user wrote it, from the project folder, also inside a DVC queue's
    temporary copy (which holds only what git tracks, so ``../shared/...`` would point beside
    the copy instead of beside the project)."""
    if path.is_absolute():
        return path
    parts = (cwd or Path.cwd()).resolve().parts
    for i in range(len(parts) - len(DVC_TEMP)):
        if parts[i : i + len(DVC_TEMP)] == DVC_TEMP:
            return Path(*parts[:i]) / path
    return path


def locate_local_root(local_root: str, folder: str) -> Path:
    """The folder that holds ``folder`` (e.g. cifar-10-batches-py), given it or its parent
    (relative to the project folder, see ``from_project``)."""
    p = from_project(Path(local_root).expanduser())
    if p.name == folder and p.is_dir():
        return p.parent
    if (p / folder).is_dir():
        return p
    raise DataError(
        f"data.local_root = {local_root!r}: no {folder!r} folder there "
        f"(point it at the {folder} folder itself or at the folder that holds it)"
    )


def _check_local(cfg: DataConfig, layout: Layout, folder: Path) -> None:
    """Every file is there and, with ``verify_md5``, has its official MD5."""
    for name, md5 in layout.md5s():
        path = folder / name
        if not path.is_file():
            raise DataError(
                f"data.local_root = {cfg.local_root!r}: {path} not found "
                f"(a CIFAR folder holds {', '.join(n for n, _ in layout.md5s())})"
            )
        if cfg.verify_md5 and not check_integrity(str(path), md5):
            raise DataError(
                f"data.local_root = {cfg.local_root!r}: {name} fails the official MD5 check; "
                f"for a subset (such as cifar10-sample) set data.verify_md5: false"
            )


def _all_md5s_match(layout: Layout, folder: Path) -> bool:
    return all(check_integrity(str(folder / name), md5) for name, md5 in layout.md5s())


def _download(cfg: DataConfig, layout: Layout, root: Path) -> None:
    """Download and unpack the archive into ``root`` unless every file there has its MD5."""
    if _all_md5s_match(layout, root / layout.folder):
        return
    tv = layout.tv
    try:
        download_and_extract_archive(tv.url, str(root), filename=tv.filename, md5=tv.tgz_md5)
    except RuntimeError as e:  # torchvision's MD5 check of the archive
        raise DataError(
            f"{cfg.dataset} in {root} fails the official MD5 check ({e}); delete {root} and retry"
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, tarfile.TarError) as e:
        reason = getattr(e, "reason", None) or e
        raise DataError(
            f"cannot download {cfg.dataset} into {root} ({reason}). Without internet, set "
            f"data.local_root in params.yaml to a folder holding {layout.folder} "
            f"(e.g. ../shared/data/cifar10-sample, with data.verify_md5: false for a subset)"
        ) from None
    if not _all_md5s_match(layout, root / layout.folder):
        raise DataError(
            f"{cfg.dataset} in {root} fails the official MD5 check (a file of the unpacked "
            f"archive); delete {root} and retry"
        )


def _raw_root(cfg: DataConfig, layout: Layout) -> Path:
    """The folder holding ``layout.folder``, its files present and checked as ``cfg`` asks."""
    if cfg.local_root is not None:
        root = locate_local_root(cfg.local_root, layout.folder)
        _check_local(cfg, layout, root / layout.folder)
        return root
    if not cfg.verify_md5:
        raise DataError(
            "data.verify_md5 = false needs data.local_root: downloads are always MD5-checked"
        )
    root = Path(cfg.download_root)
    _download(cfg, layout, root)
    return root


def _select(cfg: DataConfig, layout: Layout, folder: Path, split_name: str) -> Split:
    """One split read from ``folder``, cut to its balanced limit."""
    train = split_name == "train"
    limit = cfg.train_limit if train else cfg.test_limit
    images, labels = read_batches(folder, layout.files(train), layout.label_key, layout.num_classes)
    key = f"data.{split_name}_limit"
    if limit is not None and limit > len(labels):
        raise DataError(f"{key} = {limit}: only {len(labels)} {split_name} images here")
    idx = balanced_indices(labels, limit, layout.num_classes, key)
    return Split(np.ascontiguousarray(images[idx]), labels[idx])


def prepare(cfg: DataConfig, out_dir: str | Path) -> dict[str, Any]:
    """Write ``train.npz`` and ``test.npz`` into ``out_dir``; return the manifest (unwritten).

    Both splits are read and checked before either file is written.
    """
    out_dir = Path(out_dir)
    layout = DATASETS[cfg.dataset]
    root = _raw_root(cfg, layout)
    folder = root / layout.folder
    meta_name = layout.tv.meta["filename"]
    classes = read_class_names(folder / meta_name, layout.tv.meta["key"], layout.num_classes)
    splits = {name: _select(cfg, layout, folder, name) for name in ("train", "test")}
    manifest: dict[str, Any] = {
        "dataset": cfg.dataset,
        "num_classes": layout.num_classes,
        "source": "local" if cfg.local_root is not None else "download",
        "verify_md5": cfg.verify_md5,
        "splits": {},
        "classes": classes,
        "root": str(root.resolve() / layout.folder),
    }
    for split_name, split in splits.items():
        path = out_dir / f"{split_name}.npz"
        save_split(path, split)
        limit = cfg.train_limit if split_name == "train" else cfg.test_limit
        read = layout.files(split_name == "train") + [meta_name]
        manifest["splits"][split_name] = {
            "file": path.name,
            "count": len(split),
            "per_class": np.bincount(split.labels, minlength=layout.num_classes).tolist(),
            "indices": "all" if limit is None else "first per class, original order",
            "sha256": sha256_file(path),
            "read": {f: sha256_file(folder / f) for f in read},
        }
    return manifest
