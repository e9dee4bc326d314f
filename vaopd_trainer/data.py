"""Image-question samples: the synthetic fine-detail set, Geometry3K / ViRL39K parquet, pixelation.

Every source yields ``Sample(image, question, answer, origin)``; images are kept encoded and decoded
each time ``sample.image`` is read, so loading costs the encoded size once, not every decoded image
on every rank, and a bad image fails where it is used, named by ``origin`` (file and row).
``prepare_geometry3k`` / ``prepare`` turn a raw download into the trainer's own parquet layout
(``image`` PNG bytes, ``question``, ``answer``) with a validation split (Geometry3K: drawn from its
official validation split; ViRL39K: held out of train).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from .errors import ImageDecodeError

SYNTHETIC_QUESTION = "How many red dots?"


@dataclass(frozen=True)
class Sample:
    source: Union[Image.Image, bytes, str]  # a decoded image, encoded image bytes, or an image file path
    question: str
    answer: str
    origin: str = ""  # where the row came from ("<file> row <i>"), for error messages

    @property
    def image(self) -> Image.Image:
        """The RGB image, decoded now; ImageDecodeError names ``origin`` when that fails."""
        if isinstance(self.source, Image.Image):
            return self.source
        try:
            if isinstance(self.source, bytes):
                return _open_image(self.source)
            with open(self.source, "rb") as f:
                return _open_image(f.read())
        except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, DecompressionBombError
            raise ImageDecodeError(f"{self.origin or 'a sample'}: the image cannot be decoded ({err})") from err

    def decoded(self) -> "Sample":
        """The same sample holding its decoded image (decode once, use several times)."""
        return Sample(self.image, self.question, self.answer, self.origin)


def synthetic_sample(seed: int, index: int, size: int = 64) -> Sample:
    """Red and blue 2x2 dots on a grey field; the answer is the red count.

    Dots are a few pixels wide, so pixelation to 10% smears them into colour blobs and the count
    (the fine detail) is lost while the overall picture stays similar.
    """
    rng = np.random.default_rng([seed, index])
    pixels = np.full((size, size, 3), 200, dtype=np.uint8)
    cells = max(2, size // 8)  # one dot per cell at most, so dots never touch
    n_red, n_blue = int(rng.integers(1, 10)), int(rng.integers(0, 5))
    chosen = rng.choice(cells * cells, size=min(n_red + n_blue, cells * cells), replace=False)
    step = size // cells
    for k, cell in enumerate(chosen):
        y = (cell // cells) * step + int(rng.integers(0, max(1, step - 2)))
        x = (cell % cells) * step + int(rng.integers(0, max(1, step - 2)))
        pixels[y:y + 2, x:x + 2] = (220, 30, 30) if k < n_red else (30, 30, 220)
    return Sample(Image.fromarray(pixels), SYNTHETIC_QUESTION, str(min(n_red, len(chosen))),
                  f"synthetic sample {index} (seed {seed})")


def synthetic_dataset(seed: int, count: int, size: int, offset: int = 0) -> List[Sample]:
    return [synthetic_sample(seed, offset + i, size) for i in range(count)]


def _strip_image_tag(text: str) -> str:
    return re.sub(r"\s*<image>\s*", " ", text).strip()


def _unbox(answer: str) -> str:
    """ViRL39K answers come as ``\\boxed{x}``; keep the content so every source stores bare answers."""
    match = re.fullmatch(r"\s*\\boxed\{(.*)\}\s*", answer, flags=re.S)
    return match.group(1) if match else answer.strip()


def _open_image(data) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def _read_table(path: str, columns: Sequence[str], split: str = "train"):
    """Rows of a local parquet file, or of ``split`` of whatever ``datasets.load_dataset(path)`` reads
    (a hub id or a dataset folder; its cache and HF_HUB_OFFLINE apply, and its errors are raised as is)."""
    if os.path.isfile(path):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    else:
        table = _hub_split(path, split)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; found {table.column_names}")
    return table.select(list(columns)).to_pylist()


def _origin(path: str, split: str, row: int) -> str:
    """Where a sample came from, for error messages: the file and row, or the dataset's split and row."""
    return f"{path} row {row}" if os.path.isfile(path) else f"{path} [{split}] row {row}"


def _hub_split(source: str, split: str):
    """One split of a hub dataset or local dataset folder as a pyarrow table (images stay encoded bytes)."""
    from datasets import load_dataset

    return load_dataset(source, split=split).with_format("arrow")[:]


def load_geometry3k(path: str, split: str = "train") -> List[Sample]:
    """hiyouga/geometry3k layout: ``images`` (list of {bytes, path}), ``problem``, ``answer``."""
    return [sample for _, _, sample in _geometry3k_problems(path, split)]


def _geometry3k_problems(path: str, split: str) -> List[Tuple[str, str, Sample]]:
    """(id, content hash, sample) per usable row; the id is ``split/row index`` in the source split and
    the hash covers the raw image bytes, problem and answer."""
    out = []
    for index, row in enumerate(_read_table(path, ("images", "problem", "answer"), split)):
        if len(row["images"]) != 1:  # one image per prompt: the pixelated view replaces it
            continue
        image = row["images"][0]["bytes"]
        digest = hashlib.sha256(image + b"\0" + row["problem"].encode() + b"\0" + row["answer"].encode()).hexdigest()
        out.append((f"{split}/{index}", digest,
                    Sample(image, _strip_image_tag(row["problem"]), _unbox(row["answer"]), _origin(path, split, index))))
    return out


