"""The VA-OPD / OPD training loop (one optimizer update per rollout batch).

Per step: sample prompts -> student rollouts -> teacher hidden states on the original and the
pixelated image -> student loss (whole batch, or micro-batches with whole-batch coefficients)
-> clip, AdamW, cosine schedule. Data parallel: each rank owns whole prompts (all K siblings) and
the loss is normalised by the global prompt (VA-OPD) or rollout (OPD) count.
"""
from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from typing import Dict, List, Optional

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from . import checkpoint
from .config import TINY, TrainConfig, to_dict
from .data import load_split, step_prompts
from .evaluate import evaluate
from .loss import StudentLoss, backbone_hidden
from .metrics import MetricsLogger, PhaseMemory
from .models import build_tiny_models, lm_head_weight, load_model, load_processing
from .rollout import encode_prompts, generate
from .visualize import loss_curves, va_html

ECHO = ("loss", "kl_mean", "va_high_share", "response_length", "tokens_per_s", "lr")


def _model_paths(cfg: TrainConfig, accelerator: Accelerator):
    teacher, student = cfg.teacher_model, cfg.student_model
    if TINY in (teacher, student):
        with accelerator.main_process_first():  # rank 0 builds, the others then reuse the folders
            tiny_teacher, tiny_student = build_tiny_models(os.path.join(cfg.output_dir, "tiny_models"), cfg.seed)
        teacher = tiny_teacher if teacher == TINY else teacher
        student = tiny_student if student == TINY else student
    return teacher, student


