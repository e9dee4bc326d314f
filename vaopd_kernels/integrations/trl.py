"""VA-OPD and OPD for TRL users: ``VAOPDTrainer`` is a ``trl.DistillationTrainer`` whose loss runs
on ``vaopd_kernels``. Adopt it by changing two class names (``DistillationConfig`` -> ``VAOPDConfig``,
``DistillationTrainer`` -> ``VAOPDTrainer``); everything else (datasets, generation with
transformers or vLLM, PEFT, accelerate / FSDP2 / DeepSpeed, logging) stays TRL's.

- ``method="opd"`` (default): TRL's own objective -- the divergence chosen by ``beta`` (0 forward
  KL, 1 reverse KL, in between generalized JSD) averaged over the completion tokens of the
  generation batch, at ``temperature`` -- computed by ``vaopd_kernels.linear_kl`` instead of TRL's
  chunked divergence.
- ``method="va_opd"``: the paper's objective. ``num_generations`` (K) completions per prompt stay
  on one rank; once per generation batch the teacher scores every completion with the original
  and with the pixelated image (same ``input_ids``, other ``pixel_values``), and the VA-OPD
  coefficients (top-fraction groups, sibling weights, 1/P over the global prompt count) are fixed
  for the whole batch before any student work, so gradient accumulation gives the full-batch
  gradient. The divergence (``beta``) is taken at temperature 1, as in the paper.

Requires the ``trl`` extra (trl >= 1.16): ``pip install -e ".[trl]"`` from a clone.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Tuple

import torch
from datasets import IterableDataset
from PIL import Image
from trl import DistillationConfig, DistillationTrainer
from trl.trainer.utils import RepeatSampler, split_pixel_values_by_grid, split_tensor_dict, unsplit_pixel_values_by_grid

import vaopd_kernels
from ..lm_head import LMHead
from ..pixelate import pixelate
from ..validation import check_head, check_objective_options, check_visual_signal

METHODS = ("opd", "va_opd")
# The per-completion vision fields TRL carries in a batch (DistillationTrainer._compute_loss reads the same ones).
MULTIMODAL_KEYS = ("pixel_values", "image_grid_thw", "pixel_attention_mask", "spatial_shapes", "image_sizes",
                   "token_type_ids", "mm_token_type_ids", "image_position_ids")
# Batch entries this trainer adds in VA-OPD mode; [rows, completion length] like completion_ids.
TOKEN_WEIGHT, HIGH_MASK, TEACHER_HIDDEN = "vaopd_token_weight", "vaopd_high_mask", "vaopd_teacher_hidden"


@dataclass
class VAOPDConfig(DistillationConfig):
    """``DistillationConfig`` plus the VA-OPD options (defaults: the paper's)."""

    method: str = field(default="opd", metadata={"help": "'opd' (TRL's objective on vaopd_kernels) or 'va_opd'."})
    num_generations: Optional[int] = field(
        default=None,
        metadata={"help": "Completions per prompt (K), kept on one rank. Default: 4 for va_opd, 1 for opd."})
    pixelate_ratio: float = field(
        default=0.1, metadata={"help": "Degraded view: bilinear down to floor(ratio * side), nearest back up."})
    high_fraction: float = field(default=0.2,
                                 metadata={"help": "Share of each completion's tokens in its high-VA group."})
    high_weight: float = field(default=0.5, metadata={"help": "Loss mass of the high-VA group (lambda)."})
    va_temperature: float = field(default=1.0, metadata={"help": "Temperature of the sibling softmax over z-scores."})
    visual_signal: str = field(default="sampled", metadata={
        "help": "VA: 'sampled' (the paper's, at the sampled token) or 'divergence' (KL between the teacher's "
                "two views)."})
    vocab_size: Optional[int] = field(
        default=None, metadata={"help": "Softmax over the first vocab_size head rows; None: every row (as TRL)."})
    kernel_backend: str = field(default="auto", metadata={"help": "vaopd_kernels backend (auto, torch, triton, cuda)."})

    def __post_init__(self):
        super().__post_init__()
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {self.method!r}")
        if self.num_generations is None:
            self.num_generations = 4 if self.method == "va_opd" else 1
        k = self.num_generations
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"num_generations: expected a positive int, got {self.num_generations!r}")
        local_rows = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if local_rows % self.num_generations:
            raise ValueError(
                f"num_generations: {self.num_generations} must divide per_device_train_batch_size x "
                f"gradient_accumulation_steps = {local_rows}, so that a prompt's completions stay on one rank")
        evaluates = getattr(self.eval_strategy, "value", self.eval_strategy) != "no"
        if evaluates and self.num_generations > 1 and self.per_device_eval_batch_size % self.num_generations:
            raise ValueError(f"per_device_eval_batch_size: {self.per_device_eval_batch_size} must be a multiple of "
                             f"num_generations = {self.num_generations}")
        if not 0.0 < self.pixelate_ratio < 1.0:
            raise ValueError(f"pixelate_ratio: expected 0 < ratio < 1, got {self.pixelate_ratio!r}")
        check_objective_options(self.high_fraction, self.high_weight, self.va_temperature)
        check_visual_signal(self.visual_signal)


