"""Timing helpers: interleaved rounds, medians, ratios measured in one process, matmul rate."""

from __future__ import annotations

import random
import statistics
import time

import numpy as np
import tensorflow as tf


class Timings:
    """Seconds per run of several variants, measured in interleaved rounds (same load for all)."""

    def __init__(self):
        self.samples: dict[str, list[float]] = {}

    def add(self, name: str, seconds: float) -> None:
        self.samples.setdefault(name, []).append(float(seconds))

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def spread(self, name: str) -> tuple[float, float]:
        return min(self.samples[name]), max(self.samples[name])

    def ratio(self, a: str, b: str) -> float:
        """``median(a) / median(b)``."""
        return self.median(a) / self.median(b)

    def paired_ratio(self, a: str, b: str) -> float:
        """Median over rounds of ``a / b`` within the round (cancels load that drifts between rounds)."""
        return statistics.median(x / y for x, y in zip(self.samples[a], self.samples[b]))


def interleaved(variants: dict, rounds: int, timings: Timings, cpu: Timings | None = None, seed: int = 0) -> Timings:
    """Run every variant once per round, in a shuffled order; each variant returns its own seconds.

    On a shared machine the load drifts; interleaving spreads it evenly over the variants, so the
    ratios of medians are fair even when the absolute times are noisy. A variant may return
    ``(wall, cpu)`` seconds; the process CPU time then goes to ``cpu``.
    """
    order = list(variants)
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            out = variants[name]()
            wall, used = out if isinstance(out, tuple) else (out, None)
            timings.add(name, wall)
            if cpu is not None and used is not None:
                cpu.add(name, used)
    return timings


def timed(fn, *args, **kwargs) -> tuple[float, float]:
    """``(wall, process CPU)`` seconds of one call."""
    wall, used = time.perf_counter(), time.process_time()
    fn(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - used


def stopwatch(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def matmul_rate(m: int, k: int, n: int, seconds: float = 1.0, transpose_a: bool = False) -> float:
    """Best GFLOP/s of a traced ``tf.matmul`` of (m x k) by (k x n) (best of several timed bursts)."""
    rng = np.random.default_rng(0)
    a = tf.constant(rng.random((k, m) if transpose_a else (m, k), dtype=np.float32))
    b = tf.constant(rng.random((k, n), dtype=np.float32))

    @tf.function
    def burst(reps):
        acc = tf.zeros((m, n))
        for _ in tf.range(reps):
            acc += tf.matmul(a, b, transpose_a=transpose_a)
        return acc

    flops = 2.0 * m * k * n
    reps = 1
    burst(tf.constant(1)).numpy()
    while True:  # calibrate a burst to ~50 ms
        t = stopwatch(lambda: burst(tf.constant(reps)).numpy())
        if t > 0.05 or reps > 1 << 16:
            break
        reps *= 2
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = stopwatch(lambda: burst(tf.constant(reps)).numpy())
        best = max(best, flops * reps / t / 1e9)
    return best
