"""The degraded view behind visual advantage: the paper's pixelated copy of an image."""
import math


def pixelate(image, ratio: float = 0.1):
    """Bilinear down to floor(ratio * side) (>= 1 px), nearest back up: the paper's degraded view.

    ``image`` is a PIL image. The size is unchanged, so a processor yields the same visual-token
    grid for both views and the two teacher passes see the same input ids.
    """
    from PIL import Image  # PIL is needed only by callers that pixelate (the trainer, the TRL integration)

    w, h = image.size
    small = image.resize((max(1, math.floor(w * ratio)), max(1, math.floor(h * ratio))), Image.BILINEAR)
    return small.resize((w, h), Image.NEAREST)
