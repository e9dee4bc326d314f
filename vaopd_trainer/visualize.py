"""Token-level VA page (HTML: each response token shaded by its visual advantage) and loss curves."""
from __future__ import annotations

import html
import json
import os
from typing import List, Optional, Sequence


def va_html(path: str, rollouts: Sequence[dict], title: str) -> str:
    """``rollouts``: dicts with ``tokens`` (str list), ``va`` (float list), ``high`` (bool list),
    ``weight`` (rollout weight), ``prompt``, and ``right`` / ``answer`` / ``gold`` (the rollout's
    outcome, its boxed answer, the true one). Shade = VA / max VA over the page; high-group tokens
    are underlined."""
    top = max([max(r["va"], default=0.0) for r in rollouts] + [1e-12])
    blocks = []
    for i, r in enumerate(rollouts):
        spans = []
        for tok, va, high in zip(r["tokens"], r["va"], r["high"]):
            style = f"background: rgba(220, 40, 40, {va / top:.3f});" + (" border-bottom: 2px solid #000;" if high else "")
            spans.append(f'<span title="VA={va:.4f}" style="{style}">{html.escape(tok)}</span>')
        outcome = ("<span style='color: #080'>right</span>" if r["right"] else
                   "<span style='color: #c00'>wrong</span>") + f" (answered {html.escape(str(r['answer']))}, " \
                  f"answer {html.escape(r['gold'])})"
        mean_va = sum(r["va"]) / max(len(r["va"]), 1)
        blocks.append(f"<h3>rollout {i} · {outcome} · weight {r['weight']:.3f} · mean VA {mean_va:.4f} · "
                      f"{html.escape(r['prompt'])}</h3>"
                      f"<pre style='white-space: pre-wrap'>{''.join(spans)}</pre>")
    page = (f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
            f"<h2>{html.escape(title)}</h2><p>red = visual advantage (teacher log-prob drop when the image is "
            f"pixelated), max {top:.4f}; underlined = the rollout's high-VA group. The paper's VA is the gap for "
            f"the sampled token, clamped at 0: on a wrong answer the real image makes the teacher less likely "
            f"to say it, so a wrong rollout's answer usually has none.</p>{''.join(blocks)}</body></html>")
    with open(path, "w") as f:
        f.write(page)
    return path


def loss_curves(metrics_path: str, out_path: str,
                keys: Sequence[str] = ("loss", "kl_mean", "rollout_accuracy", "eval_accuracy")) -> Optional[str]:
    """PNG of the training curves from metrics.jsonl; None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows: List[dict] = []
    with open(metrics_path) as f:
        rows = [json.loads(line) for line in f]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3))
    for ax, key in zip(axes, keys):
        points = [(r["step"], r[key], r.get(f"{key}_ci95")) for r in rows if key in r]
        steps, values, ci = [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]
        if all(c is not None for c in ci):  # accuracies carry their 95% interval; training metrics have none
            ax.errorbar(steps, values, yerr=ci, marker="o", capsize=3)
        else:
            ax.plot(steps, values, marker="o")
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return os.path.abspath(out_path)
