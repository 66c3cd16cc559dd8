"""Recommenders: MF-BPR, VBPR, AMR (Keras models with a custom ``train_step``) and Popularity.

Layers inside, bottom up: :mod:`.losses` (the pairwise loss), :mod:`.adversary` (AMR's
perturbation), :mod:`.variables` and :mod:`.optimizers`; :mod:`.base` (the training loop),
:mod:`.vbpr` and :mod:`.amr` (the models); :mod:`.registry` (the list of models every entry point
reads; it imports no TensorFlow). The names below are imported on first use, so that
``amr_tf.models.registry`` stays light (the command line's ``--help``).
"""

import importlib
import sys

_LAZY = {
    "AMR": "amr_tf.models.amr",
    "Adagrad": "amr_tf.models.optimizers",
    "BPRLoss": "amr_tf.models.losses",
    "MFBPR": "amr_tf.models.base",
    "PairwiseModel": "amr_tf.models.base",
    "Popularity": "amr_tf.models.popularity",
    "VBPR": "amr_tf.models.vbpr",
}

__all__ = sorted(_LAZY) + ["MODEL_CLASSES"]


def __getattr__(name):
    if name == "MODEL_CLASSES":  # {class name: class} of the trainable models (see .registry)
        from amr_tf.models.registry import model_classes

        value = model_classes()
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'amr_tf.models' has no attribute {name!r}")
    globals()[name] = value
    return value


def register_keras_classes() -> None:
    """Import every model class of the registry (and the optimiser), so that their
    ``@keras.saving.register_keras_serializable`` decorators have run: ``keras.models.load_model``
    then finds them. :mod:`amr_tf._startup` calls it whenever Keras is imported."""
    from amr_tf.models.registry import MODELS

    # Keras may be imported from inside one of these modules (its first ``import keras``), which is
    # then only partly initialised: it registers its own classes when it finishes, and a module that
    # imports a name from it cannot be imported yet (ImportError). Such a module is skipped here; it
    # registers its classes whenever it is imported later (e.g. through ``amr_tf.models`` names).
    for module in ["amr_tf.models.optimizers"] + [spec.class_path.partition(":")[0] for spec in MODELS]:
        try:
            importlib.import_module(module)
        except ImportError:
            if not any(getattr(getattr(m, "__spec__", None), "_initializing", False)
                       for name, m in list(sys.modules.items()) if name.startswith("amr_tf.models.")):
                raise  # a real import error, not the partly initialised module described above


def __dir__():
    return sorted(set(globals()) | set(__all__))
