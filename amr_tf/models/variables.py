"""Reading Keras variables the way the models and optimisers need: the ``tf.Variable`` behind
them, and only some of their rows."""

from __future__ import annotations

import keras
import tensorflow as tf


def tf_variable(variable):
    """The ``tf.Variable`` behind a Keras variable (a ``MirroredVariable`` under a strategy)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def variable_rows(variable, indices):
    """``variable[indices]`` read with a resource gather (only those rows, never the whole matrix)."""
    return tf.gather(tf_variable(variable), indices)
