"""Which code made a result (bmtard/core/provenance.py): the hash of the code folders, the git
commit and whether the code differs from it."""

from __future__ import annotations

import hashlib
import shutil
import subprocess

from bmtard.core import provenance

from conftest import ROOT

EMPTY = hashlib.sha256().hexdigest()


def test_the_package_hash_covers_every_code_file_and_follows_an_edit(tmp_path):
    assert provenance.ROOT == ROOT
    assert provenance.package_sha256() != EMPTY  # it found the files
    for folder in provenance.CODE_FOLDERS:
        shutil.copytree(
            ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    before = provenance.package_sha256(tmp_path)
    assert before == provenance.package_sha256()
    (tmp_path / "stages" / "distill.py").write_text("# edited\n", encoding="utf-8")
    assert provenance.package_sha256(tmp_path) != before


def test_the_git_state_is_the_commit_and_whether_the_code_differs(tmp_path, monkeypatch):
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    for folder in provenance.CODE_FOLDERS:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "code"], check=True)
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    clean = provenance._git()
    assert len(clean["git_commit"]) == 40 and clean["git_dirty"] is False
    (tmp_path / "params.yaml").write_text("a: 1\n")  # not code
    assert provenance._git()["git_dirty"] is False
    (tmp_path / "stages" / "a.py").write_text("x = 2\n")
    assert provenance._git() == {**clean, "git_dirty": True}
