"""The project's checkpoints: Keras ``.weights.h5`` plus a JSON manifest, saved and loaded safely.

A checkpoint ``NAME`` is two files, ``NAME.weights.h5`` and ``NAME.json``; the manifest records the
model class and hyper-parameters, the dataset fingerprint and whatever the caller adds
(epoch, metrics, command). Both files are written atomically, and the manifest is also stored
inside the weights file (HDF5 attribute ``amr_tf_manifest``), so the weights and their
manifest are replaced together in one rename: if a process is killed between the two renames,
``read_manifest`` notices (``save_id``) and uses the copy inside the weights file. Weights that
are NaN or infinite are never saved (``save_checkpoint`` raises and keeps the previous files).
Every read goes through ``amr_tf.safe_io`` (regular files, no HDF5 links out of the file,
bounded JSON), and a manifest's sizes are checked against the memory available before the
model it describes is built.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import uuid
import warnings
from pathlib import Path

import numpy as np

from amr_tf.checkpoints.provenance import provenance
from amr_tf.errors import CheckpointError
from amr_tf.io import atomic_path, atomic_write_text
from amr_tf.safe_io import (
    check_allocation,
    release_space,
    open_hdf5,
    parse_json,
    read_hdf5_attribute,
    read_json,
    write_hdf5_attribute,
)

MANIFEST_VERSION = 1
MANIFEST_ATTR = "amr_tf_manifest"
# Bytes per embedding entry while training: the weight, its Adagrad accumulator, the gradient and
# a few batch-sized temporaries (float32).
BYTES_PER_PARAMETER = 4 * 4


def _checkpoint_paths(path) -> tuple[Path, Path]:
    """``NAME`` / ``NAME.weights.h5`` / ``NAME.json`` all name the same checkpoint."""
    p = Path(path)
    name = p.name
    for suffix in (".weights.h5", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    base = p.with_name(name)
    return base.with_name(name + ".weights.h5"), base.with_name(name + ".json")


def _contain(names) -> str:
    return f"{', '.join(names)} {'contains' if len(names) == 1 else 'contain'}"


def non_finite_weights(model, arrays: dict | None = None) -> list[str]:
    """Names of ``model``'s weight matrices that contain NaN or infinity (``arrays``: their values,
    by name, when the caller has read them already)."""
    if arrays is None:
        arrays = {name: np.asarray(getattr(model, name)) for name in getattr(model, "parameter_names", ())}
    return [name for name, value in arrays.items() if not np.isfinite(value).all()]


def check_model_fits(num_users: int, num_items: int, feature_dim: int, embed_dim, where, error=CheckpointError) -> None:
    """Raise ``error`` unless ``embed_dim`` is a positive integer whose matrices fit in memory.

    Called before a model is built from a flag or a manifest, so that an absurd size is one
    clear error instead of an allocation failure deep inside TensorFlow.
    """
    if not isinstance(embed_dim, int) or isinstance(embed_dim, bool) or embed_dim < 1:
        raise error(f"{where}: embedding size {embed_dim!r} is not a positive integer")
    rows = int(num_users) + int(num_items) + int(feature_dim)
    check_allocation(rows * embed_dim * BYTES_PER_PARAMETER,
                     f"{where}: a model with embedding size {embed_dim} for {num_users} users, {num_items} items "
                     f"and {feature_dim}-d features", error)


def seed_generator_states(model) -> dict:
    """State of each ``keras.random.SeedGenerator`` attribute of ``model`` (AMR's random adversary).

    Keras does not save these in ``.weights.h5``; resuming needs them for ``adv_type="random"``.
    """
    import keras

    return {name: np.asarray(gen.state.numpy()).tolist() for name, gen in sorted(vars(model).items())
            if isinstance(gen, keras.random.SeedGenerator)}


def restore_seed_generators(model, states: dict | None, source="checkpoint") -> None:
    import keras

    if states is not None and not isinstance(states, dict):
        raise CheckpointError(f"{source}: corrupt manifest: 'seed_generators' must be an object")
    for name, value in (states or {}).items():
        gen = getattr(model, name, None)
        if not isinstance(gen, keras.random.SeedGenerator):
            raise CheckpointError(f"{source}: records random state {name!r}, which {type(model).__name__} lacks")
        try:
            value = np.asarray(value, dtype=np.int64)
        except (TypeError, ValueError, OverflowError):
            raise CheckpointError(f"{source}: random state {name!r} is not a list of integers") from None
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
    _check_free_space(weights_path, model, len(text))
    failed = None
    with atomic_path(weights_path, suffix=".weights.h5") as tmp:
        try:
            model.save_weights(str(tmp))
            write_hdf5_attribute(tmp, MANIFEST_ATTR, text)
        except OSError as exc:  # disk full, quota, I/O error: h5py's message spans lines, names the temp file
            failed = exc.errno or errno.EIO
            release_space(tmp)
        if failed is not None:
            # Keras leaves its HDF5 file open when writing fails; it is closed when collected, which
            # must happen now, while the disk has room for its last flush (at exit it crashed).
            gc.collect()
            raise OSError(failed, os.strerror(failed), str(weights_path))
    atomic_write_text(manifest_path, text + "\n")
    return weights_path


def _check_free_space(weights_path: Path, model, manifest_bytes: int) -> None:
    """Raise ``OSError`` (``EROFS``, ``ENOSPC``) before writing when the file system cannot take the checkpoint.

    The estimate: the model's variables, the optimisers' (at 8 bytes per entry, for slack), the
    manifest twice (inside the weights file and beside it) and 64 KiB of HDF5 overhead. Checking
    first matters: HDF5 failing half-way through a write left handles that crashed the process.
    """
    where = weights_path.parent
    while not where.exists() and where != where.parent:  # atomic_path creates the missing directories
        where = where.parent
    try:
        st = os.statvfs(where)
    except (OSError, AttributeError):
        return
    if st.f_flag & getattr(os, "ST_RDONLY", 1):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(weights_path))
    need = sum(int(np.prod(v.shape)) * 4 for v in model.variables)
    for opt in getattr(model, "optimizers_by_param", None) or []:
        need += sum(int(np.prod(v.shape)) * 8 for v in opt.variables)
    need += 2 * manifest_bytes + (64 << 10)
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: a checkpoint needs about {need} bytes, "
                                    f"{free} are free", str(weights_path))


def _json_default(obj):
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _embedded_manifest(weights_path: Path):
    """The manifest stored inside ``NAME.weights.h5``, or ``None`` when absent or unreadable.

    A file that is not a regular HDF5 file without links out of it raises (the caller cannot use it anyway).
    """
    try:
        with open_hdf5(weights_path, "weights file", CheckpointError) as f:
            text = read_hdf5_attribute(f, MANIFEST_ATTR, weights_path, CheckpointError)
    except CheckpointError as exc:
        if getattr(exc, "missing", False) or getattr(exc, "corrupt", False):
            return None  # missing or damaged: reported when the weights are loaded
        raise
    if text is None:
        return None
    try:
        manifest = parse_json(text, weights_path, "manifest", CheckpointError)
    except CheckpointError:
        return None
    return manifest if isinstance(manifest, dict) else None


def _validate_manifest(manifest, where) -> dict:
    if not isinstance(manifest, dict) or "model" not in manifest or "config" not in manifest:
        raise CheckpointError(f"{where}: not an amr-tf checkpoint manifest (expected a JSON object with "
                              "'model' and 'config')")
    if not isinstance(manifest["model"], str) or not isinstance(manifest["config"], dict):
        raise CheckpointError(f"{where}: corrupt manifest: 'model' must be a string and 'config' an object")
    for key in ("dataset", "args", "metrics"):
        if manifest.get(key) is not None and not isinstance(manifest[key], dict):
            raise CheckpointError(f"{where}: corrupt manifest: '{key}' must be an object")
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
        manifest = read_json(manifest_path, "manifest", CheckpointError,
                             missing=f"{manifest_path}: checkpoint manifest not found")
        problem = None
    except CheckpointError as exc:
        manifest, problem, missing = None, str(exc), getattr(exc, "missing", False)
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
    import h5py

    with open_hdf5(weights_path, "weights file", CheckpointError,
                   missing=f"{weights_path}: weights file not found") as f:
        try:
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


def check_shapes(weights_path: Path, model) -> None:
    """Raise ``CheckpointError`` naming the first matrix whose stored shape does not fit ``model``.

    Also the safety check before Keras opens the file itself: ``open_hdf5`` refuses links out of it.
    """
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
    """Whether either file of checkpoint ``path`` (``NAME.weights.h5``, ``NAME.json``) exists (as any kind of file)."""
    return any(p.exists() or p.is_symlink() for p in _checkpoint_paths(path))


def load_weights(model, path, manifest: dict | None = None) -> None:
    """Load ``NAME.weights.h5`` (and the optimiser state, if the model is compiled), shapes checked first.

    The random-number state saved with the weights (``manifest["seed_generators"]``; by default
    the manifest stored inside the weights file) is restored too, so a loaded model continues
    exactly as the saved one.
    """
    weights_path, _ = _checkpoint_paths(path)
    check_shapes(weights_path, model)  # also refuses FIFOs, links and external storage before Keras opens it
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
    from amr_tf.models import registry

    manifest = read_manifest(path)
    classes = registry.model_classes()
    name = manifest["model"]
    spec = registry.lookup(name) if isinstance(name, str) and name in classes else None
    if spec is None:
        raise CheckpointError(f"{path}: unknown model class {manifest['model']!r} "
                              f"(expected one of {', '.join(classes)})")
    cls = spec.cls
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
    dim = config.get("embed_dim")
    if isinstance(dim, int) and not isinstance(dim, bool) and dim > 0:  # other values: the model's own check
        check_model_fits(dataset.num_users, dataset.num_items, dataset.feature_dim, config["embed_dim"],
                         f"{path}: the manifest's configuration", CheckpointError)
    try:
        model = spec.from_config(config, features=dataset.features)
    except AmrError as exc:
        raise CheckpointError(f"{path}: the manifest's configuration is invalid ({exc})") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise CheckpointError(f"{path}: the manifest's configuration does not fit {cls.__name__} ({exc})") from None
    if compile:  # before loading, so that the Adagrad accumulators are restored too
        model.compile()
    load_weights(model, path, manifest)
    return model, manifest


def assign_finite(model, names, arrays, source) -> None:
    """Assign ``arrays`` to the model's matrices ``names``, all or none: none may hold NaN/Inf."""
    for name, arr in zip(names, arrays):
        if not np.isfinite(arr).all():
            raise CheckpointError(f"{source}: {name} contains NaN or infinite values")
    for name, arr in zip(names, arrays):
        getattr(model, name).assign(arr)
