"""The dilution task: codes choose synonyms, responses read back, token kinds, stable samples."""
import numpy as np
import pytest

from experiments import code_task, task


def test_samples_reuse_the_stripe_images_and_carry_a_code():
    s, base = code_task.sample(0, "train", 5), task.sample(0, "train", 5)
    assert s.answer == base.answer and np.array_equal(np.asarray(s.image), np.asarray(base.image))
    bits = code_task.code_of(s.question)
    assert len(bits) == 8 and set(bits) <= {"0", "1"}
    assert code_task.sample(0, "train", 5).question == s.question  # a pure function of (seed, split, index)
    codes = [code_task.code_of(x.question) for x in code_task.dataset(0, "train", 200)]
    ones = np.array([[int(b) for b in c] for c in codes]).mean(0)
    assert ((ones > 0.35) & (ones < 0.65)).all()  # every bit about uniform
    with pytest.raises(ValueError, match="question"):
        code_task.code_of("How wide are the stripes?")


def test_each_bit_picks_its_slot_and_flipping_swaps_every_slot():
    bits = "01100101"
    right, wrong = code_task.response(bits, "2"), code_task.response(bits, "2", flipped=True)
    assert right.endswith("2 px. \\boxed{2}") and 70 <= len(right) <= 90
    assert code_task.score(right, bits) == code_task.Score(True, 8, 0, "2")
    assert code_task.score(wrong, bits) == code_task.Score(True, 0, 8, "2")
    one_off = code_task.response("11100101", "2")  # slot 0 differs
    assert code_task.score(one_off, bits).slots_correct == 7
    assert code_task.score(right[:-1], bits).format_ok is False  # broken formats earn nothing
    assert code_task.score(right[:-1], bits).slots_correct == 0


def test_token_kinds_mark_slot_decisions_and_digits():
    text = code_task.response("00000000", "3")
    tokens = list(text) + ["<|im_end|>"]
    kinds = code_task.token_kinds(tokens, "<|im_end|>")
    assert kinds.count("slot") == 8 and kinds.count("digit") == 2 and kinds[-1] == "eos"
    assert [t for t, k in zip(tokens, kinds) if k == "slot"] == [a[0] for a, _ in code_task.SLOTS]
    assert text.index("In") == 0 and kinds[0] == "fixed"  # the response does not start with a slot
    broken = list("no template 2 here")
    assert code_task.token_kinds(broken, "<|im_end|>").count("slot") == 0
