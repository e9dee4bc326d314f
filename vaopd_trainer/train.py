"""The VA-OPD / OPD training loop (one optimizer update per rollout batch).

Per step: sample prompts -> student rollouts -> teacher hidden states on the original and the
pixelated image -> student loss (whole batch, or micro-batches with whole-batch coefficients)
-> clip, AdamW, cosine schedule. Data parallel: each rank owns whole prompts (all K siblings) and
the loss is normalised by the global prompt (VA-OPD) or rollout (OPD) count.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import os
import shutil
import time
from typing import Dict, List, Optional

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object, set_seed
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup


from . import checkpoint, engines
from .config import TINY, ConfigError, TrainConfig, to_dict
from .data import Sample, load_split, step_prompts
from .errors import DataError, ImageDecodeError
from .evaluate import evaluate, extract_boxed, is_correct
from .guard import DivergenceGuard
from .intervals import mean_ci95
from .loss import StudentLoss, Teacher
from .metrics import MetricsLogger, PhaseMemory
from .models import build_tiny_models, lm_head, load_model, load_processing
from .resume import prepare_output_dir, restore, run_identity
from .rollout import check_context, encode_prompts, generate, responses_text
from .sampling import Sampling, stop_token_ids
from .signals import Preempted, PreemptionHandler
from .visualize import loss_curves, va_html

logger = logging.getLogger("vaopd_trainer")
ECHO = ("loss", "kl_mean", "va_high_share", "rollout_accuracy", "response_length", "tokens_per_s", "lr")
BEST_DIR = "best"  # output_dir/best/: the checkpoint with the highest validation accuracy, and best.json


def _model_paths(cfg: TrainConfig, accelerator: Accelerator):
    teacher, student = cfg.teacher_model, cfg.student_model
    if TINY in (teacher, student):
        with accelerator.main_process_first():  # rank 0 builds, the others then reuse the folders
            tiny_teacher, tiny_student = build_tiny_models(os.path.join(cfg.output_dir, "tiny_models"), cfg.seed)
        teacher = tiny_teacher if teacher == TINY else teacher
        student = tiny_student if student == TINY else student
    return teacher, student


def _context_length(model) -> int:
    config = model.config
    return getattr(config, "text_config", config).max_position_embeddings


class Trainer:
    def __init__(self, cfg: TrainConfig, accelerator: Optional[Accelerator] = None, fsdp_plugin=None):
        """``fsdp_plugin``: shard the student with FSDP2 under these settings; by default the plugin of
        an FSDP launch (``accelerate launch --config_file configs/accelerate/fsdp2.yaml``), if any."""
        self.cfg = cfg
        self.acc = accelerator or engines.make_accelerator(cfg)
        set_seed(cfg.seed)
        prepare_output_dir(cfg, self.acc.is_main_process)  # before anything is written there
        os.makedirs(cfg.output_dir, exist_ok=True)
        self.train_samples = load_split(cfg, "train")
        self.eval_samples = load_split(cfg, "eval")
        if not self.eval_samples:
            raise DataError(f"eval_file: {cfg.eval_file} holds no usable sample (rows with exactly one image); "
                            f"evaluation would report an accuracy of nothing")
        world = self.acc.num_processes
        self.global_prompts = cfg.per_device_train_batch_size * world
        fsdp_plugin = fsdp_plugin or engines.fsdp2_plugin(self.acc)
        if fsdp_plugin is not None and len(self.eval_samples) % world:
            # every FSDP2 forward all-gathers across ranks, so every rank must run as many
            raise ValueError(f"num_eval_samples / eval_file: {len(self.eval_samples)} evaluation samples do not split "
                             f"evenly over {world} processes, which FSDP2 needs (every rank joins every forward)")
        if len(self.train_samples) < self.global_prompts:
            raise ValueError(f"per_device_train_batch_size: {cfg.per_device_train_batch_size} x {world} processes "
                             f"needs more than the {len(self.train_samples)} training samples")
        steps_per_epoch = len(self.train_samples) // self.global_prompts
        self.total_steps = cfg.max_steps if cfg.max_steps > 0 else cfg.num_train_epochs * steps_per_epoch

        teacher_path, student_path = _model_paths(cfg, self.acc)
        self.tokenizer, self.image_processor = load_processing(student_path, cfg.min_pixels, cfg.max_pixels)
        teacher_vocab = len(load_processing(teacher_path, cfg.min_pixels, cfg.max_pixels)[0])
        if teacher_vocab != len(self.tokenizer):
            raise ValueError(f"teacher_model: tokenizer has {teacher_vocab} tokens, the student's has "
                             f"{len(self.tokenizer)}; distillation needs one shared tokenizer")
        device = self.acc.device
        if cfg.teacher_sharding == "fsdp2" and world == 1 and not cfg.teacher_offload:
            raise ConfigError("teacher_sharding: fsdp2 with one process shards nothing (it only adds gathered "
                              "copies); use none, or add teacher_offload: true")
        # an offloaded teacher stays on the CPU: fully_shard moves one unit at a time to the GPU and
        # its shard back, so the whole teacher is never on the GPU
        self.teacher = Teacher(load_model(teacher_path, torch.bfloat16 if cfg.bf16 else torch.float32, device,
                                          stay_on_cpu=cfg.teacher_offload))
        if cfg.teacher_sharding == "fsdp2":
            engines.shard_teacher(self.teacher, offload=cfg.teacher_offload)
        student = load_model(student_path, torch.float32, device)
        self.eos_token_ids = stop_token_ids(student, self.tokenizer)
        if cfg.gradient_checkpointing:
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        module = StudentLoss(student, vocab_size=len(self.tokenizer), method=cfg.method,
                             high_fraction=cfg.high_fraction, high_weight=cfg.high_weight,
                             va_temperature=cfg.va_temperature, backend=cfg.kernel_backend,
                             high_selection=cfg.high_selection, rollout_weighting=cfg.rollout_weighting,
                             visual_signal=cfg.visual_signal)
        if fsdp_plugin is not None:
            module = engines.shard_fsdp2(module, fsdp_plugin)  # before the optimizer: it holds the shards
        optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                      weight_decay=cfg.weight_decay)
        scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * self.total_steps),
                                                    self.total_steps)
        self.module, self.optimizer, self.scheduler = engines.prepare(self.acc, module, optimizer, scheduler, cfg)
        self.acc.print(f"vaopd-train: {engines.describe(self.acc, self.module)}")
        self.context = min(_context_length(self.teacher.model), _context_length(student))
        self.identity = run_identity(cfg, world)
        self.guard = DivergenceGuard(self.acc, cfg.max_skipped_steps)
        self.skipped_images = 0
        self.last_saved = ""
        self.memory = PhaseMemory(device)
        self.logger = MetricsLogger(cfg.output_dir, cfg.report_to, self.acc.is_main_process, fresh=cfg.resume is None)
        self.history: List[Dict[str, float]] = []
        self.evals: Dict[str, Dict[str, float]] = {}
        self.eval_scores: Dict[str, Dict[str, List[float]]] = {}
        self.last_rollouts: List[dict] = []
        self.best_accuracy = self._best_so_far() if cfg.resume is not None else -math.inf
        if self.acc.is_main_process:
            with open(os.path.join(cfg.output_dir, "config.yaml"), "w") as f:
                # every decoding setting is a field below; the stop tokens come from the student
                f.write(f"# generation stops at token ids {self.eos_token_ids} (student generation_config + tokenizer EOS)\n")
                yaml.safe_dump(to_dict(cfg), f, sort_keys=False)

    @property
    def inner(self):
        """The StudentLoss module (the student is ``inner.model``) without DDP / DeepSpeed wrappers."""
        return self.acc.unwrap_model(self.module)

    @property
    def student(self):
        return self.inner.model

    # ------------------------------------------------------------------ one step
    def decoded(self, samples: List[Sample], where: str) -> List[Sample]:
        """The samples with their images decoded; with ``skip_bad_images`` undecodable rows are left out
        (warned about and counted in ``skipped_images``), otherwise the first one stops the run naming it."""
        out = []
        for sample in samples:
            try:
                out.append(sample.decoded())
            except ImageDecodeError as err:
                if not self.cfg.skip_bad_images:
                    raise
                self.skipped_images += 1
                logger.warning("skip_bad_images: left out of %s: %s", where, err)
        if samples and not out:
            raise DataError(f"{where}: every sample of this process has an undecodable image "
                            f"({', '.join(s.origin for s in samples)})")
        return out

    def step_samples(self, step: int) -> List[Sample]:
        """This rank's prompts for ``step``, images decoded (see ``decoded``)."""
        cfg, rank = self.cfg, self.acc.process_index
        indices = step_prompts(len(self.train_samples), self.global_prompts, step, cfg.seed)
        mine = indices[rank * cfg.per_device_train_batch_size:(rank + 1) * cfg.per_device_train_batch_size]
        return self.decoded([self.train_samples[i] for i in mine], f"step {step + 1}")

    def rollouts(self, step: int):
        cfg, rank = self.cfg, self.acc.process_index
        samples = self.step_samples(step)
        batch = encode_prompts(samples, self.tokenizer, self.image_processor,
                               repeat=cfg.num_generations, device=self.acc.device,
                               pixelate_ratio=cfg.pixelate_ratio if cfg.method == "va_opd" else None,
                               prompt_offset=rank * cfg.per_device_train_batch_size, prompt_suffix=cfg.prompt_suffix)
        check_context(batch, samples, cfg.num_generations, cfg.max_completion_length, self.context)
        with self.acc.autocast(), self.guard.sampling(step + 1):
            return self.inner.run_on_student(generate, batch, self.tokenizer, max_new_tokens=cfg.max_completion_length,
                                             sampling=Sampling.for_rollouts(cfg), eos_token_ids=self.eos_token_ids)

    def rollout_accuracy(self, batch) -> float:
        """Share of the step's rollouts whose first \\boxed{} answer is right, over all ranks. Logged only:
        the loss never sees it."""
        correct = sum(is_correct(r, a) for r, a in zip(responses_text(batch, self.tokenizer), batch.answers))
        total = self.acc.reduce(torch.tensor([correct, len(batch.answers)], device=self.acc.device,
                                             dtype=torch.float64), "sum")
        return float(total[0] / total[1])

    def high_seed(self, step: int) -> int:
        """Seed of the step's random high groups (``high_selection="random"``): a function of
        (seed, step) only, so a resumed run draws the same groups; equal on every rank."""
        return int(np.random.SeedSequence([self.cfg.seed, step]).generate_state(1)[0])

    def loss_and_backward(self, batch, teacher_hidden, teacher_degraded, step: int = 0):
        """Backward of the step's loss; returns (whole-batch objective result, visual advantage or None)."""
        # a sharded teacher's LM head (root unit) is gathered while the kernels read it
        with engines.gathered(self.teacher):
            return self._loss_and_backward(batch, teacher_hidden, teacher_degraded, step,
                                           lm_head(self.teacher.model))

    def _loss_and_backward(self, batch, teacher_hidden, teacher_degraded, step: int, teacher_head):
        cfg, acc = self.cfg, self.acc
        counts = dict(num_prompts=self.global_prompts, num_rollouts=self.global_prompts * cfg.num_generations,
                      high_seed=self.high_seed(step))
        # DDP/FSDP/DeepSpeed average gradients over ranks; our loss is already a global sum, so undo the mean
        scale = acc.num_processes
        rows = batch.input_ids.shape[0]
        micro = cfg.micro_batch_size or rows
        inner = self.inner
        # the coefficients depend on the teacher only: known for the whole batch before any student work
        coefficients = inner.coefficients(batch, teacher_hidden, teacher_degraded, teacher_head, **counts)
        cu = batch.cu_seqlens().tolist()
        parts = []
        for start in range(0, rows, micro):
            stop = min(rows, start + micro)
            lo, hi = cu[start], cu[stop]
            with engines.micro_batch_sync(acc, self.module, last=stop == rows), acc.autocast():
                loss, part = self.module(batch.rows(start, stop), teacher_hidden[lo:hi], teacher_head,
                                         coefficients.token_weight[lo:hi])
                acc.backward(loss * scale)
            parts.append(part)
        return inner.objective_result(parts, coefficients), coefficients.visual_advantage

    def step(self, step: int) -> Dict[str, float]:
        cfg, acc = self.cfg, self.acc
        start = time.perf_counter()
        with self.memory.phase("generate"):
            batch = self.rollouts(step)
        with self.memory.phase("teacher"), acc.autocast():
            teacher_hidden = self.teacher(batch, chunk=cfg.micro_batch_size)
            teacher_degraded = (self.teacher(batch, degraded=True, chunk=cfg.micro_batch_size)
                                if cfg.method == "va_opd" else None)
        with self.memory.phase("student"):
            result, va = self.loss_and_backward(batch, teacher_hidden, teacher_degraded, step)
        with self.memory.phase("optimizer"):
            grad_norm = acc.clip_grad_norm_(self.module.parameters(), cfg.max_grad_norm or math.inf)
            # a non-finite loss or gradient never reaches the optimizer (same decision on every rank)
            finite = self.guard.step_is_finite(result.loss.detach(), grad_norm)
            if finite:
                self.optimizer.step()
            self.scheduler.step()  # the schedule follows the step number, skipped or not
            self.optimizer.zero_grad(set_to_none=True)
        self.guard.record(step + 1, finite)
        if finite or acc.distributed_type == DistributedType.DEEPSPEED:
            # DeepSpeed steps inside backward, before the norm is known: a non-finite gradient has
            # already reached its weights, so they are checked whatever the flag says
            self.guard.check_state(step + 1, self.module)
        tokens = acc.reduce(batch.response_mask.sum().to(acc.device, torch.float32), "sum")
        lengths = batch.response_mask.sum(1).float()
        # generation stops only at EOS or the length limit: a row without EOS was truncated
        eos = torch.as_tensor(self.eos_token_ids, device=batch.input_ids.device)
        truncated = ~torch.isin(batch.input_ids[:, batch.prompt_len:], eos).any(1)
        metrics = {
            "loss": float(acc.reduce(result.loss.detach().float(), "sum")),
            **{k: float(v) for k, v in result.metrics.items()},
            "grad_norm": float(grad_norm),
            "lr": self.scheduler.get_last_lr()[0],
            "rollout_accuracy": self.rollout_accuracy(batch),
            "response_length": float(lengths.mean()),
            "truncated_fraction": float(truncated.float().mean()),
            "tokens_per_s": float(tokens) / (time.perf_counter() - start),
            "skipped_steps": self.guard.skipped_steps,
            **({"skipped_images": self.skipped_images} if cfg.skip_bad_images else {}),
            **{f"peak_mem_{k}_mib": v for k, v in self.memory.peaks.items()},
        }
        self._keep_for_page(batch, result, va)
        return metrics

    def _keep_for_page(self, batch, result, va) -> None:
        """The rollouts for va_tokens.html: up to ``num_visualize``, right and wrong answers alternating
        while both remain, so the page shows where VA is and where it is missing."""
        if not self.acc.is_main_process or va is None or self.cfg.num_visualize == 0:
            return
        cu = batch.cu_seqlens().tolist()
        targets = batch.targets().tolist()
        va, high = va.float().tolist(), result.high_mask.tolist()
        texts = responses_text(batch, self.tokenizer)
        right = [is_correct(t, a) for t, a in zip(texts, batch.answers)]
        by_outcome = [[r for r in range(len(cu) - 1) if right[r] == outcome] for outcome in (True, False)]
        order = [r for pair in itertools.zip_longest(*by_outcome) for r in pair if r is not None]
        self.last_rollouts = [
            {"tokens": [self.tokenizer.decode([t]) for t in targets[cu[r]:cu[r + 1]]], "va": va[cu[r]:cu[r + 1]],
             "high": high[cu[r]:cu[r + 1]], "weight": float(result.rollout_weight[r]),
             "prompt": f"prompt {int(batch.prompt_ids[r])}", "right": right[r],
             "answer": extract_boxed(texts[r]), "gold": batch.answers[r]}
            for r in order[:self.cfg.num_visualize]]

    # ------------------------------------------------------------------ eval / loop
    def evaluate(self, tag: str, step: int) -> Dict[str, float]:
        """avg@``eval_num_generations`` (and with ``eval_greedy`` one greedy answer) on this rank's share
        of the validation problems, summed over ranks; each accuracy with the half-width of its 95%
        interval over images (``intervals.py``). The per-image scores are kept in ``eval_scores[tag]``
        (rank-major order, the same at every evaluation) for paired before -> after gains.

        Sampling draws from its own RNG stream, seeded by (seed, step, rank): a validation score is
        reproducible and the training stream is the same whether or not (or how often) we validate.
        """
        cfg, acc = self.cfg, self.acc
        shard = self.decoded(self.eval_samples[acc.process_index::acc.num_processes], f"evaluation at step {step}")
        passes = {"eval_accuracy": Sampling.for_eval(cfg)}
        if cfg.eval_greedy and cfg.eval_do_sample:
            passes["eval_greedy_accuracy"] = Sampling(do_sample=False)
        result, scores = {}, {}
        for name, sampling in passes.items():
            # the visual reliance is reported from the main pass only
            sums = self._evaluate_shard(shard, sampling, step, reliance=name == "eval_accuracy")
            total = acc.reduce(torch.tensor([sums[k] for k in ("correct", "count", "reliance_sum", "tokens")],
                                            device=acc.device, dtype=torch.float64), "sum").tolist()
            scores[name] = [score for part in gather_object([sums["scores"]]) for score in part]
            result[name] = total[0] / max(total[1], 1)
            result[f"{name}_ci95"] = mean_ci95(scores[name])[1]
            if name == "eval_accuracy":
                result["eval_visual_reliance"] = total[2] / max(total[3], 1)
        self.evals[tag] = result
        self.eval_scores[tag] = scores
        self.logger.log(step, result, echo=tuple(result))
        if step > 0:
            self._keep_if_best(step, result["eval_accuracy"])
        return result

    def _evaluate_shard(self, shard: List[Sample], sampling: Sampling, step: int, reliance: bool) -> Dict[str, object]:
        cfg, acc = self.cfg, self.acc
        devices = [acc.device] if acc.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), acc.autocast(), self.guard.sampling(step):
            torch.manual_seed(int(np.random.SeedSequence([cfg.seed, step, acc.process_index]).generate_state(1)[0]))
            return self.inner.run_on_student(
                evaluate, shard, self.tokenizer, self.image_processor,
                batch_size=cfg.per_device_eval_batch_size or cfg.per_device_train_batch_size * cfg.num_generations,
                max_new_tokens=cfg.max_completion_length, pixelate_ratio=cfg.pixelate_ratio,
                device=acc.device, sampling=sampling,
                num_generations=cfg.eval_num_generations if sampling.do_sample else 1,
                eos_token_ids=self.eos_token_ids, prompt_suffix=cfg.prompt_suffix,
                backend=cfg.kernel_backend, context=self.context, reliance=reliance)

    def save(self, step: int) -> str:
        """Checkpoint ``step`` (never a non-finite state), then drop the oldest beyond ``save_total_limit``."""
        self.guard.check_state(step, self.module, self.optimizer)
        self.last_saved = checkpoint.save(self.acc, self.cfg.output_dir, step,
                                          {"run": self.identity, "skipped_steps": self.guard.skipped_steps})
        if self.acc.is_main_process:
            checkpoint.rotate(self.cfg.output_dir, self.cfg.save_total_limit, keep=self.last_saved)
        return self.last_saved

    def _stop_if_preempted(self, done: int, bar) -> None:
        """After a SIGTERM / SIGINT on any rank: checkpoint the finished step and stop (every rank alike)."""
        signum = self.preemption.requested(self.acc)
        if signum is None:
            return
        just_saved = os.path.basename(self.last_saved) == f"checkpoint-{done}"
        path = self.last_saved if just_saved else self.save(done)
        bar.close()
        self.logger.close()
        raise Preempted(signum, done, path)

    def _best_so_far(self) -> float:
        path = os.path.join(self.cfg.output_dir, BEST_DIR, "best.json")
        if not os.path.isfile(path):
            return -math.inf
        with open(path) as f:
            return float(json.load(f)["eval_accuracy"])

    def _keep_if_best(self, step: int, accuracy: float) -> None:
        """Checkpoint into output_dir/best/ when validation accuracy beats every earlier validation of
        this run (ties keep the earlier one); the previous best checkpoint is then removed."""
        if accuracy <= self.best_accuracy:
            return
        best_dir = os.path.join(self.cfg.output_dir, BEST_DIR)
        path = checkpoint.save(self.acc, best_dir, step)
        if self.acc.is_main_process:
            record = os.path.join(best_dir, "best.json")
            with open(record + ".tmp", "w") as f:
                json.dump({"step": step, "eval_accuracy": accuracy, "checkpoint": os.path.basename(path)}, f)
            os.replace(record + ".tmp", record)  # the record names a complete checkpoint, then old ones go
            for name in os.listdir(best_dir):
                if name.startswith("checkpoint-") and name != os.path.basename(path):
                    shutil.rmtree(os.path.join(best_dir, name))
        self.best_accuracy = accuracy
        self.acc.wait_for_everyone()

    def train(self) -> Dict[str, object]:
        """The run; SIGTERM / SIGINT during it stop after the step in flight (``signals.py``)."""
        with PreemptionHandler() as self.preemption:
            return self._train()

    def close(self) -> None:
        """Leave the process group together, once the run is over: a rank that exits while a peer's
        gloo threads still run aborts that peer ("terminate called without an active exception")."""
        self.acc.wait_for_everyone()
        self.acc.end_training()

    def _train(self) -> Dict[str, object]:
        cfg, acc = self.cfg, self.acc
        start_step, state, resume = restore(acc, cfg, self.identity)
        if resume is not None:
            acc.print(f"resumed from {resume} at step {start_step}")
            if start_step > self.total_steps:
                raise ConfigError(f"max_steps: the run would end at step {self.total_steps}, before the checkpoint's "
                                 f"step {start_step} ({resume}); max_steps / num_train_epochs may only grow")
        self.guard.skipped_steps = int(state.get("skipped_steps", 0))
        self.logger.restart_at(start_step)  # steps after the checkpoint are logged again, once
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
                self.save(done)
            self._stop_if_preempted(done, bar)
        bar.close()
        outputs = self.finish(time.perf_counter() - began)
        return outputs

    def finish(self, seconds: float) -> Dict[str, object]:
        cfg, acc = self.cfg, self.acc
        self.evaluate("after", self.total_steps)
        ckpt = self.save(self.total_steps)
        student_state = engines.full_student_state(self.inner)  # FSDP2: gathered on every rank, kept on rank 0
        outputs: Dict[str, object] = {"checkpoint": ckpt, "train_seconds": seconds, "history": self.history,
                                      "evals": self.evals, "eval_scores": self.eval_scores}
        best = os.path.join(cfg.output_dir, BEST_DIR)
        if os.path.isdir(best):
            outputs["best"] = best
        if acc.is_main_process:
            export = os.path.join(cfg.output_dir, "student")
            self.student.save_pretrained(export, state_dict=student_state)
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
