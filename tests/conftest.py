import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def shared_path(*parts) -> Path:
    """A path under ../shared, skipping the test cleanly when it is absent (a user's clone)."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not available (../shared is only present in the project's workspace)")
    return p


def make_tiny():
    """The tiny synthetic dataset (40 users, 60 items, 12 features) most unit tests use."""
    from amr_tf.data import make_synthetic

    return make_synthetic(num_users=40, num_items=60, feature_dim=12, num_pairs=200, num_negatives=20, seed=3)


@pytest.fixture
def tiny_dataset():
    return make_tiny()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
