"""AMR's adversary as functions: the fast-gradient perturbation of feature rows, two ways.

* :func:`feature_adversary` -- the reference, for any model: a ``tf.GradientTape`` watches the
  batch's distinct feature rows (gathered once, so the gradient of an item is summed over its
  occurrences by the gather's own gradient), the model's pairwise loss is differentiated with
  respect to them, each row is L2-normalised (``x / sqrt(max(sum x^2, 1e-12))``, as the
  original's ``tf.nn.l2_normalize``), scaled to ``eps`` and held constant (``stop_gradient``).
  The caller runs its forward pass again on the perturbed rows.
* :func:`projected_effect` -- the fast path for scores linear in the feature through ``c_i E``:
  the gradient is taken with respect to the visual vector ``c_i E`` (K wide) instead of ``c_i``
  (F wide), and the perturbation's effect ``Delta_i E`` is formed without any F-wide tensor
  (derivation in docs/design.md).

Under a multi-replica ``tf.distribute`` step the per-row gradient is summed over the replicas
before it is normalised, so ``Delta`` is the one a single device would compute.
"""

from __future__ import annotations

import tensorflow as tf

#: ``x / sqrt(max(sum(x^2), NORM_FLOOR))``: the floor ``tf.nn.l2_normalize`` (and the original) use.
NORM_FLOOR = 1e-12


def replica_context():
    """The replica context of a multi-replica ``tf.distribute`` step, or ``None`` (one replica, or outside a step)."""
    ctx = tf.distribute.get_replica_context()
    return ctx if ctx is not None and ctx.num_replicas_in_sync > 1 else None


def unit_rows(x, eps):
    """``eps * x_n / sqrt(max(||x_n||^2, NORM_FLOOR))`` per row, held constant."""
    return tf.stop_gradient(eps * tf.nn.l2_normalize(x, axis=1, epsilon=NORM_FLOOR))


def replica_sum(grad, ids, num_ids):
    """Per-row gradients (one row per distinct id) summed over the replicas' rows of the same id; constant."""
    grad = tf.stop_gradient(grad)
    ctx = replica_context()
    return grad if ctx is None else sum_over_replicas(ctx, grad, ids, num_ids)


def row_gradient(tape, loss, rows, ids, num_ids):
    """``d loss / d rows`` (one row per distinct id), summed over the replicas' rows of the same id; constant."""
    return replica_sum(tf.convert_to_tensor(tape.gradient(loss, rows)), ids, num_ids)


def feature_adversary(forward, loss_fn, rows, ids, num_ids, eps):
    """The reference adversary of a batch: ``(clean forward outputs, clean loss, Delta)``.

    ``forward(rows) -> (margins, ...)`` is the model's scoring of the batch from its distinct
    items' feature ``rows`` (``ids`` order); ``loss_fn`` its pairwise loss. The clean pass runs once,
    inside the tape, and its outputs are returned for the caller's objective.
    """
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(rows)
        outputs = forward(rows)
        clean = loss_fn(outputs[0])
    grad = row_gradient(tape, clean, rows, ids, num_ids)
    return outputs, clean, unit_rows(grad, eps)


def scaled_direction(grad, gram, eps):
    """``(eps G gram / ||G E0^T||, scale)``: the projected perturbation of each item and its scale.

    ``gram``'s value is ``E0^T E0``, so ``||G_i E0^T||^2 = G_i gram G_i^T``; the scale is a constant
    (the original normalises a gradient it holds fixed).
    """
    direction = tf.matmul(grad, gram)
    sq_norm = tf.reduce_sum(tf.stop_gradient(direction) * grad, axis=1, keepdims=True)
    scale = eps * tf.math.rsqrt(tf.maximum(sq_norm, NORM_FLOOR))
    return direction * scale, scale


def projected_effect(grad, E, eps):
    """``Delta_i E = eps G_i (E0^T E) / ||G_i E0^T||`` per item (n x K), ``E0 = stop_gradient(E)``.

    ``grad`` (n x K, constant) is the loss gradient with respect to each item's visual vector
    ``c_i E``. The gradient of the result w.r.t. ``E`` is the one of ``Delta E`` with ``Delta``
    held fixed, as in the original (the left Gram factor is a constant).
    """
    e = tf.convert_to_tensor(E)
    effect, _ = scaled_direction(grad, tf.matmul(tf.stop_gradient(e), e, transpose_a=True), eps)
    return effect


def pair_difference(item_rows, index, b):
    """``item_rows[pos] - item_rows[neg]`` for each triplet (rows are per distinct batch item)."""
    return tf.gather(item_rows, index[:b]) - tf.gather(item_rows, index[b:])


def sum_over_replicas(ctx, values, ids, num_rows):
    """Rows ``values`` (one per id in ``ids``, distinct) summed with the other replicas' rows of the same ids.

    The replicas' ``(ids, values)`` are all-gathered (an all-reduce of ``IndexedSlices``), rows
    sharing an id are summed, and each replica reads back the sums for its own ids.
    """
    dense_shape = tf.stack([tf.cast(num_rows, tf.int64), tf.cast(tf.shape(values)[1], tf.int64)])
    total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.IndexedSlices(values, ids, dense_shape))
    if not isinstance(total, tf.IndexedSlices):  # a strategy that densifies sparse all-reduces
        return tf.gather(total, ids)
    all_ids, position = tf.unique(tf.cast(total.indices, ids.dtype))
    sums = tf.math.unsorted_segment_sum(total.values, position, tf.shape(all_ids)[0])
    order = tf.argsort(all_ids)
    where = tf.gather(order, tf.searchsorted(tf.gather(all_ids, order), ids))
    return tf.gather(sums, where)
