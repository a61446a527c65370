"""Getting CIFAR-10/100 or Tiny-ImageNet onto disk as one compact file per split, plus a manifest.

The raw files come from an official archive (downloaded with torchvision, its MD5 checked) or from
an existing local folder in the original layout. CIFAR: the python-pickle batches, every file
MD5-checked too, read by ``bmtard.data.cifar_files`` (which lets no file run code). Tiny-ImageNet:
the ``tiny-imagenet-200`` folder of the official zip, read by ``bmtard.data.tiny_imagenet_files``
(its labelled ``val`` split is the test split); there are no per-file MD5s, so ``verify_md5`` checks
that the folder is complete (500 train and 50 val images per class) and a download is unpacked again
from the MD5-checked zip at every run. Each split is written as ``<split>.npz`` holding ``images``
(uint8, N x S x S x 3, HWC; S = 32 for CIFAR, 64 for Tiny-ImageNet) and ``labels`` (int64, N)
(``bmtard.data.splits``, which the later stages read them with; they do not import torchvision). The
number of classes and S come from ``bmtard.config.dataset_table``.
"""

from __future__ import annotations

import functools
import http.client
import tarfile
import urllib.error
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torchvision import datasets as tvd
from torchvision.datasets.utils import check_integrity, download_and_extract_archive

from bmtard.config.dataset_table import DatasetSpec, dataset
from bmtard.config.schema import DataConfig, to_dict
from bmtard.core.errors import DataError
from bmtard.core.io import sha256_file
from bmtard.core.paths import from_project
from bmtard.data import tiny_imagenet_files as tif
from bmtard.data.cifar_files import read_batches, read_class_names
from bmtard.data.splits import Split, save_split


@dataclass(frozen=True)
class Archive:
    """An official archive: where it is downloaded from, its file name and MD5."""

    url: str
    filename: str
    md5: str


# The official Tiny-ImageNet zip from the CS231n course site. Stanford publishes no checksum; this
# MD5 (and URL) is the one recorded by avalanche (ContinualAI/avalanche,
# avalanche/benchmarks/datasets/tiny_imagenet/tiny_imagenet.py) and by several other public
# Tiny-ImageNet loaders, all the same value.
TINY_IMAGENET_ZIP = Archive(
    "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
    "tiny-imagenet-200.zip",
    "90528d7ca1a48142e341f4ef8d21d0de",
)


@dataclass(frozen=True)
class Raw:
    """A dataset's raw files as read: ``folder`` (the dataset folder, e.g. .../tiny-imagenet-200),
    the class names in index order, the splits "train", "val" (held out of the official training
    split; empty without ``data.val_limit``) and "test" cut to their limits, and per split the
    SHA-256 of what was read (name -> hex digest)."""

    folder: Path
    classes: list[str]
    splits: dict[str, Split]
    read: dict[str, dict[str, str]]


@dataclass(frozen=True)
class CifarLayout:
    """One CIFAR dataset's files. ``tv`` is the torchvision class whose table (``base_folder``,
    ``train_list``, ``test_list``, ``meta``, ``url``, ``filename``, ``tgz_md5``) names the files and
    their official MD5s; it is read when used, never its loader (which unpickles without limits)."""

    tv: Any
    label_key: str

    @property
    def folder(self) -> str:
        return str(self.tv.base_folder)

    @property
    def archive(self) -> Archive:
        return Archive(self.tv.url, self.tv.filename, self.tv.tgz_md5)

    def files(self, train: bool) -> list[str]:
        """The batch files of one split, in their order."""
        return [name for name, _ in (self.tv.train_list if train else self.tv.test_list)]

    def md5s(self) -> list[tuple[str, str]]:
        """(file name, official MD5) of every file read: all batches and the meta file."""
        pairs = [(n, m) for n, m in self.tv.train_list + self.tv.test_list]
        return pairs + [(self.tv.meta["filename"], self.tv.meta["md5"])]


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