def divergence_options(beta: float) -> Dict:
    """TRL's ``beta`` as ``linear_kl`` options: 0 forward KL, 1 reverse KL, in between generalized JSD."""
    if beta == 0.0:
        return {"divergence": "forward"}
    if beta == 1.0:
        return {"divergence": "reverse"}
    return {"divergence": "jsd", "beta": beta}


def full_head(weight: torch.Tensor, dtype: torch.dtype, copy: bool = False) -> torch.Tensor:
    """An LM head's weight (or bias) as one plain tensor in the hidden states' dtype: FSDP2 holds a DTensor shard
    (one all-gather here; its backward scatters the gradient back), mixed precision may hold an fp32 master copy."""
    if isinstance(weight, torch.distributed.tensor.DTensor):
        weight = weight.full_tensor()
    return weight.to(dtype, copy=copy)


def plain_head(head: LMHead, dtype: torch.dtype, copy: bool = False) -> LMHead:
    """``head`` with its weight and bias through ``full_head``."""
    bias = None if head.bias is None else full_head(head.bias, dtype, copy)
    return replace(head, weight=full_head(head.weight, dtype, copy), bias=bias)


def _as_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    raise TypeError(f"images: method='va_opd' pixelates PIL images, got {type(image).__name__}")


def _row_images(inputs: List[Dict]) -> List[List[Image.Image]]:
    """Every example's images, in the order TRL hands them to the processor."""
    rows = []
    for i, example in enumerate(inputs):
        images = example.get("images") if "images" in example else [example.get("image")]
        images = [im for im in (images or []) if im is not None]
        if not images:
            raise ValueError(f"train_dataset: method='va_opd' needs an image in every example (column 'image' or "
                             f"'images'); example {i} of this batch has none")
        rows.append([_as_pil(im) for im in images])
    return rows


