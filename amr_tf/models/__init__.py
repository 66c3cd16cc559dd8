"""Recommenders: MF-BPR, VBPR, AMR (Keras models with a custom ``train_step``) and Popularity.

Layers inside: :mod:`.losses` (the pairwise loss) and :mod:`.adversary` (AMR's perturbation) at
the bottom; :mod:`.base` (the training loop), :mod:`.vbpr` and :mod:`.amr` (the models);
:mod:`.registry` (the list of models every entry point reads) on top.
"""

from amr_tf.models.amr import AMR
from amr_tf.models.base import MFBPR, PairwiseModel
from amr_tf.models.losses import BPRLoss
from amr_tf.models.optimizers import Adagrad
from amr_tf.models.popularity import Popularity
from amr_tf.models.registry import model_classes
from amr_tf.models.vbpr import VBPR

#: ``{class name: class}`` of the trainable models (kept for callers of the old name; see :mod:`.registry`).
MODEL_CLASSES = model_classes()

__all__ = ["AMR", "Adagrad", "BPRLoss", "MFBPR", "MODEL_CLASSES", "PairwiseModel", "Popularity", "VBPR"]
