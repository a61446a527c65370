"""``python -m bmtard <command>``: the package's commands, and the balance picture of a run."""

from __future__ import annotations

import pytest

from bmtard.__main__ import COMMANDS, main
from bmtard.experiments.curves import CURVES, TEMPERATURES, WEIGHTS, plot_balance, read_curve


def _curves(run, epochs=3):
    folder = run / CURVES
    folder.mkdir(parents=True)
    for name in (*TEMPERATURES, *WEIGHTS):
        rows = "".join(f"{e}\t{1 + e / 100}\n" for e in range(1, epochs + 1))
        (folder / f"{name}.tsv").write_text(f"step\t{name}\n{rows}")


def test_the_balance_picture_of_a_run(tmp_path):
    _curves(tmp_path / "run")
    assert read_curve(tmp_path / "run" / CURVES, "tau_nat") == [(1, 1.01), (2, 1.02), (3, 1.03)]
    out = tmp_path / "b.png"
    plot_balance(tmp_path / "run", out)
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and out.stat().st_size > 10_000


def test_curves_of_a_run_without_balance_is_one_line(tmp_path, capsys):
    assert main(["curves", "--run", str(tmp_path), "--out", str(tmp_path / "b.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tau_adv.tsv: not found" in err[0] and "bmtard or mtard" in err[0]
    assert not (tmp_path / "b.png").exists()


@pytest.mark.parametrize("argv", [[], ["nope"]])
def test_a_missing_or_unknown_command_names_the_commands(argv, capsys):
    assert main(argv) == 2
    out = capsys.readouterr()
    assert "evaluate,compare,curves" in out.out + out.err


def test_each_command_has_help(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as stop:
            main([name, "--help"])
        assert stop.value.code == 0
        assert f"python -m bmtard {name}" in capsys.readouterr().out
