"""The prepared splits and their manifest, as every training stage reads them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bmtard.data.splits import Split, load_manifest, load_split


@dataclass(frozen=True)
class StageData:
    """The train and test splits (from the download stage), the validation split where it was
    asked for, and the manifest that describes them."""

    train: Split
    test: Split
    manifest: dict[str, Any]
    val: Split | None = None  # held out of the training split (data.val_limit)

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def dataset(self) -> str:
        """The ``data.dataset`` these splits were prepared from
        (``bmtard.config.dataset_table``)."""
        return str(self.manifest["dataset"])

    @property
    def image_size(self) -> int | None:
        """Pixels per side of every image (None for a manifest written before it was
        recorded)."""
        size = self.manifest.get("image_size")
        return None if size is None else int(size)

    @property
    def splits(self) -> dict[str, Any]:
        """The manifest's description of each split (counts, SHA-256s, source files)."""
        return self.manifest.get("splits", {})

    def model_fields(self) -> dict[str, Any]:
        """What a model's record says of the data it was made for (``TrainingRecord``)."""
        return {"dataset": self.dataset, "image_size": self.image_size}

    @classmethod
    def load(cls, data_dir: str | Path, *, val: bool = False) -> StageData:
        """Read ``data_dir``'s manifest and the train and test splits, each checked against its
        SHA-256; with ``val``, the validation split too (None where the manifest has none: data
        prepared before it, or without ``data.val_limit``)."""
        data_dir = Path(data_dir)
        manifest = load_manifest(data_dir)
        splits = manifest["splits"]
        held = splits.get("val", {})
        return cls(
            load_split(data_dir / "train.npz", splits["train"]["sha256"]),
            load_split(data_dir / "test.npz", splits["test"]["sha256"]),
            manifest,
            load_split(data_dir / "val.npz", held["sha256"]) if val and held.get("count") else None,
        )
