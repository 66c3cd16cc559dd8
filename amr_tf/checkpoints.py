"""Checkpoints: Keras ``.weights.h5`` plus a JSON manifest, and import of the original release's ``.npy``.

A checkpoint ``NAME`` is two files, ``NAME.weights.h5`` and ``NAME.json``; the manifest records the
model class and hyper-parameters, the dataset fingerprint and whatever the caller adds
(epoch, metrics, command). Both files are written atomically, and the manifest is also stored
inside the weights file (HDF5 attribute ``amr_tf_manifest``), so the weights and their
manifest are replaced together in one rename: if a process is killed between the two renames,
``read_manifest`` notices (``save_id``) and uses the copy inside the weights file. Weights that
are NaN or infinite are never saved (``save_checkpoint`` raises and keeps the previous files).
"""

from __future__ import annotations

import functools
import json
import pickle
import platform
import subprocess
import uuid
import warnings
from pathlib import Path

import h5py
import numpy as np

from amr_tf.errors import CheckpointError
from amr_tf.io import atomic_path, atomic_write_npy, atomic_write_text, read_npy_header

MANIFEST_VERSION = 1
MANIFEST_ATTR = "amr_tf_manifest"


def _checkpoint_paths(path) -> tuple[Path, Path]:
    """``NAME`` / ``NAME.weights.h5`` / ``NAME.json`` all name the same checkpoint."""
    p = Path(path)
    name = p.name
    for suffix in (".weights.h5", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    base = p.with_name(name)
    return base.with_name(name + ".weights.h5"), base.with_name(name + ".json")


@functools.lru_cache(maxsize=1)
def _provenance() -> dict:
    import keras
    import scipy
    import tensorflow as tf

    import amr_tf

    def git(*args):
        try:
            proc = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True,
                                  timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout if proc.returncode == 0 else None

    # Only this project's own checkout counts (not, say, a user's repository holding a virtualenv).
    top = (git("rev-parse", "--show-toplevel") or "").strip()
    ours = bool(top) and (Path(top) / "amr_tf").resolve() == Path(__file__).resolve().parent
    commit = (git("rev-parse", "HEAD") or "").strip() or None if ours else None
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "amr_tf": amr_tf.__version__,
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status.strip()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "h5py": h5py.__version__,
    }


def provenance() -> dict:
    """Versions and git commit (with whether the tree had uncommitted changes), recorded in every
    manifest and result file. Computed once per process."""
    return dict(_provenance())


def _contain(names) -> str:
    return f"{', '.join(names)} {'contains' if len(names) == 1 else 'contain'}"


def non_finite_weights(model) -> list[str]:
    """Names of ``model``'s weight matrices that contain NaN or infinity."""
    return [name for name in getattr(model, "parameter_names", ())
            if not np.isfinite(getattr(model, name).numpy()).all()]


def seed_generator_states(model) -> dict:
    """State of each ``keras.random.SeedGenerator`` attribute of ``model`` (AMR's random adversary).

    Keras does not save these in ``.weights.h5``; resuming needs them for ``adv_type="random"``.
    """
    import keras

    return {name: np.asarray(gen.state.numpy()).tolist() for name, gen in sorted(vars(model).items())
            if isinstance(gen, keras.random.SeedGenerator)}


def restore_seed_generators(model, states: dict | None, source="checkpoint") -> None:
    import keras

    for name, value in (states or {}).items():
        gen = getattr(model, name, None)
        if not isinstance(gen, keras.random.SeedGenerator):
            raise CheckpointError(f"{source}: records random state {name!r}, which {type(model).__name__} lacks")
        value = np.asarray(value)
        if value.shape != tuple(gen.state.shape):
            raise CheckpointError(f"{source}: random state {name!r} has shape {value.shape}, "
                                  f"expected {tuple(gen.state.shape)}")
        gen.state.assign(value.astype(gen.state.dtype))


def save_checkpoint(model, path, dataset=None, **extra) -> Path:
    """Save ``model``'s weights and a manifest; returns the ``.weights.h5`` path.

    Raises ``CheckpointError`` (and leaves any previous checkpoint ``path`` untouched) when a
    weight matrix holds NaN or infinity.
    """
    weights_path, manifest_path = _checkpoint_paths(path)
    bad = non_finite_weights(model)
    if bad:
        raise CheckpointError(
            f"{weights_path}: not saved: {_contain(bad)} NaN or infinite values "
            "(the previous checkpoint, if any, is kept)"
        )
    manifest = {
        "format": MANIFEST_VERSION,
        "model": type(model).__name__,
        "config": model.get_config(),
        "dataset": None if dataset is None else dataset.record(),
        "provenance": provenance(),
        "save_id": uuid.uuid4().hex,
        **extra,
    }
    states = seed_generator_states(model)
    if states:
        manifest["seed_generators"] = states
    text = json.dumps(manifest, indent=2, sort_keys=True, default=_json_default, allow_nan=False)
    with atomic_path(weights_path, suffix=".weights.h5") as tmp:
        model.save_weights(str(tmp))
        with h5py.File(tmp, "a") as f:
            f.attrs[MANIFEST_ATTR] = text
    atomic_write_text(manifest_path, text + "\n")
    return weights_path


