"""A tiny-budget run of the whole experiment: both methods train, evaluate, get profiled, and the
report is written from the results."""
import json

from experiments import reproduce


def test_reproduce_smoke(tmp_path):
    out, doc, img = tmp_path / "runs", tmp_path / "reproduction.md", tmp_path / "img"
    code = reproduce.main(["--seeds", "0", "--steps", "2", "--prompts", "2", "--generations", "2", "--evals", "1",
                           "--num_train", "8", "--num_eval", "4", "--profile_prompts", "2", "--workers", "2",
                           "--out", str(out), "--doc", str(doc), "--img", str(img)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    runs = {r["method"]: r for r in results["runs"]}
    assert set(runs) == {"opd", "va_opd"}
    for run in runs.values():
        assert [h["step"] for h in run["history"]] == [1, 2]
        assert {"before", "after"} <= set(run["evals"])
        profile = run["va_after"]
        share = profile["top_share"]
        assert share != share or 0.0 <= share <= 1.0 + 1e-6  # NaN when no sampled token had any VA
        assert sum(profile["tokens"].values()) > 0
    assert "va_before" in runs["opd"]  # the untrained student is profiled once
    assert "va_high_share" in runs["va_opd"]["history"][0] and "va_high_share" not in runs["opd"]["history"][0]
    text = doc.read_text()
    for needle in ("| OPD |", "| VA-OPD |", "top 20%", "reproduction_curves.png"):
        assert needle in text, needle
    assert (img / "reproduction_curves.png").stat().st_size > 0 and (img / "reproduction_va_kinds.png").stat().st_size > 0
