import torch

from experiments.va_tokens import token_kinds, top_sum


def test_token_kinds_split_the_reading_from_the_boxed_copy():
    text = list("The stripes are 2 px. \\boxed{2}") + ["<|im_end|>"]
    kinds = token_kinds(text, "<|im_end|>")
    assert kinds[text.index("2")] == "width digit"
    assert kinds[len(text) - 3] == "boxed digit"  # the digit inside \boxed{}
    assert kinds[-1] == "eos"
    assert kinds.count("template") == len(text) - 3


def test_top_sum_takes_the_ceil_of_the_fraction():
    va = torch.tensor([0.0, 3.0, 1.0, 0.5, 0.0, 2.0])
    assert top_sum(va, 0.2) == 5.0  # ceil(1.2) = 2 tokens: 3 + 2
    assert top_sum(va, 1.0) == float(va.sum())
