"""Reading the CIFAR python-pickle files without letting them run code.

Hand-written because torchvision reads these files with a plain ``pickle.load``, which calls
whatever a file names: with the MD5 check off (a local subset), a crafted folder would run code in
the download stage. Here the unpickler resolves only the few names a CIFAR file holds, and even
those become inert stand-ins: each array is built afterwards from plain bytes, its dtype and size
checked. (Handing the real ``numpy.dtype`` and ``_reconstruct`` to a pickle is not enough: a
pickle can turn an object dtype's flags off and fill the array with file bytes, i.e. with forged
pointers.)

Layout read (both written by Python 2, so read with encoding="latin1", as torchvision does):
``cifar-10-batches-py/{data_batch_1..5,test_batch}`` and ``cifar-100-python/{train,test}``: a dict
with "data" (uint8, N x 3072, each row 1024 red, 1024 green, 1024 blue values, row-major 32 x 32)
and "labels" (CIFAR-10) or "fine_labels" (CIFAR-100), lists of N ints;
``batches.meta`` / ``meta``: a dict with "label_names" / "fine_label_names", lists of str.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bmtard.core.errors import DataError

#: the integer dtypes an array in a batch may have (images are "u1"; labels are lists, or arrays)
INT_DTYPES = frozenset(f"{kind}{size}" for kind in "iu" for size in (1, 2, 4, 8))


class _Refused(DataError):
    """The pickle names a global outside the allowed set (raised before anything is called)."""


class _NdarrayTag:
    """Stands in for ``numpy.ndarray``: only ever passed to ``_reconstruct`` as the array type."""


class _DtypeStub:
    """Stands in for ``numpy.dtype(spec, align, copy)``; records the spec and the pickled state."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = False) -> None:
        self.spec = spec
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _ArrayStub:
    """Stands in for an empty ndarray from ``_reconstruct``; records the pickled state."""

    def __init__(self) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> _ArrayStub:
    """Stands in for ``numpy.core.multiarray._reconstruct(ndarray, (0,), b"b")``."""
    if subtype is not _NdarrayTag:
        raise ValueError("an array of a type other than numpy.ndarray")
    return _ArrayStub()


def _latin1_bytes(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """Stands in for ``_codecs.encode(text, "latin1")``: how Python 3 writes bytes at protocol 2."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ValueError("_codecs.encode with arguments other than (str, 'latin1')")
    return text.encode("latin-1")


#: (module, name) a CIFAR file may ask for -> the inert stand-in it gets.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # the official files (numpy 1.x)
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # re-packed with numpy 2
    ("numpy", "ndarray"): _NdarrayTag,
    ("numpy", "dtype"): _DtypeStub,
    ("_codecs", "encode"): _latin1_bytes,  # bytes pickled by Python 3 at protocol 2
}


class _CifarUnpickler(pickle.Unpickler):
    """Resolves only ``ALLOWED_GLOBALS`` (to stand-ins); any other global is refused."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(
                f"{self.path}: refused: the pickle asks for {module}.{name}, which a CIFAR batch "
                f"never holds (is this folder really CIFAR?)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused(f"{self.path}: refused: the pickle asks for a persistent id (not CIFAR)")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _bad(path: Path, problem: str) -> DataError:
    return DataError(
        f"{path}: damaged or not a CIFAR file ({problem}); replace it with the original file "
        f"(is this folder really CIFAR?)"
    )


def _unpickle(path: Path) -> Any:
    """The object in ``path``, with globals restricted to ``ALLOWED_GLOBALS`` (as stand-ins)."""
    try:
        with open(path, "rb") as f:
            return _CifarUnpickler(f, path).load()
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: not found (is this folder a complete CIFAR folder?)") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    except Exception as e:  # a damaged pickle can make the unpickler raise nearly any type
        raise _bad(path, _one_line(e)) from None


def _dtype(stub: Any) -> np.dtype:
    """The real dtype for a ``_DtypeStub``: a plain integer type only (see ``INT_DTYPES``)."""
    if not isinstance(stub, _DtypeStub):
        raise ValueError("an array whose dtype is not a numpy dtype")
    spec = stub.spec.decode("ascii") if isinstance(stub.spec, bytes) else stub.spec
    if not isinstance(spec, str) or spec not in INT_DTYPES:
        raise ValueError(f"an array of dtype {spec!r}, not a plain integer type")
    order = "|"
    if stub.state is not None:  # (version, byte order, subarray, names, fields, ...)
        state = stub.state
        if not isinstance(state, tuple) or len(state) < 5 or state[2:5] != (None, None, None):
            raise ValueError(f"a structured or unusual dtype state {state!r:.80}")
        order = state[1]
    if order not in ("|", "<", ">", "="):
        raise ValueError(f"dtype byte order {order!r}")
    dt = np.dtype(spec)
    return dt if order in ("|", "=") else dt.newbyteorder(order)


def _array(stub: Any) -> np.ndarray:
    """The real array for an ``_ArrayStub``, built from its bytes after checking shape and size."""
    if not isinstance(stub, _ArrayStub) or not isinstance(stub.state, tuple):
        raise ValueError("not a numpy array")
    state = stub.state[1:] if len(stub.state) == 5 else stub.state  # drop the version
    if len(state) != 4:
        raise ValueError("an array with an unknown pickled state")
    shape, dtype_stub, fortran, raw = state
    ok = isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)
    if not ok:
        raise ValueError(f"an array of shape {shape!r:.80}")
    dt = _dtype(dtype_stub)
    if isinstance(raw, str):  # a Python 2 str, decoded as latin1 by the unpickler
        raw = raw.encode("latin-1")
    if not isinstance(raw, bytes | bytearray):
        raise ValueError("array data that are not bytes")
    if len(raw) != math.prod(shape) * dt.itemsize:
        raise ValueError(f"{len(raw)} bytes of data for an array of shape {shape}")
    return np.frombuffer(raw, dtype=dt).reshape(shape, order="F" if fortran else "C")


