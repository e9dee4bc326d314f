"""95% intervals for held-out accuracy, with images as the independent units.

A problem's score is the share of its k sampled answers that are right (avg@k) or its one greedy
answer (0 or 1). The k answers to one image are not independent draws of the accuracy, so the
interval is over images: mean +- z * sd / sqrt(n) (normal approximation; evaluation sets here hold
hundreds of images). A before -> after gain is paired by image: the same interval over the
per-image differences, which removes the spread between easy and hard images from the gain's noise.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

Z95 = 1.959963984540054  # the normal distribution's 97.5% quantile


def mean_ci95(scores: Sequence[float]) -> Tuple[float, float]:
    """(mean, half-width of its 95% interval); the half-width is 0 for fewer than two scores."""
    n = len(scores)
    if n == 0:
        raise ValueError("scores: at least one score is needed for an accuracy")
    mean = sum(scores) / n
    if n < 2:
        return mean, 0.0
    variance = sum((s - mean) ** 2 for s in scores) / (n - 1)
    return mean, Z95 * math.sqrt(variance / n)


def paired_gain_ci95(before: Sequence[float], after: Sequence[float]) -> Tuple[float, float]:
    """(mean of after - before, half-width of its 95% interval), paired by position (image)."""
    if len(before) != len(after):
        raise ValueError(f"before / after: paired scores need one per image each, got {len(before)} and {len(after)}")
    return mean_ci95([a - b for a, b in zip(after, before)])
