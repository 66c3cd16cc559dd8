"""``python -m amr_tf tune``: a hyper-parameter search that selects on the validation split only.

KerasTuner proposes the values (a seeded random search, ``keras_tuner.oracles.RandomSearchOracle``);
each trial builds the model with them and trains it with :func:`amr_tf.training.fit` for up to
``max_epochs`` epochs, ranking the validation items after every epoch (``fit(validation_data=...)``
puts ``val_NDCG@10`` ... in the logs) and stopping after ``patience`` epochs without improvement
(``keras.callbacks.EarlyStopping``). A trial's score is its best epoch's ``val_NDCG@10``, and that
epoch is the number of epochs the chosen settings train for: epochs are selected on validation
rather than gridded. The test items are ranked once, after the search, for the selected trial's
best-epoch weights, and only reported (``best.json`` ``"test_reported_only"``).

Search spaces (:func:`search_space`): VBPR and MF-BPR tune the Adagrad learning rate of P and Q
(one value), VBPR also that of E, the penalties on users and items, and K; AMR fine-tunes a
pretrained checkpoint (its K and penalties) and tunes ε, λ and a factor on the checkpoint's learning
rates. Every trial is logged to TensorBoard's HParams dashboard (KerasTuner's ``TensorBoard``
integration: ``<out>/logs/<trial>/execution0`` holds the trial's ``hp.hparams`` and its train and
validation curves; ``<out>/logs`` holds ``hp.hparams_config``).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from amr_tf.errors import AmrError

OBJECTIVE = "val_NDCG@10"
MODELS = ("VBPR", "MFBPR", "AMR")
_TB_METRICS = (("epoch_NDCG@10", "validation", OBJECTIVE), ("epoch_HR@10", "validation", "val_HR@10"),
               ("epoch_loss", "train", "train loss"))


def _keras_tuner():
    try:
        import keras_tuner
    except ImportError:
        raise AmrError("the tune command needs KerasTuner: pip install 'keras-tuner>=1.4,<2'") from None
    return keras_tuner


def search_space(hp, model: str, base: dict) -> dict:
    """The model's constructor arguments for one trial, drawn from ``hp`` (KerasTuner's HyperParameters).

    ``base`` holds what is not searched: for AMR, the pretrained checkpoint's ``learning_rates``,
    ``regs`` and ``embed_dim``.
    """
    if model == "AMR":
        scale = hp.Float("lr_scale", 0.1, 1.0, sampling="log", default=1.0)
        return {"eps": hp.Float("eps", 0.01, 1.0, sampling="log", default=0.1),
                "adv_weight": hp.Float("adv_weight", 0.1, 10.0, sampling="log", default=1.0),
                "learning_rates": tuple(scale * r for r in base["learning_rates"]),
                "regs": tuple(base["regs"]), "embed_dim": base["embed_dim"]}
    lr = hp.Float("lr", 0.01, 0.3, sampling="log", default=0.05)
    lr_e = hp.Float("lr_E", 1e-4, 0.03, sampling="log", default=0.005) if model == "VBPR" else lr
    return {"learning_rates": (lr, lr, lr_e),
            "regs": (hp.Float("reg_user", 1e-4, 0.3, sampling="log", default=1e-3),
                     hp.Float("reg_item", 1e-5, 0.1, sampling="log", default=1e-3), 0.0),
            "embed_dim": hp.Choice("embed_dim", [32, 64, 128], default=64)}


def train_flags(model: str, params: dict, epochs: int) -> dict:
    """``train``'s flags (by destination) that reproduce a trial: its settings and its best epoch."""
    flags = {"lr": [float(x) for x in params["learning_rates"]], "regs": [float(x) for x in params["regs"]],
             "embed_dim": int(params["embed_dim"]), "epoch": int(epochs)}
    if model == "AMR":
        flags.update(eps=float(params["eps"]), adv_weight=float(params["adv_weight"]))
    return flags


def flags_text(flags: dict) -> str:
    """``flags`` as ``train`` arguments (``--lr [a,b,c] --epoch N ...``)."""
    from amr_tf.flags import flag_name

    parts = []
    for key, value in flags.items():
        shown = "[" + ",".join(f"{v:.4g}" for v in value) + "]" if isinstance(value, list) else (
            f"{value:.4g}" if isinstance(value, float) else str(value))
        parts.append(f"{flag_name(key)} {shown}")
    return " ".join(parts)


