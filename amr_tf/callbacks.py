"""Keras callbacks: periodic evaluation written to TensorBoard, best/last checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import tensorflow as tf

from amr_tf.checkpoints import save_checkpoint
from amr_tf.evaluation import DEFAULT_KS, evaluate, format_metrics


class EvaluationCallback(keras.callbacks.Callback):
    """Every ``every`` epochs: evaluate, log HR/NDCG and the losses to TensorBoard, checkpoint.

    Scalars go to ``logdir`` (``tf.summary``, step = epoch number); the losses are written every
    epoch, the metrics every ``every`` epochs and after the last epoch. With ``checkpoint_dir``,
    ``best`` (by ``monitor``, default NDCG@10) and ``last`` checkpoints are kept there. The metrics
    are also added to the epoch's ``logs`` so that History and other callbacks see them.
    """

    def __init__(self, dataset, every: int = 1, logdir=None, checkpoint_dir=None, ks=DEFAULT_KS,
                 monitor: str = "NDCG@10", protocol: str = "sampled", print_fn=print, manifest_extra=None):
        super().__init__()
        self.dataset, self.every, self.ks = dataset, max(1, int(every)), tuple(ks)
        self.monitor, self.protocol, self.print_fn = monitor, protocol, print_fn
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.writer = None if logdir is None else tf.summary.create_file_writer(str(logdir))
        self.manifest_extra = dict(manifest_extra or {})
        self.best = -math.inf
        self.best_epoch = None
        self.history: list[dict] = []

    def evaluate_now(self, epoch: int, logs=None) -> dict:
        metrics = evaluate(self.model, self.dataset, ks=self.ks, protocol=self.protocol)
        self.history.append({"epoch": epoch, **metrics})
        if self.writer is not None:
            with self.writer.as_default(step=epoch):
                for name, value in metrics.items():
                    tf.summary.scalar(name, value)
        if self.print_fn is not None:
            self.print_fn(f"epoch {epoch}: {format_metrics(metrics)}")
        if self.checkpoint_dir is not None:
            extra = {**self.manifest_extra, "epoch": epoch, "metrics": metrics}
            save_checkpoint(self.model, self.checkpoint_dir / "last", self.dataset, **extra)
            if metrics[self.monitor] > self.best:
                save_checkpoint(self.model, self.checkpoint_dir / "best", self.dataset, **extra)
        if metrics[self.monitor] > self.best:
            self.best, self.best_epoch = metrics[self.monitor], epoch
        if logs is not None:
            logs.update(metrics)
        return metrics

    def on_train_begin(self, logs=None):
        self._final_epoch = self.params.get("epochs") if self.params else None

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1  # epochs completed so far
        if self.writer is not None and logs:
            with self.writer.as_default(step=done):
                for name in ("loss", "bpr_loss", "adv_loss"):
                    if name in logs:
                        tf.summary.scalar(f"train/{name}", float(logs[name]))
        if done % self.every == 0 or done == self._final_epoch:
            self.evaluate_now(done, logs)

    def on_train_end(self, logs=None):
        if self.writer is not None:
            self.writer.flush()
