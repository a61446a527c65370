"""Seeded weights and a fixed input, the same on both sides of the comparison with the official
architecture definitions (``make_fixtures.py`` writes the official side, the tests compute ours).

Every tensor of a state_dict is drawn from its own generator, seeded by the SHA-256 of the seed
and the key's name, so a key's values do not depend on the others (nor on Python's hash seed):
convolution and linear weights N(0, 1/fan_in); biases, BatchNorm shifts and running means
N(0, 0.1^2); BatchNorm scales and running variances U(0.5, 1.5); counters 0. Float64 throughout,
so that two definitions computing the same function agree to about 1e-12.
"""

from __future__ import annotations

import hashlib

import torch

SEED = 20261206
N_IMAGES = 2


def _generator(seed: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def seeded_tensor(name: str, shape: tuple[int, ...], dtype: str, seed: int = SEED) -> torch.Tensor:
    """The value of state_dict key ``name`` (its ``shape`` and dtype name)."""
    if dtype != "float":
        return torch.zeros(shape, dtype=torch.long)
    g = _generator(seed, name)
    if name.endswith("running_var") or (len(shape) == 1 and name.endswith("weight")):
        return torch.rand(shape, generator=g, dtype=torch.float64) + 0.5
    if len(shape) == 1:  # biases, BatchNorm shifts, running means
        return 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)
    fan_in = max(1, torch.Size(shape).numel() // shape[0])
    return torch.randn(shape, generator=g, dtype=torch.float64) / fan_in**0.5


def seeded_state(keys: list[list], seed: int = SEED) -> dict[str, torch.Tensor]:
    """A state_dict of ``keys`` ([name, shape, dtype name] each) with seeded values."""
    return {name: seeded_tensor(name, tuple(shape), dtype, seed) for name, shape, dtype in keys}


def fixed_input(size: int = 32, n: int = N_IMAGES, seed: int = SEED) -> torch.Tensor:
    """(n, 3, size, size) float64 images in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, size, size), generator=g, dtype=torch.float64)


def key_list(state: dict[str, torch.Tensor]) -> list[list]:
    """[name, shape, "float" | "int"] of every entry of a state_dict, in its order."""
    return [
        [k, list(v.shape), "float" if v.is_floating_point() else "int"] for k, v in state.items()
    ]