def run_search(dataset, model: str, out, max_trials: int = 10, budget_seconds: float | None = None,
               max_epochs: int = 30, patience: int = 5, seed: int = 0, batch_size: int = 512,
               pretrained=None, exclude_cold_start: bool | str = "auto", protocol: str = "sampled",
               command: str | None = None, print_fn=print, verbose: int = 1) -> dict:
    """Search ``model``'s hyper-parameters on ``dataset``'s validation split; write and return ``best.json``.

    ``out`` receives KerasTuner's state (``tuner/``), the TensorBoard logs (``logs/``) and
    ``best.json``. ``budget_seconds``: no trial starts after that many seconds (a running one
    finishes). ``pretrained`` (a checkpoint path) is required for AMR and gives each trial its
    starting weights.
    """
    import keras

    from amr_tf.checkpoints import load_pretrained, provenance, read_manifest
    from amr_tf.evaluation import evaluate, model_vectors
    from amr_tf.io import portable_path
    from amr_tf.training import build_model, fit, set_seed

    if model not in MODELS:
        raise AmrError(f"--model {model}: the search covers {', '.join(MODELS)}")
    if dataset.validation_candidates is None:
        raise AmrError(f"dataset {dataset.name} has no validation split; the search selects on validation only: "
                       "add --validation holdout (one seeded training pair per user held out) or give the dataset "
                       "a val.txt")
    base = {}
    if model == "AMR":
        if not pretrained:
            raise AmrError("--model AMR tunes the fine-tuning of a pretrained checkpoint: give --pretrained "
                           "(a VBPR checkpoint of this dataset)")
        config = read_manifest(pretrained).get("config") or {}
        try:
            base = {"learning_rates": [float(x) for x in config["learning_rates"]],
                    "regs": [float(x) for x in config["regs"]], "embed_dim": int(config["embed_dim"])}
        except (KeyError, TypeError, ValueError):
            raise AmrError(f"{pretrained}: its manifest records no learning_rates/regs/embed_dim") from None
        if len(base["learning_rates"]) != 3:
            raise AmrError(f"{pretrained}: not a VBPR checkpoint (learning rates {base['learning_rates']})")
    elif pretrained:
        raise AmrError(f"--pretrained is for --model AMR (fine-tuning); --model {model} trains from scratch")
    from amr_tf.data.sampling import resolve_cold_start_rule

    exclude_cold_start = resolve_cold_start_rule(exclude_cold_start, dataset)  # best.json records the rule used
    kt = _keras_tuner()  # after the checks: a bad flag is named even without KerasTuner installed
    out = Path(out)
    validation = (dataset.validation_users, dataset.validation_candidates)

    def fresh(hp):
        set_seed(seed)  # every trial starts alike, whatever ran before it
        return build_model(model, dataset, seed=seed, **search_space(hp, model, base))

    class HyperModel(kt.HyperModel):
        def build(self, hp):
            model_ = fresh(hp)
            if pretrained:
                load_pretrained(model_, pretrained)
            return model_

        def fit(self, hp, model_, callbacks=(), **kwargs):
            return fit(model_, dataset, epochs=max_epochs, batch_size=batch_size, seed=seed,
                       callbacks=list(callbacks), verbose=0, exclude_cold_start=exclude_cold_start,
                       validation_data=validation, validation_freq=1)

    deadline = None if budget_seconds is None else time.monotonic() + budget_seconds

    class Oracle(kt.oracles.RandomSearchOracle):
        def populate_space(self, trial_id):
            if deadline is not None and time.monotonic() >= deadline:
                return {"status": "STOPPED", "values": None}
            return super().populate_space(trial_id)

    class Tuner(kt.Tuner):
        def load_model(self, trial):
            """The trial's best-epoch weights, loaded by the checkpoints package's one loader
            (shapes, links and NaN checked) into a freshly built model: the pretrained weights,
            which they replace, are not read again."""
            from amr_tf.checkpoints import load_weights

            model_ = fresh(trial.hyperparameters)
            load_weights(model_, Path(self.get_trial_dir(trial.trial_id)) / "checkpoint.weights.h5")
            return model_

    objective = kt.Objective(OBJECTIVE, direction="max")
    oracle = Oracle(objective=objective, max_trials=max_trials, seed=seed,
                    max_consecutive_failed_trials=max_trials)  # a diverged trial is recorded, not fatal
    tuner = Tuner(oracle=oracle, hypermodel=HyperModel(), directory=str(out), project_name="tuner",
                  overwrite=True)
    callbacks = [keras.callbacks.TensorBoard(log_dir=str(out / "logs"), write_graph=False, profile_batch=0)]
    if patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=OBJECTIVE, mode="max", patience=patience))
    started = time.perf_counter()
    tuner.search(callbacks=callbacks, verbose=verbose)
    seconds = time.perf_counter() - started
    _write_hparams_config(out / "logs", tuner.oracle.hyperparameters)

    trials = [_trial_record(t) for t in tuner.oracle.trials.values()]
    finished = tuner.oracle.get_best_trials(1)
    if not finished:
        raise AmrError(f"no trial of the search finished ({len(trials)} started); see {out / 'tuner'}")
    best = finished[0]
    selected = tuner.load_model(best)
    params = search_space(best.hyperparameters.copy(), model, base)
    epochs = int(best.best_step) + 1
    vectors = model_vectors(selected)  # one computation for both splits
    result = {
        "model": model,
        "dataset": dataset.record(),
        "selection": OBJECTIVE,
        "objective": {"name": OBJECTIVE, "direction": "max"},
        "best_trial": best.trial_id,
        "hyperparameters": dict(best.hyperparameters.values),
        "train_flags": train_flags(model, params, epochs),
        "validation": evaluate(selected, dataset, protocol=protocol, split="validation", vectors=vectors),
        # Ranked once, for the selected trial's weights; read by nothing that selects.
        "test_reported_only": evaluate(selected, dataset, protocol=protocol, vectors=vectors),
        "pretrained": None if not pretrained else portable_path(pretrained),
        "search": {"tuner": "keras_tuner.RandomSearch", "max_trials": max_trials, "budget_seconds": budget_seconds,
                   "max_epochs": max_epochs, "patience": patience, "seed": seed, "batch_size": batch_size,
                   "cold_start_rule": exclude_cold_start, "protocol": protocol,
                   "trials_run": len(trials), "seconds": round(seconds, 1)},
        "trials": sorted(trials, key=lambda t: t["trial"]),
        "command": command,
        "provenance": provenance(),
    }
    result["train_command"] = f"python -m amr_tf train --model {model} {flags_text(result['train_flags'])}"
    text = json.dumps(result, indent=2, allow_nan=False, default=float) + "\n"
    from amr_tf.io import atomic_write_text

    atomic_write_text(out / "best.json", text)
    print_fn(f"best of {len(trials)} trials ({seconds:.0f} s): trial {best.trial_id}, {OBJECTIVE} "
             f"{result['validation']['NDCG@10']:.4f} at epoch {epochs}: {flags_text(result['train_flags'])}")
    print_fn(f"test NDCG@10 of that trial (reported, not used): {result['test_reported_only']['NDCG@10']:.4f}; "
             f"{out / 'best.json'}; TensorBoard: tensorboard --logdir {out / 'logs'} (HPARAMS tab)")
    return result


