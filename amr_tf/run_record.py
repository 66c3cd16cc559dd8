"""What a training run keeps of its evaluations, apart from when Keras calls back.

Three small parts, each usable alone (the CLI's and the reproduction scripts' runs combine them
through :class:`amr_tf.callbacks.EvaluationCallback`):

* :class:`EvaluationHistory` -- the evaluations so far and the best one by a monitored metric;
* :class:`ScalarLog` -- scalars written to TensorBoard event files (``tf.summary``);
* :class:`RunCheckpoints` -- the run's ``best`` / ``last`` checkpoints with their manifests.
"""

from __future__ import annotations

import math
from pathlib import Path


class EvaluationHistory:
    """The evaluations of a run, in order, and the best one by ``monitor`` (larger is better).

    ``records`` is a list of ``{"epoch": e, **metrics}``; ``best`` is ``-inf`` until an
    evaluation is added (or :meth:`restore` carries a resumed run's best over); ``wait`` counts
    the evaluations since the best one (what early stopping's patience is compared with).
    """

    def __init__(self, monitor: str = "NDCG@10"):
        self.monitor = monitor
        self.records: list[dict] = []
        self.best = -math.inf
        self.best_epoch = None
        self.wait = 0

    def add(self, epoch: int, metrics: dict) -> bool:
        """Record an evaluation; return whether it beats the best so far."""
        self.records.append({"epoch": epoch, **metrics})
        improved = metrics[self.monitor] > self.best
        if improved:
            self.best, self.best_epoch, self.wait = metrics[self.monitor], epoch, 0
        else:
            self.wait += 1
        return improved

    def restore(self, best_manifest: dict | None, previous=()) -> None:
        """Carry the best score over from a resumed run's ``best`` checkpoint manifest; ``previous``
        (the evaluations the resumed run recorded) gives the evaluations since that best one."""
        metrics = (best_manifest or {}).get("metrics") or {}
        if self.monitor in metrics:
            self.best, self.best_epoch = float(metrics[self.monitor]), best_manifest.get("epoch")
            if isinstance(self.best_epoch, int):
                self.wait = sum(1 for e in previous if isinstance(e, dict) and self.monitor in e
                                and isinstance(e.get("epoch"), int) and e["epoch"] > self.best_epoch)

    def record_at(self, epoch, previous=()) -> dict | None:
        """The evaluation recorded at ``epoch`` (this run's, else one of ``previous``), without its epoch."""
        for record in reversed(list(previous) + self.records):
            if isinstance(record, dict) and record.get("epoch") == epoch:
                return {k: v for k, v in record.items() if k != "epoch"}
        return None


class ScalarLog:
    """Scalars to TensorBoard event files in ``logdir`` (one ``tf.summary`` writer)."""

    def __init__(self, logdir):
        import tensorflow as tf

        self._tf = tf
        self.writer = tf.summary.create_file_writer(str(logdir))

    def write(self, step: int, scalars: dict, prefix: str = "") -> None:
        with self.writer.as_default(step=step):
            for name, value in scalars.items():
                self._tf.summary.scalar(f"{prefix}{name}", float(value))

    def flush(self) -> None:
        self.writer.flush()


class RunCheckpoints:
    """A run's named checkpoints (``best``, ``last``) in ``directory``, each with its manifest.

    Every manifest records ``manifest_extra`` (e.g. the command and its arguments), the epoch
    and whatever the caller adds (the metrics of an evaluation).
    """

    def __init__(self, directory, dataset, manifest_extra=None):
        self.directory, self.dataset = Path(directory), dataset
        self.manifest_extra = dict(manifest_extra or {})

    def save(self, name: str, model, epoch: int, **extra) -> Path:
        from amr_tf.checkpoints import save_checkpoint

        return save_checkpoint(model, self.directory / name, self.dataset,
                               **{**self.manifest_extra, "epoch": epoch, **extra})
