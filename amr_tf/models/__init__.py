"""Recommenders: MF-BPR, VBPR, AMR (Keras models with a custom ``train_step``) and Popularity."""

from amr_tf.models.amr import AMR
from amr_tf.models.base import PairwiseModel
from amr_tf.models.base import MFBPR
from amr_tf.models.optimizers import Adagrad
from amr_tf.models.popularity import Popularity
from amr_tf.models.vbpr import VBPR

MODEL_CLASSES = {"MFBPR": MFBPR, "VBPR": VBPR, "AMR": AMR}

__all__ = ["AMR", "Adagrad", "MFBPR", "MODEL_CLASSES", "PairwiseModel", "Popularity", "VBPR"]
