"""Adagrad with TF1's treatment of repeated indices in sparse gradients."""

from __future__ import annotations

import keras
import tensorflow as tf

from amr_tf import compat
from amr_tf.models.variables import variable_rows


def deduplicate(grad):
    """Sum the rows of an ``IndexedSlices`` gradient that share an index (dense tensors pass through)."""
    if not isinstance(grad, tf.IndexedSlices):
        return grad
    unique, position = tf.unique(grad.indices)
    values = tf.math.unsorted_segment_sum(grad.values, position, tf.shape(unique)[0])
    return tf.IndexedSlices(values, unique, grad.dense_shape)


@keras.saving.register_keras_serializable(package="amr_tf")
class Adagrad(keras.optimizers.Adagrad):
    """Keras Adagrad that matches TF1's ``AdagradOptimizer`` on sparse gradients.

    A user or item occurring several times in a batch yields an ``IndexedSlices`` gradient with
    repeated indices. TF1 summed those rows before squaring them into the accumulator; Keras 3
    squares each row separately (sum of squares instead of square of the sum). We deduplicate
    first. ``epsilon`` defaults to 0 as in TF1 (the initial accumulator keeps the sqrt positive).
    The update is applied after the strategy's all-reduce, so it is also right under ``tf.distribute``
    (the all-reduced gradient of a row seen by several replicas has one entry per replica; they are
    summed here, exactly as one device would have summed them).

    A sparse gradient updates only its rows, as TF1's ``SparseApplyAdagrad`` did: the accumulator
    rows are read back with a gather, so a step costs O(batch rows), not O(rows of the matrix)
    (Keras' generic update reads, square-roots and tests the whole accumulator every step). Dense
    gradients (``E``) use Keras' update unchanged.
    """

    def __init__(self, learning_rate=0.01, initial_accumulator_value=0.1, epsilon=0.0, **kwargs):
        super().__init__(
            learning_rate=learning_rate,
            initial_accumulator_value=initial_accumulator_value,
            epsilon=epsilon,
            **kwargs,
        )

    def update_step(self, gradient, variable, learning_rate):
        gradient = deduplicate(gradient)
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        lr = tf.cast(learning_rate, variable.dtype)
        values = tf.cast(gradient.values, variable.dtype)
        indices, shape = gradient.indices, gradient.dense_shape
        accumulator = compat.optimizer_slot(self, self._accumulators, variable)
        self.assign_add(accumulator, tf.IndexedSlices(tf.square(values), indices, shape))
        # Resource ops on the same variable run in program order: this reads the updated rows.
        accumulated = variable_rows(accumulator, indices)
        step = lr * values / tf.sqrt(accumulated + tf.cast(self.epsilon, variable.dtype))
        self.assign_sub(variable, tf.IndexedSlices(step, indices, shape))
