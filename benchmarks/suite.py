"""The benchmark suite behind ``python -m benchmarks`` (see ``--help`` and docs/performance.md).

Everything is measured in this one process against baselines measured alongside (interleaved
rounds, medians), so the ratios hold on a noisy, shared machine even when absolute times drift.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from amr_tf.data import TripletSampler, make_synthetic, resolve_dataset  # noqa: E402
from amr_tf.data.registry import PACKAGE_DATA, SYNTHETIC  # noqa: E402
from amr_tf.evaluation import rank_test_items  # noqa: E402
from amr_tf.training import build_model, fit  # noqa: E402
from benchmarks.plain_tf import OriginalAMR, PerUserEvaluator, PlainVBPR  # noqa: E402
from benchmarks.timing import Timings, interleaved, matmul_rate, stopwatch, timed  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# Targets of issue 5 (ratios measured in the same run).
TARGET_AMR_OVER_VBPR = 1.15
TARGET_ORIGINAL_OVER_AMR = 2.5
TARGET_VBPR_OVER_PLAIN = 1.2
TARGET_EVAL_SPEEDUP = 100.0

MOVIELENS_STANDIN = dict(num_users=943, num_items=1396, feature_dim=1280, num_pairs=52986, num_negatives=500)
QUICK_SHAPE = dict(num_users=200, num_items=400, feature_dim=64, num_pairs=2000, num_negatives=50)

VARIANTS = {  # amr_tf models trained through amr_tf.training.fit: name -> (model, keyword arguments)
    "VBPR": ("VBPR", {}),
    "AMR": ("AMR", {}),
    "AMR adversary=tape": ("AMR", {"adversary": "tape"}),
}
ORIGINAL = "AMR, original graph (plain TF)"
PLAIN = "plain-TF VBPR"
PLAIN_PROJ = "plain-TF VBPR, amr_tf's E gradient"
RATIOS = {  # label -> (numerator, denominator)
    "AMR / VBPR": ("AMR", "VBPR"),
    "original AMR graph / AMR": (ORIGINAL, "AMR"),
    "AMR adversary=tape / AMR": ("AMR adversary=tape", "AMR"),
    "VBPR / plain-TF VBPR": ("VBPR", PLAIN),
    "VBPR / plain-TF VBPR with amr_tf's E gradient": ("VBPR", PLAIN_PROJ),
}


# ---------------------------------------------------------------------------- data


def datasets(quick: bool) -> list[tuple[str, object, int]]:
    """(label, dataset, batch size) of the shapes to benchmark."""
    if quick:
        return [("tiny (quick)", make_synthetic(seed=0, name="tiny", **QUICK_SHAPE), 128)]
    original = make_synthetic(seed=0, name="synthetic-original", **SYNTHETIC["synthetic-original"])
    out = [("original (Pinterest shape)", original, 512)]
    if (PACKAGE_DATA / "movielens_posters" / "pos.txt").exists():
        out.append(("embedded movielens-posters", resolve_dataset("movielens-posters"), 512))
    else:
        out.append(("MovieLens-shaped stand-in", make_synthetic(seed=0, name="movielens-standin",
                                                                **MOVIELENS_STANDIN), 512))
    return out


def describe(ds) -> str:
    return (f"{ds.num_users:,} users, {ds.num_items:,} items, {ds.feature_dim:,}-d, "
            f"{len(ds.train_pairs):,} pairs, {ds.test_candidates.shape[1]:,} candidates/user")


def batch_unique_counts(ds, batch_size: int, epochs=(0, 1)) -> np.ndarray:
    """Distinct items per batch (positives and negatives), over a few sampled epochs."""
    sampler = TripletSampler(ds, seed=0)
    counts = [len(np.unique(np.concatenate([i, j]))) for e in epochs for _, i, j in sampler.batches(e, batch_size)]
    return np.array(counts)


# ---------------------------------------------------------------------------- training


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = (time.perf_counter(), time.process_time())

    def on_epoch_end(self, epoch, logs=None):
        self.times.append((time.perf_counter() - self._start[0], time.process_time() - self._start[1]))


def keras_epoch_runner(model, ds, batch_size):
    """A callable that trains two more epochs through ``amr_tf.training.fit`` and returns the second's time.

    The first epoch of each call starts the input pipeline; the second is the steady state of a
    long run (triplets of the next epoch sampled and prefetched while this one trains).
    """
    state = {"epoch": 0}

    def run():
        timer, e = EpochTimer(), state["epoch"]
        fit(model, ds, epochs=e + 2, initial_epoch=e, batch_size=batch_size, callbacks=[timer], verbose=0)
        state["epoch"] = e + 2
        return timer.times[-1]

    return run


def plain_epoch_runner(plain, ds, batch_size):
    """A callable that trains one epoch of a plain-TF baseline (sampling included) and returns its time."""
    sampler = TripletSampler(ds, seed=0)
    state = {"epoch": 0}

    def run():
        out = timed(plain.train_epoch, *sampler.sample_epoch(state["epoch"]), batch_size)
        state["epoch"] += 1
        return out

    return run


def bench_training(label, ds, batch_size, rounds, peak_gflops, log):
    """Epoch times of amr_tf's VBPR and AMR and of the baselines, interleaved in rounds."""
    log(f"[train] {label}: building models and warming up (tracing)")
    models, runners, warmup = {}, {}, {}
    for name, (kind, kw) in VARIANTS.items():
        models[name] = build_model(kind, ds, seed=0, **kw)
        runners[name] = keras_epoch_runner(models[name], ds, batch_size)
    vbpr, amr = models["VBPR"], models["AMR"]
    weights = (vbpr.P.numpy(), vbpr.Q.numpy(), vbpr.E.numpy(), ds.features)
    common = dict(regs=vbpr.regs, learning_rates=vbpr.learning_rates)
    original = OriginalAMR(*weights, eps=amr.eps, adv_weight=amr.adv_weight, **common)
    runners[ORIGINAL] = plain_epoch_runner(original, ds, batch_size)
    runners[PLAIN] = plain_epoch_runner(PlainVBPR(*weights, **common), ds, batch_size)
    runners[PLAIN_PROJ] = plain_epoch_runner(PlainVBPR(*weights, projection_gradient=True, **common), ds, batch_size)
    for name, run in runners.items():
        warmup[name] = stopwatch(run)
    log(f"[train] {label}: {rounds} interleaved rounds")
    cpu = Timings()
    timings = interleaved(runners, rounds, Timings(), cpu)

    uniq = batch_unique_counts(ds, batch_size)
    steps = -(-len(ds.train_pairs) // batch_size)
    k, f, n = vbpr.embed_dim, ds.feature_dim, float(np.mean(uniq))
    # The unavoidable products per step: c_u E forward and the E gradient c_u^T dV (n x F x K each).
    flops_epoch = 4.0 * n * f * k * steps
    # AMR's adversary adds E0^T E and its gradient (F x K x K each), G (E0^T E) and its gradient
    # (n x K x K each): a floor for AMR / VBPR when the products dominate.
    adversary_fraction = (2 * f * k * k + 2 * n * k * k) / (2 * n * f * k)
    rows = {}
    for name in runners:
        med = timings.median(name)
        lo, hi = timings.spread(name)
        rows[name] = {
            "epoch_s": med, "min_s": lo, "max_s": hi, "warmup_s": warmup[name], "cpu_s": cpu.median(name),
            "triplets_per_s": len(ds.train_pairs) / med,
            "gflops": flops_epoch / med / 1e9,
            "fraction_of_peak": flops_epoch / med / 1e9 / peak_gflops,
        }
    ratios = {label: timings.ratio(a, b) for label, (a, b) in RATIOS.items()}
    paired = {label: timings.paired_ratio(a, b) for label, (a, b) in RATIOS.items()}
    cpu_ratios = {label: cpu.ratio(a, b) for label, (a, b) in RATIOS.items()}
    return {"label": label, "shape": describe(ds), "batch": batch_size, "steps_per_epoch": steps,
            "mean_unique_items_per_batch": n, "unavoidable_gflop_per_epoch": flops_epoch / 1e9,
            "adversary_product_fraction": adversary_fraction,
            "rounds": rounds, "variants": rows, "ratios": ratios, "paired_ratios": paired, "cpu_ratios": cpu_ratios, "models": models}


# ---------------------------------------------------------------------------- where the time goes


def bench_breakdown(label, ds, batch_size, rounds, log):
    """AMR and VBPR epochs split into: products alone, forward, backward, optimiser, fit + pipeline."""
    log(f"[profile] {label}")
    sampler = TripletSampler(ds, seed=0)
    batches = [tuple(tf.constant(a) for a in b) for b in sampler.batches(0, batch_size)]
    variants = {}
    for name in ("VBPR", "AMR"):
        model = build_model(name, ds, seed=0)
        fwd = tf.function(lambda u, i, j, m=model: m.pairwise_losses(u, i, j)["loss"])

        def grads(u, i, j, m=model):
            with tf.GradientTape() as tape:
                loss = m.pairwise_losses(u, i, j)["loss"]
            return tape.gradient(loss, m.parameter_groups())

        fwd_bwd = tf.function(grads)
        step = tf.function(model.train_step)
        variants[f"{name}: forward"] = lambda f=fwd: [f(*b) for b in batches]
        variants[f"{name}: forward+backward"] = lambda f=fwd_bwd: [f(*b) for b in batches]
        variants[f"{name}: train_step (+ optimisers)"] = lambda f=step: [f((b,)) for b in batches]
        variants[f"{name}: fit epoch (+ Keras loop, tf.data)"] = keras_epoch_runner(model, ds, batch_size)
    features = tf.constant(ds.features)
    e = tf.constant(np.random.default_rng(0).normal(size=(ds.feature_dim, 64)).astype(np.float32))
    uniques = [tf.unique(tf.concat([i, j], 0))[0] for _, i, j in batches]
    dvs = [tf.ones((int(tf.size(q)), 64)) for q in uniques]

    @tf.function
    def products(q, dv):
        c = tf.gather(features, q)
        return tf.reduce_sum(tf.matmul(c, e)) + tf.reduce_sum(tf.matmul(c, dv, transpose_a=True))

    @tf.function
    def adversary_products(g, w):
        # AMR's extra products per step: E0^T E (F x K x K), G (E0^T E) and (S G)^T W (n x K x K),
        # and the E gradient E0 (S G)^T W (F x K x K). The rest of AMR's overhead is elementwise work.
        gram = tf.matmul(e, e, transpose_a=True)
        return tf.reduce_sum(tf.matmul(g, gram)) + tf.reduce_sum(tf.matmul(e, tf.matmul(g, w, transpose_a=True)))

    variants["the two n x F x K products alone"] = lambda: [products(q, dv) for q, dv in zip(uniques, dvs)]
    variants["AMR's four adversary products alone"] = lambda: [adversary_products(dv, dv) for dv in dvs]
    runners = {}
    for name, fn in variants.items():
        if name.endswith("(+ Keras loop, tf.data)"):
            runners[name] = fn
        else:
            runners[name] = lambda fn=fn: stopwatch(lambda: [t.numpy() for t in tf.nest.flatten(fn())
                                                             if hasattr(t, "numpy")])
        runners[name]()  # warm-up / trace
    timings = interleaved(runners, rounds, Timings())
    return {"label": label, "rows": {n: timings.median(n) for n in runners}}


# ---------------------------------------------------------------------------- XLA


def bench_xla(label, ds, batch_size, rounds, log):
    """``model.compile(jit_compile=True)`` against the default (``tf.function`` without XLA)."""
    runners, first = {}, {}
    for name in ("VBPR", "AMR"):
        for jit in (False, True):
            model = build_model(name, ds, seed=0, compile=False)
            model.compile(jit_compile=jit)
            key = f"{name} jit_compile={jit}"
            runners[key] = keras_epoch_runner(model, ds, batch_size)
            log(f"[xla] {label}: first call of {key} (includes tracing{' and XLA compilation' if jit else ''})")
            first[key] = stopwatch(runners[key])
    timings = interleaved(runners, rounds, Timings())
    return {"label": label, "first_call_s": first, "epoch_s": {k: timings.median(k) for k in runners},
            "ratios": {f"{n} XLA / no XLA": timings.ratio(f"{n} jit_compile=True", f"{n} jit_compile=False")
                       for n in ("VBPR", "AMR")}}


# ---------------------------------------------------------------------------- evaluation


def bench_evaluation(label, ds, model, rounds, per_user_sample, log):
    """One vectorised pass over all users against the original's loop (one model call per user).

    Each round times one vectorised pass and the per-user loop on a slice of the sampled users,
    so both see the same load; the loop's time is extrapolated to all users.
    """
    gc.collect()  # drop the training runs' input pipelines before timing
    log(f"[eval] {label}: {rounds} rounds of a vectorised pass and {per_user_sample} users of the per-user loop")
    ranks = rank_test_items(model, ds)  # warm-up
    rank_test_items(model, ds, protocol="full")
    loop = PerUserEvaluator(model, ds)
    loop.rank(0)  # trace
    users = np.random.default_rng(0).choice(ds.num_users, size=min(per_user_sample, ds.num_users), replace=False)
    slices = np.array_split(users, rounds)
    sampled, full, per_user, loop_ranks = [], [], [], []
    for part in slices:
        sampled.append(stopwatch(rank_test_items, model, ds))
        full.append(stopwatch(rank_test_items, model, ds, protocol="full"))
        start = time.perf_counter()
        loop_ranks.append(loop.ranks(part))
        per_user.append((time.perf_counter() - start) / max(len(part), 1))
    vec, each = float(np.median(sampled)), float(np.median(per_user))
    return {
        "label": label, "users": ds.num_users, "candidates": ds.test_candidates.shape[1], "rounds": rounds,
        "vectorised_s": vec, "vectorised_min_s": float(np.min(sampled)), "full_ranking_s": float(np.median(full)),
        "per_user_users_timed": len(users), "per_user_s_each": each,
        "per_user_extrapolated_s": each * ds.num_users, "speedup": each * ds.num_users / vec,
        "paired_speedup": float(np.median([u * ds.num_users / v for u, v in zip(per_user, sampled)])),
        "ranks_agree": float(np.mean(np.concatenate(loop_ranks) == ranks[np.concatenate(slices)])),
    }


# ---------------------------------------------------------------------------- memory


def bench_memory(configs, log):
    out = []
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="3")
    for label, cfg in configs:
        log(f"[memory] {label} (fresh process)")
        cmd = [sys.executable, "-m", "benchmarks.memory"] + [f"--{k}={v}" for k, v in cfg.items()]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("MEMORY ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"memory benchmark failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        out.append({"label": label, **json.loads(lines[-1][len("MEMORY "):])})
    return out


# ---------------------------------------------------------------------------- report


def _fmt_s(x):
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


def _mark(ok):
    return "yes" if ok else "**no**"


def render(results) -> str:
    m = results["machine"]
    lines = [
        "# amr-tf benchmarks",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores; TensorFlow {m['tensorflow']}, Keras {m['keras']}, "
        f"Python {m['python']}; load average {m['load_start']} at start, {m['load_end']} at end.",
        f"Measured matmul rate (best burst, float32): {m['peak_gflops']:.1f} GFLOP/s for 1024x1024x1024; "
        + ", ".join(f"{v:.1f} GFLOP/s for {k}" for k, v in m["shape_gflops"].items()) + ".",
        f"Mode: {'quick (tiny shapes: a smoke test; the targets concern the full run)' if results['quick'] else 'full'}; "
        f"TensorFlow threads: intra-op {m['intra_op_threads'] or 'default'}, inter-op {m['inter_op_threads'] or 'default'}; "
        f"total {results['wall_s']:.0f} s.",
        "",
        "## Training epochs (median of interleaved rounds, after warm-up; one process)",
        "",
    ]
    for t in results["training"]:
        lines += [
            f"**{t['label']}** ({t['shape']}; batch {t['batch']}, {t['steps_per_epoch']} steps/epoch, "
            f"{t['mean_unique_items_per_batch']:.0f} distinct items per batch; {t['rounds']} rounds; "
            f"AMR's adversary adds products worth {100 * t['adversary_product_fraction']:.0f}% of VBPR's)",
            "",
            "| variant | epoch (median) | min - max | process CPU | first call | triplets/s | unavoidable GFLOP/s | of matmul peak |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in t["variants"].items():
            lines.append(f"| {name} | {_fmt_s(r['epoch_s'])} | {_fmt_s(r['min_s'])} - {_fmt_s(r['max_s'])} | "
                         f"{_fmt_s(r['cpu_s'])} | {_fmt_s(r['warmup_s'])} | {r['triplets_per_s']:,.0f} | {r['gflops']:.1f} | "
                         f"{100 * r['fraction_of_peak']:.0f}% |")
        lines.append("")
    lines += ["## Targets", "",
              "Epoch-time ratios: of the median wall times; in brackets the median of the per-round ratios and "
              "the ratio of the median process CPU times (less sensitive to other processes' load).", "",
              "| target | shape | measured | met |", "|---|---|---:|:---:|"]
    for t in results["training"]:
        r, q, c = t["ratios"], t["paired_ratios"], t["cpu_ratios"]
        for key, target, better in (("AMR / VBPR", TARGET_AMR_OVER_VBPR, "<="),
                                    ("original AMR graph / AMR", TARGET_ORIGINAL_OVER_AMR, ">="),
                                    ("VBPR / plain-TF VBPR", TARGET_VBPR_OVER_PLAIN, "<=")):
            ok = r[key] <= target if better == "<=" else r[key] >= target
            lines.append(f"| {key} {better} {target} | {t['label']} | {r[key]:.2f} ({q[key]:.2f}; CPU {c[key]:.2f}) | "
                         f"{_mark(ok)} |")
    e0 = results["evaluation"][0]
    lines.append(f"| per-user loop / vectorised evaluation >= {TARGET_EVAL_SPEEDUP:.0f} | {e0['label']} | "
                 f"{e0['speedup']:.0f} ({e0['paired_speedup']:.0f}) | {_mark(e0['speedup'] >= TARGET_EVAL_SPEEDUP)} |")
    lines += ["", "Other ratios (information):", ""]
    for t in results["training"]:
        for key in ("AMR adversary=tape / AMR", "VBPR / plain-TF VBPR with amr_tf's E gradient"):
            lines.append(f"- {t['label']}: {key} = {t['ratios'][key]:.2f} ({t['paired_ratios'][key]:.2f}; "
                         f"CPU {t['cpu_ratios'][key]:.2f})")
    lines += ["", "## Evaluation (all users, sampled protocol unless noted)", "",
              "| shape | vectorised pass (median, min) | full ranking (masking training items) | per-user loop, one call per user | speed-up (per-round) | ranks agree |",
              "|---|---:|---:|---:|---:|---:|"]
    for e in results["evaluation"]:
        lines.append(f"| {e['label']} ({e['users']:,} users x {e['candidates']:,} candidates) | "
                     f"{_fmt_s(e['vectorised_s'])}, {_fmt_s(e['vectorised_min_s'])} | {_fmt_s(e['full_ranking_s'])} | "
                     f"{_fmt_s(e['per_user_extrapolated_s'])} (timed {e['per_user_users_timed']} users, "
                     f"{1000 * e['per_user_s_each']:.2f} ms each, extrapolated) | {e['speedup']:.0f} x "
                     f"({e['paired_speedup']:.0f} x) | "
                     f"{100 * e['ranks_agree']:.1f}% |")
    if results.get("breakdown"):
        lines += ["", "## Where an epoch's time goes (same batches, medians)", ""]
        for b in results["breakdown"]:
            lines += [f"**{b['label']}**", "", "| part | per epoch |", "|---|---:|"]
            lines += [f"| {n} | {_fmt_s(v)} |" for n, v in b["rows"].items()]
            lines.append("")
    if results.get("xla"):
        x = results["xla"]
        lines += ["", f"## XLA (`model.compile(jit_compile=True)`), {x['label']}", "",
                  "| variant | first call (2 epochs, incl. compilation) | epoch (median) |", "|---|---:|---:|"]
        lines += [f"| {k} | {_fmt_s(x['first_call_s'][k])} | {_fmt_s(v)} |" for k, v in x["epoch_s"].items()]
        lines += [""] + [f"- {k}: {v:.2f} x" for k, v in x["ratios"].items()]
    if results.get("memory"):
        lines += ["", "## Memory (fresh process each; AMR, a few training steps then one evaluation)", "",
                  "| catalogue | features | RSS before data | + dataset | + model | peak RSS | peak - before data | train steps | evaluation |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in results["memory"]:
            lines.append(
                f"| {r['label']} | {r['features_mib']:.0f} MiB | {r['rss_start_mib']:.0f} MiB | "
                f"+{r['rss_dataset_mib'] - r['rss_start_mib']:.0f} MiB | +{r['rss_model_mib'] - r['rss_dataset_mib']:.0f} MiB | "
                f"{r['rss_peak_mib']:.0f} MiB | {r['rss_peak_mib'] - r['rss_start_mib']:.0f} MiB | "
                f"{r['steps']} x {r['batch']}: {_fmt_s(r['train_s'])} | {_fmt_s(r['eval_s'])} |")
        note = results["memory"][0].get("tf_note")
        if note:
            lines += ["", f"(TensorFlow's own allocator statistics: {note}; the resident set is reported.)"]
    return "\n".join(lines) + "\n"


def machine_info(quick: bool, log) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    log("[machine] matmul rate")
    seconds = 0.3 if quick else 1.5
    return {
        "cpu": cpu, "cores": os.cpu_count(), "tensorflow": tf.__version__, "keras": keras.__version__,
        "python": platform.python_version(), "load_start": _load(),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "peak_gflops": matmul_rate(1024, 1024, 1024, seconds),
    }


def _load() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def run(quick: bool = False, rounds: int | None = None, memory: bool = True, xla: bool = True,
        breakdown: bool = True, log=print) -> dict:
    start = time.perf_counter()
    rounds = rounds or (2 if quick else 7)
    results = {"quick": quick, "machine": machine_info(quick, log)}
    peak = results["machine"]["peak_gflops"]
    shapes = datasets(quick)
    results["machine"]["shape_gflops"] = {}
    results["training"], results["evaluation"], results["breakdown"] = [], [], []
    for label, ds, batch in shapes:
        n = int(np.mean(batch_unique_counts(ds, batch, epochs=(0,))))
        results["machine"]["shape_gflops"][f"{n}x{ds.feature_dim}x64"] = matmul_rate(
            n, ds.feature_dim, 64, 0.3 if quick else 1.0)
        t = bench_training(label, ds, batch, rounds, peak, log)
        amr = t.pop("models")["AMR"]
        results["training"].append(t)
        results["evaluation"].append(bench_evaluation(label, ds, amr, 3 if quick else 7,
                                                      24 if quick else 350, log))
        if breakdown:
            results["breakdown"].append(bench_breakdown(label, ds, batch, max(2, rounds // 2), log))
    if xla:
        label, ds, batch = shapes[0]
        results["xla"] = bench_xla(label, ds, batch, 2 if quick else 5, log)
    if memory:
        if quick:
            configs = [("quick: 2,000 items x 256-d", dict(items=2000, dim=256, users=200, pairs=2000,
                                                           candidates=100, batch=128, steps=3))]
        else:
            configs = [("original shape: 4,998 items x 2,048-d", dict(items=4998, dim=2048)),
                       ("100k items x 2,048-d", dict(items=100_000, dim=2048))]
        results["memory"] = bench_memory(configs, log)
    results["machine"]["load_end"] = _load()
    results["wall_s"] = time.perf_counter() - start
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmarks of amr-tf (training epochs, evaluation, XLA, memory), with ratios against "
                    "baselines measured in the same run. See docs/performance.md.")
    p.add_argument("--quick", action="store_true", help="tiny shapes, a couple of rounds (< 60 s): a smoke test")
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 7; quick 2)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurements (fresh processes)")
    p.add_argument("--no-xla", action="store_true", help="skip the XLA comparison")
    p.add_argument("--no-breakdown", action="store_true", help="skip the where-the-time-goes breakdown")
    p.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")
    p.add_argument("--markdown", type=Path, default=None, help="also write the report to this file")
    p.add_argument("--intra-op-threads", type=int, default=0, help="TensorFlow intra-op threads (0: default)")
    p.add_argument("--inter-op-threads", type=int, default=0, help="TensorFlow inter-op threads (0: default)")
    args = p.parse_args(argv)
    tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True))
    results = run(quick=args.quick, rounds=args.rounds, memory=not args.no_memory, xla=not args.no_xla,
                  breakdown=not args.no_breakdown, log=log)
    report = render(results)
    print(report)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))
    if args.markdown:
        args.markdown.write_text(report)
    return 0
