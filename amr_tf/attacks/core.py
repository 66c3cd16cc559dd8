"""Model-agnostic L2 attacks on a batch of inputs: one gradient step, PGD, random noise.

Every function works on a tensor ``x`` whose first axis indexes *samples* (items of a feature
matrix, images of a batch, ...) and treats everything else as that sample's vector: norms,
normalisation and projection are per sample over all remaining axes. The attacked quantity is
a scalar ``loss_fn(x + delta)`` that the attacker **maximises**; each function returns the
perturbation ``delta`` (same shape as ``x``) with ``||delta_n||_2 <= eps`` for every sample n.

* :func:`one_step_l2` -- the fast gradient method with an L2 budget: ``eps * g / ||g||`` per
  sample, ``g`` the loss gradient at ``x``. This is AMR's adversary (Tang et al., Eq. 9): the
  same rule, applied to whatever loss the caller passes.
* :func:`pgd_l2` -- projected gradient ascent on the per-sample L2 ball (Madry et al. 2018):
  random start in the ball, normalised gradient steps, projection back onto the ball.
* :func:`random_l2` -- Gaussian noise rescaled to norm ``eps`` per sample (the control).

Samples whose gradient is exactly zero (for instance items that no term of the loss touches)
get ``delta = 0`` from the gradient attacks, as ``tf.nn.l2_normalize`` leaves a zero row at
zero; random noise perturbs every sample. Randomness comes from stateless TensorFlow ops keyed
by ``seed``, so a call is a pure function of its arguments.

These functions hold no recommender-specific code, so a pixel-level attack can reuse them with
``x`` a batch of images and ``loss_fn`` running the CNN and the recommender.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from amr_tf.errors import AmrError
from amr_tf.models.adversary import NORM_FLOOR  # noqa: F401 - re-exported: the one floor of every L2 normalisation

LossFn = Callable[[tf.Tensor], tf.Tensor]


def _as_tensor(x) -> tf.Tensor:
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        x = tf.cast(x, tf.float32)
    if x.shape.rank is None or x.shape.rank < 1:
        raise AmrError(f"attacks need a tensor with a sample axis first, got shape {x.shape}")
    return x


def _sample_axes(x: tf.Tensor) -> list[int]:
    return list(range(1, x.shape.rank))


def _per_sample(value, x: tf.Tensor, name: str) -> tf.Tensor:
    """A scalar, or one value per sample, shaped to broadcast against ``x``; must be >= 0."""
    v = np.asarray(value, dtype=np.float64)
    if v.ndim > 1 or (v.ndim == 1 and x.shape[0] is not None and len(v) != x.shape[0]):
        raise AmrError(f"{name} must be a scalar or one value per sample, got shape {v.shape}")
    if not np.all(np.isfinite(v)) or np.any(v < 0):
        raise AmrError(f"{name} must be finite and >= 0, got {value}")
    t = tf.constant(v, dtype=x.dtype)
    if v.ndim == 1:
        t = tf.reshape(t, [-1] + [1] * (x.shape.rank - 1))
    return t


def l2_norms(x) -> tf.Tensor:
    """Per-sample L2 norms (shape ``(N,)``)."""
    x = _as_tensor(x)
    axes = _sample_axes(x)
    return tf.sqrt(tf.reduce_sum(tf.square(x), axis=axes)) if axes else tf.abs(x)


def l2_normalize(x, floor: float = NORM_FLOOR) -> tf.Tensor:
    """Each sample divided by ``sqrt(max(||x_n||^2, floor))``; a zero sample stays zero."""
    x = _as_tensor(x)
    axes = _sample_axes(x)
    if not axes:
        return x / tf.sqrt(tf.maximum(tf.square(x), floor))
    return tf.nn.l2_normalize(x, axis=axes, epsilon=floor)


def project_l2_ball(delta, eps) -> tf.Tensor:
    """Project every sample of ``delta`` onto the L2 ball of radius ``eps`` (scalar or per sample)."""
    delta = _as_tensor(delta)
    radius = _per_sample(eps, delta, "eps")
    norms = l2_norms(delta)
    norms = tf.reshape(norms, [-1] + [1] * (delta.shape.rank - 1))
    scale = tf.minimum(1.0, radius / tf.maximum(norms, tf.cast(NORM_FLOOR, delta.dtype)))
    return delta * scale


def loss_and_gradient(loss_fn: LossFn, x) -> tuple[tf.Tensor, tf.Tensor]:
    """``loss_fn(x)`` and its gradient with respect to ``x`` (zeros where the loss ignores ``x``)."""
    x = _as_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = loss_fn(x)
    grad = tape.gradient(loss, x)
    if grad is None:
        raise AmrError("the loss does not depend on the attacked input (no gradient)")
    return loss, tf.convert_to_tensor(grad)


def _gaussian(shape, dtype, seed: int, stream: int) -> tf.Tensor:
    return tf.random.stateless_normal(shape, seed=tf.constant([int(seed), int(stream)], tf.int64), dtype=dtype)


def random_l2(x, eps, seed: int = 0) -> tf.Tensor:
    """Gaussian noise shaped like ``x``, rescaled to exactly ``eps`` (L2) per sample; ``x`` gives the shape."""
    x = _as_tensor(x)
    radius = _per_sample(eps, x, "eps")
    return radius * l2_normalize(_gaussian(tf.shape(x), x.dtype, seed, 0))


def random_in_l2_ball(x, eps, seed: int = 0, stream: int = 1, streams: tuple[int, int] | None = None) -> tf.Tensor:
    """Uniform samples of the per-sample L2 ball of radius ``eps`` (direction Gaussian, radius ``eps U^(1/d)``).

    The direction and the radius are drawn from the stateless streams ``(seed, 2 stream)`` and
    ``(seed, 2 stream + 1)``, or from ``streams = (direction stream, radius stream)`` when given
    (a caller with its own numbering of random restarts keeps its draws).
    """
    x = _as_tensor(x)
    radius = _per_sample(eps, x, "eps")
    direction_stream, radius_stream = streams if streams is not None else (2 * stream, 2 * stream + 1)
    direction = l2_normalize(_gaussian(tf.shape(x), x.dtype, seed, direction_stream))
    dim = int(np.prod(x.shape[1:])) if x.shape.rank > 1 else 1
    u = tf.random.stateless_uniform(
        [tf.shape(x)[0]] + [1] * (x.shape.rank - 1), seed=tf.constant([int(seed), int(radius_stream)], tf.int64),
        dtype=x.dtype,
    )
    return radius * direction * tf.pow(u, 1.0 / dim)


def one_step_l2(loss_fn: LossFn, x, eps) -> tf.Tensor:
    """One L2 fast-gradient step: ``eps * g_n / ||g_n||`` per sample, ``g = d loss_fn / dx`` at ``x``.

    With ``loss_fn`` the BPR loss of a batch and ``x`` the item features, this is exactly the
    perturbation AMR trains against. ``eps = 0`` returns zeros (no gradient is computed).
    """
    x = _as_tensor(x)
    radius = _per_sample(eps, x, "eps")
    if not np.any(np.asarray(eps) > 0):
        return tf.zeros_like(x)
    _, grad = loss_and_gradient(loss_fn, x)
    return radius * l2_normalize(grad)


def pgd_l2(loss_fn: LossFn, x, eps, steps: int = 10, step_size: float | None = None, random_start: bool = True,
           seed: int = 0, keep_best: bool = True, trace: list | None = None) -> tf.Tensor:
    """Projected gradient ascent on the per-sample L2 ball of radius ``eps``.

    ``delta_0`` is uniform in the ball (``random_start``) or zero; then ``steps`` times
    ``delta <- project(delta + step_size * g_n / ||g_n||)`` with ``g`` the gradient at
    ``x + delta``. ``step_size`` defaults to ``2.5 * eps / steps`` (Madry et al.), so the walk can
    cross the ball. With ``keep_best`` the iterate (start included) with the highest loss is
    returned, otherwise the last one. ``trace``, if a list, receives the loss of every iterate.

    For a loss that is convex in ``delta`` (the BPR and ranking losses of VBPR are: sums of
    softplus of affine functions of the features) each projected step cannot decrease the loss,
    so the last and the best iterate coincide.
    """
    x = _as_tensor(x)
    if int(steps) < 1:
        raise AmrError(f"PGD needs at least one step, got steps={steps}")
    radius = _per_sample(eps, x, "eps")
    if not np.any(np.asarray(eps) > 0):
        return tf.zeros_like(x)
    if step_size is None:
        step = radius * (2.5 / int(steps))
    else:
        step = _per_sample(step_size, x, "step_size")
    delta = random_in_l2_ball(x, eps, seed=seed) if random_start else tf.zeros_like(x)
    best, best_loss = delta, None
    for _ in range(int(steps)):
        loss, grad = loss_and_gradient(loss_fn, x + delta)
        loss = float(loss)
        if trace is not None:
            trace.append(loss)
        if best_loss is None or loss > best_loss:
            best, best_loss = delta, loss
        delta = project_l2_ball(delta + step * l2_normalize(grad), eps)
    if not keep_best:
        return delta
    final = float(loss_fn(x + delta))
    if trace is not None:
        trace.append(final)
    return delta if final >= best_loss else best
