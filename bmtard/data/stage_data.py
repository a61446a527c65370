"""The prepared splits and their manifest, as every training stage reads them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bmtard.data.splits import Split, load_manifest, load_split


@dataclass(frozen=True)
class StageData:
    """The train and test splits (from the download stage) and the manifest that describes them."""

    train: Split
    test: Split
    manifest: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def dataset(self) -> str:
        """The ``data.dataset`` these splits were prepared from
        (``bmtard.config.dataset_table``)."""
        return str(self.manifest["dataset"])

    @property
    def splits(self) -> dict[str, Any]:
        """The manifest's description of each split (counts, SHA-256s, source files)."""
        return self.manifest.get("splits", {})

    @classmethod
    def load(cls, data_dir: str | Path) -> StageData:
        """Read ``data_dir``'s manifest and both splits, each checked against its SHA-256."""
        data_dir = Path(data_dir)
        manifest = load_manifest(data_dir)
        splits = manifest["splits"]
        return cls(
            load_split(data_dir / "train.npz", splits["train"]["sha256"]),
            load_split(data_dir / "test.npz", splits["test"]["sha256"]),
            manifest,
        )
