"""The download stage's logic: local folders, the MD5 switch, downloads, limits, clean errors."""

import functools
import hashlib
import http.server
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from torchvision import datasets as tvd

from bmtard.config import DataConfig
from bmtard.datasets import balanced_indices, load_split, prepare
from bmtard.errors import DataError

from conftest import require_sample


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
    root = require_sample()
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
    root = require_sample()
    cfg = DataConfig(
        local_root=str(root / "cifar-10-batches-py"),
        verify_md5=False,
        train_limit=10,
        test_limit=10,
    )
    assert prepare(cfg, tmp_path)["splits"]["test"]["count"] == 10


def test_subset_fails_the_official_md5_check_with_advice(tmp_path):
    root = require_sample()
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


def test_download_path_checks_md5s(tmp_path, monkeypatch, http_dir):
    """The real download code (torchvision over HTTP, MD5 of the archive and of every batch) on a
    generated archive served from localhost."""
    www, url = http_dir
    folder = write_fake_cifar10(tmp_path / "src")
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
