"""The download stage's logic: local folders, the MD5 switch, downloads, limits, clean errors."""

import functools
import hashlib
import http.server
import json
import os
import pickle
import shutil
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from torchvision import datasets as tvd

from bmtard.config.schema import DataConfig
from bmtard.core.errors import DataError
from bmtard.core.io import sha256_file, write_json
from bmtard.data.datasets import balanced_indices, prepare
from bmtard.data.splits import Split, load_manifest, load_split, save_split

from conftest import SAMPLE


def write_fake_cifar10(root: Path, per_batch: int = 20) -> Path:
    """A CIFAR-10 folder in the original pickle layout with random images (classes cycle)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [i % 10 for i in range(per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f, protocol=2)
    return folder


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_local_sample_with_md5_check_off(tmp_path):
    root = SAMPLE
    cfg = DataConfig(local_root=str(root), verify_md5=False, train_limit=100, test_limit=50)
    manifest = prepare(cfg, tmp_path)
    train, test = load_split(tmp_path / "train.npz"), load_split(tmp_path / "test.npz")
    assert train.images.shape == (100, 32, 32, 3) and train.images.dtype == np.uint8
    assert np.bincount(train.labels).tolist() == [10] * 10
    assert np.bincount(test.labels).tolist() == [5] * 10
    s = manifest["splits"]["train"]
    assert s["count"] == 100 and s["per_class"] == [10] * 10
    # the SHA-256 of what was read, as listed in the sample's README
    assert s["read"]["data_batch_1"] == (
        "aebc3c353c8e01625c567a9d5d1b8affbd1ea938f1c705cdf41a459607ad1e92"
    )
    assert manifest["classes"][0] == "airplane" and manifest["source"] == "local"


def test_local_root_may_name_the_batches_folder_itself(tmp_path):
    root = SAMPLE
    cfg = DataConfig(
        local_root=str(root / "cifar-10-batches-py"),
        verify_md5=False,
        train_limit=10,
        test_limit=10,
    )
    assert prepare(cfg, tmp_path)["splits"]["test"]["count"] == 10


def test_subset_fails_the_official_md5_check_with_advice(tmp_path):
    root = SAMPLE
    with pytest.raises(DataError, match="set data.verify_md5: false"):
        prepare(DataConfig(local_root=str(root)), tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written


def test_missing_local_root_is_named(tmp_path):
    with pytest.raises(
        DataError, match=r"data\.local_root = '.*nowhere': no 'cifar-10-batches-py'"
    ):
        prepare(DataConfig(local_root=str(tmp_path / "nowhere")), tmp_path)


def test_offline_download_says_how_to_point_at_local_data(tmp_path, monkeypatch):
    monkeypatch.setattr(tvd.CIFAR10, "url", "http://localhost:9/cifar-10-python.tar.gz")
    with pytest.raises(DataError) as e:
        prepare(DataConfig(download_root=str(tmp_path / "raw")), tmp_path / "out")
    msg = str(e.value)
    assert "cannot download cifar10" in msg and "data.local_root" in msg and "\n" not in msg
    assert not (tmp_path / "out").exists()


def test_unverified_download_is_refused(tmp_path):
    with pytest.raises(DataError, match="verify_md5 = false needs data.local_root"):
        prepare(DataConfig(verify_md5=False), tmp_path)


@pytest.fixture
def http_dir(tmp_path):
    """Serve tmp_path/www over HTTP on localhost; yields (folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def serve_as_official(folder: Path, http_dir, monkeypatch) -> Path:
    """Pack ``folder`` as the CIFAR-10 archive served by ``http_dir`` and make torchvision's table
    (URL and MD5s) describe it; returns the archive."""
    www, url = http_dir
    archive = www / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    train_list = [[f"data_batch_{i}", md5(folder / f"data_batch_{i}")] for i in range(1, 6)]
    monkeypatch.setattr(tvd.CIFAR10, "url", f"{url}/cifar-10-python.tar.gz")
    monkeypatch.setattr(tvd.CIFAR10, "tgz_md5", md5(archive))
    monkeypatch.setattr(tvd.CIFAR10, "train_list", train_list)
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", md5(folder / "test_batch")]])
    monkeypatch.setattr(
        tvd.CIFAR10,
        "meta",
        {"filename": "batches.meta", "key": "label_names", "md5": md5(folder / "batches.meta")},
    )
    return archive


def test_download_path_checks_md5s(tmp_path, monkeypatch, http_dir):
    """The real download code (torchvision over HTTP, MD5 of the archive and of every batch) on a
    generated archive served from localhost."""
    folder = write_fake_cifar10(tmp_path / "src")
    archive = serve_as_official(folder, http_dir, monkeypatch)
    manifest = prepare(DataConfig(download_root=str(tmp_path / "raw")), tmp_path / "out")
    assert manifest["source"] == "download" and manifest["splits"]["train"]["count"] == 100
    # a corrupted batch fails the per-file MD5 check, so the archive is fetched again ...
    (tmp_path / "raw" / "cifar-10-batches-py" / "test_batch").write_bytes(b"broken")
    assert prepare(DataConfig(download_root=str(tmp_path / "raw")), tmp_path / "o2")["splits"]
    # ... and an archive that does not match its MD5 is refused
    archive.write_bytes(archive.read_bytes()[:-10])
    (tmp_path / "raw" / "cifar-10-python.tar.gz").unlink()
    (tmp_path / "raw" / "cifar-10-batches-py" / "test_batch").write_bytes(b"broken")
    with pytest.raises(DataError, match="fails the official MD5 check"):
        prepare(DataConfig(download_root=str(tmp_path / "raw")), tmp_path / "o3")


def test_balanced_indices_by_hand():
    labels = np.array([0, 1, 0, 2, 1, 0, 2, 2, 1])
    assert balanced_indices(labels, None, 3, "k").tolist() == list(range(9))
    assert balanced_indices(labels, 3, 3, "k").tolist() == [0, 1, 3]
    assert balanced_indices(labels, 5, 3, "k").tolist() == [0, 1, 2, 3, 4]  # classes 0, 1 get 2
    with pytest.raises(DataError, match="k = 12: class 0 has only 3 images"):
        balanced_indices(labels, 12, 3, "k")


def test_limit_larger_than_split_is_named(tmp_path):
    folder = write_fake_cifar10(tmp_path / "src")
    cfg = DataConfig(local_root=str(folder), verify_md5=False, test_limit=30)
    with pytest.raises(DataError, match="data.test_limit = 30: only 20 test images"):
        prepare(cfg, tmp_path / "out")


# --- reading the raw files: no code runs, damage is one line, the same data as torchvision


class Touch:
    """Unpickling this creates ``marker`` (what torchvision's plain pickle.load would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class Shell:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.fixture
def sample_copy(tmp_path) -> Path:
    """A writable copy of the lossless sample's cifar-10-batches-py folder."""
    folder = tmp_path / "copy" / "cifar-10-batches-py"
    shutil.copytree(SAMPLE / "cifar-10-batches-py", folder)
    for f in folder.iterdir():
        f.chmod(0o644)
    return folder


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


@pytest.mark.parametrize("payload", [Touch, Shell])
@pytest.mark.parametrize("name", ["data_batch_1", "test_batch", "batches.meta"])
def test_malicious_file_never_runs(tmp_path, sample_copy, name, payload):
    marker = tmp_path / "marker"
    evil = {"data": payload(marker), "labels": [0], "label_names": payload(marker)}
    (sample_copy / name).write_bytes(pickle.dumps(evil, protocol=2))
    cfg = DataConfig(local_root=str(sample_copy.parent), verify_md5=False)
    with pytest.raises(DataError) as e:
        prepare(cfg, tmp_path / "out")
    msg = one_line(e)
    assert msg.startswith(f"{sample_copy / name}: refused: the pickle asks for ")
    assert msg.endswith("which a CIFAR batch never holds (is this folder really CIFAR?)")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_downloaded_files_go_through_the_same_reader(tmp_path, monkeypatch, http_dir):
    """Even a file with the "official" MD5 is read by the restricted reader."""
    folder = write_fake_cifar10(tmp_path / "src")
    marker = tmp_path / "marker"
    (folder / "data_batch_3").write_bytes(pickle.dumps({"data": Touch(marker)}, protocol=2))
    serve_as_official(folder, http_dir, monkeypatch)
    with pytest.raises(DataError, match="data_batch_3: refused: the pickle asks for"):
        prepare(DataConfig(download_root=str(tmp_path / "raw")), tmp_path / "out")
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0, 1, 100, 2_000_000])
def test_truncated_batch_is_one_line(tmp_path, sample_copy, keep):
    path = sample_copy / "data_batch_3"
    path.write_bytes(path.read_bytes()[:keep])
    cfg = DataConfig(local_root=str(sample_copy), verify_md5=False)
    with pytest.raises(DataError) as e:
        prepare(cfg, tmp_path / "out")
    msg = one_line(e)
    assert msg.startswith(f"{path}: damaged or not a CIFAR file (")
    assert msg.endswith("replace it with the original file (is this folder really CIFAR?)")


