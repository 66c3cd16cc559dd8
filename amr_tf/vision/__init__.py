"""Visual item features for AMR: EfficientNet-Lite0 in Keras 3 with ImageNet weights converted from PyTorch.

Importing this package is cheap (Keras/TensorFlow load on first model build).

* :func:`build_efficientnet_lite0` / :func:`build_feature_extractor` -- the network; inputs are RGB pixels
  in ``[0, 255]`` of shape ``(batch, 224, 224, 3)``, normalised inside the model.
* :func:`load_image`, :func:`preprocess_image`, :func:`load_and_preprocess` -- decoding and the
  centre-crop (224/256) + bilinear resize to 224x224 the weights expect.
* :func:`extract_features`, :func:`extract_folder` -- batched 1280-d feature extraction.
* :func:`imagenet_class_names`, :func:`decode_top_k` -- ImageNet labels, offline.
"""

from amr_tf.vision.efficientnet_lite import (
    FEATURE_DIM,
    IMAGE_SIZE,
    build_efficientnet_lite0,
    build_feature_extractor,
    convert_torch_checkpoint,
    default_cache_dir,
    ensure_imagenet_weights,
)
from amr_tf.vision.features import (
    add_features_subcommand,
    extract_features,
    extract_folder,
    list_images,
    natural_sort,
    run_features,
)
from amr_tf.vision.preprocess import (
    decode_top_k,
    imagenet_class_names,
    load_and_preprocess,
    load_image,
    preprocess_image,
)
from amr_tf.vision.torch_checkpoint import load_torch_state_dict

__all__ = [
    "FEATURE_DIM",
    "IMAGE_SIZE",
    "add_features_subcommand",
    "build_efficientnet_lite0",
    "build_feature_extractor",
    "convert_torch_checkpoint",
    "decode_top_k",
    "default_cache_dir",
    "ensure_imagenet_weights",
    "extract_features",
    "extract_folder",
    "imagenet_class_names",
    "list_images",
    "load_and_preprocess",
    "load_image",
    "load_torch_state_dict",
    "natural_sort",
    "preprocess_image",
    "run_features",
]
