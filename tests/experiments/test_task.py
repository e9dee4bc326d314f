import numpy as np
import pytest

from experiments import task
from vaopd_kernels.pixelate import pixelate


def _pixels(image):
    return np.asarray(image, dtype=np.int16)


def test_samples_are_a_pure_function_of_seed_split_index():
    a, b = task.sample(3, "val", 7), task.sample(3, "val", 7)
    assert a.answer == b.answer and np.array_equal(_pixels(a.image), _pixels(b.image))
    assert task.dataset(3, "val", 4, offset=5)[2].answer == task.sample(3, "val", 7).answer
    other_seed = [task.sample(4, "val", i) for i in range(8)]
    same_seed = [task.sample(3, "val", i) for i in range(8)]
    assert any(not np.array_equal(_pixels(x.image), _pixels(y.image)) for x, y in zip(other_seed, same_seed))


def test_splits_use_disjoint_streams():
    images = {split: {_pixels(s.image).tobytes() for s in task.dataset(0, split, 150)} for split in task.SPLITS}
    assert len(images["train"]) == 150  # no duplicates inside a split either
    assert not images["train"] & images["test"] and not images["train"] & images["val"] and not images["val"] & images["test"]
    with pytest.raises(ValueError, match="split"):
        task.sample(0, "dev", 0)


def _stripe_width(image) -> int:
    """Run length of ink along the axis across the stripes, read back from the pixels."""
    pixels = _pixels(image)
    ink = np.abs(pixels[3:-3, 3:-3] - pixels[2, 2]).max(-1) > 30  # (2, 2) is background: boxes start at 3
    ys, xs = np.nonzero(ink)
    box = ink[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    line = box[:, 0] if box[0].all() or not box[:, 0].all() else box[0]  # across the stripes
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, line.astype(int), 0])))[::2]
    return int(np.median(runs))


def test_answers_are_uniform_and_the_stripes_have_that_width():
    samples = task.dataset(0, "train", 300)
    counts = {a: sum(s.answer == a for s in samples) for a in task.ANSWERS}
    assert min(counts.values()) > 70  # ~100 each
    for s in samples[:60]:
        assert _stripe_width(s.image) == int(s.answer)
    assert task.template("3").endswith("\\boxed{3}")


def test_pixelation_makes_the_widths_look_alike():
    rng = np.random.default_rng(0)
    for _ in range(20):
        layout = dict(top=int(rng.integers(3, 30)), left=int(rng.integers(3, 30)), size=int(rng.integers(24, 31)),
                      vertical=bool(rng.integers(2)))
        views = [task.render(int(w), **layout) for w in task.ANSWERS]
        full = max(np.abs(_pixels(a) - _pixels(b)).max() for a in views for b in views)
        blur = max(np.abs(_pixels(pixelate(a, 0.1)) - _pixels(pixelate(b, 0.1))).max() for a in views for b in views)
        # the widths differ by the full ink contrast (160 levels) at full resolution; after
        # pixelation every block holds ~half ink for each width, so at most a small tint remains
        assert full >= 150
        assert blur <= 0.15 * full, (full, blur)
