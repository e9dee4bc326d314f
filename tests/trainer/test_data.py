import io

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


def test_prepare_splits_disjoint_and_roundtrips(geometry3k, tmp_path, capsys):
    out = tmp_path / "prepared"
    assert cli.main(["prepare", "--format", "geometry3k", "--source", geometry3k, "--out_dir", str(out),
                     "--val_size", "2"]) == 0
    train, val = load_prepared(str(out / "train.parquet")), load_prepared(str(out / "val.parquet"))
    assert len(train) == 3 and len(val) == 2
    assert sorted(s.answer for s in train + val) == ["0", "1", "2", "3", "4"]
    original = {s.answer: np.asarray(s.image) for s in load_geometry3k(geometry3k)}
    assert all(np.array_equal(np.asarray(s.image), original[s.answer]) for s in train + val)
    with pytest.raises(ValueError, match="val_size"):
        prepare(geometry3k, "geometry3k", str(tmp_path / "p2"), val_size=5)


def test_step_prompts_epochs_are_permutations():
    seen = np.concatenate([step_prompts(10, 3, s, seed=1) for s in range(3)])  # 3 steps per epoch, one left out
    assert len(set(seen.tolist())) == 9
    assert not np.array_equal(step_prompts(10, 3, 0, seed=1), step_prompts(10, 3, 3, seed=1))  # reshuffled
    assert np.array_equal(step_prompts(10, 3, 4, seed=1), step_prompts(10, 3, 4, seed=1))
