"""Training under ``tf.distribute.MirroredStrategy`` (two logical CPU devices) equals one device.

Logical devices must be configured before TensorFlow initialises its devices, which the test
session has already done, so each case runs in a fresh interpreter (``sys.executable``).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from amr_tf.data import TripletSampler, make_synthetic
    from amr_tf.training import build_model, fit

    name, kw = sys.argv[1], json.loads(sys.argv[2])
    batch, epochs = 64, 3
    ds = make_synthetic(num_users=30, num_items=50, feature_dim=12, num_pairs=200, num_negatives=20, seed=3)
    # regs[2] > 0: the penalty on E (a whole matrix) must be counted once, not once per replica.
    common = dict(embed_dim=8, regs=(0.1, 1e-3, 0.01), learning_rates=(0.05, 0.05, 0.05), seed=0, **kw)

    def train(strategy):
        with strategy.scope():
            model = build_model(name, ds, **common)
        history = fit(model, ds, epochs=epochs, batch_size=batch, seed=7, verbose=0)
        return model, history.history

    devices = tf.config.list_logical_devices("CPU")
    mirrored = tf.distribute.MirroredStrategy([d.name for d in devices])
    one, h_one = train(tf.distribute.get_strategy())
    two, h_two = train(mirrored)

    # Keras splits each batch in halves, one per replica: users and items do occur on both.
    u, i, j = next(iter(TripletSampler(ds, seed=7).batches(0, batch)))
    h = batch // 2
    shared_users = len(set(u[:h]) & set(u[h:]))
    shared_items = len(set(np.r_[i[:h], j[:h]]) & set(np.r_[i[h:], j[h:]]))

    # One step on that batch under the strategy against the NumPy reference (TF1 semantics:
    # the Adagrad accumulator takes the square of a row's gradient summed over both replicas).
    from tests import numpy_reference as ref

    with mirrored.scope():
        stepped = build_model(name, ds, **common)
    start = [getattr(stepped, n).numpy() for n in "PQE"]
    stepped.fit(tf.data.Dataset.from_tensors(((u, i, j),)), epochs=1, verbose=0)
    eps, lmd = (kw.get("eps", 0.1), kw.get("adv_weight", 1.0)) if name == "AMR" else (0.0, 0.0)
    want, _, _ = ref.train_step(*start, ds.features, u, i, j, common["regs"], common["learning_rates"], eps, lmd)
    ref_error = {n: float(np.max(np.abs(getattr(stepped, n).numpy() - w) / (1e-6 + 1e-5 * np.abs(w))))
                 for n, w in zip("PQE", want)}

    out = {
        "ref_error": ref_error,
        "replicas": mirrored.num_replicas_in_sync,
        "shared_users": shared_users, "shared_items": shared_items,
        "history_one": h_one, "history_two": h_two,
        "max_abs_diff": {n: float(np.abs(getattr(one, n).numpy() - getattr(two, n).numpy()).max())
                         for n in one.parameter_names},
        "max_abs_change": {n: float(np.abs(getattr(one, n).numpy() - getattr(build_model(name, ds, **common), n).numpy()).max())
                           for n in one.parameter_names},
        "var_device": two.P.value.values[1].device if hasattr(two.P.value, "values") else None,
    }
    print("RESULT " + json.dumps(out))
    """
)


def run_two_replicas(name, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, name, json.dumps(kw)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"subprocess failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.parametrize(
    "name,kw",
    [
        ("VBPR", {}),
        ("AMR", {"eps": 0.5, "adv_weight": 1.0}),
        ("AMR", {"eps": 0.5, "adv_weight": 1.0, "adv_impl": "dense"}),
    ],
    ids=["VBPR", "AMR", "AMR-dense"],
)
def test_mirrored_two_devices_equals_one_device(name, kw):
    r = run_two_replicas(name, **kw)
    assert r["replicas"] == 2
    assert r["var_device"] is not None and r["var_device"].endswith("CPU:1")  # really mirrored
    # The test is only meaningful if the replicas share users and items within a batch (the
    # Adagrad row sums and the adversary's per-item gradient then span both replicas).
    assert r["shared_users"] > 0 and r["shared_items"] > 0
    for n, diff in r["max_abs_diff"].items():
        assert r["max_abs_change"][n] > 1e-3, n  # training moved the weights
        assert diff <= 1e-5 * max(1.0, r["max_abs_change"][n]), (n, diff)
    # allclose(got, want, rtol=1e-5, atol=1e-6) against the reference, as in test_models.py.
    assert all(e <= 1.0 for e in r["ref_error"].values()), r["ref_error"]
    # The logged losses are the whole batch's, not one replica's (or their mean).
    for key in ("loss", "bpr_loss") + (("adv_loss",) if name == "AMR" else ()):
        one, two = r["history_one"][key], r["history_two"][key]
        assert len(one) == len(two) == 3
        for a, b in zip(one, two):
            assert abs(a - b) <= 1e-5 * abs(a), (key, one, two)
