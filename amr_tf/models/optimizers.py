"""Adagrad with TF1's treatment of repeated indices in sparse gradients."""

from __future__ import annotations

import keras
import tensorflow as tf


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
    The update is applied after the strategy's all-reduce, so it is also right under ``tf.distribute``.
    """

    def __init__(self, learning_rate=0.01, initial_accumulator_value=0.1, epsilon=0.0, **kwargs):
        super().__init__(
            learning_rate=learning_rate,
            initial_accumulator_value=initial_accumulator_value,
            epsilon=epsilon,
            **kwargs,
        )

    def update_step(self, gradient, variable, learning_rate):
        super().update_step(deduplicate(gradient), variable, learning_rate)