def test_missing_batch_is_named(tmp_path, sample_copy):
    (sample_copy / "data_batch_5").unlink()
    with pytest.raises(DataError, match=r"data_batch_5 not found \(a CIFAR folder holds "):
        prepare(DataConfig(local_root=str(sample_copy), verify_md5=False), tmp_path / "out")


class TorchvisionSample(tvd.CIFAR10):
    """torchvision's own loader minus its MD5 check of the batches (as in the sample's README)."""

    def _check_integrity(self) -> bool:
        return True


def test_same_data_as_torchvision(tmp_path):
    root = SAMPLE
    manifest = prepare(DataConfig(local_root=str(root), verify_md5=False), tmp_path)
    for name, train in (("train", True), ("test", False)):
        ours = load_split(tmp_path / f"{name}.npz", manifest["splits"][name]["sha256"])
        theirs = TorchvisionSample(str(root), train=train, download=False)
        assert ours.images.dtype == np.uint8 and ours.images.shape == theirs.data.shape
        assert np.array_equal(ours.images, theirs.data)
        assert ours.labels.tolist() == theirs.targets
        assert manifest["classes"] == theirs.classes
    assert manifest["splits"]["train"]["count"] == 4000
    assert manifest["splits"]["test"]["count"] == 1000


def test_cifar100_layout(tmp_path):
    """train / test / meta with fine_labels and fine_label_names, written by Python 3."""
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    data = {n: rng.integers(0, 256, (200, 3072), dtype=np.uint8) for n in ("train", "test")}
    for name, d in data.items():
        fine = [(7 * i) % 100 for i in range(200)]
        batch = {"data": d, "fine_labels": fine, "coarse_labels": [f // 5 for f in fine]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    names = [f"c{i:02d}" for i in range(100)]
    meta = {"fine_label_names": names, "coarse_label_names": names[:20]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    cfg = DataConfig(dataset="cifar100", local_root=str(folder), verify_md5=False, test_limit=100)
    manifest = prepare(cfg, tmp_path / "out")
    train, test = load_split(tmp_path / "out/train.npz"), load_split(tmp_path / "out/test.npz")
    assert np.array_equal(train.images, data["train"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert train.labels.tolist() == [(7 * i) % 100 for i in range(200)]
    assert np.bincount(test.labels).tolist() == [1] * 100
    assert manifest["classes"] == names and manifest["num_classes"] == 100
    assert set(manifest["splits"]["train"]["read"]) == {"train", "meta"}


# --- the split files: damage and changes are one line


def tiny_split(n: int = 3, size: int = 4) -> Split:
    images = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return Split(images, np.arange(n, dtype=np.int64) % 10)


@pytest.fixture
def split_file(tmp_path) -> tuple[Path, bytes, Split]:
    """A split whose images.npy (9 KiB) is larger than zipfile's 4 KiB read-ahead."""
    path = tmp_path / "train.npz"
    split = tiny_split(3, 32)
    save_split(path, split)
    return path, path.read_bytes(), split


def load_error(path: Path, sha256: str | None = None) -> str:
    with pytest.raises(DataError) as e:
        load_split(path, sha256)
    msg = one_line(e)
    assert msg.startswith(f"{path}: ")
    assert msg.endswith(
        "rerun the download stage (dvc repro -f download, or snakemake --cores 1 -f download)"
    )
    return msg


def test_split_round_trip_with_and_without_sha(split_file):
    path, _, split = split_file
    for sha in (None, sha256_file(path)):
        got = load_split(path, sha)
        assert np.array_equal(got.images, split.images) and got.labels.tolist() == [0, 1, 2]


def test_missing_split_file(tmp_path):
    with pytest.raises(DataError, match="train.npz: data file not found; run the download stage"):
        load_split(tmp_path / "train.npz")


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.1, 0.5, 0.9, 0.999])
def test_truncated_split_is_one_line(split_file, fraction):
    path, whole, _ = split_file
    path.write_bytes(whole[: int(len(whole) * fraction)])
    assert "damaged, cannot be read (" in load_error(path)
    assert "its SHA-256 differs from the one in manifest.json" in load_error(
        path, hashlib.sha256(whole).hexdigest()
    )


def image_byte_offset(whole: bytes) -> int:
    """Where the first pixel of images.npy lies in the .npz (members are stored uncompressed)."""
    header_end = whole.index(b"\n", whole.index(b"\x93NUMPY"))
    return header_end + 1


def test_flipped_image_byte(split_file):
    path, whole, _ = split_file
    flipped = bytearray(whole)
    flipped[image_byte_offset(whole) + 5] ^= 0x10
    path.write_bytes(bytes(flipped))
    # With the manifest's SHA-256: refused before reading.
    msg = load_error(path, hashlib.sha256(whole).hexdigest())
    assert "damaged or changed since the download stage wrote it" in msg
    # Without it: numpy reads the array to the member's end, so zipfile's CRC-32 check (run when
    # the last block of a member is read) does run on np.load and notices the flip ...
    with pytest.raises(zipfile.BadZipFile, match="Bad CRC-32 for file 'images.npy'"):
        with np.load(path) as z:
            z["images"]
    # ... and load_split turns that into one line.
    assert "images.npy fails its CRC-32 check" in load_error(path)


def test_flipped_shape_in_header_is_caught_by_the_crc_check(split_file):
    """numpy reads only as many bytes as the header's shape says, and zipfile checks the CRC-32
    only when it reads a member's last block (4 KiB or more at a time): a shape made smaller by one
    flipped bit loads silently with np.load (for members larger than one block). load_split reads
    every member whole first (ZipFile.testzip)."""
    path, whole, _ = split_file
    shape = whole.index(b"'shape': (3, 32, 32, 3)")
    flipped = bytearray(whole)
    flipped[shape + len(b"'shape': (3, 32, 32, ")] ^= 0x01  # '3' -> '2'
    path.write_bytes(bytes(flipped))
    with np.load(path) as z:
        assert z["images"].shape == (3, 32, 32, 2)  # np.load does not notice
    assert "images.npy fails its CRC-32 check" in load_error(path)


def test_every_flipped_byte_is_caught_or_harmless(tmp_path):
    """One bit flipped at every offset: a one-line error, or (zip fields that numpy and zipfile do
    not use, such as times) exactly the original arrays."""
    path, split = tmp_path / "train.npz", tiny_split()
    save_split(path, split)
    whole = path.read_bytes()
    harmless = 0
    for i in range(len(whole)):
        flipped = bytearray(whole)
        flipped[i] ^= 1 << (i % 8)
        path.write_bytes(bytes(flipped))
        try:
            got = load_split(path)
        except DataError as e:
            assert "\n" not in str(e) and str(e).startswith(f"{path}: ")
            continue
        assert got.images.shape == split.images.shape, i
        assert np.array_equal(got.images, split.images) and np.array_equal(got.labels, split.labels)
        harmless += 1
    assert harmless < len(whole) // 2


def test_sha_mismatch_message(split_file):
    path, _, _ = split_file
    assert load_error(path, "0" * 64) == (
        f"{path}: damaged or changed since the download stage wrote it (its SHA-256 differs from "
        f"the one in manifest.json); rerun the download stage (dvc repro -f download, or "
        f"snakemake --cores 1 -f download)"
    )


def test_not_a_split_file(tmp_path):
    path = tmp_path / "x.npz"
    with open(path, "wb") as f:
        np.savez(f, images=np.zeros((2, 4, 4, 3), np.float32), labels=np.zeros(2, np.int64))
    assert "not a split file" in load_error(path)
    with open(path, "wb") as f:
        np.savez(f, images=np.zeros((2, 4, 4, 3), np.uint8), labels=np.zeros(2, np.float32))
    assert "labels are not N integers" in load_error(path)
    with open(path, "wb") as f:
        np.savez(f, pictures=np.zeros((2, 4, 4, 3), np.uint8))
    assert "KeyError" in load_error(path)


# --- the manifest


def test_manifest_from_prepare_loads_and_checks_the_splits(tmp_path):
    folder = write_fake_cifar10(tmp_path / "src")
    out = tmp_path / "data"
    write_json(
        out / "manifest.json", prepare(DataConfig(local_root=str(folder), verify_md5=False), out)
    )
    manifest = load_manifest(out)
    assert manifest["num_classes"] == 10
    assert len(load_split(out / "train.npz", manifest["splits"]["train"]["sha256"])) == 100
    save_split(out / "test.npz", tiny_split())  # changed after the download stage
    with pytest.raises(DataError, match="test.npz: damaged or changed since the download stage"):
        load_split(out / "test.npz", manifest["splits"]["test"]["sha256"])


def test_missing_manifest_keeps_its_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as e:
        load_manifest("data")
    assert str(e.value) == "data/manifest.json: not found; run the download stage first"


GOOD_MANIFEST = {
    "dataset": "cifar10",
    "num_classes": 10,
    "splits": {"train": {"sha256": "a" * 64}, "test": {"sha256": "b" * 64}},
}


def manifest_error(tmp_path: Path, text: str) -> str:
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(DataError) as e:
        load_manifest(tmp_path)
    msg = one_line(e)
    assert msg.startswith(f"{tmp_path / 'manifest.json'}: ")
    assert msg.endswith(
        "rerun the download stage (dvc repro -f download, or snakemake --cores 1 -f download)"
    )
    return msg


def test_manifest_truncated_or_not_json(tmp_path):
    whole = json.dumps(GOOD_MANIFEST, indent=2)
    for n in (0, 1, len(whole) // 2, len(whole) - 1):
        assert "damaged, not valid JSON (" in manifest_error(tmp_path, whole[:n])
    assert "not valid JSON" in manifest_error(tmp_path, "num_classes: 10")
    assert "not valid JSON" in manifest_error(tmp_path, "[" * 100_000)
    (tmp_path / "manifest.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(DataError, match="not valid JSON"):
        load_manifest(tmp_path)


def without(path: str) -> dict:
    """GOOD_MANIFEST with the key at dotted ``path`` removed."""
    m = json.loads(json.dumps(GOOD_MANIFEST))
    *parents, last = path.split(".")
    d = m
    for p in parents:
        d = d[p]
    del d[last]
    return m


@pytest.mark.parametrize(
    "manifest, problem",
    [
        ([1, 2], "a JSON list, not an object"),
        ("x", "a JSON str, not an object"),
        (without("num_classes"), "no integer num_classes"),
        ({**GOOD_MANIFEST, "num_classes": "10"}, "no integer num_classes"),
        ({**GOOD_MANIFEST, "num_classes": True}, "no integer num_classes"),
        (without("splits"), "no splits"),
        (without("splits.test"), "no splits.test"),
        (without("splits.train.sha256"), "no SHA-256 in splits.train.sha256"),
        ({**GOOD_MANIFEST, "splits": {"train": {"sha256": "ab"}, "test": {}}}, "no SHA-256 in"),
    ],
)
def test_manifest_missing_fields(tmp_path, manifest, problem):
    msg = manifest_error(tmp_path, json.dumps(manifest))
    assert f"damaged or incomplete ({problem}" in msg


def test_good_manifest(tmp_path):
    write_json(tmp_path / "manifest.json", GOOD_MANIFEST)
    assert load_manifest(tmp_path) == GOOD_MANIFEST


def test_relative_local_root_is_from_the_project_also_in_a_dvc_queue_copy(tmp_path):
    from bmtard.core.paths import from_project

    project = tmp_path / "proj"
    copy = project / ".dvc" / "tmp" / "exps" / "tmpab12"
    copy.mkdir(parents=True)
    rel = Path("../elsewhere/data")
    assert from_project(rel, copy) == project / rel  # not copy / rel
    assert from_project(rel, project) == rel  # the project itself: as written
    assert from_project(tmp_path / "abs", copy) == tmp_path / "abs"


def test_a_validation_split_is_held_out_of_the_training_split(tmp_path):
    """data.val_limit: the last images of each class of the training split, balanced, never in
    train.npz; train.npz takes the first of the others; the manifest says so; without it the
    validation split is empty and train.npz as before."""
    cfg = DataConfig(
        local_root=str(SAMPLE), verify_md5=False, train_limit=200, test_limit=20, val_limit=30
    )
    manifest = prepare(cfg, tmp_path)
    train, val = load_split(tmp_path / "train.npz"), load_split(tmp_path / "val.npz")
    assert np.bincount(train.labels).tolist() == [20] * 10
    assert np.bincount(val.labels).tolist() == [3] * 10
    seen = {im.tobytes() for im in train.images}
    assert not any(im.tobytes() in seen for im in val.images)  # never trained on
    # the last three of each class of the sample's training split, in the original order
    full = prepare(DataConfig(local_root=str(SAMPLE), verify_md5=False), tmp_path / "full")
    everything = load_split(tmp_path / "full" / "train.npz")
    last = np.sort(np.concatenate([np.flatnonzero(everything.labels == c)[-3:] for c in range(10)]))
    assert np.array_equal(val.images, everything.images[last])
    s = manifest["splits"]
    assert list(s) == ["train", "val", "test"]
    assert s["val"]["indices"].startswith("last per class of the training split")
    assert s["train"]["indices"] == "first per class after the validation images, original order"
    assert full["splits"]["val"]["count"] == 0 and full["splits"]["val"]["indices"] == "none"
    assert full["splits"]["train"]["count"] == 4000


def test_held_out_indices_by_hand():
    from bmtard.data.datasets import held_out_indices

    labels = np.array([0, 1, 0, 1, 0, 1, 2, 2])
    assert held_out_indices(labels, 3, 3, "data.val_limit").tolist() == [4, 5, 7]
    assert held_out_indices(labels, None, 3, "data.val_limit").tolist() == []
    with pytest.raises(DataError, match=r"^data.val_limit = 9: class 2 has only 2 images here"):
        held_out_indices(labels, 9, 3, "data.val_limit")
