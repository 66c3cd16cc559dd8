"""Checkpoints: Keras ``.weights.h5`` plus a JSON manifest, and import of the original release's ``.npy``.

A checkpoint ``NAME`` is two files, ``NAME.weights.h5`` and ``NAME.json``; the manifest records the
model class and hyper-parameters, the dataset fingerprint and whatever the caller adds
(epoch, metrics, command). Both files are written atomically.
"""

from __future__ import annotations

import json
import platform
import subprocess
import warnings
from pathlib import Path

import h5py
import numpy as np

from amr_tf.errors import CheckpointError
from amr_tf.io import atomic_path, atomic_write_text

MANIFEST_VERSION = 1


def _checkpoint_paths(path) -> tuple[Path, Path]:
    """``NAME`` / ``NAME.weights.h5`` / ``NAME.json`` all name the same checkpoint."""
    p = Path(path)
    name = p.name
    for suffix in (".weights.h5", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    base = p.with_name(name)
    return base.with_name(name + ".weights.h5"), base.with_name(name + ".json")


def provenance() -> dict:
    """Versions and git commit, recorded in every manifest and result file."""
    import keras
    import tensorflow as tf

    import amr_tf

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "amr_tf": amr_tf.__version__,
        "git_commit": commit,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
    }


def save_checkpoint(model, path, dataset=None, **extra) -> Path:
    """Save ``model``'s weights and a manifest; returns the ``.weights.h5`` path."""
    weights_path, manifest_path = _checkpoint_paths(path)
    manifest = {
        "format": MANIFEST_VERSION,
        "model": type(model).__name__,
        "config": model.get_config(),
        "dataset": None if dataset is None else {"name": dataset.name, "fingerprint": dataset.fingerprint},
        "provenance": provenance(),
        **extra,
    }
    text = json.dumps(manifest, indent=2, sort_keys=True, default=_json_default)
    with atomic_path(weights_path, suffix=".weights.h5") as tmp:
        model.save_weights(str(tmp))
    atomic_write_text(manifest_path, text + "\n")
    return weights_path


def _json_default(obj):
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def read_manifest(path) -> dict:
    _, manifest_path = _checkpoint_paths(path)
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{manifest_path}: checkpoint manifest not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{manifest_path}: corrupt manifest ({exc})") from None
    if not isinstance(manifest, dict) or "model" not in manifest or "config" not in manifest:
        raise CheckpointError(f"{manifest_path}: not an amr-tf checkpoint manifest (no 'model'/'config')")
    return manifest


def _stored_model_shapes(weights_path: Path) -> list[tuple]:
    """Shapes of the model's own matrices in a Keras ``.weights.h5`` (group ``vars``, in order)."""
    try:
        with h5py.File(weights_path, "r") as f:
            group = f.get("vars")
            if not isinstance(group, h5py.Group):
                raise CheckpointError(f"{weights_path}: not a Keras weights file of an amr-tf model (no 'vars')")
            return [tuple(group[str(k)].shape) for k in range(len(group))]
    except FileNotFoundError:
        raise CheckpointError(f"{weights_path}: weights file not found") from None
    except (OSError, KeyError) as exc:
        raise CheckpointError(f"{weights_path}: truncated or corrupt weights file ({exc})") from None


def _check_shapes(weights_path: Path, model) -> None:
    """Raise ``CheckpointError`` naming the first matrix whose stored shape does not fit ``model``."""
    stored = _stored_model_shapes(weights_path)
    names = list(model.parameter_names)
    expected = [tuple(getattr(model, name).shape) for name in names]
    if len(stored) != len(expected):
        raise CheckpointError(
            f"{weights_path}: holds {len(stored)} weight matrices {stored}, {type(model).__name__} has "
            f"{len(expected)} ({', '.join(names)}); it was saved for another model"
        )
    for name, have, want in zip(names, stored, expected):
        if have != want:
            raise CheckpointError(
                f"{weights_path}: {name} has shape {have} in the checkpoint but {want} in the model "
                "(another dataset or embedding size?)"
            )


