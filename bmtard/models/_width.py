"""Channel scaling shared by the model families."""


def scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded to the nearest integer, at least 1 (width 1.0 keeps it)."""
    return max(1, round(channels * width))


def wide_layout(depth: int, widen_factor: int, width: float) -> tuple[int, tuple[int, ...]]:
    """A Wide ResNet's blocks per group and its four channel counts (stem, then the three
    groups), scaled by ``width``; ValueError unless depth = 6n + 4 with n >= 1."""
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(f"WideResNet depth = {depth}: must be 6n + 4 with n >= 1")
    k = widen_factor
    return (depth - 4) // 6, tuple(scaled(c, width) for c in (16, 16 * k, 32 * k, 64 * k))
