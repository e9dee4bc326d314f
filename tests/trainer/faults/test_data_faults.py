"""Undecodable images, an empty eval set, prompts and completions past the models' context."""
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vaopd_trainer.data import load_prepared, synthetic_dataset, write_prepared
from vaopd_trainer.errors import DataError, ImageDecodeError
from vaopd_trainer.train import Trainer


def _prepared(folder, train_rows=4, eval_rows=2, bad_row=None, question=None):
    """train/val parquet files in the trainer's layout; ``bad_row`` of train gets bytes that are not an image."""
    samples = synthetic_dataset(0, train_rows + eval_rows, 64)
    train, val = str(folder / "train.parquet"), str(folder / "val.parquet")
    write_prepared(samples[:train_rows], train)
    write_prepared(samples[train_rows:], val)
    table = pq.read_table(train)
    if bad_row is not None:
        images = table.column("image").to_pylist()
        images[bad_row] = b"\x89PNG not really"
        table = table.set_column(0, "image", pa.array(images, pa.binary()))
    if question is not None:
        table = table.set_column(1, "question", pa.array([question] * train_rows))
    pq.write_table(table, train)
    return dict(dataset="prepared", train_file=train, eval_file=val)


def test_images_are_decoded_when_used_and_a_bad_one_is_named(tmp_path):
    files = _prepared(tmp_path, bad_row=2)
    samples = load_prepared(files["train_file"])  # no decoding at load
    assert samples[1].image.size == (64, 64)
    with pytest.raises(ImageDecodeError, match=r"train\.parquet row 2: the image cannot be decoded"):
        samples[2].image


def test_run_stops_naming_the_row_or_skips_and_counts_it(make_config, tmp_path, caplog):
    files = _prepared(tmp_path, bad_row=2)
    with pytest.raises(ImageDecodeError, match=r"train\.parquet row 2"):
        Trainer(make_config(max_steps=2, output_dir=str(tmp_path / "a"), **files)).train()
    with caplog.at_level(logging.WARNING, logger="vaopd_trainer"):
        outputs = Trainer(make_config(max_steps=2, output_dir=str(tmp_path / "b"), skip_bad_images=True,
                                      **files)).train()
    assert "train.parquet row 2" in caplog.text
    assert outputs["history"][-1]["skipped_images"] == 1  # 4 rows, 2 steps of 2: row 2 used once
    rows = [json.loads(line) for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert [r["skipped_images"] for r in rows if "loss" in r][-1] == 1


def test_empty_eval_set_is_an_error_naming_the_field(make_config, tmp_path):
    files = _prepared(tmp_path)
    write_prepared([], files["eval_file"])
    with pytest.raises(DataError, match="^eval_file: .*no usable sample"):
        Trainer(make_config(output_dir=str(tmp_path / "run"), **files))


def test_prompt_longer_than_the_context_names_the_sample(make_config, tmp_path):
    files = _prepared(tmp_path, question="How many red dots? " * 60)  # > 1024 tokens with the tiny tokenizer
    trainer = Trainer(make_config(output_dir=str(tmp_path / "run"), **files))
    with pytest.raises(DataError, match=r"train\.parquet row \d: the prompt is \d+ tokens.*context of 1024"):
        trainer.train()
    (tmp_path / "eval").mkdir()
    long_eval = _prepared(tmp_path / "eval", question="How many red dots? " * 60)["train_file"]
    trainer = Trainer(make_config(output_dir=str(tmp_path / "run2"), val_before_train=True,
                                  **dict(files, eval_file=long_eval)))
    with pytest.raises(DataError, match=r"eval/train\.parquet row \d: the prompt is"):
        trainer.train()  # the evaluation before training refuses it too


def test_completion_past_the_context_names_max_completion_length(make_config, tmp_path):
    trainer = Trainer(make_config(max_completion_length=1000, output_dir=str(tmp_path / "run")))
    with pytest.raises(DataError, match="^max_completion_length: 1000 tokens after a"):
        trainer.train()