def _json_default(obj):
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _embedded_manifest(weights_path: Path):
    """The manifest stored inside ``NAME.weights.h5``, or ``None`` when absent or unreadable."""
    try:
        with h5py.File(weights_path, "r") as f:
            text = f.attrs.get(MANIFEST_ATTR)
    except Exception:  # noqa: BLE001 - missing or corrupt file: the caller reports it when loading
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    try:
        manifest = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError:
        return None
    return manifest if isinstance(manifest, dict) else None


def _validate_manifest(manifest, where) -> dict:
    if not isinstance(manifest, dict) or "model" not in manifest or "config" not in manifest:
        raise CheckpointError(f"{where}: not an amr-tf checkpoint manifest (expected a JSON object with "
                              "'model' and 'config')")
    if not isinstance(manifest["model"], str) or not isinstance(manifest["config"], dict):
        raise CheckpointError(f"{where}: corrupt manifest: 'model' must be a string and 'config' an object")
    if manifest.get("dataset") is not None and not isinstance(manifest["dataset"], dict):
        raise CheckpointError(f"{where}: corrupt manifest: 'dataset' must be an object")
    return manifest


def read_manifest(path) -> dict:
    """The manifest of checkpoint ``path`` (``NAME``, ``NAME.json`` or ``NAME.weights.h5``).

    The copy inside the weights file wins when the ``.json`` is missing, unreadable or from
    another save (a process killed between the two renames); the ``.json`` alone is used for
    checkpoints without an embedded copy.
    """
    if Path(path).is_dir():
        hint = [n for n in ("last", "best") if (Path(path) / f"{n}.json").exists()]
        raise CheckpointError(f"{path}: is a directory, not a checkpoint"
                              + (f"; did you mean {Path(path) / hint[0]}?" if hint else ""))
    weights_path, manifest_path = _checkpoint_paths(path)
    embedded = _embedded_manifest(weights_path)
    missing = False
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        problem = None
    except FileNotFoundError:
        manifest, problem, missing = None, f"{manifest_path}: checkpoint manifest not found", True
    except IsADirectoryError:
        manifest, problem = None, f"{manifest_path}: is a directory, expected a checkpoint manifest"
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        manifest, problem = None, f"{manifest_path}: corrupt manifest ({exc})"
    except OSError as exc:
        manifest, problem = None, f"{manifest_path}: cannot read ({exc.strerror or exc})"
    if embedded is not None:
        if problem is not None and not missing:
            warnings.warn(f"{problem}; using the copy stored in {weights_path.name}", stacklevel=2)
        if not isinstance(manifest, dict) or manifest.get("save_id") != embedded.get("save_id"):
            return _validate_manifest(embedded, weights_path)
    if problem is not None:
        raise CheckpointError(problem)
    return _validate_manifest(manifest, manifest_path)


def _stored_model_shapes(weights_path: Path) -> list[tuple]:
    """Shapes of the model's own matrices in a Keras ``.weights.h5`` (group ``vars``, in order)."""
    if not weights_path.exists():
        raise CheckpointError(f"{weights_path}: weights file not found")
    try:
        with h5py.File(weights_path, "r") as f:
            group = f.get("vars")
            if not isinstance(group, h5py.Group):
                raise CheckpointError(f"{weights_path}: not a Keras weights file of an amr-tf model (no 'vars')")
            shapes = []
            for k in range(len(group)):
                item = group.get(str(k))
                if not isinstance(item, h5py.Dataset):
                    raise CheckpointError(f"{weights_path}: corrupt weights file (vars/{k} is not an array)")
                shapes.append(tuple(item.shape))
            return shapes
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError, KeyError, RuntimeError... on damage
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


def checkpoint_exists(path) -> bool:
    """Whether either file of checkpoint ``path`` (``NAME.weights.h5``, ``NAME.json``) exists."""
    return any(p.exists() for p in _checkpoint_paths(path))


def load_weights(model, path, manifest: dict | None = None) -> None:
    """Load ``NAME.weights.h5`` (and the optimiser state, if the model is compiled), shapes checked first.

    The random-number state saved with the weights (``manifest["seed_generators"]``; by default
    the manifest stored inside the weights file) is restored too, so a loaded model continues
    exactly as the saved one.
    """
    weights_path, _ = _checkpoint_paths(path)
    _check_shapes(weights_path, model)
    try:
        model.load_weights(str(weights_path))
    except Exception as exc:  # noqa: BLE001 - Keras/h5py raise ValueError, OSError, KeyError... on damage
        raise CheckpointError(f"{weights_path}: cannot load into {type(model).__name__} ({exc})") from None
    bad = non_finite_weights(model)
    if bad:
        raise CheckpointError(f"{weights_path}: {_contain(bad)} NaN or infinite values")
    if manifest is None:  # the copy saved inside the weights file (none in a plain Keras file)
        manifest = _embedded_manifest(weights_path) or {}
    restore_seed_generators(model, manifest.get("seed_generators"), source=path)


