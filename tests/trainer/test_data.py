import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vaopd_trainer import cli
from vaopd_trainer.data import load_geometry3k, load_prepared, load_virl39k, prepare, step_prompts


def _png(seed):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def geometry3k(tmp_path):
    """Six rows in hiyouga/geometry3k's layout; row 5 has two images and must be skipped."""
    images = [[{"bytes": _png(i), "path": f"{i}.png"}] for i in range(5)] + [[{"bytes": _png(9), "path": "a"}] * 2]
    table = pa.table({"images": images, "problem": [f"<image>Find x{i}." for i in range(6)],
                      "answer": [str(i) for i in range(6)]})
    path = tmp_path / "geo.parquet"
    pq.write_table(table, path)
    return str(path)


def test_geometry3k_loader(geometry3k):
    samples = load_geometry3k(geometry3k)
    assert [s.answer for s in samples] == ["0", "1", "2", "3", "4"]
    assert samples[2].question == "Find x2." and samples[2].image.size == (30, 20)
    assert np.array_equal(np.asarray(samples[3].image), np.asarray(Image.open(io.BytesIO(_png(3)))))


def test_virl39k_loader(tmp_path):
    (tmp_path / "images").mkdir()
    for i in range(3):
        (tmp_path / "images" / f"{i}.png").write_bytes(_png(i))
    table = pa.table({"question": ["<image>\nWhich one?", "How big?", "Two <image> <image>"],
                      "answer": ["\\boxed{B}", "\\boxed{\\frac{1}{2}}", "3"],
                      "image": [["images/0.png"], ["images/1.png"], ["images/0.png", "images/2.png"]]})
    pq.write_table(table, tmp_path / "virl.parquet")
    samples = load_virl39k(str(tmp_path / "virl.parquet"), str(tmp_path))
    assert [(s.question, s.answer) for s in samples] == [("Which one?", "B"), ("How big?", "\\frac{1}{2}")]
    pq.write_table(table.slice(0, 1).set_column(2, "image", pa.array([["images/missing.png"]])), tmp_path / "bad.parquet")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_virl39k(str(tmp_path / "bad.parquet"), str(tmp_path))


def test_missing_columns_named(tmp_path):
    pq.write_table(pa.table({"problem": ["x"]}), tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="images"):
        load_geometry3k(str(tmp_path / "x.parquet"))


def _geometry3k_split(folder, split, count, first):
    """hiyouga/geometry3k's repository layout: data/<split>-00000-of-00001.parquet."""
    images = [[{"bytes": _png(first + i), "path": f"{first + i}.png"}] for i in range(count)]
    table = pa.table({"images": images, "problem": [f"<image>{split} problem {i}" for i in range(count)],
                      "answer": [f"{first + i}" for i in range(count)]})
    pq.write_table(table, folder / "data" / f"{split}-00000-of-00001.parquet")


@pytest.fixture
def geometry3k_folder(tmp_path):
    """A local dataset folder with Geometry3K's three splits (7 train, 12 validation, 3 test)."""
    folder = tmp_path / "geometry3k"
    (folder / "data").mkdir(parents=True)
    for split, count, first in (("train", 7, 0), ("validation", 12, 100), ("test", 3, 200)):
        _geometry3k_split(folder, split, count, first)
    return folder


