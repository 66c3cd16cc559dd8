"""Building and fitting the models on a dataset: what the CLI and the reproduction scripts share."""

from __future__ import annotations

import contextlib
import math
import weakref

import keras
import tensorflow as tf

from amr_tf import compat
from amr_tf.callbacks import NonFiniteGuard
from amr_tf.data import TripletSampler, triplet_dataset
from amr_tf.errors import AmrError
from amr_tf.metrics import candidate_dataset
from amr_tf.models import registry

# Most training steps run per call of the compiled train function (Keras' ``steps_per_execution``).
MAX_STEPS_PER_EXECUTION = 256
_train_functions = weakref.WeakKeyDictionary()  # model -> {(steps, optimisers): traced train function}


# The order of the CLI's three learning rates (``--lr [lr_P,lr_Q,lr_E]``).
_RATE_ORDER = ("P", "Q", "E")


def _rates_for(parameter_names, rates) -> tuple:
    """The learning rates of a model's matrices: given per matrix, or picked by name from (P, Q, E)."""
    rates = tuple(rates)
    if len(rates) == len(_RATE_ORDER) and len(parameter_names) < len(rates):
        return tuple(rates[_RATE_ORDER.index(name)] for name in parameter_names)  # DUIF: (lr_P, lr_E)
    return rates


def build_model(name: str, dataset, seed=None, compile=True, **hyper_parameters):
    """A freshly initialised (and compiled) model of the named kind (see :mod:`amr_tf.models.registry`) for ``dataset``.

    Hyper-parameters not given, or given as ``None``, take the registry's defaults for that model;
    those the model does not have (``eps`` for VBPR) are ignored, so one set of arguments fits
    every model. Three ``learning_rates`` (P, Q, E) are picked by name for models with fewer
    matrices (MF-BPR: P, Q; DUIF: P, E).
    """
    spec = registry.lookup(name)
    if not spec.trainable:
        return spec.build(dataset)
    given = {k: v for k, v in hyper_parameters.items() if v is not None}
    unknown = set(given) - set(spec.accepted_arguments)
    if unknown:
        raise AmrError(f"build_model: unknown argument(s) {', '.join(sorted(unknown))}")
    params = {**spec.defaults, **{k: v for k, v in given.items() if k in spec.arguments}}
    if "learning_rates" in params:
        params["learning_rates"] = _rates_for(spec.cls.parameter_names, params["learning_rates"])
    # The dataset's training pairs are the seen items that recommend() / export() exclude.
    model = spec.build(dataset, seed=seed, seen_items=dataset.train_matrix, **params)
    if compile:
        model.compile()
    return model


def fit(model, dataset, epochs: int, batch_size: int = 512, seed: int = 0, initial_epoch: int = 0,
        callbacks=(), verbose="auto", exclude_cold_start: bool | str = "auto", validation_data=None,
        validation_freq: int = 1):
    """Train with BPR triplets sampled afresh each epoch (``TripletSampler``) through ``model.fit``.

    Epoch ``e``'s triplets depend only on ``(seed, e)``, so ``initial_epoch`` resumes exactly.
    A NaN or infinite loss raises ``TrainingDivergedError`` at the end of that epoch.
    ``exclude_cold_start``: the cold-start rule (:func:`amr_tf.data.sampling.resolve_cold_start_rule`).
    ``validation_data`` -- a ``(users, candidates)`` pair of arrays (the positive in column 0) or
    a dataset from :func:`amr_tf.metrics.candidate_dataset` -- is evaluated every
    ``validation_freq`` epochs by the model's ``test_step``: ``val_HR@10``, ``val_NDCG@10``, ...
    are then in the logs every callback sees.
    """
    if epochs < initial_epoch:
        raise AmrError(f"epochs ({epochs}) must be >= initial_epoch ({initial_epoch})")
    if not isinstance(model, keras.Model):  # MF-eALS: closed-form epochs, no sampler, no batches
        if validation_data is not None:
            raise AmrError(f"{type(model).__name__} is evaluated by callbacks (EvaluationCallback), not validation_data")
        return fit_epochs(model, dataset, epochs, initial_epoch=initial_epoch, callbacks=callbacks)
    if isinstance(validation_data, (tuple, list)):
        validation_data = candidate_dataset(*validation_data)
    if batch_size <= 0:
        raise AmrError(f"batch_size must be positive, got {batch_size}")
    sampler = TripletSampler(dataset, seed=seed, exclude_cold_start=exclude_cold_start)
    # The NaN/Inf guard goes first: it raises before any other callback can save that epoch.
    callbacks = [NonFiniteGuard()] + [cb for cb in callbacks if not isinstance(cb, NonFiniteGuard)]
    steps = sampler.steps_per_epoch(batch_size)
    with _several_steps_per_call(model, steps):
        return model.fit(
            triplet_dataset(sampler, batch_size, initial_epoch=initial_epoch),
            epochs=epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps,
            callbacks=list(callbacks),
            verbose=verbose,
            shuffle=False,
            validation_data=validation_data,
            validation_freq=validation_freq,
        )