class Trainer:
    def __init__(self, cfg: TrainConfig, accelerator: Optional[Accelerator] = None):
        self.cfg = cfg
        # one scheduler step per optimizer update whatever the process count; cpu=True on a machine
        # without CUDA lets torchrun / accelerate launch start gloo data parallelism
        self.acc = accelerator or Accelerator(mixed_precision="bf16" if cfg.bf16 else "no",
                                              step_scheduler_with_optimizer=False, cpu=not torch.cuda.is_available())
        set_seed(cfg.seed)
        os.makedirs(cfg.output_dir, exist_ok=True)
        self.train_samples = load_split(cfg, "train")
        self.eval_samples = load_split(cfg, "eval")
        world = self.acc.num_processes
        self.global_prompts = cfg.per_device_train_batch_size * world
        if len(self.train_samples) < self.global_prompts:
            raise ValueError(f"per_device_train_batch_size: {cfg.per_device_train_batch_size} x {world} processes "
                             f"needs more than the {len(self.train_samples)} training samples")
        steps_per_epoch = len(self.train_samples) // self.global_prompts
        self.total_steps = cfg.max_steps if cfg.max_steps > 0 else cfg.num_train_epochs * steps_per_epoch

        teacher_path, student_path = _model_paths(cfg, self.acc)
        self.tokenizer, self.image_processor = load_processing(student_path, cfg.max_pixels)
        teacher_vocab = len(load_processing(teacher_path, cfg.max_pixels)[0])
        if teacher_vocab != len(self.tokenizer):
            raise ValueError(f"teacher_model: tokenizer has {teacher_vocab} tokens, the student's has "
                             f"{len(self.tokenizer)}; distillation needs one shared tokenizer")
        device = self.acc.device
        self.teacher = load_model(teacher_path, torch.bfloat16 if cfg.bf16 else torch.float32, device)
        self.teacher.eval().requires_grad_(False)
        student = load_model(student_path, torch.float32, device)
        if cfg.gradient_checkpointing:
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        module = StudentLoss(student, vocab_size=len(self.tokenizer), method=cfg.method,
                             high_fraction=cfg.high_fraction, high_weight=cfg.high_weight,
                             va_temperature=cfg.va_temperature, backend=cfg.kernel_backend,
                             high_selection=cfg.high_selection, rollout_weighting=cfg.rollout_weighting)
        optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                      weight_decay=cfg.weight_decay)
        scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * self.total_steps),
                                                    self.total_steps)
        self.module, self.optimizer, self.scheduler = self.acc.prepare(module, optimizer, scheduler)
        self.memory = PhaseMemory(device)
        self.logger = MetricsLogger(cfg.output_dir, cfg.report_to, self.acc.is_main_process, fresh=cfg.resume is None)
        self.history: List[Dict[str, float]] = []
        self.evals: Dict[str, Dict[str, float]] = {}
        self.last_rollouts: List[dict] = []
        if self.acc.is_main_process:
            with open(os.path.join(cfg.output_dir, "config.yaml"), "w") as f:
                yaml.safe_dump(to_dict(cfg), f, sort_keys=False)

    @property
    def student(self):
        return self.acc.unwrap_model(self.module).model

    # ------------------------------------------------------------------ one step
    def rollouts(self, step: int):
        cfg, rank = self.cfg, self.acc.process_index
        indices = step_prompts(len(self.train_samples), self.global_prompts, step, cfg.seed)
        mine = indices[rank * cfg.per_device_train_batch_size:(rank + 1) * cfg.per_device_train_batch_size]
        batch = encode_prompts([self.train_samples[i] for i in mine], self.tokenizer, self.image_processor,
                               repeat=cfg.num_generations, device=self.acc.device,
                               pixelate_ratio=cfg.pixelate_ratio if cfg.method == "va_opd" else None,
                               prompt_offset=rank * cfg.per_device_train_batch_size)
        with self.acc.autocast():
            return generate(self.student, batch, self.tokenizer, max_new_tokens=cfg.max_completion_length,
                            temperature=cfg.temperature, top_p=cfg.top_p)

    def high_seed(self, step: int) -> int:
        """Seed of the step's random high groups (``high_selection="random"``): a function of
        (seed, step) only, so a resumed run draws the same groups; equal on every rank."""
        return int(np.random.SeedSequence([self.cfg.seed, step]).generate_state(1)[0])

    def loss_and_backward(self, batch, teacher_hidden, teacher_degraded, step: int = 0):
        """Backward of the step's loss; returns (whole-batch objective result, visual advantage or None)."""
        cfg, acc = self.cfg, self.acc
        counts = dict(num_prompts=self.global_prompts, num_rollouts=self.global_prompts * cfg.num_generations,
                      high_seed=self.high_seed(step))
        teacher_weight = lm_head_weight(self.teacher)
        # DDP/FSDP average gradients over ranks; our loss is already a global sum, so undo the mean
        scale = acc.num_processes
        rows = batch.input_ids.shape[0]
        if cfg.micro_batch_size == 0 or cfg.micro_batch_size >= rows:
            with acc.autocast():
                loss, result = self.module(batch, teacher_hidden, teacher_weight,
                                           teacher_hidden_degraded=teacher_degraded, **counts)
            acc.backward(loss * scale)
            return result, result.visual_advantage
        inner = acc.unwrap_model(self.module)
        token_weight, va = inner.coefficients(batch, teacher_hidden, teacher_degraded, teacher_weight, **counts)
        cu = batch.cu_seqlens().tolist()
        kls = []
        for start in range(0, rows, cfg.micro_batch_size):
            stop = min(rows, start + cfg.micro_batch_size)
            lo, hi = cu[start], cu[stop]
            sync = stop == rows  # all-reduce once, after the last micro-batch
            with (acc.no_sync(self.module) if not sync else nullcontext()), acc.autocast():
                loss, kl = self.module(batch.rows(start, stop), teacher_hidden[lo:hi], teacher_weight,
                                       token_weight=token_weight[lo:hi])
                acc.backward(loss * scale)
            kls.append(kl.detach())
        return inner.objective_result(batch, torch.cat(kls), va, **counts), va

    def step(self, step: int) -> Dict[str, float]:
        cfg, acc = self.cfg, self.acc
        start = time.perf_counter()
        with self.memory.phase("generate"):
            batch = self.rollouts(step)
        with self.memory.phase("teacher"), acc.autocast():
            teacher_hidden = backbone_hidden(self.teacher, batch, chunk=cfg.micro_batch_size)
            teacher_degraded = (backbone_hidden(self.teacher, batch, degraded=True, chunk=cfg.micro_batch_size)
                                if cfg.method == "va_opd" else None)
        with self.memory.phase("student"):
            result, va = self.loss_and_backward(batch, teacher_hidden, teacher_degraded, step)
        with self.memory.phase("optimizer"):
            grad_norm = acc.clip_grad_norm_(self.module.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        tokens = acc.reduce(batch.response_mask.sum().to(acc.device, torch.float32), "sum")
        lengths = batch.response_mask.sum(1).float()
        # generation stops only at EOS or the length limit: a row without EOS was truncated
        truncated = ~(batch.input_ids[:, batch.prompt_len:] == self.tokenizer.eos_token_id).any(1)
        metrics = {
            "loss": float(acc.reduce(result.loss.detach().float(), "sum")),
            **{k: float(v) for k, v in result.metrics.items()},
            "grad_norm": float(grad_norm),
            "lr": self.scheduler.get_last_lr()[0],
            "response_length": float(lengths.mean()),
            "truncated_fraction": float(truncated.float().mean()),
            "tokens_per_s": float(tokens) / (time.perf_counter() - start),
            **{f"peak_mem_{k}_mib": v for k, v in self.memory.peaks.items()},
        }
        self._keep_for_page(batch, result, va)
        return metrics

    def _keep_for_page(self, batch, result, va) -> None:
        if not self.acc.is_main_process or va is None or self.cfg.num_visualize == 0:
            return
        cu = batch.cu_seqlens().tolist()
        targets = batch.targets().tolist()
        va, high = va.float().tolist(), result.high_mask.tolist()
        self.last_rollouts = [
            {"tokens": [self.tokenizer.decode([t]) for t in targets[cu[r]:cu[r + 1]]], "va": va[cu[r]:cu[r + 1]],
             "high": high[cu[r]:cu[r + 1]], "weight": float(result.rollout_weight[r]),
             "prompt": f"prompt {int(batch.prompt_ids[r])}"}
            for r in range(min(self.cfg.num_visualize, len(cu) - 1))]

    # ------------------------------------------------------------------ eval / loop
    def evaluate(self, tag: str, step: int) -> Dict[str, float]:
        cfg, acc = self.cfg, self.acc
        shard = self.eval_samples[acc.process_index::acc.num_processes]
        with acc.autocast():
            sums = evaluate(self.student, shard, self.tokenizer, self.image_processor,
                            batch_size=cfg.per_device_train_batch_size * cfg.num_generations,
                            max_new_tokens=cfg.max_completion_length, pixelate_ratio=cfg.pixelate_ratio,
                            device=acc.device, backend=cfg.kernel_backend)
        total = acc.reduce(torch.tensor([sums[k] for k in ("correct", "count", "reliance_sum", "tokens")],
                                        device=acc.device, dtype=torch.float64), "sum").tolist()
        result = {"eval_accuracy": total[0] / max(total[1], 1), "eval_visual_reliance": total[2] / max(total[3], 1)}
        self.evals[tag] = result
        self.logger.log(step, result, echo=tuple(result))
        return result

    def train(self) -> Dict[str, object]:
        cfg, acc = self.cfg, self.acc
        start_step = 0
        resume = checkpoint.latest(cfg.output_dir) if cfg.resume == "latest" else cfg.resume
        if resume is not None:
            start_step = checkpoint.load(acc, resume)
            acc.print(f"resumed from {resume} at step {start_step}")
        if cfg.val_before_train and start_step == 0:
            self.evaluate("before", 0)
        began = time.perf_counter()
        bar = tqdm(range(start_step, self.total_steps), disable=not acc.is_main_process, desc="vaopd", leave=False)
        for step in bar:
            metrics = self.step(step)
            done = step + 1
            self.history.append({"step": done, **metrics})
            bar.set_postfix(loss=f"{metrics['loss']:.4g}")
            if done % cfg.logging_steps == 0 or done == self.total_steps:
                self.logger.log(done, metrics, echo=ECHO)
            if cfg.eval_steps and done % cfg.eval_steps == 0 and done != self.total_steps:
                self.evaluate(f"step {done}", done)
            if cfg.save_steps and done % cfg.save_steps == 0 and done != self.total_steps:
                checkpoint.save(acc, cfg.output_dir, done)
        bar.close()
        outputs = self.finish(time.perf_counter() - began)
        return outputs

    def finish(self, seconds: float) -> Dict[str, object]:
        cfg, acc = self.cfg, self.acc
        self.evaluate("after", self.total_steps)
        ckpt = checkpoint.save(acc, cfg.output_dir, self.total_steps)
        outputs: Dict[str, object] = {"checkpoint": ckpt, "train_seconds": seconds, "history": self.history,
                                      "evals": self.evals}
        if acc.is_main_process:
            export = os.path.join(cfg.output_dir, "student")
            self.student.save_pretrained(export)
            self.tokenizer.save_pretrained(export)
            self.image_processor.save_pretrained(export)
            outputs.update(student=export, metrics=self.logger.path,
                           curves=loss_curves(self.logger.path, os.path.join(cfg.output_dir, "curves.png")))
            if self.last_rollouts:
                outputs["va_page"] = va_html(os.path.join(cfg.output_dir, "va_tokens.html"), self.last_rollouts,
                                             f"visual advantage per token, step {self.total_steps}")
        self.logger.close()
        acc.wait_for_everyone()
        return outputs
