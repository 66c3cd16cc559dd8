"""Training under ``tf.distribute`` equals one device: ``MirroredStrategy`` over two logical CPU
devices, and ``MultiWorkerMirroredStrategy`` over two worker processes on localhost.

Logical devices (and a multi-worker strategy) must be configured before TensorFlow initialises
its devices, which the test session has already done, so each case runs in fresh interpreters
(``sys.executable``).
"""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
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

    initial = build_model(name, ds, **common)
    out = {
        "ref_error": ref_error,
        "replicas": mirrored.num_replicas_in_sync,
        "shared_users": shared_users, "shared_items": shared_items,
        "history_one": h_one, "history_two": h_two,
        "max_abs_diff": {n: float(np.abs(getattr(one, n).numpy() - getattr(two, n).numpy()).max())
                         for n in one.parameter_names},
        "max_abs_change": {n: float(np.abs(getattr(one, n).numpy() - getattr(initial, n).numpy()).max())
                           for n in one.parameter_names},
        "var_device": two.P.value.values[1].device if hasattr(two.P.value, "values") else None,
    }
    print("RESULT " + json.dumps(out))
    """
)


def _child_env():
    """The environment of a child interpreter: this checkout importable, quiet TensorFlow, CPU only."""
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")


def _parse_result(stdout):
    """The JSON of the last ``RESULT `` line a child printed, or None when there is none."""
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(lines[-1][len("RESULT "):]) if lines else None


def run_two_replicas(name, **kw):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, name, json.dumps(kw)], cwd=ROOT, env=_child_env(),
                          capture_output=True, text=True, timeout=600)
    result = _parse_result(proc.stdout)
    assert proc.returncode == 0 and result is not None, \
        f"subprocess failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return result


@pytest.mark.parametrize(
    "name,kw",
    [
        ("VBPR", {}),
        ("AMR", {"eps": 0.5, "adv_weight": 1.0}),
        ("AMR", {"eps": 0.5, "adv_weight": 1.0, "adversary": "tape"}),
    ],
    ids=["VBPR", "AMR", "AMR-tape"],
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


# ---------------------------------------------------------------------------------------------
# MultiWorkerMirroredStrategy: two worker processes on localhost, one CPU replica each.

WORKER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf

    # First, before any op: the strategy reads TF_CONFIG and starts this worker's gRPC server.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()

    import numpy as np
    from amr_tf.data import TripletSampler, make_synthetic
    from amr_tf.training import build_model, fit

    name, kw, reference = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "1"
    batch, epochs = 64, 3
    ds = make_synthetic(num_users=30, num_items=50, feature_dim=12, num_pairs=200, num_negatives=20, seed=3)
    # regs[2] > 0: the penalty on E (a whole matrix) must be counted once, not once per replica.
    common = dict(embed_dim=8, regs=(0.1, 1e-3, 0.01), learning_rates=(0.05, 0.05, 0.05), seed=0, **kw)

    with strategy.scope():
        model = build_model(name, ds, **common)
    history = fit(model, ds, epochs=epochs, batch_size=batch, seed=7, verbose=0)
    weights = lambda m: {n: getattr(m, n).numpy().tolist() for n in m.parameter_names}
    out = {"task": strategy.cluster_resolver.task_id, "replicas": strategy.num_replicas_in_sync,
           "var_type": type(model.P.value).__name__, "features_type": type(model.features).__name__,
           "history": history.history, "weights": weights(model)}

    if reference:
        # Single-device training in the same process, after the distributed run (the strategy
        # had to come first): a model built outside the scope uses the default strategy.
        assert not tf.distribute.has_strategy()
        one = build_model(name, ds, **common)
        out["initial"] = weights(one)
        h_one = fit(one, ds, epochs=epochs, batch_size=batch, seed=7, verbose=0)
        out.update(single_var_type=type(one.P.value).__name__, single_history=h_one.history, single=weights(one))
        # Each worker's replica takes half of each global batch: users and items do occur on both.
        u, i, j = next(iter(TripletSampler(ds, seed=7).batches(0, batch)))
        h = batch // 2
        out["shared_users"] = len(set(u[:h]) & set(u[h:]))
        out["shared_items"] = len(set(np.r_[i[:h], j[:h]]) & set(np.r_[i[h:], j[h:]]))
    print("RESULT " + json.dumps(out))
    """
)

