"""Reading the ``tiny-imagenet-200`` folder as unpacked from the official zip.

Layout read (relative to the folder; text files tab-separated, one entry a line):
``wnids.txt`` (the 200 wnids, ``n`` and 8 digits, in no particular order), ``words.txt``
(``<wnid>\\t<names>`` for these and many other wnids), ``train/<wnid>/images/*.JPEG`` (500 per
class in the official set) and ``val/val_annotations.txt`` (``<file>.JPEG\\t<wnid>\\t`` and 4 box
numbers) with ``val/images/<file>.JPEG`` (50 per class). The labelled ``val`` split serves as the
test split; ``test/`` (no labels) and the ``*_boxes.txt`` files are not read.

Class index: the wnid's position in sorted(wnids), as torchvision's ImageFolder gives on
``train/``. Order: train by (class index, file name), val by file name, file names in natural
order (digit runs compared as numbers: ``val_2`` before ``val_10``). Only the images kept are read;
each is checked to be a 64 x 64 JPEG (from its header) before its pixels are decoded, and
grayscale or CMYK images become RGB.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from bmtard.core.errors import DataError

FOLDER = "tiny-imagenet-200"
#: the official set: images per class in train/ and in val/
TRAIN_PER_CLASS = 500
VAL_PER_CLASS = 50

WNIDS = "wnids.txt"
WORDS = "words.txt"
VAL_ANNOTATIONS = "val/val_annotations.txt"

LAYOUT = (
    f"a {FOLDER} folder holds wnids.txt, words.txt, train/<wnid>/images/*.JPEG and "
    f"val/val_annotations.txt with val/images/*.JPEG"
)

_WNID = re.compile(r"n[0-9]{8}")
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.JPEG")
_DIGITS = re.compile(r"([0-9]+)")


@dataclass(frozen=True)
class Listing:
    """The image files of one split, in their order: paths relative to the folder (POSIX form)
    and labels int64 (N,), each in [0, number of wnids)."""

    paths: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)


def natural_key(name: str) -> tuple:
    """Sort key for file names: digit runs compare as numbers (``a_2`` before ``a_10``); the name
    itself breaks ties (``a_01`` / ``a_1``)."""
    parts = _DIGITS.split(name)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def _lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped line) of every non-blank line."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        raise DataError(f"{path}: not found ({LAYOUT})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def read_wnids(folder: str | Path, num_classes: int) -> list[str]:
    """The wnids of ``wnids.txt``, sorted: class index i is the i-th of them."""
    path = Path(folder) / WNIDS
    wnids: list[str] = []
    seen: set[str] = set()
    for n, line in _lines(path):
        if _WNID.fullmatch(line) is None:
            raise DataError(
                f"{path}: line {n} is malformed ({line[:40]!r}); each line holds one wnid "
                f"('n' and 8 digits)"
            )
        if line in seen:
            raise DataError(f"{path}: line {n}: wnid {line} is listed twice (each wnid once)")
        seen.add(line)
        wnids.append(line)
    if len(wnids) != num_classes:
        raise DataError(f"{path}: {len(wnids)} wnids, not {num_classes} (one a line)")
    return sorted(wnids)


def read_class_names(folder: str | Path, wnids: Sequence[str]) -> list[str]:
    """The names of ``wnids`` (in that order) from ``words.txt``: the text after the tab."""
    path = Path(folder) / WORDS
    names: dict[str, str] = {}
    for n, line in _lines(path):
        wnid, tab, text = line.partition("\t")
        if not tab or not wnid:
            raise DataError(
                f"{path}: line {n} is malformed ({line[:40]!r}); each line: <wnid><TAB><names>"
            )
        names[wnid] = text.strip()
    missing = [w for w in wnids if w not in names]
    if missing:
        raise DataError(
            f"{path}: no line for wnid {missing[0]} ({len(missing)} wnids of wnids.txt missing; "
            f"each line: <wnid><TAB><names>)"
        )
    return [names[w] for w in wnids]


def list_train(folder: str | Path, wnids: Sequence[str]) -> Listing:
    """``train/<wnid>/images/*.JPEG`` for the sorted ``wnids``, by (class index, file name).

    A folder in ``train/`` that is not a wnid of wnids.txt is refused (it would shift the class
    indices ImageFolder gives); files in ``images/`` not ending in ``.JPEG`` are not read.
    """
    folder = Path(folder)
    train = folder / "train"
    if not train.is_dir():
        raise DataError(f"{train}: not found ({LAYOUT})")
    known = set(wnids)
    for entry in sorted(train.iterdir()):
        if entry.is_dir() and entry.name not in known:
            raise DataError(
                f"{entry}: not a wnid of wnids.txt (train/ holds one folder per wnid, no other)"
            )
    paths: list[str] = []
    labels: list[int] = []
    for c, wnid in enumerate(wnids):
        images = train / wnid / "images"
        if not images.is_dir():
            raise DataError(f"{images}: not found (train/<wnid>/images/*.JPEG for every wnid)")
        names = sorted((p.name for p in images.glob("*.JPEG")), key=natural_key)
        paths += [f"train/{wnid}/images/{name}" for name in names]
        labels += [c] * len(names)
    return Listing(paths, np.array(labels, dtype=np.int64))


def list_val(folder: str | Path, wnids: Sequence[str]) -> Listing:
    """The images of ``val/val_annotations.txt``, by file name; each must be in ``val/images``.

    Images in ``val/images`` that the annotations do not list are not read.
    """
    folder = Path(folder)
    path = folder / VAL_ANNOTATIONS
    index = {w: c for c, w in enumerate(wnids)}
    form = "each line: <file>.JPEG, a wnid of wnids.txt, 4 box numbers, tab-separated"
    labels: dict[str, int] = {}
    for n, line in _lines(path):
        fields = line.split("\t")
        if len(fields) != 6:
            raise DataError(f"{path}: line {n} is malformed ({len(fields)} fields); {form}")
        name, wnid, *box = fields
        if _FILE_NAME.fullmatch(name) is None or not all(b.isdigit() for b in box):
            raise DataError(f"{path}: line {n} is malformed ({line[:60]!r}); {form}")
        if wnid not in index:
            raise DataError(f"{path}: line {n}: wnid {wnid[:20]!r} is not in wnids.txt; {form}")
        if name in labels:
            raise DataError(f"{path}: line {n}: {name} is listed twice (each image once)")
        labels[name] = index[wnid]
    names = sorted(labels, key=natural_key)
    for name in names:
        if not (folder / "val" / "images" / name).is_file():
            raise DataError(
                f"{folder / 'val' / 'images' / name}: not found (val/images/ holds every image "
                f"that val/val_annotations.txt lists)"
            )
    paths = [f"val/images/{name}" for name in names]
    return Listing(paths, np.array([labels[n] for n in names], dtype=np.int64))


def _decode(path: Path, data: bytes, out: np.ndarray) -> None:
    """The JPEG ``data`` of ``path`` into ``out`` (uint8, S x S x 3), its size checked first."""
    size = out.shape[0]
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as im:
            if im.size != (size, size):
                w, h = im.size
                raise DataError(
                    f"{path}: {w} x {h} pixels, not {size} x {size} (every Tiny-ImageNet image "
                    f"is {size} x {size}); replace it with the original file"
                )
            out[...] = np.asarray(im.convert("RGB"))
            return
    except DataError:
        raise
    except UnidentifiedImageError:  # its text names an in-memory file object
        detail = "not a JPEG file"
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ... on damage
        detail = " ".join(f"{type(e).__name__}: {e}".split())
    raise DataError(
        f"{path}: not a readable JPEG image ({detail}); replace it with the original file"
    )


def read_images(
    folder: str | Path, paths: Sequence[str], image_size: int
) -> tuple[np.ndarray, list[str]]:
    """The images ``paths`` (relative to ``folder``) -> images uint8 (N, S, S, 3) HWC
    (C-contiguous, S = ``image_size``) and the SHA-256 (hex) of each file's bytes as decoded."""
    folder = Path(folder)
    images = np.empty((len(paths), image_size, image_size, 3), dtype=np.uint8)
    shas: list[str] = []
    for i, rel in enumerate(paths):
        path = folder / rel
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise DataError(f"{path}: not found ({LAYOUT})") from None
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
        shas.append(hashlib.sha256(data).hexdigest())
        _decode(path, data, images[i])
    return images, shas


def combined_sha256(paths: Sequence[str], shas: Sequence[str]) -> str:
    """One SHA-256 for many files: of the UTF-8 lines ``<path>\\t<file SHA-256>\\n``, sorted."""
    lines = sorted(f"{p}\t{s}\n" for p, s in zip(paths, shas, strict=True))
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()
