import numpy as np
import pytest
import torch
from PIL import Image

from vaopd_kernels.pixelate import pixelate
from vaopd_trainer.data import synthetic_sample
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


def test_prompt_is_the_chat_template_with_the_raw_question(tiny_models):
    from vaopd_trainer.models import load_processing
    from vaopd_trainer.rollout import prompt_ids

    tokenizer, _ = load_processing(tiny_models[1], 256, 4096)
    tid = tokenizer.convert_tokens_to_ids
    enc = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    # Qwen3-VL's layout, no system prompt, the placeholder expanded to 5 visual tokens, nothing added
    expected = ([tid("<|im_start|>")] + enc("user\n") + [tid("<|vision_start|>")] + [tid("<|image_pad|>")] * 5
                + [tid("<|vision_end|>")] + enc("Find x.") + [tid("<|im_end|>")] + enc("\n") + [tid("<|im_start|>")]
                + enc("assistant\n"))
    assert prompt_ids(tokenizer, "Find x.", 5) == expected
    suffixed = prompt_ids(tokenizer, "Find x.", 5, prompt_suffix=" Box it.")
    assert suffixed == expected[:expected.index(tid("<|im_end|>"))] + enc(" Box it.") + expected[expected.index(tid("<|im_end|>")):]
    # the template is the tokenizer's own: change it and the prompt follows
    tokenizer.chat_template = tokenizer.chat_template.replace("<|im_start|>{{ message['role'] }}",
                                                              "<|im_start|>{{ message['role'] }}!")
    assert prompt_ids(tokenizer, "Find x.", 5)[:7] == [tid("<|im_start|>")] + enc("user!\n")


def test_image_tokens_match_the_visual_token_count_and_pixel_budget(tiny_models):
    from vaopd_trainer.data import Sample
    from vaopd_trainer.models import load_model, load_processing
    from vaopd_trainer.rollout import encode_prompts

    images = [Image.new("RGB", (64, 64), (200, 10, 10)), Image.new("RGB", (48, 32), (10, 10, 200))]
    samples = [Sample(im, "q?", "1") for im in images]
    # the 64 x 64 image as it reaches the model: kept, upscaled to min_pixels, downscaled to max_pixels
    for min_pixels, max_pixels, seen in ((256, 4096, 4096), (128 * 128, 128 * 128, 128 * 128), (256, 32 * 32, 32 * 32)):
        tokenizer, processor = load_processing(tiny_models[1], min_pixels, max_pixels)
        batch = encode_prompts(samples, tokenizer, processor, repeat=2, pixelate_ratio=0.1)
        pixels = batch.image_grid_thw[:, 1:].prod(-1) * 64  # 8 x 8 px patches
        assert pixels[:2].tolist() == [seen, seen]
        counts = (batch.input_ids == batch.image_token_id).sum(1)
        assert torch.equal(counts, batch.image_grid_thw.prod(-1) // 4)  # 2 x 2 merge
    # the model accepts the rows (it checks placeholders against image features itself)
    model = load_model(tiny_models[1], torch.float32, torch.device("cpu"))
    with torch.no_grad():
        model(**batch.model_inputs())
