"""The split files the download stage writes and every later stage reads: ``<split>.npz``
holding ``images`` (uint8, N x H x W x C) and ``labels`` (int64, N), and ``manifest.json`` with
their SHA-256s. Reading checks for damage (SHA-256 or CRC-32) and says how to recreate a file.
numpy only: the training and evaluation stages import this, not torchvision.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bmtard.core.errors import DataError
from bmtard.core.io import sha256_file, write_atomic

#: what to do about a damaged or missing output of the download stage
RERUN_DOWNLOAD = (
    "rerun the download stage (dvc repro -f download, or snakemake --cores 1 -f download)"
)


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


def load_split(path: str | Path, sha256: str | None = None) -> Split:
    """Read a split written by ``save_split``: images uint8 (N, H, W, C), labels int64 (N,).

    With ``sha256`` (from data/manifest.json) the file must have exactly that SHA-256; without it,
    the zip's CRC-32s are checked. Missing, damaged or changed files are a one-line DataError.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found; run the download stage first")
    if sha256 is not None and sha256_file(path) != sha256:
        raise DataError(
            f"{path}: damaged or changed since the download stage wrote it (its SHA-256 differs "
            f"from the one in manifest.json); {RERUN_DOWNLOAD}"
        )
    images, labels = _read_npz(path, check_crc=sha256 is None)
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
        raise DataError(
            f"{path}: not a split file (uint8 images N x H x W x C and N labels); {RERUN_DOWNLOAD}"
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: labels are not N integers; {RERUN_DOWNLOAD}")
    return Split(images, labels.astype(np.int64))


def _read_npz(path: Path, check_crc: bool) -> tuple[np.ndarray, np.ndarray]:
    """The ``images`` and ``labels`` arrays of an .npz; any damage is a one-line DataError.

    numpy reads a member only as far as its header's shape says, and zipfile checks a member's
    CRC-32 only when it is read to the end, so a changed shape in a header goes unnoticed by
    np.load; ``testzip`` reads every member whole and checks its CRC-32.
    """
    try:
        if check_crc:
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
            if bad is not None:
                raise DataError(f"{path}: damaged ({bad} fails its CRC-32 check); {RERUN_DOWNLOAD}")
        with np.load(path, allow_pickle=False) as z:
            return z["images"], z["labels"]
    except DataError:
        raise
    except Exception as e:  # seen: BadZipFile, EOFError, KeyError, NotImplementedError, OSError,
        # RuntimeError (an "encrypted" flag), tokenize.TokenError, ValueError (a header or a size)
        detail = " ".join(f"{type(e).__name__}: {e}".split())
        raise DataError(f"{path}: damaged, cannot be read ({detail}); {RERUN_DOWNLOAD}") from None


def load_manifest(data_dir: str | Path) -> dict[str, Any]:
    """``data_dir/manifest.json`` as the download stage wrote it, with the fields later stages use
    checked: ``num_classes`` (int) and ``splits.train`` / ``splits.test``, each with ``sha256``."""
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path}: not found; run the download stage first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e}); {RERUN_DOWNLOAD}") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError: ValueErrors
        detail = " ".join(str(e).split())
        raise DataError(f"{path}: damaged, not valid JSON ({detail}); {RERUN_DOWNLOAD}") from None
    problem = _manifest_problem(manifest)
    if problem is not None:
        raise DataError(f"{path}: damaged or incomplete ({problem}); {RERUN_DOWNLOAD}")
    return manifest


def _manifest_problem(manifest: Any) -> str | None:
    """What is missing or wrong in a parsed manifest, or None."""
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    n = manifest.get("num_classes")
    if type(n) is not int or n < 1:
        return "no integer num_classes"
    splits = manifest.get("splits")
    if not isinstance(splits, dict):
        return "no splits"
    for name in ("train", "test"):
        entry = splits.get(name)
        if not isinstance(entry, dict):
            return f"no splits.{name}"
        sha = entry.get("sha256")
        if not isinstance(sha, str) or re.fullmatch(r"[0-9a-f]{64}", sha) is None:
            return f"no SHA-256 in splits.{name}.sha256"
    return None
