from pathlib import Path

import numpy as np
import pytest

import amr_tf  # noqa: F401 -- first, before any test module imports Keras: quiets TensorFlow's start-up

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


# The slow tests (``pytest -m slow``; deselected by default in pyproject.toml): over ~10 s each in
# ``pytest --durations`` on the shared 2-core machine, or sharing such a fixture. Listed here rather
# than decorated so that the files other work is editing stay untouched; tests/test_keras_api.py,
# tests/test_readme.py and tests/test_cli.py use ``@pytest.mark.slow`` directly.
SLOW_TESTS = {
    "test_reproduce.py",  # one module-scoped run of reproduce.all --quick (~220 s)
    "test_distribute.py",  # two-device and two-worker runs in subprocesses (~330 s)
    "test_pixel_attack.py",  # EfficientNet-Lite0 attacks through the recommender (~150 s)
    "test_training.py::test_vbpr_beats_mf_and_learns_on_synthetic_data",
    "test_reliability.py::test_sigkill_at_random_moments_then_resume_equals_uninterrupted",
    # These share the module fixture 'runs' (three full CLI runs, ~100 s).
    "test_reliability.py::test_two_seeded_runs_are_bit_identical",
    "test_reliability.py::test_resumed_run_equals_uninterrupted_run_bit_for_bit",
    "test_reliability.py::test_metrics_json_records_provenance",
    "test_reliability.py::test_resume_keeps_the_configuration_and_the_dataset",
    "test_reliability.py::test_resume_messages",
    "test_reliability.py::test_nan_in_a_later_epoch_never_overwrites_the_checkpoint",
    "test_benchmarks.py::test_quick_benchmark_runs_and_prints_the_tables",
    "test_cli.py::test_pretrained_vbpr_then_amr",
    "test_vision.py::test_cli_subcommand",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.nodeid.split("::")[0].rsplit("/", 1)[-1]
        if module in SLOW_TESTS or f"{module}::{item.originalname}" in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
