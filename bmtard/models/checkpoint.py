"""Model checkpoints: our own format (model + what built it + how it was made) and imports of
plain published state_dicts.

Our files are dicts of tensors and plain data, saved with torch.save and always read with
``torch.load(..., weights_only=True)``, so opening a checkpoint never runs code. torch does not
check the archive's CRCs when it loads, so a flipped bit would load silently: a zip checkpoint's
CRCs are checked first (``zipfile.testzip``).
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bmtard.core.errors import CheckpointError
from bmtard.core.io import save_torch, sha256_file, write_atomic
from bmtard.models import build_model

FORMAT = "bmtard.model/2"
OLD_FORMATS = ("bmtard.model/1",)  # meta instead of record; still readable
#: a teacher stage's output when the method trained no model there (``save_no_model``)
NO_MODEL = "bmtard.no-model/1"


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild a model: architecture name, width multiplier, number of classes."""

    arch: str
    width: float
    num_classes: int

    def build(self) -> nn.Module:
        return build_model(self.arch, self.num_classes, self.width)


@dataclass(frozen=True)
class TrainingRecord:
    """How a model came to be (saved with it, shown in its model card)."""

    stage: str | None = None  # clean_teacher | robust_teacher | distill; None: outside the pipeline
    source: str = "trained"  # "trained", or the file it was imported from
    source_sha256: str | None = None
    method: str | None = None  # the training method (e.g. b_mtard, trades)
    epoch: int | None = None  # the epoch whose weights these are
    selection: str | None = None  # best | last
    selected_metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # the stage's parameter section
    data: dict[str, Any] = field(default_factory=dict)  # the data manifest's splits (SHA-256s)
    teachers: dict[str, Any] = field(default_factory=dict)  # role -> {"arch", "sha256"}
    run: dict[str, Any] = field(default_factory=dict)  # seed, device, precision, ... it ran with
    code: dict[str, Any] = field(default_factory=dict)  # bmtard.core.provenance.code_version()
    key: str | None = None  # digest of what made the run (bmtard.training.stage.state_key)
    # what the file is (ROLES: clean_teacher | robust_teacher | student; the networks a method
    # trains besides the student are kept in the student's file, by name) and the data it is
    # for: its dataset and input size (pixels per side), from the data's manifest. None: a file
    # made before they were recorded, or outside the pipeline
    role: str | None = None
    dataset: str | None = None
    image_size: int | None = None
    # the published teacher it is (bmtard.config.teacher_table), for a teacher imported by name
    published: str | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainingRecord:
        """From a saved record (or an older file's meta); unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


#: what a model file of the pipeline is, by its record's ``role``
ROLES = {
    "clean_teacher": "the clean teacher",
    "robust_teacher": "the robust teacher",
    "student": "a student",
}
#: the role of a file written before roles were recorded, by its record's ``stage``
ROLE_OF_STAGE = {"clean_teacher": "clean_teacher", "robust_teacher": "robust_teacher"}
ROLE_OF_STAGE["distill"] = "student"


def role_of(record: TrainingRecord) -> str | None:
    """The role a record gives its file: ``role``, or for an older file the one its stage
    implies; None when neither says (a file from outside the pipeline)."""
    return record.role or ROLE_OF_STAGE.get(record.stage or "")


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint file holds besides the weights."""

    spec: ModelSpec
    sha256: str  # of the file
    record: TrainingRecord


def save_model(
    path: str | Path,
    spec: ModelSpec,
    state: dict[str, torch.Tensor],
    record: TrainingRecord,
    networks: dict[str, dict[str, torch.Tensor]] | None = None,
) -> None:
    """Save weights ``state`` with their spec and record, atomically; ``networks``: the state_dicts
    of the networks the training method trained besides the model (a fine-tuned teacher, a peer),
    by name, kept beside it (``saved_networks``). The same inputs give the same bytes: the record
    goes through JSON first, because pickle writes a back-reference where one object appears
    twice, so equal records built from different objects (a fresh run's, a resumed run's) would
    otherwise differ byte for byte."""
    payload = {
        "format": FORMAT,
        "arch": spec.arch,
        "width": float(spec.width),
        "num_classes": int(spec.num_classes),
        "state_dict": _plain(state),
        "record": json.loads(json.dumps(dataclasses.asdict(record))),
    }
    if networks:
        payload["networks"] = {name: _plain(net) for name, net in networks.items()}
    write_atomic(path, lambda tmp: save_torch(payload, tmp))


