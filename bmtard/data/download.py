"""The download stage: the splits and their manifest written (``datasets.prepare``), then kept as
the last good data beside the training stages' last good outputs; when a later run of the stage
cannot download (offline) and the data it would make is the kept data (the same data
parameters), the kept data is put back with one line saying so, as a model is
(``bmtard.training.stage.finished_before``). Snakemake deletes a job's outputs before it reruns
the job, so without this a failed download would leave no data at all."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from bmtard.config.schema import DataConfig, RunConfig, to_dict
from bmtard.core.io import write_json
from bmtard.core.outputs import keep_last_good, last_good_copy, restore
from bmtard.core.paths import from_project, writable_folder
from bmtard.data.datasets import DownloadFailed, prepare

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def run_download(cfg: DataConfig, run: RunConfig, out: str | Path) -> None:
    """Write ``out``/{train,val,test}.npz and the manifest; keep them under
    ``<run.state_dir>/last-good/``; put them back from there when the download fails and they
    were made with the same ``data`` parameters (a DownloadFailed otherwise)."""
    out = Path(out)
    writable_folder(run.state_dir, "run.state_dir", ", or null to keep no last good data")
    if cfg.local_root is None:
        writable_folder(
            cfg.download_root, "data.download_root", ", or set data.local_root to the dataset"
        )
    kept = None if run.state_dir is None else from_project(run.state_dir) / "last-good"
    try:
        manifest = prepare(cfg, out)
    except DownloadFailed as e:
        files = _kept_files(cfg, out, kept)
        if kept is None or files is None:
            raise
        restore(files, kept)
        log.warning(
            "%s; put back the last good data made with the same data parameters (from %s; "
            "delete it to download again)", e, last_good_copy(out, kept),
        )  # fmt: skip
        return
    write_json(out / MANIFEST, manifest)
    if kept is not None:
        names = [s["file"] for s in manifest["splits"].values()] + [MANIFEST]
        keep_last_good([out / n for n in names], kept)


def _kept_files(cfg: DataConfig, out: Path, kept: Path | None) -> list[Path] | None:
    """The data files kept under ``kept`` for ``out``, if the kept manifest was made with these
    data parameters and every split it names is there; else None."""
    if kept is None:
        return None
    copy = last_good_copy(out / MANIFEST, kept)
    try:
        manifest = json.loads(copy.read_text()) if copy is not None else None
        names = [s["file"] for s in manifest["splits"].values()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if manifest.get("params") != to_dict(cfg):
        return None
    files = [out / n for n in names] + [out / MANIFEST]
    if not all((c := last_good_copy(f, kept)) is not None and c.is_file() for f in files):
        return None
    return files