def _int_labels(value: Any, n: int, num_classes: int) -> np.ndarray:
    """Labels as int64 (n,), each in [0, num_classes)."""
    if isinstance(value, _ArrayStub):
        labels = _array(value)
        if labels.ndim != 1:
            raise ValueError(f"labels of shape {labels.shape}")
    elif isinstance(value, list) and all(type(v) is int for v in value):
        labels = np.array(value, dtype=np.int64) if value else np.zeros(0, np.int64)
    else:
        raise ValueError("labels that are not a list of ints")
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"a label outside 0..{num_classes - 1}")
    return labels.astype(np.int64)


def read_batch(path: str | Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> images uint8 (N, 32, 32, 3) HWC and labels int64 (N,).

    ``label_key`` is "labels" (CIFAR-10) or "fine_labels" (CIFAR-100). Only the globals in
    ``ALLOWED_GLOBALS`` may appear in the file; any other, or any damage, is a one-line DataError.
    """
    path = Path(path)
    entry = _unpickle(path)
    try:
        if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
            raise ValueError(f"not a dict with 'data' and {label_key!r}")
        data = _array(entry["data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(
                f"data of dtype {data.dtype} and shape {data.shape}, not uint8 N x 3072"
            )
        labels = _int_labels(entry[label_key], len(data), num_classes)
    except ValueError as e:
        raise _bad(path, str(e)) from None
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_batches(
    folder: str | Path, names: Sequence[str], label_key: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """The batches ``names`` in ``folder``, in that order -> images uint8 (N, 32, 32, 3) HWC
    (C-contiguous) and labels int64 (N,)."""
    parts = [read_batch(Path(folder) / name, label_key, num_classes) for name in names]
    images = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
    return images, np.concatenate([p[1] for p in parts])


def read_class_names(path: str | Path, key: str, num_classes: int) -> list[str]:
    """The class names under ``key`` ("label_names" or "fine_label_names") in a meta file."""
    path = Path(path)
    meta = _unpickle(path)
    names = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _bad(path, f"no list of class names under {key!r}")
    if len(names) != num_classes:
        raise _bad(path, f"{len(names)} class names, not {num_classes}")
    return names
