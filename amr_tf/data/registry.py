"""Named datasets: the embedded default, synthetic shapes, or any directory in the original format."""

from __future__ import annotations

from pathlib import Path

from amr_tf.data.dataset import VALIDATION_MODES, AmrDataset, load_amr_dir
from amr_tf.data.synthetic import make_synthetic
from amr_tf.data.validation import carve_holdout
from amr_tf.datasets import DATA_DIR as PACKAGE_DATA  # the embedded datasets' folder
from amr_tf.errors import DataError

# Synthetic shapes: "synthetic" is small and quick; "synthetic-original" has the original
# release's Pinterest shape (3,226 users, 4,998 items, 2,048-d features, 6,618 pairs).
SYNTHETIC = {
    "synthetic": dict(num_users=500, num_items=800, feature_dim=128, num_pairs=4000, num_negatives=100),
    "synthetic-original": dict(num_users=3226, num_items=4998, feature_dim=2048, num_pairs=6618,
                               num_negatives=999),
}
EMBEDDED = {"movielens-posters": ("movielens_posters", "effnet")}
DEFAULT_DATASET = "movielens-posters" if (PACKAGE_DATA / "movielens_posters" / "pos.txt").exists() else "synthetic"


def available() -> list[str]:
    return sorted(list(SYNTHETIC) + [k for k, (d, _) in EMBEDDED.items() if (PACKAGE_DATA / d).is_dir()])


def resolve_dataset(spec: str | None = None, cnn: str | None = None, path: str | None = None,
                    seed: int = 0, validation: str = "auto") -> AmrDataset:
    """Load ``spec``: an embedded name, a synthetic shape name, or a dataset directory.

    ``path`` is the original CLI's parent directory (``--path Data/ --dataset pinterest``).
    ``validation`` (``auto``/``holdout``/``none``) is :func:`load_amr_dir`'s; a synthetic dataset
    has no ``val.txt``, so only ``holdout`` gives it a validation split.
    """
    spec = spec or DEFAULT_DATASET
    if validation not in VALIDATION_MODES:
        raise DataError(f"validation must be one of {', '.join(VALIDATION_MODES)}, got {validation!r}")
    if spec in SYNTHETIC:
        ds = make_synthetic(seed=seed, name=spec, **SYNTHETIC[spec])
        return carve_holdout(ds) if validation == "holdout" else ds
    if spec in EMBEDDED:
        folder, default_cnn = EMBEDDED[spec]
        return load_amr_dir(PACKAGE_DATA / folder, cnn=cnn or default_cnn, name=spec, validation=validation)
    root = Path(path) / spec if path else Path(spec)
    if not root.is_dir():
        raise DataError(f"{root}: no such dataset directory (built-in datasets: {', '.join(available())})")
    if cnn is None:
        found = sorted(root.glob("f_*.npy"))
        cnn = found[0].name[2:-4] if len(found) == 1 else "resnet"
    return load_amr_dir(root, cnn=cnn, validation=validation)
