"""The dilution task: a long response whose language decisions outnumber its one visual decision.

The image is the stripe task's (``experiments.task``: how wide, 1-3 px, lost under 10%
pixelation). The question adds an 8-bit code in text; the response has 8 word slots, each with two
synonyms that start with different letters, and bit i picks slot i's synonym (0: the first, 1: the
second). The slots are spread through ~80 characters of fixed text that ends "... w px. \\boxed{w}".
So a student that has the format but the code backwards disagrees with the teacher at ~8
language tokens per response and at most two visual ones (the width digit and its copy): the
setting where OPD's token mean spends most of its gradient on language and VA-OPD's reweighting
could matter.

Samples are a pure function of (seed, split, index): image and answer are ``task.sample``'s, the
code comes from its own random stream.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from vaopd_trainer.data import Sample

from . import task

NUM_BITS = 8
QUESTION = "How wide are the stripes? Code "
# (first synonym, second synonym) per slot; first letters differ, so the slot is decided at its
# first character (one high-KL token when student and teacher disagree)
SLOTS = (("big", "large"), ("box", "frame"), ("shows", "has"), ("lines", "bands"), ("seem", "look"),
         ("even", "regular"), ("each", "one"), ("about", "near"))
TEMPLATE = "In this image a {} {} {} {} that {} {}; {} is {} {w} px. \\boxed{{{w}}}"
IMAGE_SIZE = task.IMAGE_SIZE
PIXEL_BUDGET = (16 * 16, IMAGE_SIZE ** 2)  # (min_pixels, max_pixels): the images as they are
ANSWERS = task.ANSWERS

assert len(SLOTS) == NUM_BITS and all(a[0] != b[0] for a, b in SLOTS)


def question(bits: str) -> str:
    return QUESTION + bits


def code_of(question_text: str) -> str:
    """The bit string carried by a question of this task."""
    if not question_text.startswith(QUESTION) or len(question_text) != len(QUESTION) + NUM_BITS:
        raise ValueError(f"question: expected {QUESTION!r} + {NUM_BITS} bits, got {question_text!r}")
    bits = question_text[len(QUESTION):]
    if set(bits) - {"0", "1"}:
        raise ValueError(f"question: the code must be 0/1 bits, got {bits!r}")
    return bits


def response(bits: str, answer: str, flipped: bool = False) -> str:
    """The response for a code and a width; ``flipped`` uses the other synonym at every slot."""
    words = [pair[(bit == "1") != flipped] for pair, bit in zip(SLOTS, bits)]
    return TEMPLATE.format(*words, w=answer)


def sample(seed: int, split: str, index: int) -> Sample:
    base = task.sample(seed, split, index)
    rng = np.random.default_rng([seed, task.SPLITS[split], index, 1])  # a stream apart from the image's
    bits = "".join(str(int(b)) for b in rng.integers(0, 2, size=NUM_BITS))
    return Sample(base.image, question(bits), base.answer)


def dataset(seed: int, split: str, count: int, offset: int = 0) -> List[Sample]:
    return [sample(seed, split, offset + i) for i in range(count)]


def _pattern() -> "re.Pattern":
    parts = re.split(r"(\{\}|\{w\}|\{\{\{w\}\}\})", TEMPLATE)
    slot = iter(SLOTS)
    out = []
    for part in parts:
        if part == "{}":
            a, b = next(slot)
            out.append(f"({re.escape(a)}|{re.escape(b)})")
        elif part == "{w}":
            out.append(r"(\d)")
        elif part == "{{{w}}}":
            out.append(r"\{(\d)\}")
        else:
            out.append(re.escape(part.replace("{{", "{").replace("}}", "}")))
    return re.compile("".join(out))


PATTERN = _pattern()


@dataclass(frozen=True)
class Score:
    format_ok: bool  # the whole response is the template with one synonym per slot
    slots_correct: int  # slots holding the synonym the code asks for (0 when the format is broken)
    slots_flipped: int  # slots holding the other synonym
    width: Optional[str]  # the stated width digit (None when the format is broken)


def score(text: str, bits: str) -> Score:
    """Read a response back against its code (broken formats are scored as they are: no slot credit)."""
    match = PATTERN.fullmatch(text.strip())
    if match is None:
        return Score(False, 0, 0, None)
    words = match.groups()[:NUM_BITS]
    right = sum(word == pair[bit == "1"] for word, pair, bit in zip(words, SLOTS, bits))
    return Score(True, right, NUM_BITS - right, match.group(NUM_BITS + 1))


def character_kinds(text: str, bits: Optional[str] = None) -> List[str]:
    """Kind of every character of a response: "slot" (a slot's first character, where the synonym
    is decided), "digit" (the width and the boxed copy) or "fixed" (everything else, slot tails
    included). A response off the template marks digits only."""
    match = PATTERN.fullmatch(text)
    kinds = ["digit" if c.isdigit() else "fixed" for c in text]
    if match is not None:
        for g in range(1, NUM_BITS + 1):
            kinds[match.start(g)] = "slot"
    return kinds


def token_kinds(tokens: Sequence[str], eos: str) -> List[str]:
    """Per token of a character-level rollout (EOS last, if present): slot / digit / fixed / eos."""
    body = [t for t in tokens if t != eos]
    kinds = iter(character_kinds("".join(body)))
    return ["eos" if t == eos else next(kinds) for t in tokens]
