"""Model checkpoints: our own format (model + what built it) and imports of plain state_dicts.

Our files are dicts of tensors and plain data, saved with torch.save and always read with
``torch.load(..., weights_only=True)``, so opening a checkpoint never runs code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from bmtard.errors import CheckpointError
from bmtard.io import sha256_file, write_atomic
from bmtard.models import build_model

FORMAT = "bmtard.model/1"


def save_model(
    path: str | Path,
    model: nn.Module,
    *,
    arch: str,
    width: float,
    num_classes: int,
    meta: dict[str, Any] | None = None,
) -> None:
    """Save ``model``'s weights with its architecture and ``meta`` (plain data), atomically."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "arch": arch,
        "width": float(width),
        "num_classes": int(num_classes),
        "state_dict": state,
        "meta": meta or {},
    }
    write_atomic(path, lambda tmp: torch.save(payload, tmp))


def _read(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file; all mean "unreadable"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: cannot be read as a weights-only checkpoint ({first})"
        ) from None


def load_model(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by ``save_model``; return (model in eval mode, info sans weights)."""
    payload = _read(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a bmtard model file; for a plain state_dict use import_state_dict"
        )
    try:
        model = build_model(payload["arch"], payload["num_classes"], payload["width"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: cannot rebuild its model ({e})") from None
    load_state_dict_strict(model, payload["state_dict"], str(path), payload["arch"])
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    info["sha256"] = sha256_file(path)
    return model.to(device).eval(), info


def extract_state_dict(payload: Any, source: str) -> dict[str, torch.Tensor]:
    """The state_dict inside a published checkpoint: the dict itself, or under 'state_dict' /
    'model' / 'net'; a 'module.' prefix (DataParallel) is removed."""
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
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


def import_state_dict(
    path: str | Path, arch: str, num_classes: int, width: float = 1.0
) -> nn.Module:
    """Build ``arch`` and load a published checkpoint into it (weights_only, strict keys)."""
    model = build_model(arch, num_classes, width)
    state = extract_state_dict(_read(path), str(path))
    load_state_dict_strict(model, state, str(path), arch)
    return model.eval()