def load_weights(model, path) -> None:
    """Load ``NAME.weights.h5`` (and the optimiser state, if the model is compiled), shapes checked first."""
    weights_path, _ = _checkpoint_paths(path)
    _check_shapes(weights_path, model)
    try:
        model.load_weights(str(weights_path))
    except (ValueError, OSError, KeyError) as exc:
        raise CheckpointError(f"{weights_path}: cannot load into {type(model).__name__} ({exc})") from None


def load_checkpoint(path, dataset, compile: bool = True, **overrides):
    """Rebuild the model a manifest describes on ``dataset``'s features and load its weights."""
    from amr_tf.models import MODEL_CLASSES

    manifest = read_manifest(path)
    cls = MODEL_CLASSES.get(manifest["model"])
    if cls is None:
        raise CheckpointError(f"{path}: unknown model class {manifest['model']!r}")
    config = {k: v for k, v in manifest["config"].items() if k != "feature_dim"}
    config.update(overrides)
    fp = (manifest.get("dataset") or {}).get("fingerprint")
    if fp and fp != dataset.fingerprint:
        warnings.warn(
            f"{path}: checkpoint was trained on dataset {manifest['dataset'].get('name')!r} "
            f"({fp[:12]}...), not on {dataset.name!r} ({dataset.fingerprint[:12]}...)",
            stacklevel=2,
        )
    for key in ("num_users", "num_items"):
        if config.get(key) != getattr(dataset, key):
            raise CheckpointError(
                f"{path}: checkpoint has {key}={config.get(key)} but dataset {dataset.name!r} has {getattr(dataset, key)}"
            )
    if "feature_dim" in manifest["config"] and manifest["config"]["feature_dim"] != dataset.feature_dim:
        raise CheckpointError(
            f"{path}: checkpoint has feature_dim={manifest['config']['feature_dim']} "
            f"but dataset {dataset.name!r} has {dataset.feature_dim}-d features"
        )
    if cls.__name__ == "MFBPR":
        model = cls(**config)
    else:
        model = cls(features=dataset.features, **config)
    if compile:  # before loading, so that the Adagrad accumulators are restored too
        model.compile()
    load_weights(model, path)
    return model, manifest


def load_original_npy(path, model) -> None:
    """Import the original release's weights: a pickled object array ``[P, Q, E]`` (maybe Python 2).

    ``encoding="latin1"`` reads NumPy arrays pickled by Python 2. This is the only place the
    project accepts a pickled ``.npy``, since the original release wrote its weights that way.
    """
    path = Path(path)
    try:
        arrays = np.load(path, allow_pickle=True, encoding="latin1")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: weights file not found") from None
    except Exception as exc:  # unpickling can raise almost anything on a corrupt file
        raise CheckpointError(f"{path}: not a readable original-release weights file ({exc})") from None
    names = list(getattr(model, "parameter_names", ("P", "Q", "E")))
    try:
        arrays = [np.asarray(a, dtype=np.float32) for a in arrays]
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: expected a list of numeric matrices [P, Q, E] ({exc})") from None
    if len(arrays) != len(names):
        raise CheckpointError(f"{path}: holds {len(arrays)} arrays, expected {len(names)} ({', '.join(names)})")
    for name, arr in zip(names, arrays):
        want = tuple(getattr(model, name).shape)
        if arr.shape != want:
            raise CheckpointError(f"{path}: {name} has shape {arr.shape}, the model expects {want}")
    for name, arr in zip(names, arrays):
        getattr(model, name).assign(arr)


def export_original_npy(model, path) -> None:
    """Write ``[P, Q, E]`` as the original release did (an object array), atomically."""
    arrays = np.empty(len(model.parameter_names), dtype=object)
    for k, name in enumerate(model.parameter_names):
        arrays[k] = getattr(model, name).numpy()
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arrays, allow_pickle=True)


def load_pretrained(model, path) -> None:
    """Initialise ``model``'s matrices from a checkpoint or an original-release ``.npy``.

    Only the weights are taken (the optimiser starts fresh), as the original's ``--pretrain``
    did; this is how AMR starts from a pretrained VBPR.
    """
    path = Path(path)
    if path.suffix == ".npy":
        load_original_npy(path, model)
        return
    weights_path, _ = _checkpoint_paths(path)
    _check_shapes(weights_path, model)
    with h5py.File(weights_path, "r") as f:
        for k, name in enumerate(model.parameter_names):
            getattr(model, name).assign(f["vars"][str(k)][()])