def held_out_indices(
    labels: np.ndarray, limit: int | None, num_classes: int, what: str
) -> np.ndarray:
    """Indices of the **last** ``limit`` images, balanced per class (as ``balanced_indices``
    counts them), in their original order; none for ``limit`` None."""
    if limit is None:
        return np.arange(0)
    reversed_labels = labels[::-1]
    idx = balanced_indices(reversed_labels, limit, num_classes, what)
    return np.sort(len(labels) - 1 - idx)


def _kept(
    cfg: DataConfig, split_name: str, labels: np.ndarray, num_classes: int
) -> dict[str, np.ndarray]:
    """The indices kept of one official split: {"test": ...} for the test split; for the
    training split {"val": the last ``data.val_limit`` images of each class (balanced), "train":
    the first ``data.train_limit`` of the others (balanced)}, disjoint, each in original order."""
    if split_name == "test":
        limit = cfg.test_limit
        if limit is not None and limit > len(labels):
            raise DataError(f"data.test_limit = {limit}: only {len(labels)} test images here")
        return {"test": balanced_indices(labels, limit, num_classes, "data.test_limit")}
    val = held_out_indices(labels, cfg.val_limit, num_classes, "data.val_limit")
    rest = np.setdiff1d(np.arange(len(labels)), val)  # sorted, original order
    limit = cfg.train_limit
    if limit is not None and limit > len(rest):
        held = f" after the {len(val)} validation images" if len(val) else ""
        raise DataError(f"data.train_limit = {limit}: only {len(rest)} train images here{held}")
    train = rest[balanced_indices(labels[rest], limit, num_classes, "data.train_limit")]
    return {"train": train, "val": val}


class DownloadFailed(DataError):
    """The archive could not be fetched (offline, a refused connection, a broken transfer)."""


def _download(cfg: DataConfig, archive: Archive, root: Path, holds: str) -> None:
    """Download ``archive`` into ``root`` (unless there with its MD5) and unpack it there.

    ``holds`` ends the offline message: what a local folder for ``data.local_root`` must hold.
    """
    try:
        download_and_extract_archive(
            archive.url, str(root), filename=archive.filename, md5=archive.md5
        )
    except RuntimeError as e:  # torchvision's MD5 check of the archive
        raise DataError(
            f"{cfg.dataset} in {root} fails the official MD5 check ({e}); delete {root} and retry"
        ) from None
    except (
        urllib.error.URLError,
        OSError,
        http.client.HTTPException,
        tarfile.TarError,
        zipfile.BadZipFile,
    ) as e:
        reason = getattr(e, "reason", None) or e
        raise DownloadFailed(
            f"cannot download {cfg.dataset} into {root} ({reason}). Without internet, set "
            f"data.local_root in params.yaml to a folder holding {holds}"
        ) from None


def _require_md5_for_download(cfg: DataConfig) -> None:
    if not cfg.verify_md5:
        raise DataError(
            "data.verify_md5 = false needs data.local_root: downloads are always MD5-checked"
        )


# --- CIFAR-10/100: pickled batches, each file with its official MD5


def _check_local(cfg: DataConfig, layout: CifarLayout, folder: Path) -> None:
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


def _all_md5s_match(layout: CifarLayout, folder: Path) -> bool:
    return all(check_integrity(str(folder / name), md5) for name, md5 in layout.md5s())


def _cifar_root(cfg: DataConfig, layout: CifarLayout) -> Path:
    """The folder holding ``layout.folder``, its files present and checked as ``cfg`` asks."""
    if cfg.local_root is not None:
        root = locate_local_root(cfg.local_root, layout.folder)
        _check_local(cfg, layout, root / layout.folder)
        return root
    _require_md5_for_download(cfg)
    root = Path(cfg.download_root)
    if _all_md5s_match(layout, root / layout.folder):
        return root
    holds = f"{layout.folder} (e.g. data/cifar10-sample, with data.verify_md5: false for a subset)"
    _download(cfg, layout.archive, root, holds)
    if not _all_md5s_match(layout, root / layout.folder):
        raise DataError(
            f"{cfg.dataset} in {root} fails the official MD5 check (a file of the unpacked "
            f"archive); delete {root} and retry"
        )
    return root


