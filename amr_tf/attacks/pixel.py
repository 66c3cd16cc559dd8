"""Pixel-level attacks on item images, end to end through the CNN into VBPR/AMR scores.

The differentiable chain is::

    pixels x (B, 224, 224, 3) in [0, 255]
      -> EfficientNet-Lite0 (the project's Keras model, inference mode; it normalises (x - 127) / 128)
      -> pooled 1280-d feature f(x)
      -> c(x) = f(x) / feature_scale        (feature_scale: the global max |value| of the dataset's raw
                                            feature file, exactly the constant load_amr_dir divides by)
      -> s_ui = p_u . (q_i + c(x) E)        (VBPR; AMR scores the same way)

**What is attacked.** The attack operates on the *model input*: the 224x224 centre crop of the poster
after :func:`amr_tf.vision.preprocess.preprocess_image` (crop 224/256 of the shorter side, bilinear
resize).  The perturbed image that is saved and reloaded is that 224x224 input, fed back to the CNN
without a second crop/resize.

**Objective.** Each image ``j`` gets a feature-space direction ``d_j`` (shape ``(F,)``) and the
attacker maximises ``sum_j d_j . c(x_j)`` (BatchNorm runs in inference mode, so the images of a batch
do not interact and the sum gives every image its own gradient).  Because VBPR scores are linear in
the feature, every score objective is of this form:

* untargeted (:func:`untargeted_directions`): ``d_i = -E sum_{u in U_i} p_u`` for item ``i``, ``U_i`` the
  users whose held-out test item is ``i``; maximising it minimises ``sum_{u in U_i} s_ui``.  This equals
  maximising the users' summed score margins ``sum_u sum_{j in cand(u)} (s_uj - s_ui)``: the candidates'
  scores do not depend on this image (up to the rare candidate that is itself attacked).
* targeted (:func:`targeted_directions`): ``d_t = +E sum_{u in users} p_u`` pushes item ``t`` up for the
  chosen users.

**Budgets** are in raw pixel values of the 0..255 range: ``eps=8.0`` is the usual "8/255".

* :func:`fgsm` -- one step ``x + eps * sign(g)`` (L-inf).
* :func:`pgd` with ``norm="linf"`` -- random start uniform in the eps-box, ``steps`` signed-gradient
  steps of ``step_size`` (default ``2.5 * eps / steps``), projection onto the box.
* :func:`pgd` with ``norm="l2"`` -- random start in the L2 ball, normalised-gradient steps, projection
  onto the ball of radius ``eps`` (raw L2 norm over the whole image in pixel units; the reproduction
  script uses ``eps * sqrt(224*224*3)``, i.e. a root-mean-square change of at most ``eps``).

Every iterate is clipped to ``[0, 255]``.  Randomness comes from stateless ops keyed by ``seed``, so
an attack is a deterministic function of its arguments.  The attacks return float images (not yet
quantised); :func:`quantize`, :func:`save_and_reload` and :func:`reload_features` turn them into
8-bit PNG / JPEG files and the features a victim would actually extract from those files.
"""

from __future__ import annotations

import io
import math
import os
import weakref
from typing import Dict, Iterable, Optional, Sequence

import numpy as np
import tensorflow as tf

from amr_tf.errors import AmrError
from amr_tf.vision.features import inference_fn

__all__ = [
    "PIXEL_MAX",
    "PIXEL_ATTACKS",
    "SAVE_FORMATS",
    "raw_feature_scale",
    "feature_fn",
    "untargeted_directions",
    "targeted_directions",
    "objective",
    "direction_gradient",
    "fgsm",
    "pgd",
    "attack_images",
    "quantize",
    "encode",
    "decode",
    "save_and_reload",
    "extract",
    "image_quality",
    "relative_change",
    "item_scores",
]

PIXEL_MAX = 255.0
#: name -> (method, norm) understood by :func:`attack_images`
PIXEL_ATTACKS = {"fgsm": ("fgsm", "linf"), "pgd-linf": ("pgd", "linf"), "pgd-l2": ("pgd", "l2")}
#: saving cases: "float" (no saving: the attacker's idealised number), "png" (8-bit, lossless) and
#: "jpeg90" (8-bit JPEG at quality 90)
SAVE_FORMATS = ("float", "png", "jpeg90")


# ------------------------------------------------------------------------------ the differentiable chain


def raw_feature_scale(path) -> float:
    """The global max |value| of a raw feature ``.npy`` (what ``load_amr_dir`` divides the features by)."""
    from amr_tf.safe_io import open_regular

    with open_regular(path, "a .npy feature file") as fh:
        raw = np.load(fh, allow_pickle=False)
    scale = float(np.abs(raw.astype(np.float32)).max())
    if not math.isfinite(scale) or scale <= 0:
        raise AmrError(f"{path}: cannot take the global max |value| of the features (got {scale})")
    return scale