def test_prepare_geometry3k_all_train_and_seeded_validation_draw(geometry3k_folder, tmp_path, capsys):
    out = tmp_path / "prepared"
    assert cli.main(["prepare", "--format", "geometry3k", "--source", str(geometry3k_folder), "--out_dir", str(out),
                     "--val_size", "5"]) == 0  # --seed defaults to 42, the paper's draw
    train, val = load_prepared(str(out / "train.parquet")), load_prepared(str(out / "val.parquet"))
    assert [s.answer for s in train] == [str(i) for i in range(7)]  # every train problem, in order
    # the validation problems come from the official validation split, drawn exactly as
    # datasets.Dataset.shuffle(seed=42).select(range(5)) draws them
    import datasets

    official = datasets.load_dataset(str(geometry3k_folder), split="validation").shuffle(seed=42).select(range(5))
    assert [s.answer for s in val] == official["answer"]
    assert all(100 <= int(s.answer) < 112 for s in val)
    assert val[0].question == official["problem"][0].replace("<image>", "")
    assert np.array_equal(np.asarray(val[0].image), np.asarray(Image.open(io.BytesIO(_png(int(val[0].answer))))))
    # manifest: ids in the source splits and content hashes, reproducible and sensitive to content
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["count"] == 7 and manifest["splits"]["val"]["count"] == 5
    assert [p["id"] for p in manifest["splits"]["val"]["problems"]] == [
        f"validation/{int(s.answer) - 100}" for s in val]
    cli.main(["prepare", "--format", "geometry3k", "--source", str(geometry3k_folder), "--out_dir", str(tmp_path / "again"),
              "--val_size", "5"])
    assert json.loads((tmp_path / "again" / "manifest.json").read_text()) == manifest
    drawn = int(manifest["splits"]["val"]["problems"][0]["id"].split("/")[1])
    table = pq.read_table(geometry3k_folder / "data" / "validation-00000-of-00001.parquet").to_pydict()
    table["answer"][drawn] = "changed"
    pq.write_table(pa.table(table), geometry3k_folder / "data" / "validation-00000-of-00001.parquet")
    cli.main(["prepare", "--format", "geometry3k", "--source", str(geometry3k_folder), "--out_dir", str(tmp_path / "edited"),
              "--val_size", "5"])
    edited = json.loads((tmp_path / "edited" / "manifest.json").read_text())["splits"]
    assert edited["train"] == manifest["splits"]["train"]
    assert edited["val"]["sha256"] != manifest["splits"]["val"]["sha256"]
    assert edited["val"]["problems"][0]["sha256"] != manifest["splits"]["val"]["problems"][0]["sha256"]
    assert edited["val"]["problems"][1:] == manifest["splits"]["val"]["problems"][1:]


def test_prepare_geometry3k_needs_both_splits(geometry3k, geometry3k_folder, tmp_path):
    with pytest.raises(ValueError, match="^source:"):
        prepare(geometry3k, "geometry3k", str(tmp_path / "p1"))  # one file holds no validation split
    with pytest.raises(ValueError, match="^val_size:"):
        prepare(str(geometry3k_folder), "geometry3k", str(tmp_path / "p2"), val_size=13)


def test_dataset_folders_load_by_split(geometry3k_folder, tmp_path):
    """A dataset folder is read with load_dataset semantics: the split names come from the file names."""
    assert [s.answer for s in load_geometry3k(str(geometry3k_folder), "test")] == ["200", "201", "202"]
    prepare(str(geometry3k_folder), "geometry3k", str(tmp_path / "prepared"), val_size=4)
    assert len(load_prepared(str(tmp_path / "prepared"), "validation")) == 4  # val.parquet
    assert len(load_prepared(str(tmp_path / "prepared"), "train")) == 7


OFFLINE_PROBE = """
import torch
from vaopd_trainer.data import load_prepared
from vaopd_trainer.models import load_model, load_processing
for name, call in (("dataset", lambda: load_prepared("vaopd-no-such-org/no-such-dataset")),
                   ("processing", lambda: load_processing("vaopd-no-such-org/no-such-model", 256, 4096)),
                   ("model", lambda: load_model("vaopd-no-such-org/no-such-model", torch.float32, torch.device("cpu")))):
    try:
        call()
    except Exception as err:
        print(name, type(err).__module__, type(err).__name__, str(err).replace(chr(10), " ")[:300])
"""


def test_hub_ids_fail_offline_with_the_librarys_own_error(repo_root):
    """No existence check of ours stands in front of from_pretrained / load_dataset."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([os.path.join(repo_root, "tests", "trainer"), os.environ.get("PYTHONPATH", "")]))
    script = "import _bootstrap; _bootstrap.ensure_importable()\n" + OFFLINE_PROBE
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()}
    assert set(lines) == {"dataset", "processing", "model"}, proc.stdout + proc.stderr[-2000:]
    for name, line in lines.items():
        module = line.split()[1]
        assert module.split(".")[0] in ("datasets", "huggingface_hub", "transformers", "builtins"), line
        # the library's words: it names the id or says it could neither reach the hub nor find a cached copy
        assert "vaopd-no-such-org/no-such-" in line or "huggingface.co" in line, line


def test_step_prompts_epochs_are_permutations():
    seen = np.concatenate([step_prompts(10, 3, s, seed=1) for s in range(3)])  # 3 steps per epoch, one left out
    assert len(set(seen.tolist())) == 9
    assert not np.array_equal(step_prompts(10, 3, 0, seed=1), step_prompts(10, 3, 3, seed=1))  # reshuffled
    assert np.array_equal(step_prompts(10, 3, 4, seed=1), step_prompts(10, 3, 4, seed=1))
