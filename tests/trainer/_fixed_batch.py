"""What the 2-process engine tests share: one fixed rollout batch, written by the single-process
reference in the test and read by every rank of its worker, each rank taking its half; a rank's
full run, whose results the main process saves; and the torchrun launch of a worker."""
import os
import subprocess
import sys

import torch



def save_reference(single, path) -> dict:
    """The single-process gradient of ``single``'s first rollout batch (the fixed batch), with the
    batch and its teacher hidden states saved to ``path``; the gradients are left cleared."""
    torch.manual_seed(0)
    batch = single.rollouts(0)
    th = single.teacher(batch)
    td = single.teacher(batch, degraded=True)
    single.loss_and_backward(batch, th, td)
    reference = {n: p.grad.clone() for n, p in single.module.named_parameters() if p.grad is not None}
    single.optimizer.zero_grad(set_to_none=True)
    torch.save({"batch": batch, "teacher_hidden": th, "teacher_degraded": td}, path)
    return reference


def my_rows(trainer, num_rows: int):
    """(first, end) of this rank's equal share of ``num_rows`` rollouts."""
    per_rank = num_rows // trainer.acc.num_processes
    return trainer.acc.process_index * per_rank, (trainer.acc.process_index + 1) * per_rank


def half_batch_backward(trainer, path):
    """This rank's half of the fixed batch through the trainer's own loss and backward; returns the batch."""
    saved = torch.load(path, weights_only=False)
    batch, th, td = saved["batch"], saved["teacher_hidden"], saved["teacher_degraded"]
    lo_row, hi_row = my_rows(trainer, batch.input_ids.shape[0])
    cu = batch.cu_seqlens().tolist()
    trainer.loss_and_backward(batch.rows(lo_row, hi_row), th[cu[lo_row]:cu[hi_row]], td[cu[lo_row]:cu[hi_row]])
    return batch


def run_and_save(trainer, out: dict, path) -> None:
    """A full run; its history and evaluations join ``out``, saved by the main process; then every
    rank leaves the process group together."""
    outputs = trainer.train()
    out.update(history=outputs["history"], evals=outputs["evals"])
    if trainer.acc.is_main_process:
        torch.save(out, path)
    trainer.close()


def torchrun(worker, *args, timeout=400) -> None:
    """``worker args`` on 2 gloo processes (torchrun); a failure shows the ranks' error lines."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           worker, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)
    ranks = "\n".join(line for line in proc.stderr.splitlines() if line.startswith("[rank"))
    assert proc.returncode == 0, (ranks or proc.stderr)[-4000:]
