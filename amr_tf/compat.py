"""Every workaround for a TensorFlow/Keras behaviour or private API, in one place.

Written against TensorFlow 2.21 and Keras 3.15 (the versions requirements.txt pins). Each
workaround says what it works around, which versions showed it, the upstream report where one
exists, and how to tell that it can go (usually: delete it and run the named test). A Keras or
TensorFlow upgrade should touch this file only.

Also outside this file: the checkpoint code reads Keras' ``.weights.h5`` layout
(``amr_tf.checkpoints``), which is a file format, not an API, and is checked by its own tests.
"""

from __future__ import annotations

import contextlib

import tensorflow as tf


# ---------------------------------------------------------------------------- 1. multi-worker logs


def several_workers() -> bool:
    """Whether this runs under a ``MultiWorkerMirroredStrategy`` with more than one worker.

    Uses ``strategy.extended._in_multi_worker_mode`` (private in TF 2.21; no public equivalent).
    If it disappears, a multi-worker strategy is assumed to have several workers (harmless: see
    :func:`multi_worker_logs`).
    """
    strategy = tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    in_multi_worker_mode = getattr(strategy.extended, "_in_multi_worker_mode", None)
    return bool(in_multi_worker_mode()) if in_multi_worker_mode is not None else True


def multi_worker_logs(logs: dict) -> dict:
    """``train_step``'s logs in a shape Keras can average over several workers.

    Keras 3.15 averages the logs of several workers with ``strategy.reduce("MEAN", v, axis=0)``,
    which fails on a scalar ("Invalid reduction dimension 0 for input with 0 dimensions",
    tensorflow/tensorflow#72388). Each value gets a batch axis of one: the mean over it (the same
    value on every replica) is the scalar again. Can go when
    ``tests/test_distribute.py::test_multi_worker_*`` passes without it.
    """
    if not several_workers():
        return logs
    return {k: tf.reshape(v, [1]) for k, v in logs.items()}


# ---------------------------------------------------------------------------- 2. build without a batch


def maybe_symbolic_build(model, parent_build, iterator=None, data_batch=None):
    """Keras' build before ``fit``/``evaluate`` (``Model._maybe_symbolic_build``, private), without a batch when none is needed.

    Our models create their weights in ``__init__`` and their optimisers in ``compile``. Under a
    strategy, Keras 3.15 (TF backend) still draws the first distributed batch and averages it over
    the replicas with ``strategy.reduce``; ``MultiWorkerMirroredStrategy`` rejects a nested batch
    there (our triplet: "Attempt to convert a value (PerReplica...) to a Tensor"), so a
    multi-worker ``fit`` failed before its first step. The batch is only read to build unbuilt
    layers, compiled metrics or losses; without them, build without it. No upstream report found.
    Uses the private ``_compile_metrics``, ``_compile_loss``, ``_flatten_layers``,
    ``_distribute_strategy`` and ``_symbolic_build``. Can go when the multi-worker test in
    ``tests/test_distribute.py`` passes with ``PairwiseModel._maybe_symbolic_build`` removed.
    """
    compiled = [getattr(model, "_compile_metrics", None), getattr(model, "_compile_loss", None)]
    needs_batch = (not all(layer.built for layer in model._flatten_layers())
                   or any(c is not None and not getattr(c, "built", False) for c in compiled))
    if getattr(model, "_distribute_strategy", None) is None or needs_batch:
        return parent_build(iterator=iterator, data_batch=data_batch)
    with model.distribute_strategy.scope():
        model._symbolic_build()  # builds what is left (an unbuilt Keras optimiser), reads no data


# ---------------------------------------------------------------------------- 3. several steps per call


@contextlib.contextmanager
def steps_per_call(model, steps: int, cache: dict, key):
    """Run ``model.fit`` with ``steps`` training steps per call of its traced train function.

    Keras 3.15 fixes ``steps_per_execution`` at ``compile`` and retraces the train function on
    every ``fit``; we choose the number per ``fit`` (it must divide the epoch) by setting
    ``model.steps_per_execution`` and swapping ``model.train_function`` (Keras' cached traced
    function, set to ``None`` to make Keras trace afresh) for the one traced for ``key`` in
    ``cache``. Both are restored afterwards. Can go if Keras takes ``steps_per_execution`` as a
    ``fit`` argument (check ``keras.Model.fit``'s signature) and caches per value.
    """
    saved = model.train_function
    model.steps_per_execution, model.train_function = steps, cache.get(key)
    try:
        yield
    finally:
        if model.train_function is not None:
            cache.clear()  # a recompiled model (new optimisers) never reuses an old function
            cache[key] = model.train_function
        model.steps_per_execution, model.train_function = 1, saved


def several_steps_per_call_supported(model) -> bool:
    """Whether ``steps_per_execution > 1`` works for ``model`` here.

    Under a ``tf.distribute`` strategy Keras 3.15's multi-step loop fails in TF 2.21 ("You must feed
    a value for placeholder tensor 'while/cond/...'"; likely keras-team/keras#19246), so one step per
    call is kept there. Can go when ``tests/test_distribute.py`` passes with this returning True.
    """
    return not (tf.distribute.has_strategy() or model.distribute_strategy is not tf.distribute.get_strategy())


# ---------------------------------------------------------------------------- 4. optimiser internals


def optimizer_slot(optimizer, slots: list, variable):
    """The slot variable (e.g. Adagrad's accumulator) of ``variable`` in a Keras 3 optimiser's ``slots`` list.

    Keras 3.15 keeps slots in lists indexed by the private ``_get_variable_index``. Used by
    :class:`amr_tf.models.Adagrad`'s sparse update. If Keras renames it, the Adagrad tests in
    ``tests/test_models.py`` fail at once.
    """
    return slots[optimizer._get_variable_index(variable)]