def _read_cifar(cfg: DataConfig, spec: DatasetSpec, layout: CifarLayout) -> Raw:
    """Both splits from the batch files, cut to their limits; the SHA-256 of every file read."""
    folder = _cifar_root(cfg, layout) / layout.folder
    meta = layout.tv.meta
    classes = read_class_names(folder / meta["filename"], meta["key"], spec.num_classes)
    splits: dict[str, Split] = {}
    read: dict[str, dict[str, str]] = {}
    for official in ("train", "test"):
        names = layout.files(official == "train")
        images, labels = read_batches(folder, names, layout.label_key, spec.num_classes)
        shas = {f: sha256_file(folder / f) for f in names + [meta["filename"]]}
        for split_name, idx in _kept(cfg, official, labels, spec.num_classes).items():
            splits[split_name] = Split(np.ascontiguousarray(images[idx]), labels[idx])
            read[split_name] = shas
    return Raw(folder, classes, splits, read)


# --- Tiny-ImageNet: the tiny-imagenet-200 folder of the official zip (no per-file MD5s)

#: the manifest's name for the combined SHA-256 of a split's images (``tif.combined_sha256``)
TINY_IMAGENET_IMAGES = {
    "train": "train/*/images/*.JPEG",
    "val": "train/*/images/*.JPEG",  # held out of the official training split
    "test": "val/images/*.JPEG",
}


def _tiny_imagenet_folder(cfg: DataConfig) -> Path:
    """The ``tiny-imagenet-200`` folder: the local one, or the official zip downloaded (MD5-checked)
    and unpacked into ``download_root``."""
    if cfg.local_root is not None:
        return locate_local_root(cfg.local_root, tif.FOLDER) / tif.FOLDER
    _require_md5_for_download(cfg)
    root = Path(cfg.download_root)
    holds = (
        f"{tif.FOLDER} (unpacked from {TINY_IMAGENET_ZIP.filename}; with data.verify_md5: false "
        f"for a subset)"
    )
    _download(cfg, TINY_IMAGENET_ZIP, root, holds)
    return root / tif.FOLDER


def _check_complete(
    cfg: DataConfig, folder: Path, wnids: list[str], listings: dict[str, tif.Listing]
) -> None:
    """The official counts: ``tif.TRAIN_PER_CLASS`` train and ``tif.VAL_PER_CLASS`` val images of
    every class (what ``verify_md5`` checks here, as no per-file MD5s are published)."""
    if cfg.local_root is not None:
        advice = "for a subset set data.verify_md5: false"
    else:
        advice = f"delete {folder} and retry"
    for split_name, want in (("train", tif.TRAIN_PER_CLASS), ("test", tif.VAL_PER_CLASS)):
        counts = np.bincount(listings[split_name].labels, minlength=len(wnids))
        bad = np.flatnonzero(counts != want)
        if len(bad):
            wnid = wnids[bad[0]]
            where = f"train/{wnid}/images" if split_name == "train" else tif.VAL_ANNOTATIONS
            raise DataError(
                f"{folder / where}: {counts[bad[0]]} image(s) of class {wnid}, the official set "
                f"has {want} (data.verify_md5 checks that the folder is complete); {advice}"
            )


