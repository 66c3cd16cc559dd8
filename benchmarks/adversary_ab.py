"""Interleaved A/B of AMR's adversary paths: ``python -m benchmarks.adversary_ab [--rounds N] [--quick]``.

Epoch times (``amr_tf.training.fit``, steady state) of VBPR, of AMR with the projected fast
path (the default) and of AMR with the tape-derived reference adversary, interleaved in rounds in
one process (see :mod:`.timing`) on the original release's shape and on the embedded dataset. Run
it with ``nice`` on a shared machine and read the paired ratios and the CPU times (they cancel
load that drifts between rounds better than wall medians do).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from amr_tf.training import build_model  # noqa: E402
from benchmarks.suite import datasets, keras_epoch_runner  # noqa: E402
from benchmarks.timing import Timings, interleaved  # noqa: E402

VARIANTS = {  # name -> (model, keyword arguments)
    "VBPR": ("VBPR", {}),
    "AMR (projected, default)": ("AMR", {}),
    "AMR tape (reference)": ("AMR", {"adversary": "tape"}),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="the tiny benchmark shape")
    args = parser.parse_args(argv)
    for label, ds, batch in datasets(args.quick):
        runners = {}
        for name, (kind, kw) in VARIANTS.items():
            runners[name] = keras_epoch_runner(build_model(kind, ds, seed=0, **kw), ds, batch)
            runners[name]()  # tracing, pipeline start
        wall, cpu = Timings(), Timings()
        interleaved(runners, args.rounds, wall, cpu)
        print(f"\n{label} (batch {batch}, {args.rounds} rounds)")
        base = "AMR (projected, default)"
        for name in runners:
            lo, hi = wall.spread(name)
            print(f"  {name:26s} median {wall.median(name) * 1e3:8.1f} ms  (min {lo * 1e3:.1f}, max {hi * 1e3:.1f}; "
                  f"CPU {cpu.median(name) * 1e3:.1f} ms)  / {base}: {wall.paired_ratio(name, base):.3f} paired")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