class VAOPDTrainer(DistillationTrainer):
    """``trl.DistillationTrainer`` with the loss on ``vaopd_kernels`` and the VA-OPD objective (see module doc)."""

    _tag_names = ["trl", "distillation", "vaopd"]

    def __init__(self, model, teacher_model=None, args: Optional[DistillationConfig] = None, train_dataset=None,
                 eval_dataset=None, processing_class=None, callbacks=None, optimizers=(None, None),
                 quantization_config=None, peft_config=None, tools=None):
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "model"
            args = VAOPDConfig(f"{name.split('/')[-1]}-VAOPD")
        if not isinstance(args, VAOPDConfig):
            raise TypeError(f"args: expected a VAOPDConfig (a DistillationConfig with the VA-OPD options), "
                            f"got {type(args).__name__}")
        if args.num_generations > 1 and isinstance(train_dataset, IterableDataset):
            raise ValueError("train_dataset: num_generations > 1 needs a map-style Dataset (the sampler repeats "
                             "each prompt K times); got an IterableDataset")
        if args.method == "va_opd" and tools:
            raise ValueError("tools: not supported with method='va_opd' (tool images would not be pixelated)")
        self.vaopd = args
        self._divergence = divergence_options(args.beta)
        super().__init__(model, teacher_model, args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, callbacks=callbacks, optimizers=optimizers,
                         quantization_config=quantization_config, peft_config=peft_config, tools=tools)
        if self.teacher_model is None:
            raise ValueError("teacher_model: VAOPDTrainer needs a local teacher (its hidden states feed the kernels)")
        # a head the kernels cannot read is refused now, not at the first loss after a generation pass
        self._checked_head(self.model, "model")
        self._checked_head(self.teacher_model, "teacher_model")
        if args.method == "va_opd" and not self._is_vlm:
            raise ValueError("processing_class: method='va_opd' needs a processor with an image processor "
                             "(a vision-language model); got a tokenizer")

    # ------------------------------------------------------------------ LM heads
    @property
    def _zero3(self) -> bool:
        return self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3

    def _gathered(self, head: LMHead):
        """The head's full tensors for the context: ZeRO-3 holds a shard per rank outside a module's forward."""
        if not self.is_deepspeed_enabled:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters([t for t in (head.weight, head.bias) if t is not None])

    def _checked_head(self, model, argument: str) -> None:
        """``model``'s head with its bias, logit scale and soft-cap (LMHead.from_model); raises naming
        ``argument`` and the field for one the kernels cannot read."""
        model = self.accelerator.unwrap_model(model)
        if getattr(model.get_output_embeddings(), "weight", None) is None:
            raise ValueError(f"{argument}: {type(model).__name__} has no output embeddings (LM head)")
        head = LMHead.from_model(model)
        with self._gathered(head):
            check_head(argument, head)

    def _teacher_head(self, dtype: torch.dtype) -> LMHead:
        """The teacher's head as plain detached tensors in ``dtype``."""
        head = LMHead.from_model(self.accelerator.unwrap_model(self.teacher_model))
        with self._gathered(head):
            # a copy under ZeRO-3: the gathered tensors are taken back at the context's end, and the loss's
            # backward reads the teacher's head again
            return plain_head(head, dtype, copy=self._zero3).detach()

    # ------------------------------------------------------------------ K completions per prompt on one rank
    def _generation_batch_size(self) -> int:
        args = self.args
        return args.per_device_train_batch_size * self.accelerator.num_processes * args.gradient_accumulation_steps

    def _get_train_sampler(self, dataset=None):
        k = self.vaopd.num_generations
        if k == 1:
            return super()._get_train_sampler(dataset)
        # Each prompt K times in a row; a rank's share of the stream is per_device x GA rows, a multiple of K
        # (VAOPDConfig checks), so siblings never straddle ranks.
        return RepeatSampler(dataset if dataset is not None else self.train_dataset, mini_repeat_count=k,
                             batch_size=self._generation_batch_size() // k,
                             repeat_count=self.args.gradient_accumulation_steps, shuffle=self.shuffle_dataset,
                             seed=self.args.seed)

    def _get_eval_sampler(self, eval_dataset):
        k = self.vaopd.num_generations
        if k == 1:
            return super()._get_eval_sampler(eval_dataset)
        return RepeatSampler(eval_dataset, mini_repeat_count=k, seed=self.args.seed)

    # ------------------------------------------------------------------ shared by both teacher and student passes
    @staticmethod
    def _model_inputs(inputs) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, Dict]:
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        loss_mask = inputs["completion_mask"]
        if "tool_mask" in inputs:  # tool results inside a completion are not the model's tokens
            loss_mask = loss_mask * inputs["tool_mask"]
        multimodal = {k: inputs[k] for k in MULTIMODAL_KEYS if k in inputs}
        return input_ids, attention_mask, loss_mask, inputs["completion_ids"].size(1), multimodal

    @torch.no_grad()
    def _teacher_hidden(self, inputs) -> torch.Tensor:
        """[rows, completion length, Dt] teacher hidden states that predict each completion token."""
        input_ids, attention_mask, _, keep, multimodal = self._model_inputs(inputs)
        self.teacher_model.eval()
        unwrapped = self.accelerator.unwrap_model(self.teacher_model)
        # through the teacher's wrapper, so FSDP / DeepSpeed gather its parameters first
        return self._forward_redirection(self.teacher_model, unwrapped, self._get_last_hidden_state, unwrapped,
                                         input_ids, attention_mask, keep, **multimodal)

    def _teacher_hidden_in_chunks(self, batch, rows_per_chunk: int) -> torch.Tensor:
        rows = batch["prompt_ids"].shape[0]
        chunks = rows // rows_per_chunk if rows_per_chunk and rows % rows_per_chunk == 0 else 1
        parts = split_tensor_dict(split_pixel_values_by_grid(batch), chunks)
        return torch.cat([self._teacher_hidden(unsplit_pixel_values_by_grid(part)) for part in parts])

    # ------------------------------------------------------------------ VA-OPD: coefficients per generation batch
    def _generate_and_score_completions(self, inputs):
        batch = super()._generate_and_score_completions(inputs)
        if self.vaopd.method == "va_opd":
            batch.update(self._va_opd_coefficients(inputs, batch))
        return batch

    def _degraded_pixel_values(self, inputs, batch) -> torch.Tensor:
        images = [pixelate(im, self.vaopd.pixelate_ratio) for row in _row_images(inputs) for im in row]
        processed = self.processing_class.image_processor(images=images, return_tensors="pt")
        grid = batch.get("image_grid_thw")
        if grid is not None and not torch.equal(processed["image_grid_thw"].to(grid.device), grid):
            raise RuntimeError("pixelated images got another visual-token grid than the originals; the two teacher "
                               "passes must share input_ids (the processor should keep each image's size)")
        pixel_values = processed["pixel_values"].to(batch["pixel_values"].device, batch["pixel_values"].dtype)
        if pixel_values.shape != batch["pixel_values"].shape:
            raise RuntimeError(f"pixelated pixel_values {tuple(pixel_values.shape)} differ in shape from the "
                               f"originals {tuple(batch['pixel_values'].shape)}")
        return pixel_values

    def _sibling_prompt_ids(self, batch) -> torch.Tensor:
        """Rollout -> prompt index; checks that each prompt's K siblings are adjacent rows of this rank
        (same prompt tokens and same image pixels)."""
        k, rows = self.vaopd.num_generations, batch["prompt_ids"].shape[0]
        if rows % k:
            raise RuntimeError(f"a generation batch of {rows} completions on this rank is not a multiple of "
                               f"num_generations = {k}")
        per_row = split_pixel_values_by_grid(batch)["pixel_values"]
        for start in range(0, rows, k):
            first = (batch["prompt_ids"][start], batch["prompt_mask"][start], per_row[start])
            for row in range(start + 1, start + k):
                same = (batch["prompt_ids"][row], batch["prompt_mask"][row], per_row[row])
                if not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, same)):
                    raise RuntimeError(f"rows {start} and {row} should be completions of one prompt (num_generations "
                                       f"= {k} adjacent rows) but their prompts or images differ")
        offset = self.accelerator.process_index * (rows // k)
        return torch.arange(rows, device=batch["prompt_ids"].device) // k + offset

    def _va_opd_coefficients(self, inputs, batch) -> Dict[str, torch.Tensor]:
        """Teacher passes on both views, VA, and the detached per-token coefficients of the whole generation
        batch. The original-view hidden states are kept for the loss (no third teacher pass)."""
        training = self.model.training
        chunk = self.args.per_device_train_batch_size if training else self.args.per_device_eval_batch_size
        prompt_index = self._sibling_prompt_ids(batch)
        degraded_view = {**batch, "pixel_values": self._degraded_pixel_values(inputs, batch)}
        teacher_hidden = self._teacher_hidden_in_chunks(batch, chunk)
        teacher_degraded = self._teacher_hidden_in_chunks(degraded_view, chunk)

        _, _, loss_mask, _, _ = self._model_inputs(batch)
        valid = loss_mask.bool()
        lengths = valid.sum(1)
        cu_seqlens = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
        hidden = teacher_hidden[valid]
        va = vaopd_kernels.visual_advantage(hidden, teacher_degraded[valid], self._teacher_head(hidden.dtype),
                                            batch["completion_ids"][valid], vocab_size=self.vaopd.vocab_size,
                                            visual_signal=self.vaopd.visual_signal,
                                            backend=self.vaopd.kernel_backend)
        # 1/P over every prompt of the generation batch on all ranks (training); eval losses stay per rank,
        # and the Trainer averages them
        prompts = prompt_index.numel() // self.vaopd.num_generations
        coefficients = vaopd_kernels.va_opd_coefficients(
            va, cu_seqlens, prompt_index, num_prompts=prompts * self.accelerator.num_processes if training else prompts,
            high_fraction=self.vaopd.high_fraction, high_weight=self.vaopd.high_weight,
            va_temperature=self.vaopd.va_temperature)
        token_weight = torch.zeros(valid.shape, dtype=torch.float32, device=valid.device)
        token_weight[valid] = coefficients.token_weight.float()
        high_mask = torch.zeros_like(valid)
        high_mask[valid] = coefficients.high_mask
        self._log_visual_advantage(va, coefficients.high_mask, coefficients.rollout_weight)
        return {TOKEN_WEIGHT: token_weight, HIGH_MASK: high_mask, TEACHER_HIDDEN: teacher_hidden}

    def _log_visual_advantage(self, va, high_mask, rollout_weight) -> None:
        mode = "train" if self.model.training else "eval"
        high_va = va[high_mask]
        sums = torch.stack([va.sum(), high_va.sum(), (high_va == 0).sum().to(va.dtype), high_mask.sum().to(va.dtype),
                            torch.tensor(float(va.numel()), device=va.device)]).double()
        va_sum, high_sum, high_zero, high_count, tokens = self.accelerator.gather(sums[None]).sum(0).tolist()
        weights = self.accelerator.gather(rollout_weight.double())
        metrics = self._metrics[mode]
        metrics["vaopd/va_mean"].append(va_sum / max(tokens, 1.0))
        metrics["vaopd/va_high_share"].append(high_sum / va_sum if va_sum > 0 else float("nan"))
        metrics["vaopd/high_zero_va_fraction"].append(high_zero / max(high_count, 1.0))
        metrics["vaopd/rollout_weight_min"].append(float(weights.min()))
        metrics["vaopd/rollout_weight_max"].append(float(weights.max()))

    # ------------------------------------------------------------------ the loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # As TRL: the token count of the generated completions, divided by the process count to undo DDP's mean.
        if self.model.training and inputs.get("num_items_in_batch") is not None:
            num_items_in_batch = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        unwrapped = self.accelerator.unwrap_model(model)
        # inside the student wrapper's forward: DDP registers the backward, FSDP keeps the head gathered
        loss, sums = self._forward_redirection(model, unwrapped, self._vaopd_loss, unwrapped, inputs,
                                               num_items_in_batch)
        self._log_divergence(sums)
        return (loss, None) if return_outputs else loss

    def _vaopd_loss(self, unwrapped_student, inputs, num_items_in_batch):
        input_ids, attention_mask, loss_mask, keep, multimodal = self._model_inputs(inputs)
        student_hidden = self._get_last_hidden_state(unwrapped_student, input_ids, attention_mask, keep, **multimodal)
        teacher_hidden = inputs[TEACHER_HIDDEN] if TEACHER_HIDDEN in inputs else self._teacher_hidden(inputs)
        head_module = unwrapped_student.get_output_embeddings()
        device = head_module.weight.device
        valid = loss_mask.to(device).bool()
        teacher_hidden = teacher_hidden.to(device)[valid].detach()
        # through the head module's forward, so that ZeRO-3 gathers the student's head for the kernel and again
        # for its backward by the module's own hooks, not by DeepSpeed 0.19's detection of a parameter read inside
        # the model's forward (which TRL relies on); elsewhere a plain call
        token_divergence, entropy = self._forward_redirection(
            head_module, head_module, self._token_divergence, unwrapped_student, student_hidden.to(device)[valid],
            teacher_hidden, self._teacher_head(teacher_hidden.dtype))
        detached = token_divergence.detach().double()
        sums = [detached.sum(), torch.tensor(float(detached.numel()), dtype=torch.float64, device=device),
                entropy.double().sum()]
        if self.vaopd.method == "va_opd":
            loss = (inputs[TOKEN_WEIGHT][valid] * token_divergence).sum()
            if self.model.training:  # a global sum: undo DDP's mean over ranks
                loss = loss * self.accelerator.num_processes
            high = inputs[HIGH_MASK][valid]
            sums += [detached[high].sum(), high.sum().double()]
        else:
            denominator = num_items_in_batch if num_items_in_batch is not None else valid.sum().clamp(min=1)
            if isinstance(denominator, torch.Tensor):
                denominator = denominator.to(device)
            loss = token_divergence.sum() / denominator
        return loss, torch.stack(sums)

    def _token_divergence(self, unwrapped_student, student_hidden, teacher_hidden, teacher_head):
        """Per-token divergence and student entropy (at the loss's temperature) of the valid tokens."""
        student_head = plain_head(LMHead.from_model(unwrapped_student), student_hidden.dtype)
        return vaopd_kernels.linear_kl(
            student_hidden, student_head, teacher_hidden, teacher_head,
            temperature=1.0 if self.vaopd.method == "va_opd" else self.temperature,
            vocab_size=self.vaopd.vocab_size, return_entropy=True, backend=self.vaopd.kernel_backend,
            **self._divergence)

    def _log_divergence(self, sums: torch.Tensor) -> None:
        """Mean divergence per token (and per VA group) and TRL's ``entropy`` (the student's mean entropy per
        token) of this micro-batch over all ranks, outside the forward."""
        mode = "train" if self.model.training else "eval"
        total = self.accelerator.gather_for_metrics(sums[None]).sum(0).tolist()
        metrics = self._metrics[mode]
        metrics["vaopd/kl_mean"].append(total[0] / max(total[1], 1.0))
        metrics["entropy"].append(total[2] / total[1] if total[1] > 0 else 0.0)
        if len(total) == 5:
            low_tokens = total[1] - total[4]
            metrics["vaopd/kl_high_mean"].append(total[3] / total[4] if total[4] else float("nan"))
            metrics["vaopd/kl_low_mean"].append((total[0] - total[3]) / low_tokens if low_tokens else float("nan"))
