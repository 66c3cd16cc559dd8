"""Keras callbacks: periodic evaluation written to TensorBoard, best/last checkpoints, a NaN guard."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from amr_tf.checkpoints import non_finite_weights, save_checkpoint
from amr_tf.errors import TrainingDivergedError
from amr_tf.evaluation import DEFAULT_KS, evaluate, format_metrics

LOSS_NAMES = ("loss", "bpr_loss", "adv_loss")


class NonFiniteGuard(keras.callbacks.Callback):
    """Stop training with ``TrainingDivergedError`` when an epoch went wrong.

    Checked at the end of every epoch: the epoch's mean loss (non-finite if any batch's was), the
    weights, and the optimisers' state (the Adagrad accumulators: with absurd penalties they become
    infinite while the weights merely stop moving), and whether any weight changed at all (an epoch
    that changes nothing is a silent no-op, e.g. ``--regs '[1e30,1e30,1e30]'``). ``training.fit``
    puts it first among the callbacks, so the error is raised before any other callback of that
    epoch runs: nothing is evaluated or checkpointed from that epoch.
    """

    def __init__(self):
        super().__init__()
        self._before = None

    def _weights(self) -> dict:
        return {name: getattr(self.model, name).numpy() for name in getattr(self.model, "parameter_names", ())}

    def on_epoch_begin(self, epoch, logs=None):
        self._before = self._weights()

    def _bad_optimizer_state(self) -> list[str]:
        """Names of the matrices whose optimiser holds a NaN/Inf variable (an Adagrad accumulator)."""
        names = getattr(self.model, "parameter_names", ())
        optimizers = getattr(self.model, "optimizers_by_param", None) or []
        return [names[k] if k < len(names) else str(k) for k, opt in enumerate(optimizers)
                if any("float" in str(v.dtype) and not np.isfinite(np.asarray(v.numpy())).all() for v in opt.variables)]

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        bad_losses = {k: float(logs[k]) for k in LOSS_NAMES if k in logs and not math.isfinite(float(logs[k]))}
        bad_weights, bad_state = non_finite_weights(self.model), self._bad_optimizer_state()
        if bad_losses or bad_weights or bad_state:
            what = ", ".join(f"{k} = {v}" for k, v in bad_losses.items()) or "the loss was finite"
            weights = f"; {', '.join(bad_weights)} hold NaN/Inf" if bad_weights else ""
            if bad_state:
                weights += f"; the optimiser state (Adagrad accumulators) of {', '.join(bad_state)} holds NaN/Inf"
            raise TrainingDivergedError(
                f"training diverged in epoch {epoch + 1}: {what}{weights}. Stopped without saving that "
                "epoch; lower the learning rates (--lr) or the penalties (--regs), or check the features for "
                "extreme values"
            )
        before, self._before = self._before, None
        if before and all(np.array_equal(before[name], value) for name, value in self._weights().items()):
            raise TrainingDivergedError(
                f"training stalled in epoch {epoch + 1}: no weight ({', '.join(before)}) changed in the whole "
                "epoch. Stopped without saving that epoch; check the learning rates (--lr) and penalties (--regs)"
            )


class EvaluationCallback(keras.callbacks.Callback):
    """Every ``every`` epochs: evaluate, log HR/NDCG and the losses to TensorBoard, checkpoint.

    Scalars go to ``logdir`` (``tf.summary``, step = epoch number); the losses are written every
    epoch, the metrics every ``every`` epochs and after the last epoch. With ``checkpoint_dir``,
    ``best`` (by ``monitor``, default NDCG@10) and ``last`` checkpoints are kept there; with
    ``save_every``, ``last`` is also written every ``save_every`` epochs between evaluations (a
    cheap checkpoint to resume from; its manifest has ``epoch`` but no ``metrics``). The metrics
    are also added to the epoch's ``logs`` so that History and other callbacks see them.
    """

    def __init__(self, dataset, every: int = 1, logdir=None, checkpoint_dir=None, ks=DEFAULT_KS,
                 monitor: str = "NDCG@10", protocol: str = "sampled", print_fn=print, manifest_extra=None,
                 save_every: int | None = None):
        super().__init__()
        self.dataset, self.every, self.ks = dataset, max(1, int(every)), tuple(ks)
        self.monitor, self.protocol, self.print_fn = monitor, protocol, print_fn
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.save_every = None if not save_every else int(save_every)
        self.writer = None if logdir is None else tf.summary.create_file_writer(str(logdir))
        self.manifest_extra = dict(manifest_extra or {})
        self.best = -math.inf
        self.best_epoch = None
        self.history: list[dict] = []
        self._final_epoch = None

    def restore(self, best_manifest: dict | None) -> None:
        """Carry the best score over from a resumed run's ``best`` checkpoint manifest."""
        metrics = (best_manifest or {}).get("metrics") or {}
        if self.monitor in metrics:
            self.best, self.best_epoch = float(metrics[self.monitor]), best_manifest.get("epoch")

    def _save(self, name: str, epoch: int, **extra) -> None:
        save_checkpoint(self.model, self.checkpoint_dir / name, self.dataset,
                        **{**self.manifest_extra, "epoch": epoch, **extra})

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
            self._save("last", epoch, metrics=metrics)
            if metrics[self.monitor] > self.best:
                self._save("best", epoch, metrics=metrics)
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
                for name in LOSS_NAMES:
                    if name in logs:
                        tf.summary.scalar(f"train/{name}", float(logs[name]))
        if done % self.every == 0 or done == self._final_epoch:
            self.evaluate_now(done, logs)
        elif self.checkpoint_dir is not None and self.save_every and done % self.save_every == 0:
            self._save("last", done)

    def on_train_end(self, logs=None):
        if self.writer is not None:
            self.writer.flush()
