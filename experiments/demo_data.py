"""The data `make demo` trains on: the fine-detail task as the trainer's prepared parquet files.

    python -m experiments.demo_data          # regenerates experiments/assets/demo/{train,val}.parquet
"""
from __future__ import annotations

import argparse
import os

from vaopd_trainer.data import write_prepared

from . import task
from .teacher import ASSETS

DEMO_DIR = os.path.join(ASSETS, "demo")
SEED, NUM_TRAIN, NUM_VAL = 0, 512, 256


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEMO_DIR)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for split, count in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        path = os.path.join(args.out, f"{split}.parquet")
        write_prepared(task.dataset(SEED, split, count), path)
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
