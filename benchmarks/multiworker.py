"""``python -m benchmarks.multiworker``: two ``MultiWorkerMirroredStrategy`` workers on localhost, against one.

Writes a synthetic catalogue (:func:`benchmarks.scale.write_catalogue`), starts two worker
processes (``TF_CONFIG`` naming two localhost ports; one CPU replica each), and times ``--steps``
training steps of the global batch after a warm-up of as many. Worker 0 then trains the same
model for the same steps in one process, without a strategy, and reports how far the weights
are from the distributed ones; it also records what one step's gradients weigh: the
``IndexedSlices`` of ``P`` and ``Q`` (rows of the batch only) against the dense matrices they
would be if densified, and the dense ``E`` -- the bytes the workers' all-reduce / all-gather move.

Both workers run on the same machine (here two shared cores): the throughput shows the
strategy's overhead, not a speed-up; the communication volume is what carries over to a cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_ports(n):
    """``n`` localhost TCP ports free right now (for the workers' gRPC servers)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def gradient_volume(model, ds, batch_size: int, seed: int = 0) -> dict:
    """Bytes of one step's gradients per variable: as computed (``IndexedSlices`` or dense) and densified."""
    import tensorflow as tf

    from amr_tf.data import TripletSampler

    u, i, j = next(iter(TripletSampler(ds, seed=seed).batches(0, batch_size)))
    variables = model.parameter_groups()
    with tf.GradientTape() as tape:
        loss = model.pairwise_losses(tf.constant(u), tf.constant(i), tf.constant(j))["loss"]
    grads = tape.gradient(loss, variables)
    out = {}
    for name, g, v in zip(model.parameter_names, grads, variables):
        dense = int(v.shape[0]) * int(v.shape[1]) * 4
        if isinstance(g, tf.IndexedSlices):
            sent = int(g.values.shape[0]) * int(g.values.shape[1]) * 4 + int(g.indices.shape[0]) * g.indices.dtype.size
            out[name] = {"kind": "IndexedSlices", "rows": int(g.values.shape[0]), "bytes": sent, "dense_bytes": dense}
        else:
            out[name] = {"kind": "dense", "bytes": dense, "dense_bytes": dense}
    out["total_bytes"] = sum(v["bytes"] for v in out.values() if isinstance(v, dict))
    out["total_dense_bytes"] = sum(v["dense_bytes"] for v in out.values() if isinstance(v, dict))
    return out


def _patient_coordination(heartbeat_s: int) -> None:
    """Configure TensorFlow's coordination service as the strategy would, with a longer heartbeat timeout.

    On a starved machine (here: 2 shared cores, load average 20-40) a worker can miss the default
    heartbeat and the cluster aborts (``UNAVAILABLE: ... heartbeat timeout``). The strategy only
    configures the service when none is, so configuring it first changes just that timeout.
    Private TensorFlow API (2.21), used by this benchmark only.
    """
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.distribute.cluster_resolver import TFConfigClusterResolver
    from tensorflow.python.eager import context

    spec = TFConfigClusterResolver().cluster_spec()
    jobs = [coordination_config_pb2.CoordinatedJob(name=j, num_tasks=spec.num_tasks(j))
            for j in ("chief", "worker") if j in spec.jobs]
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=multi_worker_util.coordination_leader(spec),
        coordinated_jobs=jobs, heartbeat_timeout_in_ms=heartbeat_s * 1000)


