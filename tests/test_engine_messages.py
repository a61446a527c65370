"""The engines' own messages about bad parameters: under Snakemake our one line, without
Snakemake's stack frames (the Snakefile validates params.yaml before Snakemake reads it), and a
failed job's line on the console; DVC's messages, which come before any stage of ours can run,
are the ones docs/after-a-crash.md explains, and ``python -m bmtard check`` gives our line."""

from __future__ import annotations

import pytest
import yaml

from bmtard.experiments.grid import expand

from conftest import ROOT
from pipeline_helpers import BIN, copy_project, read_params, run, set_key, write_params

SNAKEMAKE = [str(BIN / "snakemake"), "--cores", "1"]
DOCS = (ROOT / "docs" / "after-a-crash.md").read_text()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return copy_project(tmp_path_factory.mktemp("messages"))


@pytest.fixture
def params(repo):
    """The copy's params.yaml, put back after the test."""
    text = (repo / "params.yaml").read_text()
    yield repo / "params.yaml"
    (repo / "params.yaml").write_text(text)


def only_our_line(proc) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and 'File "' not in out and "Error in file" not in out, out
    lines = [ln for ln in out.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, out
    return lines[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "params.yaml: empty; required sections: run, data"),
        ("run: [1\n", "params.yaml: not valid YAML (line 2"),
        (None, "params.yaml: distill.optim.lr = 1000: must be <= 100"),
    ],
)
def test_snakemake_says_our_line_about_bad_params(repo, params, text, message):
    if text is None:
        raw = read_params(repo)
        set_key(raw, "distill.optim.lr", 1000)
        write_params(repo, raw)
    else:
        params.write_text(text)
    line = only_our_line(run(repo, *SNAKEMAKE, "--dry-run", check=False))
    assert line.startswith("error: ") and message in line, line


def test_snakemake_says_our_line_about_a_bad_grid(repo):
    (repo / "bad-grid.yaml").write_text(yaml.safe_dump({"grid": {"distill.method": ["sat", "x"]}}))
    proc = run(repo, *SNAKEMAKE, "--dry-run", "--configfile", "bad-grid.yaml", check=False)
    assert only_our_line(proc).startswith("error: experiment method-x: distill.method = 'x'")


def test_a_failed_job_shows_our_line_on_the_console(repo, params):
    raw = read_params(repo)
    set_key(raw, "data.local_root", "/nowhere")
    write_params(repo, raw)
    proc = run(repo, *SNAKEMAKE, "download", check=False)
    assert proc.returncode != 0
    assert (
        "\nerror: data.local_root = '/nowhere': no 'cifar-10-batches-py' folder there"
        in proc.stderr
    ), proc.stderr[-3000:]


@pytest.mark.parametrize(
    ("text", "dvc_says"),
    [
        ("", "Could not find 'distill.method'"),
        ("distill:\n  method: bmtard\n", "Parameters 'data' are missing from 'params.yaml'"),
    ],
)
def test_dvc_messages_about_bad_params_are_explained(repo, params, text, dvc_says):
    """DVC reads params.yaml before any stage runs: its message is explained in the docs, and
    the check command gives ours."""
    params.write_text(text)
    proc = run(repo, str(BIN / "dvc"), "repro", check=False)
    assert proc.returncode != 0 and dvc_says in proc.stderr, proc.stderr[-2000:]
    assert dvc_says in DOCS  # the table of docs/after-a-crash.md names it
    line = only_our_line(run(repo, str(BIN / "python"), "-m", "bmtard", "check", check=False))
    assert line.startswith("error: params.yaml: "), line


def test_the_check_command_passes_a_good_grid(repo):
    proc = run(repo, str(BIN / "python"), "-m", "bmtard", "check", "--grid", "presets/grid.yaml")
    n = len(expand(yaml.safe_load((repo / "presets" / "grid.yaml").read_text())["grid"]))
    assert n >= 17  # each method at least once, B-MTARD and AdaAD with IGDM and at two seeds
    assert proc.stdout.strip() == f"params.yaml: valid; presets/grid.yaml: {n} valid experiments"
