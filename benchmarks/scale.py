"""``python -m benchmarks.scale``: how load, training and evaluation grow with the catalogue (issue 17).

For each size a synthetic catalogue with a planted visual signal is written to disk in the
original directory format (``pos.txt``, ``neg.txt``, float16 ``f_resnet.npy``), then measured in a
fresh process (so that each size's peak memory is its own): load time, one sampler epoch, VBPR
and AMR training steps, sampled evaluation (all users) and full-ranking evaluation (a user
sample), and the process's peak resident set. A step's time is that of ``--steps`` steps after a
warm-up, the sampler's epoch excluded (a fit of 2N steps minus a fit of N: each fit first samples
a whole epoch; medians of 3); the epoch time is the sampler's epoch plus that per-step time times the steps of an
epoch (measured as a whole when ``--steps`` covers the epoch). Prints a table; ``--json`` and
``--markdown`` write it, ``--plot`` draws the log-log figure.

The planted signal: items have an 8-d taste ``z_i``, and their 2,048-d "CNN" features are
``relu(z_i W) + noise``; a user with taste ``t_u`` picks training and test items among random
candidates by ``t_u . z_i`` plus Gumbel noise, so the features predict what users choose.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.memory import rss_now, rss_peak

MiB = 1 << 20
#: items -> (users, training pairs): users and pairs grow with the catalogue (25 pairs per user).
SIZES = {
    "10k": (10_000, 2_000, 50_000),
    "100k": (100_000, 20_000, 500_000),
    "300k": (300_000, 60_000, 1_500_000),
    "1M": (1_000_000, 200_000, 5_000_000),
}
QUICK_SIZES = {"2k": (2_000, 300, 6_000), "6k": (6_000, 900, 18_000)}
LATENT = 8


# ---------------------------------------------------------------------------- generating


def write_catalogue(root: Path, num_items: int, num_users: int, num_pairs: int, dim: int, negatives: int = 100,
                    seed: int = 0, chunk: int = 16_384) -> dict:
    """Write a synthetic catalogue with a planted visual signal (see the module docstring) to ``root``."""
    from amr_tf.data.dataset import write_split

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    z = rng.normal(size=(num_items, LATENT)).astype(np.float32)
    w = (rng.normal(size=(LATENT, dim)) / np.sqrt(LATENT)).astype(np.float32)
    out = np.lib.format.open_memmap(root / "f_resnet.npy", mode="w+", dtype=np.float16, shape=(num_items, dim))
    # One block of noise, shifted differently for each chunk (drawing 2e9 fresh numbers would dominate).
    noise = 0.05 * rng.random((chunk, dim), dtype=np.float32)
    for k, s in enumerate(range(0, num_items, chunk)):
        e = min(s + chunk, num_items)
        block = np.maximum(z[s:e] @ w, 0.0)
        block += np.roll(noise, 7 * k, axis=1)[: e - s]
        out[s:e] = block
    out.flush()
    del out
    # Users: 25 (or num_pairs / num_users) training items and one test item, each chosen among 8x
    # as many random candidates by taste + Gumbel noise; 100 random negatives for the test row.
    per_user = num_pairs // num_users
    n_pick = per_user + 1
    taste = rng.normal(size=(num_users, LATENT)).astype(np.float32)
    pairs = np.empty((num_users * per_user, 2), np.int64)
    cands = np.empty((num_users, 1 + negatives), np.int64)
    for s in range(0, num_users, 4096):
        e = min(s + 4096, num_users)
        pool = rng.integers(0, num_items, (e - s, 8 * n_pick))
        logits = np.einsum("uk,unk->un", taste[s:e], z[pool]) + rng.gumbel(size=pool.shape)
        order = np.argsort(-logits, axis=1)
        chosen = np.take_along_axis(pool, order, axis=1)
        # unique picks per user: drop repeats of the pool (rare) by taking the first n_pick distinct
        for r in range(e - s):
            _, first = np.unique(chosen[r], return_index=True)
            picks = chosen[r][np.sort(first)][:n_pick]
            u = s + r
            pairs[u * per_user:(u + 1) * per_user, 0] = u
            pairs[u * per_user:(u + 1) * per_user, 1] = picks[:per_user]
            cands[u, 0] = picks[per_user]
        cands[s:e, 1:] = rng.integers(0, num_items, (e - s, negatives))
    write_split(root, pairs, cands)
    return {"generate_s": time.perf_counter() - t0, "feature_file_mib": (root / "f_resnet.npy").stat().st_size / MiB}


# ---------------------------------------------------------------------------- measuring (child process)


def _call_clock():
    """A Keras callback whose ``stamps`` are the wall and process CPU times at the end of every call
    of the train function (with ``steps_per_execution`` > 1, Keras reports batches once per call)."""
    import keras  # here: the driver process never imports TensorFlow

    class CallClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.stamps = []

        def on_train_batch_end(self, batch, logs=None):
            self.stamps.append((time.perf_counter(), time.process_time()))

    return CallClock()


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def _progress(res: dict) -> None:
    """What is measured so far, on stderr (the driver's log), so that an interrupted size still shows it."""
    print("progress " + json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()}),
          file=sys.stderr, flush=True)


