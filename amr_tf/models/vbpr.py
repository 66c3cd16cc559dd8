"""VBPR as in the AMR paper: ``s_ui = p_u . (q_i + c_i E)`` (one user vector, no biases)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from amr_tf.errors import AmrError
from amr_tf.models.base import PairwiseModel
from amr_tf.models.serving import read_asset
from amr_tf.models.variables import variable_rows


def project(rows, E):
    """``rows @ E``, with the gradient w.r.t. ``E`` arranged as ``(dY^T rows)^T``.

    Autodiff would compute ``dE = rows^T dY``: a matmul with a transposed, long left operand that
    oneDNN runs about half as fast here as the same product arranged as ``dY^T rows`` (the two
    transposes are of small n x K and K x F matrices). The values are equal up to round-off.
    The gradient w.r.t. ``rows`` is the usual ``dY E^T``; it is only computed when something asks
    for it (the adversary's tape watching the feature rows), as TensorFlow prunes unused gradients.
    """

    @tf.custom_gradient
    def _project(r, e):
        def grad(dy):
            return tf.matmul(dy, e, transpose_b=True), tf.transpose(tf.matmul(tf.transpose(dy), r))

        return tf.matmul(r, e), grad

    return _project(tf.convert_to_tensor(rows), tf.convert_to_tensor(E))


def _process_local_variable(initial_value, name: str) -> tf.Variable:
    """A plain, non-trainable variable of this process, also inside a ``tf.distribute`` scope.

    ``tf.Variable`` inside ``strategy.scope()`` makes a distributed variable: under
    ``MultiWorkerMirroredStrategy`` the chief *broadcasts its initial value* to every worker, and a
    feature table over 2 GB (1M items x 2,048 float16: 4.1 GB) exceeds gRPC's message limit, so the
    workers abort (``RecvBufRespExtra exceeded maximum protobuf size of 2GB``, measured); under
    ``MirroredStrategy`` every device would hold its own copy. The features are constant and each
    process reads them from its own file, so they need neither. ``ResourceVariable``'s constructor
    (TensorFlow's class behind ``tf.Variable``; private module, no public equivalent) bypasses the
    strategy's variable creator; outside any strategy it is exactly what ``tf.Variable`` makes.
    """
    from tensorflow.python.ops.resource_variable_ops import ResourceVariable

    return ResourceVariable(initial_value, trainable=False, name=name)


def resident_features(features, chunk_bytes: int = 32 << 20) -> tuple[tf.Variable, float]:
    """``(variable, scale)``: ``features`` in one non-trainable ``tf.Variable`` (not a Keras weight: not
    trained, not saved), and the number its rows are divided by when read (:meth:`VBPR.feature_rows`).

    An :class:`~amr_tf.data.features.ItemFeatures` (a loaded dataset's memory-mapped file) is held
    as stored -- float16 for the shipped data, so half the bytes of the float32 matrix -- with its
    global-max scale; any other array is held as float32, already normalised (scale 1). Either way
    the dataset's copy stays on disk: the variable is the one resident copy.

    Filled in row chunks: ``tf.Variable(array)`` or ``tf.constant(array)`` briefly hold two extra
    copies of the matrix (a peak of three copies in all); this holds at most one plus a chunk (and
    releases the file's pages as it goes). The scatter puts the variable in TensorFlow's
    copy-on-read mode: a dense read of it copies the whole matrix, so the models only ever read it
    by rows (``tf.gather``), a chunk at a time.
    """
    from amr_tf.data.features import ItemFeatures, row_chunks

    if isinstance(features, ItemFeatures):
        raw, scale = features.raw, float(features.scale)
        dtype = tf.float16 if raw.dtype == np.float16 else tf.float32
        chunks = features.raw_chunks(chunk_bytes)
    else:
        raw, scale, dtype = np.asarray(features, dtype=np.float32), 1.0, tf.float32
        chunks = ((s, e, raw[s:e]) for s, e in row_chunks(raw.shape[0], 4 * raw.shape[1], chunk_bytes))
    var = _process_local_variable(tf.zeros(raw.shape, dtype), name="features")
    for start, stop, rows in chunks:
        # float16 stays float16; ints and float64 become float32 exactly as the original's astype would
        rows = np.asarray(rows, dtype=dtype.as_numpy_dtype)
        var.scatter_update(tf.IndexedSlices(tf.constant(rows), tf.range(start, stop)))
    return var, scale


def _joined(blocks):
    """One tensor of the ``(start, stop, rows)`` blocks, in order."""
    parts = [rows for _, _, rows in blocks]
    return parts[0] if len(parts) == 1 else tf.concat(parts, axis=0)


def stored_rows_to_features(rows, scale):
    """Rows read from the resident variable as the original's normalised float32: ``float32(raw) / scale``.

    The same two IEEE operations (an exact widening cast, one correctly rounded division by the
    same float32 scale) as the original's whole-matrix normalisation, so the values are bit-identical.
    ``scale`` is ``None`` (rows already normalised) or a float32 ``tf.Variable``: a variable, not a
    constant, because Grappler's constant folding rewrites ``x / constant`` as ``x * (1 / constant)``
    inside a ``tf.function``, which rounds differently in about one value in ten.
    """
    if rows.dtype != tf.float32:
        rows = tf.cast(rows, tf.float32)
    if scale is not None:
        rows = rows / scale
    return rows


FEATURES_FILE = "features.npy"  # the .keras asset holding the item features


@keras.saving.register_keras_serializable(package="amr_tf")
class VBPR(PairwiseModel):
    """Visual BPR: ID embeddings P, Q plus a projection E of each item's fixed CNN feature.

    ``features`` (items x F) stay constant on the device; they are not weights and are not saved
    in ``.weights.h5`` checkpoints (a checkpoint records the dataset's fingerprint instead), but a
    ``.keras`` file holds them (``save_assets``), so that ``keras.models.load_model`` restores the
    whole model. They are held in one
    non-trainable ``tf.Variable``: copied to the device once, when the model is built (once per
    device under a ``tf.distribute`` strategy, if the model is built in its scope), and read in place
    by every step -- a captured host constant would be copied to the accelerator on every call.
    """

    parameter_names = ("P", "Q", "E")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # The evaluation reads item vectors from item_vector_blocks when a model has them; a
        # subclass that redefines item_vectors alone would be ranked on VBPR's blocks instead.
        if "item_vectors" in vars(cls) and "item_vector_blocks" not in vars(cls):
            cls.item_vector_blocks = None

    def __init__(
        self,
        num_users: int,
        num_items: int,
        features,
        embed_dim: int = 64,
        regs=(0.1, 1e-3, 0.0),
        learning_rates=(0.01, 1e-4, 1e-3),
        init_stddev: float = 0.01,
        seed: int | None = None,
        seen_items=None,
        **kwargs,
    ):
        """VBPR with ``P`` (users x K), ``Q`` (items x K), ``E`` (F x K) and constant ``features``.

        Args:
            num_users, num_items: the numbers of users and items.
            features: (items x F) item features, e.g. a dataset's ``features`` (kept on the device).
            embed_dim: K, the embedding size (of ``p_u``, ``q_i`` and ``c_i E``).
            regs: ``(r1, r2, r3)``: penalties on ``p_u``, on the whole item vector, and on ``E``.
            learning_rates: ``(lr_P, lr_Q, lr_E)`` of the three Adagrad optimisers.
            init_stddev, seed: the truncated-normal initialisation (``seed``, ``seed + 1``,
                ``seed + 2`` for P, Q, E).
            seen_items: the users' training items, excluded by ``recommend`` (see
                :class:`~amr_tf.models.base.PairwiseModel`).
            **kwargs: ``eval_ks``, ``name`` and other ``keras.Model`` arguments.
        """
        super().__init__(num_users, num_items, embed_dim=embed_dim, regs=regs, learning_rates=learning_rates,
                         init_stddev=init_stddev, seed=seed, seen_items=seen_items, **kwargs)
        from amr_tf.data.features import ItemFeatures

        if not isinstance(features, ItemFeatures):
            features = np.asarray(features, dtype=np.float32)
        if len(features.shape) != 2 or features.shape[0] != self.num_items:
            raise AmrError(f"features must have shape ({self.num_items}, F), got {features.shape}")
        self.feature_dim = int(features.shape[1])
        # ``features`` holds the rows as stored (float16 from a loaded dataset), ``feature_scale`` what
        # they are divided by; read them through ``feature_rows`` (normalised float32).
        self.features, self.feature_scale = resident_features(features)
        self._scale_var = (None if self.feature_scale == 1.0 else
                           tf.Variable(self.feature_scale, dtype=tf.float32, trainable=False, name="feature_scale"))
        seed = None if self.seed is None else self.seed + 2
        init = keras.initializers.TruncatedNormal(stddev=self.init_stddev, seed=seed)
        self.E = self.add_weight(shape=(self.feature_dim, self.embed_dim), initializer=init, name="E")

    def get_config(self):
        return {**super().get_config(), "feature_dim": self.feature_dim}

    @classmethod
    def from_config(cls, config):
        """A model of this configuration with zero features: ``keras.models.load_model`` then loads
        the saved ones (:meth:`load_assets`); a ``.keras`` file is self-contained."""
        config = dict(config)
        feature_dim = int(config.pop("feature_dim"))
        return cls(features=np.zeros((int(config["num_items"]), feature_dim), np.float32), **config)

    def feature_rows(self, items):
        """The normalised float32 feature rows of ``items`` (gathered in the stored dtype, then cast and scaled)."""
        return stored_rows_to_features(variable_rows(self.features, items), self._scale_var)

    def normalised_features(self):
        """The whole normalised float32 feature matrix (items x F), e.g. for an attack; built by row chunks."""
        return _joined((s, e, self.feature_rows(tf.range(s, e))) for s, e in self._feature_chunks())

    def _feature_chunks(self, chunk_bytes: int = 32 << 20):
        from amr_tf.data.features import row_chunks

        return row_chunks(self.num_items, 4 * self.feature_dim, chunk_bytes)

    def save_assets(self, dir_path):
        """Keras hook for ``.keras`` files only: the seen items and the features (``features.npy``,
        float32, written by row chunks). ``.weights.h5`` checkpoints stay lean (no features)."""
        super().save_assets(dir_path)
        out = np.lib.format.open_memmap(Path(dir_path) / FEATURES_FILE, mode="w+", dtype=np.float32,
                                        shape=(self.num_items, self.feature_dim))
        for start, stop in self._feature_chunks():
            out[start:stop] = self.feature_rows(tf.range(start, stop)).numpy()
        out.flush()
        del out

    def load_assets(self, dir_path):
        """Keras hook of ``load_model``: the features saved by :meth:`save_assets` (shape and finiteness checked)."""
        super().load_assets(dir_path)
        path = Path(dir_path) / FEATURES_FILE
        if not path.exists():
            raise AmrError(f"the .keras file has no {FEATURES_FILE}: it was not saved by amr_tf's VBPR/AMR")
        features = read_asset(path, "f")
        if self.features.dtype != tf.float32 or self.feature_scale != 1.0:
            raise AmrError("load_assets needs a model built with float32 features (as from_config builds it)")
        if features.shape != (self.num_items, self.feature_dim):
            raise AmrError(f"{FEATURES_FILE} in the .keras file has shape {features.shape}, expected "
                           f"({self.num_items}, {self.feature_dim})")
        for start, stop in self._feature_chunks():
            chunk = np.asarray(features[start:stop], np.float32)
            if not np.isfinite(chunk).all():
                raise AmrError(f"{FEATURES_FILE} in the .keras file holds NaN or infinite values")
            self.features.scatter_update(tf.IndexedSlices(tf.constant(chunk), tf.range(start, stop)))

    def item_vectors(self, features=None):
        if features is not None:
            return self.Q + tf.matmul(tf.convert_to_tensor(features, tf.float32), self.E)
        return _joined(VBPR.item_vector_blocks(self))  # VBPR's own (a subclass may have set them to None)

    def item_vector_blocks(self):
        """Yield ``(start, stop, vectors)``: :meth:`item_vectors` by row blocks, the same numbers.

        ``q_i + c_i E`` read together, block by block: never a dense copy of Q (copy-on-read after
        the optimiser's scatters) beside the whole visual part and their sum. The evaluation fills
        one array from these blocks (:func:`amr_tf.evaluation.model_vectors`), so that a million
        items' vectors are held once, not twice as concatenating them would."""
        for start, stop, visual in self.visual_vector_blocks():
            yield start, stop, variable_rows(self.Q, tf.range(start, stop)) + visual

    def visual_vector_blocks(self, chunk_bytes: int = 32 << 20):
        """Yield ``(start, stop, c_i E)`` by row chunks of the features (bounded extra memory)."""
        for start, stop in self._feature_chunks(chunk_bytes):
            yield start, stop, tf.matmul(self.feature_rows(tf.range(start, stop)), self.E)

    def visual_vectors(self, chunk_bytes: int = 32 << 20):
        """``C E`` for the whole catalogue (:meth:`visual_vector_blocks` joined)."""
        return _joined(self.visual_vector_blocks(chunk_bytes))

    def gather_item_vectors(self, items):
        # Only the requested items' visual part, once per distinct item (not the whole catalogue).
        items = tf.convert_to_tensor(items)
        flat = tf.reshape(items, [-1])
        unique, index = tf.unique(flat)
        visual = tf.matmul(self.feature_rows(unique), self.E)
        v = variable_rows(self.Q, flat) + tf.gather(visual, index)
        return tf.reshape(v, tf.concat([tf.shape(items), [self.embed_dim]], axis=0))

    #: ``s_ui = p_u . (q_i + c_i E)`` is linear in the feature row ``c_i``, through ``c_i E``: AMR's
    #: adversary may take its fast projected path (:mod:`amr_tf.models.amr`). A subclass that
    #: overrides the scoring (``batch_forward``, ``batch_item_vectors``, ``batch_visual``,
    #: ``item_rows_from_visual``) loses this unless it declares it again.
    visual_projection_is_linear = True

    def batch_visual(self, batch, feature_rows=None):
        """``c_i E`` once per distinct item of the batch (n x K); ``feature_rows`` replace the ``c_i``."""
        if feature_rows is None:
            feature_rows = self.feature_rows(batch.unique)
        return project(feature_rows, self.E)

    def item_rows_from_visual(self, batch, visual):
        """The batch rows' item vectors ``q_i + c_i E`` from the distinct items' visual parts."""
        return batch.q_rows + tf.gather(visual, batch.index)

    def batch_item_vectors(self, batch, feature_rows=None):
        # The visual part c_i E once per distinct item of the batch, then spread over its rows.
        return self.item_rows_from_visual(batch, self.batch_visual(batch, feature_rows))

    def extra_penalty(self):
        return tf.reduce_sum(tf.square(self.E))
