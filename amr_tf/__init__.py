"""amr-tf: Adversarial Multimedia Recommendation (AMR, Tang et al., TKDE 2019) in TensorFlow / Keras 3.

The main names are available here and imported on first use, so that ``import amr_tf`` and the
command line's ``--help`` do not pay TensorFlow's import:

* models: :class:`AMR`, :class:`VBPR`, :class:`MFBPR` (Keras models), :class:`Popularity`;
* data: :func:`resolve_dataset`, :func:`load_amr_dir`, :func:`make_synthetic`;
* training and evaluation: :func:`build_model`, :func:`fit`, :func:`evaluate`,
  :class:`EvaluationCallback`, the Keras metrics :class:`HitRate` and :class:`NDCG`,
  :func:`candidate_dataset`;
* checkpoints: :func:`save_checkpoint`, :func:`load_checkpoint`, :func:`load_pretrained`, and
  :mod:`amr_tf.pretrained` (the shipped checkpoints by name).

Importing the package quiets TensorFlow's native start-up messages (see :mod:`amr_tf._startup`;
``AMR_TF_VERBOSE_TF=1`` keeps them).
"""

__version__ = "0.1.0"

# Public name -> the module defining it (imported lazily by __getattr__).
_LAZY = {
    "AMR": "amr_tf.models",
    "VBPR": "amr_tf.models",
    "MFBPR": "amr_tf.models",
    "Popularity": "amr_tf.models",
    "PairwiseModel": "amr_tf.models",
    "resolve_dataset": "amr_tf.data",
    "load_amr_dir": "amr_tf.data",
    "make_synthetic": "amr_tf.data",
    "AmrDataset": "amr_tf.data",
    "build_model": "amr_tf.training",
    "fit": "amr_tf.training",
    "evaluate": "amr_tf.evaluation",
    "EvaluationCallback": "amr_tf.callbacks",
    "HitRate": "amr_tf.metrics",
    "NDCG": "amr_tf.metrics",
    "candidate_dataset": "amr_tf.metrics",
    "save_checkpoint": "amr_tf.checkpoints",
    "load_checkpoint": "amr_tf.checkpoints",
    "load_pretrained": "amr_tf.checkpoints",
    "AmrError": "amr_tf.errors",
}
_SUBMODULES = ("pretrained", "metrics", "models", "data", "evaluation", "training", "callbacks", "checkpoints")

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"amr_tf.{name}")
    raise AttributeError(f"module 'amr_tf' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


# Last, once the names above exist (it may import amr_tf.models when Keras is loaded already).
from amr_tf import _startup  # noqa: E402

_startup.configure()