def measure(root: Path, steps: int, warmup: int, batch_size: int, eval_users: int, models=("VBPR", "AMR"),
            evaluate: bool = True) -> dict:
    """Load ``root`` and time training (and evaluation, with the last model); the JSON-able result.

    Run in a fresh process per model (the driver does): Keras and ``tf.function`` caches keep a
    trained model's variables alive after ``del``, so a second model in the same process would
    count both models' feature tables in the peak."""
    import tensorflow as tf

    from amr_tf.data import TripletSampler, load_amr_dir, triplet_dataset
    from amr_tf.evaluation import rank_test_items
    from amr_tf.training import _several_steps_per_call, build_model

    res = {"device": _device_name(tf), "rss_start_mib": rss_now(),
           "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default")}
    res["load_s"], ds = _timed(load_amr_dir, root, validation="none")
    res.update(items=ds.num_items, users=ds.num_users, pairs=len(ds.train_pairs), dim=ds.feature_dim,
               rss_after_load_mib=rss_now(), feature_file_mib=(root / "f_resnet.npy").stat().st_size / MiB)
    _progress(res)
    sampler = TripletSampler(ds, seed=0)
    res["sampler_epoch_s"], _ = _timed(sampler.sample_epoch, 0)
    steps_per_epoch = sampler.steps_per_epoch(batch_size)
    res["steps_per_epoch"] = steps_per_epoch
    # A part of an epoch is timed as the second half of one fit (see below), so at most half an epoch.
    measured = steps_per_epoch if steps >= steps_per_epoch else min(steps, max(1, steps_per_epoch // 2))
    res["steps_measured"] = measured
    model = None
    for name in models:
        del model
        gc.collect()
        model = build_model(name, ds, seed=0)
        res[f"{name}_resident_features"] = f"{model.features.dtype.name} {tuple(model.features.shape)}"
        stream = triplet_dataset(sampler, batch_size)  # endless; each fit starts at epoch 0
        with _several_steps_per_call(model, measured):
            if measured == steps_per_epoch:  # the whole epoch, its sampling included, as training runs it
                # The warm-up traces the step with the same shape of fit as the timed one (steps per call).
                model.fit(stream, steps_per_epoch=warmup or measured, epochs=1, verbose=0)
                cpu0 = time.process_time()
                seconds, _ = _timed(model.fit, stream, steps_per_epoch=measured, epochs=1, verbose=0)
                cpu = time.process_time() - cpu0
                res[f"{name}_epoch_s"] = seconds
                seconds -= res["sampler_epoch_s"]
                cpu -= res["sampler_epoch_s"]
            else:
                # Every fit starts a new iterator, which first samples a whole epoch (4 s at 1M
                # items): one fit of N steps would charge that to the steps. So one fit runs the
                # warm-up and the timed steps back to back, and a callback stamps the end of each
                # call of the train function; the first half (tracing, sampling) is the warm-up, the
                # steps after its last stamp are timed.
                clock = _call_clock()
                model.fit(stream, steps_per_epoch=2 * measured, epochs=1, verbose=0, callbacks=[clock])
                (w0, c0), (w1, c1) = clock.stamps[len(clock.stamps) // 2 - 1], clock.stamps[-1]
                seconds, cpu = w1 - w0, c1 - c0
                res[f"{name}_epoch_s"] = res["sampler_epoch_s"] + seconds / measured * steps_per_epoch
        res[f"{name}_step_ms"] = 1000 * seconds / measured
        # CPU time of this process (all its threads): less sensitive than wall time to other jobs.
        res[f"{name}_step_cpu_ms"] = 1000 * cpu / measured
        res[f"{name}_epoch_measured"] = measured == steps_per_epoch
        res[f"rss_after_{name}_mib"] = rss_now()
        res[f"peak_after_{name}_mib"] = rss_peak()  # building, the sampler's epochs and the timed steps
        _progress(res)
    if not evaluate:
        res["peak_rss_mib"] = rss_peak()
        return res
    res["sampled_eval_s"], ranks = _timed(rank_test_items, model, ds)
    res["sampled_HR@10"] = float(np.mean(ranks < 10))
    res["peak_after_sampled_eval_mib"] = rss_peak()
    n_eval = min(eval_users, ds.num_users)
    rows = np.random.default_rng(0).choice(len(ds.test_candidates), n_eval, replace=False)
    res["full_eval_users"] = n_eval
    res["full_eval_s"], franks = _timed(rank_test_items, model, ds, protocol="full", rows=rows)
    res["full_eval_all_users_s_est"] = res["full_eval_s"] / n_eval * len(ds.test_candidates)
    res["full_HR@10"] = float(np.mean(franks < 10))
    res["peak_rss_mib"] = rss_peak()
    return res


def _device_name(tf) -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"GPU: {details.get('device_name', gpus[0].name)}"
    return f"CPU ({os.cpu_count()} logical cores visible)"


# ---------------------------------------------------------------------------- report


COLUMNS = [("items", "items", "{:,}"), ("users", "users", "{:,}"), ("pairs", "pairs", "{:,}"),
           ("feature_file_mib", "f16 file MiB", "{:,.0f}"), ("load_s", "load s", "{:.1f}"),
           ("VBPR_step_ms", "VBPR ms/step", "{:.1f}"), ("AMR_step_ms", "AMR ms/step", "{:.1f}"),
           ("VBPR_epoch_s", "VBPR epoch s", "{:,.0f}"), ("AMR_epoch_s", "AMR epoch s", "{:,.0f}"),
           ("amr_vbpr", "AMR/VBPR", "{:.2f}"), ("sampled_eval_s", "sampled eval s", "{:.1f}"),
           ("full_eval_s", "full eval s (users)", "{:.1f}"), ("peak_rss_mib", "peak RSS MiB", "{:,.0f}"),
           ("rss_budget", "≤ file + 2 GiB", "{}")]


def table(results: list[dict]) -> str:
    lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in results:
        if "error" in r:
            lines.append(f"| {r.get('items', '?'):,} | " + f"failed: {r['error']} |")
            continue
        r = dict(r, amr_vbpr=r["AMR_step_ms"] / r["VBPR_step_ms"],
                 rss_budget="yes" if r["peak_rss_mib"] <= r["feature_file_mib"] + 2048 else "**no**")
        cells = []
        for key, _, fmt in COLUMNS:
            cell = fmt.format(r[key])
            if key == "full_eval_s":
                cell += f" ({r['full_eval_users']:,})"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if "error" not in r]
    items = [r["items"] for r in ok]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    series = [("VBPR_epoch_s", "VBPR epoch (s)"), ("AMR_epoch_s", "AMR epoch (s)"), ("load_s", "load (s)"),
              ("sampled_eval_s", "sampled eval, all users (s)"), ("full_eval_all_users_s_est", "full eval, all users, est. (s)")]
    for key, label in series:
        ax.plot(items, [r[key] for r in ok], "o-", label=label)
    ax.plot(items, [r["peak_rss_mib"] / 1024 for r in ok], "k--", label="peak RSS (GiB)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("catalogue size (items; users = items / 5, pairs = 25 x users)")
    ax.set_title("AMR-TF scaling (2,048-d float16 features)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- driver


def run_size(label, spec, args, workdir: Path, log) -> dict:
    items, users, pairs = spec
    root = workdir / f"scale-{label}"
    log(f"[{label}] writing {items:,} items x {args.dim} float16, {users:,} users, {pairs:,} pairs to {root}")
    gen = write_catalogue(root, items, users, pairs, args.dim, seed=args.seed)
    log(f"[{label}] written in {gen['generate_s']:.0f} s ({gen['feature_file_mib']:,.0f} MiB of features)")
    cmd = [sys.executable, "-m", "benchmarks.scale", "--measure", str(root), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--batch_size", str(args.batch_size), "--eval_users", str(args.eval_users)]
    t0 = time.perf_counter()
    res = {}
    env = dict(os.environ)
    if args.onednn == "off":  # TensorFlow reads it at import: the children get it in their environment
        env["TF_ENABLE_ONEDNN_OPTS"] = "0"
    # One process per model (see measure); AMR's, first, also evaluates. Progress goes to our stderr.
    for name, extra in (("AMR", []), ("VBPR", ["--no_eval"])):
        proc = subprocess.run(cmd + ["--models", name] + extra, stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1], env=env)
        if proc.returncode != 0:
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
            log(f"[{label}] {name} FAILED (exit {proc.returncode}); see the progress lines above")
            return {"items": items, "error": f"{name} process exit {proc.returncode}", **res,
                    "wall_s": time.perf_counter() - t0}
        one = json.loads(proc.stdout.strip().splitlines()[-1])
        peak = max(res.get("peak_rss_mib", 0), one["peak_rss_mib"])
        res.update({k: v for k, v in one.items() if k not in res or k.startswith(name)}, peak_rss_mib=peak)
        res[f"{name}_peak_rss_mib"] = one["peak_rss_mib"]
    wall = time.perf_counter() - t0
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    res.update(gen, label=label, wall_s=wall)
    log(f"[{label}] " + json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()}))
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated, of {', '.join(SIZES)} (default all)")
    p.add_argument("--quick", action="store_true", help="two tiny catalogues (a smoke test)")
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--steps", type=int, default=30, help="training steps timed per model (after --warmup)")
    p.add_argument("--warmup", type=int, default=0,
                   help="warm-up steps before a whole timed epoch (default: as many as --steps); a part of an "
                        "epoch is timed after as many warm-up steps as it times")
    p.add_argument("--batch_size", type=int, default=512)
    p.add_argument("--eval_users", type=int, default=2000, help="users ranked by the full-ranking protocol")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", default=None, help="where the catalogues are written (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the written catalogues")
    p.add_argument("--onednn", choices=("default", "off"), default="default",
                   help="off: TF_ENABLE_ONEDNN_OPTS=0 in the measuring processes. TensorFlow's oneDNN CPU "
                        "allocator keeps freed buffers for reuse (never returned): at 1M items that is about "
                        "400 MiB of peak resident memory (docs/performance.md, 'Scale')")
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None)
    p.add_argument("--plot", default=None)
    p.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # the child process's entry
    p.add_argument("--models", default="VBPR,AMR", help=argparse.SUPPRESS)
    p.add_argument("--no_eval", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        res = measure(Path(args.measure), args.steps, args.warmup, args.batch_size, args.eval_users,
                      models=tuple(args.models.split(",")), evaluate=not args.no_eval)
        print(json.dumps(res))
        return 0
    sizes = QUICK_SIZES if args.quick else {k: SIZES[k] for k in args.sizes.split(",")}
    if args.quick:
        args.dim = min(args.dim, 64)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    results = []
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    if args.keep:  # a directory that outlives the run (a TemporaryDirectory would remove it on exit)
        workdir = contextlib.nullcontext(tempfile.mkdtemp(prefix="amr-scale-", dir=args.dir))
        log(f"the catalogues are kept in {workdir.enter_result}")
    else:
        workdir = tempfile.TemporaryDirectory(prefix="amr-scale-", dir=args.dir)
    with workdir as tmp:
        for label, spec in sizes.items():
            results.append(run_size(label, spec, args, Path(tmp), log))
            if args.json:  # after every size: a long run's finished sizes survive an interruption
                Path(args.json).write_text(json.dumps(results, indent=1))
    text = table(results)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.plot:
        plot(results, Path(args.plot))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    import amr_tf  # noqa: F401 - quiets TensorFlow's start-up lines

    sys.exit(main())