def load_virl39k(path: str, image_root: str, split: str = "train") -> List[Sample]:
    """TIGER-Lab/ViRL39K layout: ``question``, ``answer``, ``image`` (paths relative to image_root)."""
    out = []
    for i, row in enumerate(_read_table(path, ("question", "answer", "image"), split)):
        images = row["image"] if isinstance(row["image"], list) else [row["image"]]
        if len(images) != 1:
            continue
        image_path = os.path.join(image_root, images[0])
        if not os.path.isfile(image_path):
            raise FileNotFoundError(f"{path}: image not found: {image_path}")
        out.append(Sample(image_path, _strip_image_tag(row["question"]), _unbox(row["answer"]),
                          f"{path} row {i} ({image_path})"))
    return out


def load_prepared(path: str, split: str = "train") -> List[Sample]:
    return [Sample(r["image"], r["question"], r["answer"], _origin(path, split, i))
            for i, r in enumerate(_read_table(path, ("image", "question", "answer"), split))]


def write_prepared(samples: Sequence[Sample], path: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def png(image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()

    table = pa.table({"image": [png(s.image) for s in samples], "question": [s.question for s in samples],
                      "answer": [s.answer for s in samples]})
    tmp = path + ".tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def prepare(source: str, fmt: str, out_dir: str, val_size: int = 200, seed: int = 42,
            image_root: Optional[str] = None) -> List[str]:
    """Geometry3K: ``prepare_geometry3k``. ViRL39K (no official validation split): shuffle its train
    rows with ``seed`` and hold ``val_size`` of them out. Returns the written paths."""
    if fmt == "geometry3k":
        return prepare_geometry3k(source, out_dir, val_size, seed)
    if fmt == "virl39k":
        if image_root is None:
            raise ValueError("image_root: required for virl39k")
        samples = load_virl39k(source, image_root)
    else:
        raise ValueError(f"format: must be geometry3k or virl39k, got {fmt!r}")
    if len(samples) <= val_size:
        raise ValueError(f"val_size: {val_size} leaves no training samples out of {len(samples)}")
    order = np.random.default_rng(seed).permutation(len(samples))
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "train.parquet"), os.path.join(out_dir, "val.parquet")]
    write_prepared([samples[i] for i in order[val_size:]], paths[0])
    write_prepared([samples[i] for i in order[:val_size]], paths[1])
    return paths


MANIFEST = "manifest.json"


def prepare_geometry3k(source: str, out_dir: str, val_size: int = 200, seed: int = 42) -> List[str]:
    """The paper's Geometry3K data: every problem of the official train split, and ``val_size`` problems
    of the official validation split drawn with ``seed`` (the draw of datasets'
    ``Dataset.shuffle(seed=seed).select(range(val_size))``, since every Geometry3K row has one image
    and none is skipped). ``source``: a hub id (hiyouga/geometry3k)
    or a local dataset folder with train and validation files.

    Writes train.parquet, val.parquet and manifest.json (each problem's id and content hash, and one
    digest per split) so two machines can check they train and validate on the same problems.
    """
    if os.path.isfile(source):
        raise ValueError(f"source: Geometry3K is prepared from its train and validation splits: give a hub id "
                         f"(hiyouga/geometry3k) or a dataset folder, not the single file {source}")
    train = _geometry3k_problems(source, "train")
    pool = _geometry3k_problems(source, "validation")
    if not 1 <= val_size <= len(pool):
        raise ValueError(f"val_size: must be in [1, {len(pool)}] (the validation split's size), got {val_size}")
    val = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))[:val_size]]
    os.makedirs(out_dir, exist_ok=True)
    manifest = {"source": source, "seed": seed, "val_size": val_size, "splits": {}}
    paths = []
    for name, problems in (("train", train), ("val", val)):
        path = os.path.join(out_dir, f"{name}.parquet")
        write_prepared([sample for _, _, sample in problems], path)
        entries = [{"id": pid, "sha256": digest} for pid, digest, _ in problems]
        split_digest = hashlib.sha256(json.dumps(entries).encode()).hexdigest()
        manifest["splits"][name] = {"file": os.path.basename(path), "count": len(entries), "sha256": split_digest,
                                    "problems": entries}
        paths.append(path)
    with open(os.path.join(out_dir, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    return paths + [os.path.join(out_dir, MANIFEST)]


def load_split(cfg, split: str) -> List[Sample]:
    """The train or eval samples the config names."""
    if cfg.dataset == "synthetic":
        if split == "train":
            return synthetic_dataset(cfg.seed, cfg.num_train_samples, cfg.image_size)
        # held out: indices past the training ones
        return synthetic_dataset(cfg.seed, cfg.num_eval_samples, cfg.image_size, offset=cfg.num_train_samples)
    path = cfg.train_file if split == "train" else cfg.eval_file
    part = cfg.dataset_train_split if split == "train" else cfg.dataset_test_split
    if cfg.dataset == "geometry3k":
        return load_geometry3k(path, part)
    if cfg.dataset == "virl39k":
        return load_virl39k(path, cfg.image_root, part)
    return load_prepared(path, part)


def step_prompts(num_samples: int, global_batch: int, step: int, seed: int) -> np.ndarray:
    """Sample indices for optimizer step ``step`` (0-based): a fresh permutation per epoch, last partial
    batch dropped. A pure function of (step, seed), so resuming needs only the step number."""
    per_epoch = num_samples // global_batch
    epoch, within = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_samples)
    return order[within * global_batch:(within + 1) * global_batch]
