import numpy as np
import pytest
import torch
from PIL import Image

from vaopd_trainer.data import pixelate, synthetic_sample
from vaopd_trainer.rollout import Batch, response_mask

EOS = 9


def test_response_mask_first_eos_included_rest_excluded():
    responses = torch.tensor([[1, 2, EOS, 3, EOS],   # EOS mid-way, tokens after it are padding/garbage
                              [1, 2, 3, 4, 5],       # truncated: keeps every token
                              [EOS, EOS, 0, 0, 0]])  # immediate EOS: one token
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    before = responses.clone()
    assert torch.equal(response_mask(responses, [EOS]), expected)
    assert torch.equal(responses, before)  # input untouched


def test_pixelate_size_blocks_and_lost_detail():
    image = synthetic_sample(seed=1, index=3, size=64).image
    before = np.asarray(image).copy()
    out = pixelate(image, 0.1)
    assert out.size == image.size and np.array_equal(np.asarray(image), before)
    pixels = np.asarray(out)
    # floor(64 * 0.1) = 6 blocks per side: at most 36 distinct colours
    assert len({tuple(p) for p in pixels.reshape(-1, 3)}) <= 36
    # the 2x2 pure-red dots do not survive
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 60)
    assert red.sum() == 0 and ((np.asarray(image)[..., 0] > 200) & (np.asarray(image)[..., 1] < 60)).sum() > 0


def test_pixelate_tiny_image_keeps_one_pixel():
    image = Image.fromarray(np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3))
    out = np.asarray(pixelate(image, 0.1))  # floor(0.7) = 0 -> clamps to 1 px: one colour everywhere
    assert out.shape == (5, 7, 3) and len({tuple(p) for p in out.reshape(-1, 3)}) == 1


def test_synthetic_deterministic_and_answer_is_red_count():
    a, b = synthetic_sample(3, 5), synthetic_sample(3, 5)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and a.answer == b.answer
    assert not np.array_equal(np.asarray(a.image), np.asarray(synthetic_sample(4, 5).image))
    pixels = np.asarray(a.image)
    red = (pixels[..., 0] == 220) & (pixels[..., 1] == 30)
    assert red.sum() == 4 * int(a.answer)  # each dot is 2x2


def test_response_rows_are_the_predicting_positions():
    # hidden[r, s] = s: the row for response token t must come from column prompt_len + t - 1
    prompt_len, width = 3, 4
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    ids = torch.arange(2 * (prompt_len + width)).view(2, -1)
    batch = Batch(ids, torch.ones_like(ids), torch.zeros(2, 1), None, torch.ones(2, 3, dtype=torch.long),
                  torch.tensor([0, 0]), prompt_len, image_token_id=-1, response_mask=mask)
    hidden = torch.arange(prompt_len + width).float().view(1, -1, 1).expand(2, -1, 1)
    rows = batch.response_hidden(hidden)[:, 0].tolist()
    assert rows == [2, 3, 2, 3, 4, 5]
    assert batch.targets().tolist() == [3, 4, 10, 11, 12, 13]
    assert batch.cu_seqlens().tolist() == [0, 2, 6]
