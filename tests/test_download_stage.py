"""The download stage keeps its data as the last good data and puts it back when a later run of
the same data parameters cannot download (offline): Snakemake deletes a job's outputs before it
reruns the job, so the good data would otherwise be gone."""

from __future__ import annotations

import logging
import shutil

import pytest
from torchvision import datasets as tvd

from bmtard.config.schema import DataConfig, RunConfig
from bmtard.core.errors import ParamsError
from bmtard.data.datasets import DownloadFailed
from bmtard.data.download import run_download

from test_datasets import http_dir, serve_as_official, write_fake_cifar10  # noqa: F401

FILES = ["train.npz", "val.npz", "test.npz", "manifest.json"]


@pytest.fixture
def downloaded(tmp_path, monkeypatch, http_dir):  # noqa: F811
    """A project folder (the working directory) whose data was downloaded once; then the
    download source goes away (offline) and the downloaded archive with it."""
    monkeypatch.chdir(tmp_path)
    serve_as_official(write_fake_cifar10(tmp_path / "src"), http_dir, monkeypatch)
    cfg = DataConfig(download_root="raw", train_limit=50)
    run_download(cfg, RunConfig(), "data")
    good = {f: (tmp_path / "data" / f).read_bytes() for f in FILES}
    monkeypatch.setattr(tvd.CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    shutil.rmtree(tmp_path / "raw")
    shutil.rmtree(tmp_path / "data")  # what Snakemake does before it reruns the job
    return cfg, good


def test_a_failed_download_puts_back_the_last_good_data(tmp_path, downloaded, caplog):
    cfg, good = downloaded
    with caplog.at_level(logging.WARNING):
        run_download(cfg, RunConfig(), "data")
    assert {f: (tmp_path / "data" / f).read_bytes() for f in FILES} == good
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert lines[0].startswith("cannot download cifar10 into raw (")
    assert "put back the last good data made with the same data parameters" in lines[0]
    assert ".cache/train/last-good/data" in lines[0]


def test_data_of_other_parameters_is_not_put_back(tmp_path, downloaded):
    cfg, _ = downloaded
    with pytest.raises(DownloadFailed, match="cannot download cifar10"):
        run_download(DataConfig(download_root="raw", train_limit=40), RunConfig(), "data")
    assert not (tmp_path / "data" / "train.npz").exists()
    with pytest.raises(DownloadFailed):  # nothing kept: no state_dir
        run_download(cfg, RunConfig(state_dir=None), "data")


def test_download_folders_are_checked_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ParamsError) as e:
        run_download(DataConfig(download_root="a_file/raw"), RunConfig(), "data")
    assert str(e.value).startswith(
        "data.download_root = 'a_file/raw': cannot be created or written (Not a directory)"
    )
    with pytest.raises(ParamsError, match=r"^run.state_dir = '/dev/null/x': cannot be created"):
        run_download(DataConfig(download_root="raw"), RunConfig(state_dir="/dev/null/x"), "data")
    assert not (tmp_path / "data").exists() and not (tmp_path / "raw").exists()