def _trial_record(trial) -> dict:
    """One trial as ``best.json`` lists it: values, status, best validation score and its epoch."""
    score = trial.score
    return {"trial": trial.trial_id, "status": trial.status, "hyperparameters": dict(trial.hyperparameters.values),
            OBJECTIVE: None if score is None or not math.isfinite(score) else float(score),
            "best_epoch": None if trial.best_step is None or score is None else int(trial.best_step) + 1}


def _write_hparams_config(logdir: Path, hyperparameters) -> None:
    """The HParams dashboard's experiment: every searched hyper-parameter's domain, and the metrics."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp_api

    hparams = []
    for hp in hyperparameters.space:
        kind = type(hp).__name__
        if kind == "Float":
            domain = hp_api.RealInterval(float(hp.min_value), float(hp.max_value))
        elif kind == "Int":
            domain = hp_api.IntInterval(int(hp.min_value), int(hp.max_value))
        else:  # Choice, Boolean, Fixed
            domain = hp_api.Discrete(list(getattr(hp, "values", None) or [hp.default]))
        hparams.append(hp_api.HParam(hp.name, domain))
    metrics = [hp_api.Metric(tag, group=group, display_name=name) for tag, group, name in _TB_METRICS]
    os.makedirs(logdir, exist_ok=True)
    with tf.summary.create_file_writer(str(logdir)).as_default():
        hp_api.hparams_config(hparams=hparams, metrics=metrics)