def _plain(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def saved_networks(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """The state_dicts a model file of ours keeps beside its model, by name ({} if none)."""
    payload = read_checkpoint(path)
    networks = payload.get("networks", {}) if isinstance(payload, dict) else {}
    return dict(networks)


def save_no_model(path: str | Path, reason: str) -> None:
    """Write a file in a model's place that says why no model is there (``load_model`` refuses
    it with ``reason``): the output of a teacher stage whose teacher no method needs."""
    write_atomic(path, lambda tmp: save_torch({"format": NO_MODEL, "reason": reason}, tmp))


def saved_record(path: str | Path) -> TrainingRecord | None:
    """The record of a model file of ours, read without its weights (None if the file is
    absent, not ours, or unreadable)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # absent, damaged, or not a zip checkpoint: no record to read
        return None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        return None
    return TrainingRecord.from_dict(payload.get("record", {}))


def check_archive(path: str | Path) -> None:
    """Raise a CheckpointError if a zip checkpoint is truncated or fails a CRC check."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return  # the legacy (pre-1.6) format: torch.load checks what it can
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: damaged archive ({e}); restore or recreate it") from None
    if bad is not None:
        raise CheckpointError(
            f"{path}: damaged ({bad} fails its CRC check); restore or recreate the file"
        )


def read_checkpoint(path: str | Path) -> Any:
    """The checkpoint's content, loaded weights-only (no code runs) after the archive check."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    check_archive(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file; all mean "unreadable"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: refused or unreadable as a weights-only checkpoint ({first[:200]})"
        ) from None


def load_model(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[nn.Module, CheckpointInfo]:
    """Rebuild a model saved by ``save_model``; return (model in eval mode, its description)."""
    payload = read_checkpoint(path)
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if fmt == NO_MODEL:
        raise CheckpointError(f"{path}: holds no model ({payload.get('reason')})")
    if fmt != FORMAT and fmt not in OLD_FORMATS:
        raise CheckpointError(
            f"{path}: not a bmtard model file; for a plain state_dict use import_state_dict"
        )
    try:
        spec = ModelSpec(payload["arch"], float(payload["width"]), int(payload["num_classes"]))
        model = spec.build()
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: cannot rebuild its model ({e})") from None
    load_state_dict_strict(model, payload["state_dict"], str(path), spec.arch)
    raw = payload.get("record", payload.get("meta", {}))
    info = CheckpointInfo(spec, sha256_file(path), TrainingRecord.from_dict(raw))
    return model.to(device).eval(), info


def check_role(path: str | Path, info: CheckpointInfo, role: str) -> None:
    """Refuse a model file whose record says it is another ``role`` (``ROLES``) than the one it
    is loaded as (e.g. the clean teacher's file given as the robust teacher). A file that says
    nothing (outside the pipeline) is taken as given."""
    held = role_of(info.record)
    if held is not None and held != role:
        raise CheckpointError(
            f"{path}: holds {ROLES.get(held, held)} (its record's role: {held}), not "
            f"{ROLES[role]}; give {ROLES[role]}'s file"
        )


def check_fits_data(
    path: str | Path,
    info: CheckpointInfo,
    *,
    where: str,
    num_classes: int,
    image_size: int | None,
    dataset: str | None,
    what: str = "a model",
) -> None:
    """Refuse a model made for other images than the data at ``where`` (a file or folder, for
    the message): another number of classes, or (where its record says) another image size or
    dataset. ``what`` names the model in the message (e.g. "teacher")."""
    spec, rec = info.spec, info.record
    of = f" ({dataset})" if dataset else ""
    if spec.num_classes != num_classes:
        raise CheckpointError(
            f"{path}: {what} of {spec.num_classes} classes, and {where} has {num_classes}{of}"
        )
    if rec.image_size is not None and image_size is not None and rec.image_size != image_size:
        made = f", {rec.dataset}" if rec.dataset else ""
        raise CheckpointError(
            f"{path}: {what} of {rec.image_size}x{rec.image_size} images{made}, and {where} "
            f"holds {image_size}x{image_size} images{of}"
        )
    if rec.dataset is not None and dataset is not None and rec.dataset != dataset:
        raise CheckpointError(f"{path}: {what} of {rec.dataset}, and {where} holds {dataset}")


def extract_state_dict(payload: Any, source: str) -> dict[str, torch.Tensor]:
    """The state_dict inside a published checkpoint: the dict itself, or under 'state_dict' /
    'model' / 'net'; a 'module.' prefix (DataParallel) is removed."""
    if isinstance(payload, dict) and payload.get("format") in (FORMAT, *OLD_FORMATS):
        payload = payload["state_dict"]
    for key in ("state_dict", "model", "net", "model_state_dict"):
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            payload = payload[key]
            break
    if not isinstance(payload, dict) or not all(
        isinstance(v, torch.Tensor) for v in payload.values()
    ):
        raise CheckpointError(f"{source}: no state_dict (a mapping of names to tensors) found")
    if payload and all(k.startswith("module.") for k in payload):
        payload = {k[len("module.") :]: v for k, v in payload.items()}
    return payload


def load_state_dict_strict(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, arch: str
) -> None:
    """Load ``state`` into ``model``; on any missing, unexpected or mis-shaped key raise a
    CheckpointError that lists them (at most 5 of each)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{label}: {', '.join(items[:5])}{more}")
        raise CheckpointError(f"{source} does not fit {arch}: " + "; ".join(parts))
    model.load_state_dict(state)


def import_state_dict(path: str | Path, spec: ModelSpec) -> nn.Module:
    """Build ``spec`` and load a published checkpoint into it (weights_only, strict keys)."""
    try:
        model = spec.build()
    except ValueError as e:
        raise CheckpointError(f"{path}: cannot build {spec.arch} ({e})") from None
    state = extract_state_dict(read_checkpoint(path), str(path))
    load_state_dict_strict(model, state, str(path), spec.arch)
    return model.eval()