def _read_tiny_imagenet(cfg: DataConfig, spec: DatasetSpec) -> Raw:
    """Both splits (train/ and the labelled val/), files listed and cut to their limits first,
    then only the kept images decoded; the SHA-256s of the text files read and, per split, one
    combined SHA-256 of its image files (``tif.combined_sha256``)."""
    folder = _tiny_imagenet_folder(cfg)
    wnids = tif.read_wnids(folder, spec.num_classes)
    classes = tif.read_class_names(folder, wnids)
    listings = {"train": tif.list_train(folder, wnids), "test": tif.list_val(folder, wnids)}
    if cfg.verify_md5:
        _check_complete(cfg, folder, wnids, listings)
    texts = {"train": [tif.WNIDS, tif.WORDS], "test": [tif.WNIDS, tif.WORDS, tif.VAL_ANNOTATIONS]}
    splits: dict[str, Split] = {}
    read: dict[str, dict[str, str]] = {}
    for official, listing in listings.items():
        text_shas = {f: sha256_file(folder / f) for f in texts[official]}
        for split_name, idx in _kept(cfg, official, listing.labels, spec.num_classes).items():
            paths = [listing.paths[i] for i in idx]
            images, shas = tif.read_images(folder, paths, spec.image_size)
            splits[split_name] = Split(images, listing.labels[idx])
            read[split_name] = dict(text_shas)
            read[split_name][TINY_IMAGENET_IMAGES[split_name]] = tif.combined_sha256(paths, shas)
    return Raw(folder, classes, splits, read)


#: data.dataset -> its reader: the raw files found (local or downloaded), checked and read
READERS: dict[str, Callable[[DataConfig, DatasetSpec], Raw]] = {
    "cifar10": functools.partial(_read_cifar, layout=CifarLayout(tvd.CIFAR10, "labels")),
    "cifar100": functools.partial(_read_cifar, layout=CifarLayout(tvd.CIFAR100, "fine_labels")),
    "tiny_imagenet": _read_tiny_imagenet,
}


def prepare(cfg: DataConfig, out_dir: str | Path) -> dict[str, Any]:
    """Write ``train.npz``, ``val.npz`` (held out of the training split: ``data.val_limit``
    images, none without it) and ``test.npz`` into ``out_dir``; return the manifest (unwritten).

    Every split is read and checked before any file is written.
    """
    out_dir = Path(out_dir)
    spec = dataset(cfg.dataset)
    raw = READERS[cfg.dataset](cfg, spec)
    shape = (spec.image_size, spec.image_size, 3)
    for split_name, split in raw.splits.items():
        if split.images.shape[1:] != shape:
            raise DataError(
                f"{raw.folder}: {split_name} images of shape {split.images.shape[1:]}, not "
                f"{shape} as {cfg.dataset} should have"
            )
    manifest: dict[str, Any] = {
        "dataset": cfg.dataset,
        "num_classes": spec.num_classes,
        "image_size": spec.image_size,
        "source": "local" if cfg.local_root is not None else "download",
        "verify_md5": cfg.verify_md5,
        "splits": {},
        "classes": raw.classes,
        "root": str(raw.folder.parent.resolve() / raw.folder.name),
        "params": to_dict(cfg),  # the data parameters that made it (bmtard.data.download)
    }
    for split_name, split in raw.splits.items():
        path = out_dir / f"{split_name}.npz"
        save_split(path, split)
        manifest["splits"][split_name] = {
            "file": path.name,
            "count": len(split),
            "per_class": np.bincount(split.labels, minlength=spec.num_classes).tolist(),
            "indices": _indices_note(cfg, split_name),
            "sha256": sha256_file(path),
            "read": raw.read[split_name],
        }
    return manifest


def _indices_note(cfg: DataConfig, split_name: str) -> str:
    """How a split's images were chosen from the official split (for the manifest)."""
    if split_name == "val":
        if cfg.val_limit is None:
            return "none"
        return "last per class of the training split, original order, never trained on"
    limit = cfg.test_limit if split_name == "test" else cfg.train_limit
    held = " after the validation images" if split_name == "train" and cfg.val_limit else ""
    if not held:
        return "all" if limit is None else "first per class, original order"
    return f"{'all' if limit is None else 'first per class'}{held}, original order"
