"""The restricted reader of the CIFAR pickle files: exactly the allowed globals, inert stand-ins,
the same arrays as pickle would give for honest files, one line for anything else."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from numpy._core.multiarray import _reconstruct

from bmtard.core.errors import DataError
from bmtard.data.cifar_files import (
    ALLOWED_GLOBALS,
    _CifarUnpickler,
    read_batch,
    read_batches,
    read_class_names,
)

from conftest import SAMPLE


class Reduce:
    """Pickles as ``func(*args)``, then BUILD with ``state`` when given: hostile pickles by hand."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def write_batch(path: Path, obj, protocol: int = 2) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def random_batch(n: int = 6, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    data = np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)
    return data, [i % 10 for i in range(n)]


def as_hwc(data: np.ndarray) -> np.ndarray:
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def one_line_error(call) -> str:
    with pytest.raises(DataError) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


class LoggingUnpickler(_CifarUnpickler):
    def __init__(self, file, path):
        super().__init__(file, path)
        self.asked: set[str] = set()

    def find_class(self, module, name):
        self.asked.add(f"{module}.{name}")
        return super().find_class(module, name)


def globals_asked(path: Path) -> set[str]:
    with open(path, "rb") as f:
        u = LoggingUnpickler(f, path)
        u.load()
    return u.asked


def test_real_files_ask_for_exactly_the_numpy_array_names():
    folder = SAMPLE / "cifar-10-batches-py"
    want = {"numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype"}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        assert globals_asked(folder / name) == want, name
    assert globals_asked(folder / "batches.meta") == set()
    assert {f"{m}.{n}" for m, n in ALLOWED_GLOBALS} == want | {
        "numpy._core.multiarray._reconstruct",  # the same function under numpy 2
        "_codecs.encode",  # bytes in a protocol-2 pickle written by Python 3
    }


@pytest.mark.parametrize("protocol", [2, 3, 4])
@pytest.mark.parametrize("fortran", [False, True])
def test_python3_pickles_read_as_pickle_reads_them(tmp_path, protocol, fortran):
    data, labels = random_batch()
    stored = np.asfortranarray(data) if fortran else data
    batch = {"data": stored, "labels": labels, "batch_label": "b", "filenames": [b"x.png"] * 6}
    path = write_batch(tmp_path / "b", batch, protocol)
    images, got = read_batch(path, "labels", 10)
    assert images.dtype == np.uint8 and images.shape == (6, 32, 32, 3)
    assert np.array_equal(images, as_hwc(data)) and got.tolist() == labels
    assert np.array_equal(images, as_hwc(pickle.loads(path.read_bytes())["data"]))  # trusted here


@pytest.mark.parametrize("dtype", ["<i8", ">i4", "u1"])
def test_labels_may_be_an_integer_array(tmp_path, dtype):
    data, labels = random_batch()
    path = write_batch(tmp_path / "b", {"data": data, "labels": np.array(labels, dtype=dtype)})
    _, got = read_batch(path, "labels", 10)
    assert got.dtype == np.int64 and got.tolist() == labels


def test_batches_are_concatenated_in_order(tmp_path):
    parts = [random_batch(4, seed) for seed in range(3)]
    for i, (data, _) in enumerate(parts):
        write_batch(tmp_path / f"b{i}", {"data": data, "fine_labels": [9 * i + 1] * 4})
    images, labels = read_batches(tmp_path, ["b2", "b0", "b1"], "fine_labels", 100)
    assert images.flags.c_contiguous
    assert np.array_equal(images, as_hwc(np.concatenate([parts[i][0] for i in (2, 0, 1)])))
    assert labels.tolist() == [19] * 4 + [1] * 4 + [10] * 4


@pytest.mark.parametrize(
    "payload, asked",
    [
        (lambda m: Reduce(os.system, (f"touch {m}",)), f"{os.system.__module__}.system"),
        (lambda m: Reduce(Path.touch, (Path(m),)), "__builtin__.getattr"),
        (lambda m: Reduce(exec, (f"open({str(m)!r}, 'w')",)), "__builtin__.exec"),
        (lambda m: Reduce(np.load, (str(m),)), "numpy.load"),
    ],
)
def test_any_other_global_is_refused_before_it_runs(tmp_path, payload, asked):
    marker = tmp_path / "marker"
    data, labels = random_batch()
    path = write_batch(tmp_path / "data_batch_1", {"data": data, "labels": payload(marker)})
    msg = one_line_error(lambda: read_batch(path, "labels", 10))
    assert msg == (
        f"{path}: refused: the pickle asks for {asked}, which a CIFAR batch never holds "
        f"(is this folder really CIFAR?)"
    )
    assert not marker.exists()


def test_the_payload_does_run_under_plain_pickle(tmp_path):
    """The check above is real: the same file, unpickled as torchvision does, runs the code."""
    marker = tmp_path / "marker"
    path = write_batch(tmp_path / "evil", {"labels": Reduce(Path.touch, (marker,))})
    with open(path, "rb") as f:
        pickle.load(f, encoding="latin1")
    assert marker.exists()


