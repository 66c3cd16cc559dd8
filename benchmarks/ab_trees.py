"""Interleaved A/B of two checkouts: ``python -m benchmarks.ab_trees OTHER_CHECKOUT [--rounds N]``.

Each round runs one fresh process per checkout (in a shuffled order) that trains VBPR and AMR on
the original release's shape and on the embedded dataset and reports the median steady-state
epoch time of each; the table gives, per model and shape, the median over rounds of each side and
of the within-round ratio this/other (which cancels load that drifts between rounds). Meant for
"does this change slow the default path down?" on a shared machine: run it with ``nice``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, statistics, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from benchmarks.suite import datasets, keras_epoch_runner
from amr_tf.training import build_model
epochs = int(sys.argv[1])
out = {}
for label, ds, batch in datasets(False):
    for name in ("VBPR", "AMR"):
        run = keras_epoch_runner(build_model(name, ds, seed=0), ds, batch)
        run()  # tracing, pipeline start
        out[f"{name} / {label}"] = statistics.median(run()[0] for _ in range(epochs))
print("RESULT " + json.dumps(out))
"""


def measure(tree: Path, epochs: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(epochs)], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=1800)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{tree}: benchmark process failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("other", help="the other checkout (e.g. the main branch's)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs (x2 fits) per model per process")
    args = p.parse_args(argv)
    trees = {"this": ROOT, "other": Path(args.other).resolve()}
    samples = {"this": [], "other": []}
    rng = random.Random(0)
    for r in range(args.rounds):
        order = list(trees)
        rng.shuffle(order)
        for side in order:
            samples[side].append(measure(trees[side], args.epochs))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    print(f"\nthis = {trees['this']}, other = {trees['other']}; {args.rounds} rounds\n")
    print("| model / shape | this (median epoch) | other | this / other (median of per-round ratios) |")
    print("|---|---:|---:|---:|")
    for key in samples["this"][0]:
        a = [s[key] for s in samples["this"]]
        b = [s[key] for s in samples["other"]]
        ratio = statistics.median(x / y for x, y in zip(a, b))
        print(f"| {key} | {statistics.median(a) * 1e3:.1f} ms | {statistics.median(b) * 1e3:.1f} ms | {ratio:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