# Worker errors that mean this environment cannot run a local gRPC cluster (not a library bug):
# a server that cannot start, or (after the timeout) workers that never reached each other.
_NO_SERVER = ("Could not start gRPC server", "Failed to add port to server")
_NO_CONNECTION = ("failed to connect to all addresses", "Connection refused")


def _free_ports(n):
    from benchmarks.multiworker import free_ports

    return free_ports(n)


def _tail(text, n=3000):
    lines = [line for line in text.splitlines() if not line.startswith(("I0000", "W0000", "WARNING: All log"))]
    return "\n".join(lines)[-n:]


def run_two_workers(name, timeout=240, **kw):
    """Train in two MultiWorkerMirroredStrategy worker processes; worker 0 also trains on one device."""
    try:
        ports = _free_ports(2)
    except OSError as e:
        pytest.skip(f"cannot bind a localhost TCP port for the workers' gRPC servers: {e}")
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    # gRPC would send localhost traffic through a proxy named in the environment.
    base = {k: v for k, v in _child_env().items() if k.lower() not in ("http_proxy", "https_proxy", "grpc_proxy")}
    procs, outputs, timed_out = [], [None, None], False
    try:
        for index in range(2):
            env = dict(base, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
            procs.append(subprocess.Popen(
                [sys.executable, "-c", WORKER_SCRIPT, name, json.dumps(kw), "1" if index == 0 else "0"],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        deadline = time.monotonic() + timeout
        for k, proc in enumerate(procs):
            outputs[k] = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        for proc in procs:  # one worker failing leaves the other waiting on a collective: kill both
            if proc.poll() is None:
                proc.kill()
        for k, proc in enumerate(procs):
            if outputs[k] is None:
                outputs[k] = proc.communicate()
    results = []
    for proc, (out, _) in zip(procs, outputs):
        results.append(_parse_result(out) if proc.returncode == 0 else None)
    if None in results:
        report = "\n".join(f"--- worker {i} (exit {p.returncode}{', killed after timeout' if timed_out else ''}):\n"
                           f"{_tail(o)}\n{_tail(e)}" for i, (p, (o, e)) in enumerate(zip(procs, outputs)))
        signs = _NO_SERVER + (_NO_CONNECTION if timed_out else ())
        blocked = [s for s in signs if any(s in e for _, e in outputs)]
        if blocked:
            pytest.skip(f"no local gRPC cluster in this environment ({blocked[0]!r}):\n{report}")
        pytest.fail(f"MultiWorkerMirroredStrategy workers failed (timeout {timeout} s):\n{report}")
    return results


@pytest.mark.parametrize(
    "name,kw",
    [("VBPR", {}), ("AMR", {"eps": 0.5, "adv_weight": 1.0})],
    ids=["VBPR", "AMR"],
)
def test_multi_worker_two_workers_equal_one_device(name, kw):
    w0, w1 = run_two_workers(name, **kw)
    assert (w0["task"], w1["task"]) == (0, 1)
    assert w0["replicas"] == w1["replicas"] == 2
    assert w0["var_type"] == "MirroredVariable" and w0["single_var_type"] != "MirroredVariable"
    # The feature table is each worker's own (read from its file), not a distributed variable whose
    # initial value the chief broadcasts: over 2 GB that broadcast fails (gRPC's message limit).
    assert w0["features_type"] == w1["features_type"] == "ResourceVariable"
    assert w0["shared_users"] > 0 and w0["shared_items"] > 0
    for n, single in w0["single"].items():
        got0, got1 = np.asarray(w0["weights"][n]), np.asarray(w1["weights"][n])
        assert np.array_equal(got0, got1), (n, float(np.abs(got0 - got1).max()))  # the workers agree
        change = float(np.abs(np.asarray(single) - np.asarray(w0["initial"][n])).max())
        assert change > 1e-3, n  # training moved the weights
        diff = float(np.abs(got0 - np.asarray(single)).max())
        assert diff <= 1e-5 * max(1.0, change), (n, diff)
    # The logged losses are the whole global batch's, on both workers.
    for key in ("loss", "bpr_loss") + (("adv_loss",) if name == "AMR" else ()):
        one = w0["single_history"][key]
        for worker in (w0, w1):
            got = worker["history"][key]
            assert len(got) == len(one) == 3
            for a, b in zip(one, got):
                assert abs(a - b) <= 1e-5 * abs(a), (key, one, got)
