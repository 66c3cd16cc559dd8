"""DUIF (Geng, Zhang, Bian and Chua, ICCV 2015) as the AMR paper uses it: ``s_ui = p_u . (c_i E)``.

The item is represented by its projected image feature alone -- VBPR without the item ID
embedding ``Q`` -- and trained with the same BPR loss, penalties and Adagrad optimisers.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from amr_tf.models.amr import AMR
from amr_tf.models.vbpr import VBPR


@keras.saving.register_keras_serializable(package="amr_tf")
class DUIF(VBPR):
    """Deep user-image features: user embeddings ``P`` and a projection ``E`` of each item's CNN feature.

    Trained parameters are ``P`` and ``E`` (one Adagrad each, ``learning_rates`` two values);
    ``regs = (r1, r2, r3)`` keep their meaning: ``r2`` penalises the item vector, here ``c_i E``.
    The base class always creates an item-embedding matrix ``Q``; DUIF sets it to zero, marks it
    untrainable and never reads it (no optimiser holds it, and no score or loss depends on it).
    It is not saved either: a DUIF weights file holds ``P`` and ``E``, the model's
    ``parameter_names``, which is what the checkpoint loader's shape check expects.
    """

    parameter_names = ("P", "E")

    def __init__(self, num_users, num_items, features, embed_dim=64, regs=(0.1, 1e-3, 0.0),
                 learning_rates=(0.01, 1e-3), **kwargs):
        super().__init__(num_users, num_items, features, embed_dim=embed_dim, regs=regs,
                         learning_rates=learning_rates, **kwargs)
        self.Q.assign(tf.zeros_like(self.Q))
        self.Q.trainable = False

    def save_own_variables(self, store):
        """Keras' saving hook: store the trained matrices ``P``, ``E`` only (not the zero placeholder ``Q``)."""
        for k, var in enumerate(self.parameter_groups()):
            store[str(k)] = var.numpy()

    def load_own_variables(self, store):
        """Keras' loading hook, the inverse of :meth:`save_own_variables` (``Q`` stays zero)."""
        if len(store.keys()) != len(self.parameter_names):
            raise ValueError(f"DUIF expects {len(self.parameter_names)} stored matrices "
                             f"({', '.join(self.parameter_names)}), found {len(store.keys())}")
        for k, var in enumerate(self.parameter_groups()):
            var.assign(store[str(k)])

    def item_vectors(self, features=None):
        if features is not None:
            return tf.matmul(tf.convert_to_tensor(features, tf.float32), self.E)
        return self.visual_vectors()

    def item_vector_blocks(self):
        """:meth:`item_vectors` by row blocks (``c_i E``: DUIF has no ID part)."""
        return self.visual_vector_blocks()

    def gather_item_vectors(self, items):
        items = tf.convert_to_tensor(items)
        flat = tf.reshape(items, [-1])
        unique, index = tf.unique(flat)
        visual = tf.gather(tf.matmul(self.feature_rows(unique), self.E), index)
        return tf.reshape(visual, tf.concat([tf.shape(items), [self.embed_dim]], axis=0))

    #: ``s_ui = p_u . (c_i E)`` is linear in the feature row through ``c_i E``, as VBPR's: an adversary
    #: may use the projected fast path (``Delta_i E`` from the gradient w.r.t. ``c_i E``).
    visual_projection_is_linear = True

    def item_rows_from_visual(self, batch, visual):
        """The batch rows' item vectors from the distinct items' visual parts ``c_i E`` (no ``q_i``)."""
        return tf.gather(visual, batch.index)

    def batch_id_rows(self, items):
        """None: no score reads the zero ``Q``, so a batch gathers none of its rows (``ItemBatch.q_rows``)."""
        return None


@keras.saving.register_keras_serializable(package="amr_tf")
class AdversarialDUIF(DUIF, AMR):
    """DUIF trained against AMR's feature adversary (``eps``, ``adv_weight``, ``adv_type`` as :class:`AMR`).

    Nothing is re-derived: DUIF's scores are linear in ``c_i E``, so the AMR training step applies
    as it stands (the projected fast path where it is selected, else the tape-derived adversary).
    """
