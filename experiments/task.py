"""The fine-detail task: how wide are the stripes filling a box (1, 2 or 3 px)?

Why this task: the stripes alternate ink and background with equal widths, so every stripe width
has the same share of ink (1/2). Pixelation to 10% (64 px -> 6 px, blocks of ~11 px, bilinear with
antialiasing) averages each block over several stripes, and the three widths blur into the same flat
tint: the answer-bearing detail is gone while the box, its position and colours stay visible. At
full resolution the width is plain inside every 8 x 8 vision patch the box covers.

(A first version asked for a 3 x 5 px digit in the box; the tiny teacher did not get past chance on it
within the compute budget, while stripe width is learned in a few hundred steps.)

Samples are a pure function of (seed, split, index); the splits use disjoint random streams.
"""
from __future__ import annotations

from typing import List

import numpy as np
from PIL import Image

from vaopd_trainer.data import Sample

QUESTION = "How wide are the stripes?"
# The format instruction the shipped models were trained with, added after the question inside the
# chat template (the trainer's ``prompt_suffix``); the paper's Geometry3K recipe adds none.
PROMPT_SUFFIX = " Put the final answer in \\boxed{}."
SPLITS = {"train": 0, "val": 1, "test": 2}
IMAGE_SIZE = 64
ANSWERS = ("1", "2", "3")  # stripe width in px; uniform, so chance accuracy is 1/3
FRAME = (90, 90, 90)


def template(answer: str) -> str:
    """The response the teacher is trained to give: one reading step, then the boxed answer."""
    return f"The stripes are {answer} px. \\boxed{{{answer}}}"


def _split_id(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split: must be one of {sorted(SPLITS)}, got {split!r}")
    return SPLITS[split]


def render(width: int, *, top: int = 18, left: int = 18, size: int = 28, vertical: bool = False,
           background: int = 200, ink=(40, 40, 40)) -> Image.Image:
    """A frame (the figure) and a ``size`` px box at (top, left) filled with ``width`` px stripes."""
    pixels = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    pixels[:] = background
    pixels[1, 1:-1] = pixels[-2, 1:-1] = pixels[1:-1, 1] = pixels[1:-1, -2] = FRAME
    along = np.arange(size)
    on = (along // width) % 2 == 0
    mask = np.broadcast_to(on[None, :] if vertical else on[:, None], (size, size))
    pixels[top:top + size, left:left + size][mask] = ink
    return Image.fromarray(pixels)


def sample(seed: int, split: str, index: int) -> Sample:
    rng = np.random.default_rng([seed, _split_id(split), index])
    answer = str(rng.choice(ANSWERS))
    size = int(rng.integers(24, 31))
    top, left = (int(v) for v in rng.integers(3, IMAGE_SIZE - 3 - size, size=2))  # clear of the frame
    image = render(int(answer), top=top, left=left, size=size, vertical=bool(rng.integers(2)),
                   background=int(rng.integers(170, 231)), ink=tuple(int(c) for c in rng.integers(20, 121, size=3)))
    return Sample(image, QUESTION, answer)


def dataset(seed: int, split: str, count: int, offset: int = 0) -> List[Sample]:
    return [sample(seed, split, offset + i) for i in range(count)]
