"""Peak memory of training and evaluation on one catalogue, measured in a fresh process.

Run by the suite as ``python -m benchmarks.memory --items N --dim F ...``; prints one JSON line.
``tracemalloc`` does not see TensorFlow's allocations and ``tf.config.experimental.get_memory_info``
has no allocator statistics for the CPU device, so host memory is the process's resident set:
its high-water mark (``VmHWM``) and its current size (``/proc/self/statm``) after each phase.
On a GPU the device's own peak (``get_memory_info('GPU:0')['peak']``) is reported as well.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np

MiB = 1 << 20


def rss_now() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MiB


def rss_peak() -> float:
    """High-water mark of this process image's resident set (``VmHWM``).

    Not ``ru_maxrss``: Linux carries that over ``fork`` + ``exec`` from the parent, so a worker
    started by a large benchmark process would report the parent's size.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / MiB  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MiB  # KiB on Linux


def random_dataset(num_users, num_items, feature_dim, num_pairs, num_candidates, seed=0):
    """A dataset of the given shape built straight in float32/int64 (no large temporaries)."""
    from amr_tf.data import AmrDataset

    rng = np.random.default_rng(seed)
    features = rng.random((num_items, feature_dim), dtype=np.float32)
    users = np.concatenate([np.arange(num_users), rng.integers(0, num_users, num_pairs - num_users)])
    pairs = np.stack([users, rng.integers(0, num_items, num_pairs)], axis=1).astype(np.int64)
    candidates = rng.integers(0, num_items, (num_users, num_candidates)).astype(np.int64)
    return AmrDataset(num_users=num_users, num_items=num_items, features=features, train_pairs=pairs,
                      test_candidates=candidates, name=f"random-{num_items}x{feature_dim}")


def measure(args) -> dict:
    import tensorflow as tf

    from amr_tf.data import TripletSampler, triplet_dataset
    from amr_tf.evaluation import rank_test_items
    from amr_tf.training import build_model

    tf.zeros(1).numpy()  # initialise the runtime before the baseline
    out = {"items": args.items, "dim": args.dim, "users": args.users, "pairs": args.pairs,
           "model": args.model, "batch": args.batch, "steps": args.steps}
    out["rss_start_mib"] = rss_now()
    ds = random_dataset(args.users, args.items, args.dim, args.pairs, args.candidates)
    out["features_mib"] = ds.features.nbytes / MiB
    out["rss_dataset_mib"] = rss_now()
    out["peak_dataset_mib"] = rss_peak()
    model = build_model(args.model, ds, seed=0)
    out["rss_model_mib"] = rss_now()
    out["peak_model_mib"] = rss_peak()
    sampler = TripletSampler(ds, seed=0, exclude_cold_start=False)
    start = time.perf_counter()
    model.fit(triplet_dataset(sampler, args.batch), epochs=1, steps_per_epoch=args.steps, verbose=0)
    out["train_s"] = time.perf_counter() - start
    out["rss_train_mib"] = rss_now()
    out["peak_train_mib"] = rss_peak()
    start = time.perf_counter()
    rank_test_items(model, ds)
    out["eval_s"] = time.perf_counter() - start
    out["rss_end_mib"] = rss_now()
    out["rss_peak_mib"] = rss_peak()
    try:
        device = "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"
        out["tf_peak_mib"] = tf.config.experimental.get_memory_info(device)["peak"] / MiB
        out["tf_device"] = device
    except (ValueError, RuntimeError) as exc:  # no allocator statistics on the CPU device
        out["tf_peak_mib"] = None
        out["tf_note"] = str(exc).split("\n")[0]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, required=True)
    p.add_argument("--dim", type=int, required=True)
    p.add_argument("--users", type=int, default=3226)
    p.add_argument("--pairs", type=int, default=6618)
    p.add_argument("--candidates", type=int, default=1000)
    p.add_argument("--model", default="AMR")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args(argv)
    print("MEMORY " + json.dumps(measure(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