def feature_fn(extractor, feature_scale: float):
    """``pixels (B, H, W, 3) in [0, 255] -> normalised features (B, F)``, differentiable."""
    return _scaled_features(lambda: extractor, feature_scale)


def _scaled_features(get_extractor, feature_scale: float):
    """:func:`feature_fn` for the extractor ``get_extractor()`` returns (a ``weakref.ref`` for the
    per-extractor caches, whose values must not keep their key alive)."""
    if not feature_scale > 0:
        raise AmrError(f"feature_scale must be > 0, got {feature_scale}")
    scale = tf.constant(float(feature_scale), tf.float32)

    def features(x):
        return get_extractor()(tf.cast(x, tf.float32), training=False) / scale

    return features


def _np(variable) -> np.ndarray:
    value = variable.numpy() if hasattr(variable, "numpy") else variable
    return np.asarray(value, dtype=np.float64)


def untargeted_directions(model, dataset, items: Sequence[int]) -> np.ndarray:
    """``(len(items), F)`` directions ``-E sum_{u: test item of u is i} p_u`` (see the module docstring).

    An item that is no user's test item gets a zero direction (the attack leaves it unchanged).
    """
    test_items = np.asarray(dataset.test_candidates)[:, 0]
    users = [np.flatnonzero(test_items == i) for i in np.asarray(items, dtype=np.int64)]
    return -targeted_directions(model, items, users)


def targeted_directions(model, items: Sequence[int], users) -> np.ndarray:
    """``(len(items), F)`` directions ``+E sum_{u in users} p_u``: raise ``items`` for ``users``.

    ``users`` is one array of user ids shared by every item, or a list with one array per item.
    """
    items = np.asarray(items, dtype=np.int64)
    P = _np(model.P)
    E = _np(model.E)
    if len(users) and np.ndim(users[0]) == 0:
        users = [np.asarray(users, dtype=np.int64)] * len(items)
    if len(users) != len(items):
        raise AmrError(f"need one user list per item: {len(users)} lists for {len(items)} items")
    w = np.stack([P[np.asarray(u, dtype=np.int64)].sum(axis=0) for u in users]) if len(items) else np.zeros((0, P.shape[1]))
    return (w @ E.T).astype(np.float32)


def objective(features, directions):
    """The loss the attacker maximises: ``sum_j d_j . features(x_j)`` (a callable of the pixel batch)."""
    d = tf.constant(np.asarray(directions, dtype=np.float32))

    def loss(x):
        return tf.reduce_sum(features(x) * d)

    return loss


def _grad_fn(loss_fn):
    """``x -> (loss, d loss / d x)`` for a loss callable, or the callable itself if it is already one
    (marked by :func:`direction_gradient`)."""
    if getattr(loss_fn, "returns_gradient", False):
        return loss_fn

    @tf.function(reduce_retracing=True)
    def grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = loss_fn(x)
        return loss, tape.gradient(loss, x)

    return grad


_TRACED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def direction_gradient(extractor, feature_scale: float, directions):
    """Like ``objective(feature_fn(extractor, feature_scale), directions)`` but returning ``(loss, grad)``,
    with the traced graph shared by every call on the same ``extractor`` (no retracing per batch)."""
    key = float(feature_scale)
    per_model = _TRACED.setdefault(extractor, {})
    if key not in per_model:
        feats = _scaled_features(weakref.ref(extractor), key)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32),
                                      tf.TensorSpec([None, None], tf.float32)])
        def traced(x, d):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(feats(x) * d)
            return loss, tape.gradient(loss, x)

        per_model[key] = traced
    traced = per_model[key]
    d = tf.constant(np.asarray(directions, dtype=np.float32))

    def grad(x):
        return traced(x, d)

    grad.returns_gradient = True
    return grad


def _check_images(x) -> tf.Tensor:
    x = tf.convert_to_tensor(np.asarray(x, dtype=np.float32))
    if x.shape.rank != 4 or x.shape[-1] != 3:
        raise AmrError(f"expected a batch of RGB images (B, H, W, 3), got shape {x.shape}")
    lo, hi = float(tf.reduce_min(x)), float(tf.reduce_max(x))
    if x.shape[0] and (lo < 0 or hi > PIXEL_MAX):
        raise AmrError(f"pixel values must lie in [0, 255], got [{lo}, {hi}]")
    return x


def _check_eps(eps) -> float:
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise AmrError(f"eps must be finite and >= 0 (pixel units of the 0..255 range), got {eps}")
    return eps


def _l2(t):
    return tf.sqrt(tf.reduce_sum(tf.square(t), axis=[1, 2, 3], keepdims=True))


