"""Channel scaling shared by the model families."""


def scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded to the nearest integer, at least 1 (width 1.0 keeps it)."""
    return max(1, round(channels * width))
