"""bench/gpu_acceptance.py: the whole script on the CPU with tiny sizes (what CI can run of it:
every part reports, none fails, the CUDA tests skip, the distillation's SIGTERM lands and the
rerun resumes), and its machinery: a part's command and everything it started are killed at the
part's limit, a spent budget skips the parts left, and the report says what failed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from bench import gpu_acceptance
from bench.acceptance import proc, report
from bench.acceptance.parts import FAIL, PASS, SKIP, Context, Part, junit, verbose_outcomes
from bmtard.runtime.execution import FAST_PATH

from conftest import ROOT


def test_tiny_cpu_run_passes_every_part(tmp_path):
    out = tmp_path / "report"
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_acceptance.py"), "--device", "cpu"]
    ran = subprocess.run(
        [*cmd, "--tiny", "--out", str(out)], cwd=tmp_path, capture_output=True, text=True,
        timeout=600, env={**os.environ, "PYTHONPATH": ""},
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-4000:]
    record = json.loads((out / "acceptance.json").read_text())
    parts = {p["name"]: p for p in record["parts"]}
    assert {k: p["status"] for k, p in parts.items()} == {
        "environment": PASS, "cuda_tests": SKIP, "pipeline": PASS, "ddp": SKIP,
        "bench_fp32": PASS, "bench_switches": PASS, "bench_bf16_channels_last": PASS,
        "bench_compile": PASS,
    }  # fmt: skip
    assert record["passed"] and record["total_s"] <= record["budget_s"]
    tests = parts["cuda_tests"]["numbers"]["tests"]
    assert len(tests) >= 7 and all(t["outcome"] == "skipped" for t in tests.values())
    run = parts["pipeline"]["numbers"]
    assert run["sigterm"]["sent"] and run["sigterm"]["stopped_line"] and run["resumed"]
    assert run["stages"]["distill (SIGTERM)"]["returncode"] == 143
    assert set(run["metrics"]) >= {"clean", "fgsm", "pgd_sat"}
    for name in ("bench_fp32", "bench_bf16_channels_last", "bench_compile"):
        assert parts[name]["numbers"]["ratio_ours_over_official"] > 0
    switches = parts["bench_switches"]["numbers"]
    assert list(switches) == ["faithful", *FAST_PATH, "all"]
    assert all(s["images_per_s"] > 0 and s["projected_hours_300_epochs"] > 0
               for s in switches.values())  # fmt: skip
    page = (out / "acceptance.md").read_text()
    assert page.startswith("# GPU acceptance: **PASSED**")
    assert all(f"| {name} |" in page for name in parts)


def state(pid: int) -> str:
    """A process's state letter (R, S, Z, ...) from /proc; "" once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def test_a_part_that_hangs_is_killed_with_what_it_started(tmp_path):
    """The command and its child are SIGKILLed at the limit (their process group)."""
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    began = time.monotonic()
    ran = proc.run([sys.executable, "-c", script], timeout=2, log=tmp_path / "log")
    assert ran.timed_out and time.monotonic() - began < 20
    child = int(pid_file.read_text())
    for _ in range(50):  # the child is gone (reaped by init) once the kill lands
        if not os.path.exists(f"/proc/{child}") or state(child) == "Z":  # gone, or a zombie
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the child {child} outlived its part")
    assert "killed at its time limit" in (tmp_path / "log").read_text()


def test_a_spent_budget_skips_the_parts_left(tmp_path, monkeypatch):
    calls = []

    def slow(ctx, timeout):
        calls.append(timeout)
        time.sleep(0.3)
        return Part("x", PASS, "ran")

    monkeypatch.setattr(gpu_acceptance, "PARTS", (("environment", 30, slow), ("b", 30, slow)))
    monkeypatch.setattr(gpu_acceptance, "MIN_START_S", 0.2)
    args = gpu_acceptance.parse(["--out", str(tmp_path), "--budget", "0.4"])
    args.parts = ["environment", "b"]
    done = gpu_acceptance.run_parts(args, Context(tmp_path, tmp_path, "cpu", True))
    assert [p.status for p in done] == [PASS, SKIP] and calls[0] <= 0.4
    assert "budget is spent" in done[1].summary


def test_report_puts_a_failure_first_and_fails_the_run(tmp_path):
    parts = [
        Part("environment", PASS, "torch 2.11", 1.0, 30.0),
        Part("pipeline", FAIL, "distill: exit 1", 5.0, 110.0, {"stages": {}}, "Traceback ..."),
    ]
    header = {
        "command": "python3 bench/gpu_acceptance.py --out x", "device": "cuda", "tiny": False,
        "started": "now", "device_name": "NVIDIA H200", "torch": "2.11", "budget_s": 480.0,
        "total_s": 6.0,
    }  # fmt: skip
    js, md = report.write(tmp_path, header, parts)
    assert not json.loads(js.read_text())["passed"]
    page = md.read_text()
    assert page.startswith("# GPU acceptance: **FAILED**")
    assert "| pipeline | fail | 5 (110) | distill: exit 1 |" in page and "Traceback ..." in page


def test_junit_outcomes(tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<testsuites><testsuite><testcase name="a" time="1.5"/>'
        '<testcase name="b" time="0.1"><failure message="assert 1 == 2"/></testcase>'
        '<testcase name="c" time="0"><skipped message="no CUDA device"/></testcase>'
        "</testsuite></testsuites>"
    )
    got = junit(xml)
    assert {k: v["outcome"] for k, v in got.items()} == {
        "a": "passed", "b": "failed", "c": "skipped",
    }  # fmt: skip
    assert got["b"]["message"] == "assert 1 == 2" and got["a"]["seconds"] == 1.5
    # a run killed at its limit has no XML: the outcomes so far come from pytest -v's lines
    text = (
        "tests/test_cuda.py::test_a PASSED   [ 14%]\n"
        "tests/test_cuda.py::test_b FAILED   [ 28%]\n"
        "tests/test_cuda.py::test_c SKIPPED (no CUDA device)   [ 42%]\n"
        "tests/test_cuda.py::test_d "
    )
    assert {k: v["outcome"] for k, v in verbose_outcomes(text).items()} == {
        "test_a": "passed", "test_b": "failed", "test_c": "skipped",
    }  # fmt: skip


def test_unknown_part_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        gpu_acceptance.parse(["--out", "x", "--only", "pipeline,nope"])
    assert e.value.code == 2
    assert "--only: unknown nope; the parts are environment, cuda_tests" in capsys.readouterr().err
