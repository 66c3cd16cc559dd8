"""Keras callbacks: periodic evaluation (its bookkeeping in :mod:`amr_tf.run_record`) and a NaN guard."""

from __future__ import annotations

import math

import keras
import numpy as np

from amr_tf.checkpoints import non_finite_weights
from amr_tf.errors import AmrError, TrainingDivergedError
from amr_tf.evaluation import DEFAULT_KS, evaluate, format_metrics, model_vectors
from amr_tf.run_record import EvaluationHistory, RunCheckpoints, ScalarLog

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
        weight_arrays = getattr(self.model, "weight_arrays", None)  # PairwiseModel's; none for other models
        return weight_arrays() if weight_arrays is not None else {}

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
        after = self._weights()  # read once: for the finiteness and the stall checks
        bad_weights, bad_state = non_finite_weights(self.model, after), self._bad_optimizer_state()
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
        if before and all(np.array_equal(before[name], value) for name, value in after.items()):
            raise TrainingDivergedError(
                f"training stalled in epoch {epoch + 1}: no weight ({', '.join(before)}) changed in the whole "
                "epoch. Stopped without saving that epoch; check the learning rates (--lr) and penalties (--regs)"
            )


class EvaluationCallback(keras.callbacks.Callback):
    """Every ``every`` epochs: evaluate, log HR/NDCG and the losses to TensorBoard, checkpoint.

    The thin Keras side of a run's bookkeeping (:mod:`amr_tf.run_record`): it decides *when*
    (every ``every`` epochs and after the last one; ``last`` also every ``save_every`` epochs in
    between, a cheap checkpoint to resume from whose manifest has ``epoch`` but no ``metrics``)
    and hands the results to an :class:`~amr_tf.run_record.EvaluationHistory` (best by
    ``monitor``), a :class:`~amr_tf.run_record.ScalarLog` (``logdir``; losses every epoch as
    ``train/<loss>``, metrics at evaluations, step = epochs done) and
    :class:`~amr_tf.run_record.RunCheckpoints` (``checkpoint_dir``: ``best`` and ``last``). The
    metrics are also added to the epoch's ``logs`` so that History and the callbacks after this
    one see them.

    **Selection.** When the dataset has a validation split (``validation_candidates``), every
    evaluation ranks both splits: the logs and records carry ``val_HR@10``, ``val_NDCG@10``, ...
    and the test metrics under their plain names (``HR@10``, ...); TensorBoard shows them as
    ``val/NDCG@10`` and ``test/NDCG@10``. ``monitor`` defaults to ``"val_NDCG@10"`` then, so the
    ``best`` checkpoint and ``best_epoch`` never depend on the test items. Without a validation
    split the monitor is the test ``"NDCG@10"`` (the original protocol; metrics and TensorBoard
    tags unchanged), and :attr:`selection` says so. ``patience`` (> 0, validation monitors only)
    stops training after that many evaluations without improvement of the monitor
    (``model.stop_training``); :attr:`stopped` then describes why, and so does the ``last``
    checkpoint's manifest (``stopped_early``).
    """

    def __init__(self, dataset, every: int = 1, logdir=None, checkpoint_dir=None, ks=DEFAULT_KS,
                 monitor: str | None = None, protocol: str = "sampled", print_fn=print, manifest_extra=None,
                 save_every: int | None = None, patience: int = 0):
        super().__init__()
        self.dataset, self.every, self.ks = dataset, max(1, int(every)), tuple(ks)
        self.protocol, self.print_fn = protocol, print_fn
        self.save_every = None if not save_every else int(save_every)
        self.validated = getattr(dataset, "validation_candidates", None) is not None
        if monitor is None:
            monitor = "val_NDCG@10" if self.validated else "NDCG@10"
        if monitor.startswith("val_") and not self.validated:
            raise AmrError(f"monitor {monitor!r}: {getattr(dataset, 'name', 'the dataset')} has no validation split "
                           "(--validation holdout, or a val.txt, gives it one)")
        self.patience = int(patience or 0)
        if self.patience < 0:
            raise AmrError(f"patience must be a non-negative integer, got {patience}")
        if self.patience and not monitor.startswith("val_"):
            raise AmrError(f"patience {self.patience}: early stopping needs a validation monitor (val_...), "
                           f"not {monitor!r}; stopping on test metrics would select on the test items")
        if monitor.startswith("val_"):
            self.selection = monitor
        else:
            self.selection = f"test_{monitor}" + ("" if self.validated else " (no validation split: the original protocol)")
        self.evaluations = EvaluationHistory(monitor)
        self.scalars = None if logdir is None else ScalarLog(logdir)
        extra = {**dict(manifest_extra or {}), "selection": self.selection}
        self.checkpoints = None if checkpoint_dir is None else RunCheckpoints(checkpoint_dir, dataset, extra)
        self.stopped = None
        self._final_epoch = None

    # The run's record, as attributes (the CLI and the reproduction scripts read them).
    monitor = property(lambda self: self.evaluations.monitor)
    history = property(lambda self: self.evaluations.records)
    best = property(lambda self: self.evaluations.best)
    best_epoch = property(lambda self: self.evaluations.best_epoch)

    def restore(self, best_manifest: dict | None, previous=()) -> None:
        """Carry the best score over from a resumed run's ``best`` checkpoint manifest (and, from the
        evaluations it recorded, ``previous``, how many evaluations ago it was: patience goes on)."""
        self.evaluations.restore(best_manifest, previous)

    def measure(self) -> dict:
        """The model's metrics now, without recording them: ``val_<metric>`` (with a validation
        split), then the test metrics under their plain names. The model's user and item vectors
        are computed once for both splits."""
        vectors = model_vectors(self.model)
        test = evaluate(self.model, self.dataset, ks=self.ks, protocol=self.protocol, vectors=vectors)
        if not self.validated:
            return test
        val = evaluate(self.model, self.dataset, ks=self.ks, protocol=self.protocol, split="validation",
                       vectors=vectors)
        return {**{f"val_{k}": v for k, v in val.items()}, **test}

    def evaluate_now(self, epoch: int, logs=None) -> dict:
        """Evaluate the model now and record it as epoch ``epoch`` (the CLI also calls this before training)."""
        metrics = self.measure()
        val = {k[4:]: v for k, v in metrics.items() if k.startswith("val_")}
        test = {k: v for k, v in metrics.items() if not k.startswith("val_")}
        improved = self.evaluations.add(epoch, metrics)
        if self.scalars is not None:
            if self.validated:
                self.scalars.write(epoch, val, prefix="val/")
                self.scalars.write(epoch, test, prefix="test/")
            else:
                self.scalars.write(epoch, metrics)
        if self.print_fn is not None:
            text = f"val {format_metrics(val)} | test {format_metrics(test)}" if self.validated else format_metrics(metrics)
            self.print_fn(f"epoch {epoch}: {text}")
        extra = {}
        if self.patience and not improved and self.evaluations.wait >= self.patience:
            self.stopped = {
                "epoch": epoch, "best_epoch": self.best_epoch, "monitor": self.monitor, "patience": self.patience,
                "reason": f"no improvement of {self.monitor} in {self.evaluations.wait} evaluations "
                          f"(--patience {self.patience}); best at epoch {self.best_epoch}",
            }
            extra["stopped_early"] = self.stopped
        if self.checkpoints is not None:
            # 'best' before 'last': a run killed between the two resumes from the older 'last' and
            # recomputes this epoch bit for bit, so the new 'best' is never lost (the other order
            # lost it when the kill came after 'last': the resumed run had nothing left to redo).
            if improved:
                self.checkpoints.save("best", self.model, epoch, metrics=metrics)
            self.checkpoints.save("last", self.model, epoch, metrics=metrics, **extra)
        if logs is not None:
            logs.update(metrics)
        return metrics

    def on_train_begin(self, logs=None):
        self._final_epoch = self.params.get("epochs") if self.params else None

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1  # epochs completed so far
        if self.scalars is not None and logs:
            self.scalars.write(done, {name: logs[name] for name in LOSS_NAMES if name in logs}, prefix="train/")
        if done % self.every == 0 or done == self._final_epoch:
            self.evaluate_now(done, logs)
            if self.stopped is not None:
                if self.print_fn is not None:
                    self.print_fn(f"stopped early at epoch {done}: {self.stopped['reason']}")
                self.model.stop_training = True
        elif self.checkpoints is not None and self.save_every and done % self.save_every == 0:
            self.checkpoints.save("last", self.model, done)

    def on_train_end(self, logs=None):
        if self.scalars is not None:
            self.scalars.flush()
