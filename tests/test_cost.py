"""What a stage cost (bmtard/core/cost.py) and how the comparison reads it
(bmtard/experiments/runs.py): wall time, images, peak memory, GPU-seconds, summed over starts."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from bmtard.core.cost import (
    FORMAT,
    Cost,
    CostMeter,
    cost_path,
    cpu_model,
    read_cost,
    write_cost,
)
from bmtard.experiments.runs import cost_at, cost_of, summarise_cost


def test_a_cpu_stage_costs_time_images_and_resident_memory():
    meter = CostMeter("distill", torch.device("cpu"))
    meter.add_images(64)
    meter.add_images(36)
    spent = meter.cost()
    assert (spent.stage, spent.images, spent.starts, spent.devices) == ("distill", 100, 1, 1)
    assert spent.seconds > 0 and spent.images_per_second == pytest.approx(100 / spent.seconds)
    assert spent.gpu_seconds == 0 and spent.memory == "process RSS"
    assert spent.peak_memory_mb > 50  # this process holds torch
    n = torch.get_num_threads()
    assert spent.device == f"{cpu_model()}, {n} thread{'' if n == 1 else 's'}"
    assert cpu_model() not in ("", "unknown CPU")


def test_a_resumed_stage_sums_its_starts_and_keeps_the_larger_peak():
    before = Cost("distill", "x", 1, seconds=100.0, images=5000, peak_memory_mb=1e6,
                  memory="CUDA allocated", gpu_seconds=100.0, starts=1)  # fmt: skip
    spent = CostMeter("distill", torch.device("cpu"), before=before).cost(images=50)
    assert spent.starts == 2 and spent.images == 5050
    assert 100 < spent.seconds < 200 and spent.peak_memory_mb == 1e6
    assert spent.gpu_seconds == 100.0  # this start ran on a CPU


def test_cost_files_round_trip_beside_their_model(tmp_path):
    assert cost_path(tmp_path / "models" / "student.pt") == tmp_path / "models/student.cost.json"
    spent = CostMeter("evaluate", torch.device("cpu")).cost(images=10)
    write_cost(tmp_path / "c.json", spent)
    raw = json.loads((tmp_path / "c.json").read_text())
    assert raw["format"] == FORMAT and raw["images_per_second"] == spent.images_per_second
    assert read_cost(tmp_path / "c.json") == spent


@pytest.mark.parametrize("text", ["", "{", "[]", '{"format": "other"}'])
def test_a_missing_or_foreign_cost_file_reads_as_none(tmp_path, text):
    (tmp_path / "c.json").write_text(text)
    assert read_cost(tmp_path / "c.json") is None
    assert read_cost(tmp_path / "absent.json") is None


def _costs(folder, train_s=600.0, eval_s=120.0, peak=2048.0, gpus=1):
    write_cost(
        folder / "models" / "student.cost.json",
        Cost("distill", "NVIDIA H100", gpus, seconds=train_s, images=60_000,
             peak_memory_mb=peak, memory="CUDA allocated", gpu_seconds=train_s * gpus, starts=1),
    )  # fmt: skip
    write_cost(
        folder / "metrics" / "cost.json",
        Cost("evaluate", "NVIDIA H100", 1, seconds=eval_s, images=6000, peak_memory_mb=512.0,
             memory="CUDA allocated", gpu_seconds=eval_s, starts=1),
    )  # fmt: skip


def test_a_runs_cost_in_the_comparisons_units(tmp_path):
    _costs(tmp_path, gpus=2)
    assert cost_of(tmp_path) == {
        "train_minutes": 10.0,
        "train_images_per_second": 100.0,
        "gpu_hours": pytest.approx(1200 / 3600),
        "device": "NVIDIA H100",
        "eval_minutes": 2.0,
        "peak_memory_gb": 2.0,
    }
    assert cost_of(tmp_path / "nothing") == {}
    assert summarise_cost(None, None) == {}


def test_a_dvc_experiments_cost_is_read_from_its_commit(tmp_path):
    """DVC keeps the cost files in Git (cache: false): the comparison reads them at the
    experiment's commit, not from the workspace."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    _costs(tmp_path, train_s=300.0)
    subprocess.run([*git, "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "run"], cwd=tmp_path, check=True)
    rev = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.strip()
    _costs(tmp_path, train_s=900.0)  # the workspace moved on
    assert cost_at(tmp_path, rev)["train_minutes"] == 5.0
    assert cost_at(tmp_path, "0" * 40) == {}
