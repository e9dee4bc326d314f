"""Rollout batches with chosen response texts, for tests that must know what was 'generated'."""
from dataclasses import replace

import torch

from vaopd_trainer.rollout import response_mask


def with_responses(batch, tokenizer, texts, eos_token_id):
    """``batch`` (prompts only) with row i answering ``texts[i]`` + EOS, right-padded."""
    rows = [tokenizer.encode(t, add_special_tokens=False) + [eos_token_id] for t in texts]
    responses = torch.full((len(rows), max(len(r) for r in rows)), tokenizer.pad_token_id, dtype=torch.long)
    for i, r in enumerate(rows):
        responses[i, :len(r)] = torch.tensor(r)
    mask = response_mask(responses, [eos_token_id])
    return replace(batch, input_ids=torch.cat([batch.input_ids, responses], 1),
                   attention_mask=torch.cat([batch.attention_mask, mask.long()], 1), response_mask=mask)