def _project(delta, x, eps, norm):
    if norm == "linf":
        delta = tf.clip_by_value(delta, -eps, eps)
    else:
        delta = delta * tf.minimum(1.0, eps / tf.maximum(_l2(delta), 1e-12))
    # stay inside the valid range: x + delta in [0, 255]; clipping only shrinks |delta|, so it stays in the ball
    return tf.clip_by_value(x + delta, 0.0, PIXEL_MAX) - x


def fgsm(loss_fn, images, eps: float) -> np.ndarray:
    """Fast gradient sign method (L-inf ball of ``eps`` pixel values), clipped to [0, 255].

    ``loss_fn`` maps a float pixel batch to the scalar the attacker maximises (e.g. :func:`objective`), or is
    a :func:`direction_gradient` callable."""
    x = _check_images(images)
    eps = _check_eps(eps)
    if eps == 0 or x.shape[0] == 0:
        return x.numpy()
    _, g = _grad_fn(loss_fn)(x)
    return tf.clip_by_value(x + eps * tf.sign(g), 0.0, PIXEL_MAX).numpy()


def pgd(loss_fn, images, eps: float, norm: str = "linf", steps: int = 10, step_size: Optional[float] = None,
        random_start: bool = True, seed: int = 0) -> np.ndarray:
    """Projected gradient ascent of ``loss_fn`` in the ``norm`` ball (``"linf"`` or ``"l2"``) of radius ``eps``.

    ``step_size`` defaults to ``2.5 * eps / steps``; L-inf steps follow the gradient's sign, L2 steps its
    per-image normalised direction.  Returns the last iterate (float, in [0, 255], within the ball).
    """
    if norm not in ("linf", "l2"):
        raise AmrError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if int(steps) < 1:
        raise AmrError(f"PGD needs at least one step, got steps={steps}")
    x = _check_images(images)
    eps = _check_eps(eps)
    if eps == 0 or x.shape[0] == 0:
        return x.numpy()
    step = 2.5 * eps / int(steps) if step_size is None else float(step_size)
    if not step > 0:
        raise AmrError(f"step_size must be > 0, got {step_size}")
    key = tf.constant([int(seed) & 0x7FFFFFFF, 0x5049_58], tf.int32)
    if not random_start:
        delta = tf.zeros_like(x)
    elif norm == "linf":
        delta = tf.random.stateless_uniform(tf.shape(x), key, -eps, eps)
    else:
        noise = tf.random.stateless_normal(tf.shape(x), key)
        dim = float(np.prod(x.shape[1:]))
        radius = eps * tf.random.stateless_uniform([x.shape[0], 1, 1, 1], key + 1) ** (1.0 / dim)
        delta = noise / tf.maximum(_l2(noise), 1e-12) * radius
    delta = _project(delta, x, eps, norm)
    grad = _grad_fn(loss_fn)
    for _ in range(int(steps)):
        _, g = grad(x + delta)
        if norm == "linf":
            move = tf.sign(g)
        else:
            move = g / tf.maximum(_l2(g), 1e-12)
        delta = _project(delta + step * move, x, eps, norm)
    return (x + delta).numpy()


def attack_images(extractor, feature_scale: float, images, directions, attack: str = "pgd-linf", eps: float = 8.0,
                  steps: int = 10, step_size: Optional[float] = None, random_start: bool = True, seed: int = 0,
                  batch_size: int = 16) -> np.ndarray:
    """Attack a stack of images ``(N, 224, 224, 3)`` in batches; ``attack`` is a key of :data:`PIXEL_ATTACKS`.

    ``directions`` ``(N, F)`` come from :func:`untargeted_directions` or :func:`targeted_directions`.
    Batch ``b`` uses seed ``seed + b`` for its random start, so results do not depend on timing, but do
    depend on ``batch_size`` when ``random_start``.
    """
    if attack not in PIXEL_ATTACKS:
        raise AmrError(f"unknown pixel attack {attack!r}; choose from {', '.join(PIXEL_ATTACKS)}")
    method, norm = PIXEL_ATTACKS[attack]
    images = np.asarray(images, dtype=np.float32)
    directions = np.asarray(directions, dtype=np.float32)
    if len(images) != len(directions):
        raise AmrError(f"{len(images)} images but {len(directions)} directions")
    if int(batch_size) < 1:
        raise AmrError(f"batch_size must be >= 1, got {batch_size}")
    out = []
    for b, start in enumerate(range(0, len(images), int(batch_size))):
        sl = slice(start, start + int(batch_size))
        loss_fn = direction_gradient(extractor, feature_scale, directions[sl])
        if method == "fgsm":
            out.append(fgsm(loss_fn, images[sl], eps))
        else:
            out.append(pgd(loss_fn, images[sl], eps, norm=norm, steps=steps, step_size=step_size,
                           random_start=random_start, seed=seed + b))
    return np.concatenate(out) if out else images.copy()