def worker(root: Path, name: str, steps: int, batch_size: int, reference: bool, heartbeat_s: int = 0) -> dict:
    import tensorflow as tf

    if heartbeat_s:
        _patient_coordination(heartbeat_s)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # first: reads TF_CONFIG, starts the gRPC server

    import numpy as np

    from amr_tf.data import TripletSampler, load_amr_dir, triplet_dataset
    from amr_tf.training import _several_steps_per_call, build_model

    ds = load_amr_dir(root, validation="none")
    sampler = TripletSampler(ds, seed=0)

    def train(model):
        stream = triplet_dataset(sampler, batch_size)
        with _several_steps_per_call(model, steps):
            model.fit(stream, steps_per_epoch=steps, epochs=1, verbose=0)  # warm-up (traces)
            t0 = time.perf_counter()
            model.fit(stream, steps_per_epoch=steps, epochs=1, verbose=0)
            return time.perf_counter() - t0

    with strategy.scope():
        model = build_model(name, ds, seed=0)
    seconds = train(model)
    from benchmarks.memory import rss_peak

    out = {"task": strategy.cluster_resolver.task_id, "replicas": strategy.num_replicas_in_sync,
           "seconds": seconds, "steps": steps, "global_batch": batch_size, "peak_rss_mib": rss_peak(),
           "shape": {"items": ds.num_items, "users": ds.num_users, "pairs": len(ds.train_pairs), "dim": ds.feature_dim}}
    if reference:
        weights = model.weight_arrays()
        one = build_model(name, ds, seed=0)
        out["single_seconds"] = train(one)
        single = one.weight_arrays()
        out["max_abs_diff"] = {n: float(np.abs(weights[n] - single[n]).max()) for n in weights}
        out["max_abs_weight"] = {n: float(np.abs(single[n]).max()) for n in single}
        out["gradients"] = gradient_volume(one, ds, batch_size)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.multiworker", description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--pairs", type=int, default=500_000)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--model", default="AMR")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch_size", type=int, default=1024, help="the global batch (each worker takes half)")
    p.add_argument("--timeout", type=int, default=3000)
    p.add_argument("--heartbeat_s", type=int, default=0,
                   help="coordination-service heartbeat timeout (0: TensorFlow's default); raise it on a starved machine")
    p.add_argument("--catalogue", default=None,
                   help="an existing catalogue directory (e.g. benchmarks.scale's, kept with --keep) instead of "
                        "writing one; --items/--users/--pairs/--dim are then ignored (the report gives its own)")
    p.add_argument("--logs", default=None, help="a directory for the workers' stderr (worker0.log, worker1.log)")
    p.add_argument("--json", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        import faulthandler
        import signal

        faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>`: every thread's stack into the worker's log
        print("RESULT " + json.dumps(worker(Path(args.worker), args.model, args.steps, args.batch_size,
                                            args.reference, args.heartbeat_s)))
        return 0
    from benchmarks.scale import write_catalogue

    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="amr-mw-") as tmp:
        if args.catalogue:  # its shape comes back with the workers' results (they load it anyway)
            root = Path(args.catalogue)
            log(f"catalogue {root}")
        else:
            root = Path(tmp) / "catalogue"
            gen = write_catalogue(root, args.items, args.users, args.pairs, args.dim)
            log(f"catalogue: {args.items:,} items x {args.dim}, {args.users:,} users, {args.pairs:,} pairs "
                f"({gen['generate_s']:.0f} s)")
        ports = free_ports(2)
        cluster = {"worker": [f"localhost:{q}" for q in ports]}
        base = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "grpc_proxy")}
        procs, logs = [], []
        if args.logs:
            Path(args.logs).mkdir(parents=True, exist_ok=True)
        for index in range(2):
            env = dict(base, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
            cmd = [sys.executable, "-m", "benchmarks.multiworker", "--worker", str(root), "--model", args.model,
                   "--steps", str(args.steps), "--batch_size", str(args.batch_size),
                   "--heartbeat_s", str(args.heartbeat_s)]
            # Each worker's stderr goes to a file, not a pipe: the driver waits on one worker at a
            # time, and a long run's log is then readable while it runs.
            logs.append(open(Path(args.logs or tmp) / f"worker{index}.log", "w"))
            procs.append(subprocess.Popen(cmd + (["--reference"] if index == 0 else []), cwd=ROOT, env=env,
                                          stdout=subprocess.PIPE, stderr=logs[-1], text=True))
        t0 = time.perf_counter()
        outputs = []
        try:
            for proc in procs:
                out, _ = proc.communicate(timeout=max(1, args.timeout - (time.perf_counter() - t0)))
                outputs.append((out, None))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
            for log_file in logs:
                log_file.close()
        errors = [(Path(log_file.name).read_text(errors="replace")) for log_file in logs]
    results = []
    for proc, (out, _), err in zip(procs, outputs, errors):
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            log(f"worker failed (exit {proc.returncode}):\n{err[-3000:]}")
            return 1
        results.append(json.loads(lines[-1][len("RESULT "):]))
    w0, w1 = results
    triplets = args.steps * args.batch_size
    summary = {**w0["shape"], "model": args.model,
               "workers": 2, "replicas": w0["replicas"], "global_batch": args.batch_size, "steps": args.steps,
               "two_worker_s": max(w0["seconds"], w1["seconds"]), "single_s": w0["single_seconds"],
               "max_abs_diff": w0["max_abs_diff"], "max_abs_weight": w0["max_abs_weight"],
               "gradients": w0["gradients"],
               # each measured after its distributed training, before worker 0 builds the reference model
               "worker_peak_rss_mib": [w0["peak_rss_mib"], w1["peak_rss_mib"]]}
    summary["two_worker_triplets_per_s"] = triplets / summary["two_worker_s"]
    summary["per_worker_triplets_per_s"] = summary["two_worker_triplets_per_s"] / 2
    summary["single_triplets_per_s"] = triplets / summary["single_s"]
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    import amr_tf  # noqa: F401 - quiets TensorFlow's start-up lines

    sys.exit(main())