def fit_epochs(model, dataset, epochs: int, initial_epoch: int = 0, callbacks=()) -> keras.callbacks.History:
    """Train a model that is not SGD-trained (one with ``fit_epoch(dataset) -> objective``: MF-eALS)
    epoch by epoch, calling the same Keras callbacks as ``model.fit`` would (train begin/end, epoch
    begin/end with ``logs={"loss": objective}``), so that evaluation, checkpoints, TensorBoard,
    early stopping (``model.stop_training``) and the CLI's progress records work unchanged.

    A NaN or infinite objective raises ``TrainingDivergedError`` before the callbacks see that epoch.
    """
    from amr_tf.errors import TrainingDivergedError

    history = keras.callbacks.History()
    callbacks = [cb for cb in callbacks if not isinstance(cb, NonFiniteGuard)] + [history]
    for cb in callbacks:  # Keras callbacks take any model; the evaluation reads only its vectors
        cb.set_params({"epochs": int(epochs), "steps": 1, "verbose": 0})
        cb.set_model(model)
    model.stop_training = False
    for cb in callbacks:
        cb.on_train_begin({})
    for epoch in range(int(initial_epoch), int(epochs)):
        for cb in callbacks:
            cb.on_epoch_begin(epoch, {})
        loss = float(model.fit_epoch(dataset))
        if not math.isfinite(loss):
            raise TrainingDivergedError(f"the objective became {loss} in epoch {epoch + 1}; stopped without "
                                        "saving that epoch")
        logs = {"loss": loss}
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    for cb in callbacks:
        cb.on_train_end({})
    return history


def steps_per_execution_for(steps_per_epoch: int, limit: int = MAX_STEPS_PER_EXECUTION) -> int:
    """The largest divisor of ``steps_per_epoch`` up to ``limit``: calls never straddle two epochs."""
    return next(d for d in range(min(limit, steps_per_epoch), 0, -1) if steps_per_epoch % d == 0)


@contextlib.contextmanager
def _several_steps_per_call(model, steps_per_epoch: int):
    """Run many training steps per call of the compiled train function during one ``fit``.

    Keras' per-step Python work (its loop, callbacks, turning the logs into floats) costs about
    as much as a small step; a ``tf.while_loop`` of steps inside one call (``steps_per_execution``)
    removes it. The number must divide the epoch's steps: Keras runs whole calls, and the triplet
    stream is endless, so a call straddling an epoch boundary would shift every later epoch.
    Batch-level callbacks then run once per call. A model compiled with its own
    ``steps_per_execution`` keeps it (it must divide the epoch's steps). The model's settings are
    restored afterwards; the traced function is kept for the next ``fit`` of the same model.
    Under a ``tf.distribute`` strategy one step per call is kept (see :mod:`amr_tf.compat`).
    """
    own = int(getattr(model, "steps_per_execution", 1) or 1)
    if own != 1:
        if steps_per_epoch % own:
            raise AmrError(f"the model was compiled with steps_per_execution={own}, which does not divide the "
                           f"{steps_per_epoch} steps of an epoch; epochs would overlap")
        yield
        return
    spe = steps_per_execution_for(steps_per_epoch)
    if spe == 1 or not compat.several_steps_per_call_supported(model):
        yield
        return
    key = (spe, tuple(id(o) for o in getattr(model, "optimizers_by_param", ())), model.jit_compile)
    with compat.steps_per_call(model, spe, _train_functions.setdefault(model, {}), key):
        yield


def set_seed(seed: int | None, deterministic: bool = True) -> None:
    """Seed Python, NumPy and TensorFlow; with ``deterministic``, make TF ops bit-for-bit repeatable."""
    if seed is None:
        return
    keras.utils.set_random_seed(int(seed))
    if deterministic:
        tf.config.experimental.enable_op_determinism()