# ------------------------------------------------------------------------------ saving and re-extraction


def quantize(images) -> np.ndarray:
    """Round to the nearest 8-bit value and clip to [0, 255] (``uint8``)."""
    return np.clip(np.rint(np.asarray(images, dtype=np.float32)), 0, 255).astype(np.uint8)


def encode(image, fmt: str) -> bytes:
    """One ``(H, W, 3)`` image as PNG (``"png"``) or JPEG quality 90 (``"jpeg90"``) bytes (quantised first)."""
    from PIL import Image

    im = Image.fromarray(quantize(image), "RGB")
    buf = io.BytesIO()
    if fmt == "png":
        im.save(buf, format="PNG")
    elif fmt == "jpeg90":
        im.save(buf, format="JPEG", quality=90)
    else:
        raise AmrError(f"unknown image format {fmt!r}; choose 'png' or 'jpeg90'")
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def save_and_reload(images, fmt: str, folder=None, names: Optional[Sequence[str]] = None) -> np.ndarray:
    """Encode every image as ``fmt`` (``"float"`` returns the images unchanged), decode it again.

    With ``folder``, the encoded files are also written there (``<name>.png`` / ``<name>.jpg``, atomically)
    and the reloaded pixels are those read back from disk.
    """
    images = np.asarray(images, dtype=np.float32)
    if fmt == "float":
        return images.copy()
    out = []
    for k, img in enumerate(images):
        data = encode(img, fmt)
        if folder is not None:
            from amr_tf.io import atomic_write_bytes

            name = names[k] if names is not None else str(k)
            path = os.path.join(os.fspath(folder), f"{name}.{'png' if fmt == 'png' else 'jpg'}")
            atomic_write_bytes(path, data)
            with open(path, "rb") as f:
                data = f.read()
        out.append(decode(data))
    return np.stack(out).astype(np.float32) if out else images.copy()


def extract(extractor, feature_scale: float, images, batch_size: int = 32) -> np.ndarray:
    """Normalised features ``f(x) / feature_scale`` of 224x224 model inputs (no crop or resize)."""
    if not feature_scale > 0:
        raise AmrError(f"feature_scale must be > 0, got {feature_scale}")
    images = np.asarray(images, dtype=np.float32)
    infer = inference_fn(extractor)  # the traced forward pass amr_tf.vision uses too
    parts = [infer(images[s:s + batch_size]) for s in range(0, len(images), batch_size)]
    feats = np.concatenate(parts) if parts else np.zeros((0, int(extractor.output_shape[-1])), np.float32)
    return feats / np.float32(feature_scale)


@tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)] * 2)
def _psnr_ssim(a, b):
    return tf.image.psnr(a, b, max_val=PIXEL_MAX), tf.image.ssim(a, b, max_val=PIXEL_MAX)


def image_quality(clean, attacked) -> Dict[str, np.ndarray]:
    """Per image PSNR (dB), SSIM (``tf.image``, ``max_val=255``) and L-inf / RMS pixel change."""
    a = tf.constant(np.asarray(clean, dtype=np.float32))
    b = tf.constant(np.asarray(attacked, dtype=np.float32))
    diff = (b - a).numpy().reshape(len(clean), -1)
    psnr, ssim = _psnr_ssim(a, b)  # traced once: eager tf.image.ssim is ~50x slower
    return {
        "psnr": psnr.numpy(),
        "ssim": ssim.numpy(),
        "linf": np.abs(diff).max(axis=1) if diff.size else np.zeros(0),
        "rms": np.sqrt((diff ** 2).mean(axis=1)) if diff.size else np.zeros(0),
    }


def relative_change(clean_features, new_features) -> np.ndarray:
    """Per item ``||c' - c|| / ||c||``."""
    c = np.asarray(clean_features, dtype=np.float64)
    d = np.asarray(new_features, dtype=np.float64) - c
    return np.linalg.norm(d, axis=1) / np.maximum(np.linalg.norm(c, axis=1), 1e-12)


def item_scores(model, items: Sequence[int], features, users: Iterable) -> list:
    """Scores ``s_ui = p_u . (q_i + c_i E)`` of each item with its (normalised) ``features`` row, for the
    users of ``users`` (one array per item): a list of 1-D arrays."""
    P = _np(model.P)
    Q = _np(model.Q)
    E = _np(model.E)
    feats = np.asarray(features, dtype=np.float64)
    out = []
    for j, (i, us) in enumerate(zip(items, users)):
        v = Q[int(i)] + feats[j] @ E
        out.append(P[np.asarray(us, dtype=np.int64)] @ v)
    return out