def load_checkpoint(path, dataset, compile: bool = True, **overrides):
    """Rebuild the model a manifest describes on ``dataset``'s features and load its weights."""
    from amr_tf.errors import AmrError
    from amr_tf.models import MODEL_CLASSES

    manifest = read_manifest(path)
    cls = MODEL_CLASSES.get(manifest["model"])
    if cls is None:
        raise CheckpointError(f"{path}: unknown model class {manifest['model']!r} "
                              f"(expected one of {', '.join(MODEL_CLASSES)})")
    config = {k: v for k, v in manifest["config"].items() if k != "feature_dim"}
    config.update(overrides)
    fp = (manifest.get("dataset") or {}).get("fingerprint")
    if fp and fp != dataset.fingerprint:
        warnings.warn(
            f"{path}: checkpoint was trained on dataset {manifest['dataset'].get('name')!r} "
            f"({str(fp)[:12]}...), not on {dataset.name!r} ({dataset.fingerprint[:12]}...)",
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
    try:
        if cls.__name__ == "MFBPR":
            model = cls(**config)
        else:
            model = cls(features=dataset.features, **config)
    except AmrError as exc:
        raise CheckpointError(f"{path}: the manifest's configuration is invalid ({exc})") from None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the manifest's configuration does not fit {cls.__name__} ({exc})") from None
    if compile:  # before loading, so that the Adagrad accumulators are restored too
        model.compile()
    load_weights(model, path, manifest)
    return model, manifest


# ---------------------------------------------------------------------------- the original release's .npy

# The only globals a pickled list of float arrays needs; anything else (os.system...) is refused.
_NUMPY_PICKLE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _NUMPY_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only NumPy arrays are allowed)")
        if module.startswith("numpy.core."):  # Python 2 / NumPy 1 pickles; NumPy 2 moved it
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


def read_original_npy(path) -> list[np.ndarray]:
    """The arrays of the original release's weights file: a pickled object array ``[P, Q, E]``.

    This is the only place the project reads a pickled ``.npy`` (the original release wrote its
    weights that way, from Python 2: ``encoding="latin1"``). The unpickler only accepts NumPy
    arrays, so a crafted file cannot run code.
    """
    path = Path(path)
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: weights file not found") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with fh:
        try:
            _, _, dtype = read_npy_header(fh)
            if not dtype.hasobject:
                fh.seek(0)
                arrays = np.load(fh, allow_pickle=False)
            else:
                arrays = _NumpyOnlyUnpickler(fh, encoding="latin1").load()
        except Exception as exc:  # noqa: BLE001 - a corrupt file can raise almost anything
            raise CheckpointError(f"{path}: not a readable original-release weights file ({exc})") from None
    try:
        return [np.asarray(a, dtype=np.float32) for a in arrays]
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: expected a list of numeric matrices [P, Q, E] ({exc})") from None


def load_original_npy(path, model, arrays: list | None = None) -> None:
    """Import the original release's weights (``read_original_npy``) into ``model``, shapes checked.

    ``arrays``: the file's arrays, if the caller has already read them.
    """
    path = Path(path)
    arrays = read_original_npy(path) if arrays is None else arrays
    names = list(getattr(model, "parameter_names", ("P", "Q", "E")))
    if len(arrays) != len(names):
        raise CheckpointError(f"{path}: holds {len(arrays)} arrays, expected {len(names)} ({', '.join(names)})")
    for name, arr in zip(names, arrays):
        want = tuple(getattr(model, name).shape)
        if arr.shape != want:
            raise CheckpointError(f"{path}: {name} has shape {arr.shape}, the model expects {want}")
    _assign_finite(model, names, arrays, path)


def _assign_finite(model, names, arrays, source) -> None:
    """Assign ``arrays`` to the model's matrices ``names``, all or none: none may hold NaN/Inf."""
    for name, arr in zip(names, arrays):
        if not np.isfinite(arr).all():
            raise CheckpointError(f"{source}: {name} contains NaN or infinite values")
    for name, arr in zip(names, arrays):
        getattr(model, name).assign(arr)


def export_original_npy(model, path) -> None:
    """Write ``[P, Q, E]`` as the original release did (an object array), atomically."""
    arrays = np.empty(len(model.parameter_names), dtype=object)
    for k, name in enumerate(model.parameter_names):
        arrays[k] = getattr(model, name).numpy()
    atomic_write_npy(path, arrays, allow_pickle=True)


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
    try:
        with h5py.File(weights_path, "r") as f:
            arrays = [np.asarray(f["vars"][str(k)][()]) for k in range(len(model.parameter_names))]
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{weights_path}: truncated or corrupt weights file ({exc})") from None
    _assign_finite(model, model.parameter_names, arrays, weights_path)
