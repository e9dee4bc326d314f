"""What the fault tests read back from a run."""
import json
import os


def losses(outputs):
    return [h["loss"] for h in outputs["history"]]


def metric_steps(output_dir):
    """Steps of the training lines (those with a loss) in output_dir/metrics.jsonl, in file order."""
    with open(os.path.join(output_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [r["step"] for r in rows if "loss" in r]
