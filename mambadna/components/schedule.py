"""Learning-rate schedule shared by pretraining and fine-tuning."""
from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Factor on the peak learning rate at ``step`` (0-based): linear warm-up over
    ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    return _cosine((step - warmup) / max(1, total - warmup), min_ratio)


def warmup_cosine_progress(progress: float, warmup: float, min_ratio: float) -> float:
    """The same shape over a fraction of the run (0..1) instead of steps: linear
    warm-up over the first ``warmup`` of it, cosine decay to ``min_ratio`` at 1
    (time-budgeted runs, whose step count is not known in advance)."""
    if progress < warmup:
        return max(progress, 1e-3) / warmup
    return _cosine((progress - warmup) / max(1e-9, 1.0 - warmup), min_ratio)


def _cosine(t: float, min_ratio: float) -> float:
    """Half a cosine from 1 at t = 0 to min_ratio at t >= 1."""
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