def test_forged_object_array_is_refused(tmp_path):
    """numpy.dtype and _reconstruct alone can forge an object array whose pointers are file bytes
    (pickle.load of this file makes an object array from b"AAAAAAAA": dereferencing it, even freeing
    it, crashes the interpreter). The stand-ins accept plain integer dtypes only."""
    no_object_flags = (3, "|", None, None, None, -1, -1, 0)
    forged_dtype = Reduce(np.dtype, ("O8", False, True), no_object_flags)
    forged = Reduce(
        _reconstruct, (np.ndarray, (0,), b"b"), (1, (1,), forged_dtype, False, b"A" * 8)
    )
    path = write_batch(tmp_path / "data_batch_1", {"data": forged, "labels": [0]})
    msg = one_line_error(lambda: read_batch(path, "labels", 10))
    assert msg.startswith(f"{path}: damaged or not a CIFAR file (an array of dtype 'O8'")


@pytest.mark.parametrize(
    "batch, problem",
    [
        ([1, 2], "not a dict with 'data' and 'labels'"),
        ({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, "dtype 'f4'"),
        ({"data": np.zeros((2, 3072), "u1,u1"), "labels": [0, 1]}, "dtype 'V2'"),
        ({"data": np.zeros((2, 3071), np.uint8), "labels": [0, 1]}, "not uint8 N x 3072"),
        ({"data": [[0] * 3072], "labels": [0]}, "not a numpy array"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "1 labels for 2 images"),
        ({"data": np.zeros((1, 3072), np.uint8), "labels": [10]}, "a label outside 0..9"),
        ({"data": np.zeros((1, 3072), np.uint8), "labels": [True]}, "not a list of ints"),
        ({"data": np.zeros((1, 3072), np.uint8), "labels": ["0"]}, "not a list of ints"),
    ],
)
def test_batches_of_the_wrong_shape_are_one_line(tmp_path, batch, problem):
    path = write_batch(tmp_path / "b", batch)
    msg = one_line_error(lambda: read_batch(path, "labels", 10))
    assert msg.startswith(f"{path}: damaged or not a CIFAR file (") and problem in msg


def test_array_bytes_must_match_the_shape(tmp_path):
    dtype = Reduce(np.dtype, ("u1", False, True), (3, "|", None, None, None, -1, -1, 0))
    short = Reduce(_reconstruct, (np.ndarray, (0,), b"b"), (1, (2, 3072), dtype, False, b"\0" * 9))
    path = write_batch(tmp_path / "b", {"data": short, "labels": [0, 1]})
    assert "9 bytes of data for an array of shape (2, 3072)" in one_line_error(
        lambda: read_batch(path, "labels", 10)
    )


def test_odd_dtype_arguments_are_one_line(tmp_path):
    for spec in (["u1"], b"\xff", "O", "U8", "u1,u1"):
        dtype = Reduce(np.dtype, (spec, False, True))
        data = Reduce(_reconstruct, (np.ndarray, (0,), b"b"), (1, (1, 3072), dtype, False, b"\0"))
        path = write_batch(tmp_path / "b", {"data": data, "labels": [0]})
        msg = one_line_error(lambda path=path: read_batch(path, "labels", 10))
        assert msg.startswith(f"{path}: damaged or not a CIFAR file ("), spec


def test_other_codecs_are_refused(tmp_path):
    path = write_batch(
        tmp_path / "b", {"data": Reduce(__import__("_codecs").encode, ("x", "rot13"))}
    )
    assert "_codecs.encode with arguments other than" in one_line_error(
        lambda: read_batch(path, "labels", 10)
    )


def test_protocol_5_arrays_are_refused(tmp_path):
    """Pickle protocol 5 stores arrays through numpy._core.numeric._frombuffer, which no CIFAR
    file uses (the originals are protocol 2)."""
    data, labels = random_batch()
    path = write_batch(tmp_path / "b", {"data": data, "labels": labels}, protocol=5)
    assert "asks for numpy._core.numeric._frombuffer" in one_line_error(
        lambda: read_batch(path, "labels", 10)
    )


def test_truncated_batch_is_one_line_at_many_lengths(tmp_path):
    data, labels = random_batch(2)
    whole = pickle.dumps({"data": data, "labels": labels, "batch_label": "b"}, protocol=2)
    path = tmp_path / "data_batch_1"
    for n in [*range(0, 40), *range(40, len(whole), 211), len(whole) - 1]:
        path.write_bytes(whole[:n])
        msg = one_line_error(lambda: read_batch(path, "labels", 10))
        assert msg.startswith(f"{path}: damaged or not a CIFAR file ("), n


def test_missing_and_unreadable_files(tmp_path):
    assert "not found" in one_line_error(lambda: read_batch(tmp_path / "nope", "labels", 10))
    assert "cannot read" in one_line_error(lambda: read_batch(tmp_path, "labels", 10))


def test_class_names(tmp_path):
    names = [f"c{i}" for i in range(10)]
    path = write_batch(tmp_path / "batches.meta", {"label_names": names, "num_vis": 3072})
    assert read_class_names(path, "label_names", 10) == names
    assert "9 class names, not 10" in one_line_error(
        lambda: read_class_names(write_batch(path, {"label_names": names[:9]}), "label_names", 10)
    )
    assert "no list of class names under 'label_names'" in one_line_error(
        lambda: read_class_names(write_batch(path, {"labels": names}), "label_names", 10)
    )
    evil = write_batch(path, {"label_names": Reduce(os.system, ("true",))})
    assert "refused" in one_line_error(lambda: read_class_names(evil, "label_names", 10))


def test_real_class_names():
    path = SAMPLE / "cifar-10-batches-py" / "batches.meta"
    assert read_class_names(path, "label_names", 10) == [
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    ]  # fmt: skip
