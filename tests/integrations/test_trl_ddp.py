import os
import subprocess
import sys

import pytest
import torch
import tiny_vlm as tv

from vaopd_kernels.integrations.trl import VAOPDConfig, VAOPDTrainer

WORKER = os.path.join(os.path.dirname(__file__), "_trl_ddp_worker.py")


@pytest.mark.slow
def test_two_gloo_ranks_give_the_single_process_gradient(tmp_path):
    """VA-OPD, 2 prompts x K = 2: one prompt per rank (DDP all-reduce, 1/P over the global P) == one process.
    The same ranks also check full_head on a row-sharded DTensor head (what FSDP2 holds)."""
    k = 2
    proc = tv.processor()
    student, teacher = tv.models()
    saved = {"student": {n: t.clone() for n, t in student.state_dict().items()},
             "teacher": {n: t.clone() for n, t in teacher.state_dict().items()}, "k": k}
    args = VAOPDConfig(**tv.config_kwargs(tmp_path, method="va_opd", num_generations=k,
                                          per_device_train_batch_size=2 * k,
                                          generation_kwargs=dict(suppress_tokens=tv.never_sample(proc))))
    single = VAOPDTrainer(student, teacher, args=args, train_dataset=tv.dataset(2), processing_class=proc)
    single.model.train()
    torch.manual_seed(0)
    batch = single._generate_and_score_completions([ex for ex in tv.examples(2) for _ in range(k)])
    single.compute_loss(single.model, batch).backward()
    reference = {n: p.grad.clone() for n, p in single.model.named_parameters() if p.grad is not None}
    mask = batch["completion_mask"].bool()
    saved["completions"] = [row[m].tolist() for row, m in zip(batch["completion_ids"], mask)]
    torch.save(saved, tmp_path / "saved.pt")

    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc_run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               WORKER, str(tmp_path / "saved.pt"), str(tmp_path / "out.pt")],
                              env=env, capture_output=True, text=True, timeout=600)
    assert proc_run.returncode == 0, proc_run.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt", weights_only=False)
    assert out["world"] == 2 and "MULTI_CPU" in out["type"]
    assert out["sharded"] == {"full_equal": True, "grad_equal": True}  # FSDP2's DTensor head
    assert out["grads"].keys() == reference.keys()
    worst = max(float((out["grads"][n] - g).norm() / g.norm().clamp_min(1e-30)) for n, g in reference.items())
    print(f"\n2-rank vs 1-process max gradient rel diff {worst:.2e}")
    assert worst <= 1e-4
