"""Plumbing shared by the reproduction scripts: flags, settings, cached training runs, statistics, outputs.

An experiment module defines ``NAME``, ``TITLE`` and ``run(ctx) -> dict`` and calls
:func:`main`; optionally ``add_arguments(parser)`` for flags of its own and ``TRAINS = False`` when it
trains nothing (it then gets no run store, no training flags, and ``ctx.settings`` is what it sets). ``run`` asks ``ctx.runs`` for trained models (trained once, cached on disk under
``<out>/cache/`` and in memory, so ``reproduce.all`` trains every model once), computes its
numbers and writes them with the ``ctx.write_*`` helpers; :func:`main` adds the manifest.

**The honest protocol** (the default, ``--validation holdout``): the dataset's validation split
(its ``val.txt``, else one seeded training pair per user held out) chooses everything. Every run
is evaluated every ``eval_every`` epochs and keeps the weights of the evaluation with the best
``val_NDCG@10`` (the epoch count is chosen on validation, within the run's epoch budget); the
hyper-parameters of the models trained from scratch are chosen from small grids by the same
validation score (:meth:`RunStore.select`). The test items only ever measure the selected
models. ``--validation none`` is the original release's protocol (no validation split, the last
epoch, the grids' first settings), labelled as such.

Settings (:class:`Settings`): the full mode follows the original release's ``run.sh`` (K=64,
``regs [1e-1,1e-3,0]``, Adagrad ``lr [0.01,1e-4,1e-3]``, batch 512, eps 0.1, lambda 1) except
the number of epochs, which a 2-core CPU budget caps (see ``FULL``). When a pretrained VBPR is
used, its manifest's hyper-parameters (K, regs, learning rates, batch size) replace these for
VBPR and AMR, so that fine-tuning continues the run that produced it. Budgets are equal where
models are compared: AMR and "VBPR trained on" fine-tune for the same epochs from the same
start, and MF-BPR and DUIF, trained from scratch, get as many epochs as VBPR had in all
(pretraining plus fine-tuning; :meth:`RunStore.scratch_epochs`).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import numpy as np  # noqa: E402

from amr_tf import pretrained  # noqa: E402
from amr_tf.errors import AmrError  # noqa: E402
from amr_tf.io import atomic_path, atomic_write_text  # noqa: E402
from amr_tf.safe_io import read_json  # noqa: E402
from amr_tf.models import registry  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED_DIR = pretrained.DIR  # the checkpoints shipped in the package
METRICS = ("HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20")
KS = (5, 10, 20)
ROBUSTNESS_EPS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


# ---------------------------------------------------------------------------- settings


#: MF-BPR's defaults, as every entry point has them (amr_tf.models.registry; imports no TensorFlow).
_MF_DEFAULTS = registry.lookup("MFBPR").defaults


@dataclasses.dataclass
class Settings:
    """Every knob of a reproduction run (recorded in each manifest)."""

    # VBPR / AMR hyper-parameters (replaced by the pretrained checkpoint's when one is used)
    embed_dim: int = 64
    regs: tuple = (0.1, 1e-3, 0.0)
    learning_rates: tuple = (0.01, 1e-4, 1e-3)
    batch_size: int = 512
    eps: float = 0.1
    adv_weight: float = 1.0
    # MF-BPR, trained from scratch (the original release ships no MF settings): the registry's defaults
    mf_learning_rates: tuple = _MF_DEFAULTS["learning_rates"]
    mf_regs: tuple = _MF_DEFAULTS["regs"]
    mf_epochs: int | None = None  # epochs of MF-BPR and DUIF; None: VBPR's whole budget (pretrain + fine-tune)
    # Candidate settings chosen on validation (seed seeds[0]); the first is the default without validation.
    # MF-BPR and DUIF: (learning rates (P, Q, E), penalties); DUIF uses the P and E entries.
    mf_grid: tuple = (((0.05, 0.05, 0.0), (1e-3, 1e-3, 0.0)), ((0.05, 0.05, 0.0), (1e-2, 1e-2, 0.0)))
    duif_grid: tuple = (((0.05, 0.05, 0.005), (1e-3, 1e-3, 0.0)), ((0.05, 0.05, 0.05), (1e-3, 1e-3, 0.0)))
    # MF-eALS (closed-form epochs): (w0, alpha); lambda eals_reg, eals_epochs epochs
    eals_grid: tuple = ((16.0, 0.5), (64.0, 0.5), (256.0, 0.5), (64.0, 0.0))
    eals_reg: float = 0.01
    eals_epochs: int = 20
    # the honest protocol: "holdout" (the dataset's val.txt, else a seeded holdout) or "none" (the original)
    validation: str = "holdout"
    # schedule
    seeds: tuple = (0, 1, 2, 3, 4)
    pretrain_epochs: int = 200  # only when no pretrained VBPR is given
    pretrain_seed: int = 0
    finetune_epochs: int = 40
    eval_every: int = 5
    robustness_eps: tuple = ROBUSTNESS_EPS
    pgd_steps: int = 10
    grid_eps: tuple = (0.01, 0.1, 1.0)
    grid_adv_weight: tuple = (0.1, 1.0, 10.0)
    grid_seeds: int = 2
    band_eps: tuple = (0.05, 0.1, 0.2, 0.5, 1.0)
    band_seeds: int = 1  # seeds of the certified-vs-attacked band (the shared attack is the costly part)
    band_steps: int = 50
    band_restarts: int = 3
    protocol: str = "sampled"

    def model_params(self) -> dict:
        return {"embed_dim": self.embed_dim, "regs": list(self.regs), "learning_rates": list(self.learning_rates),
                "batch_size": self.batch_size}


#: Full mode: the original's hyper-parameters; epochs and seeds sized for ~25 min per experiment on 2 CPU cores.
FULL = Settings()

#: Quick mode: a few seconds per experiment on any dataset (small K, large learning rates, few epochs).
QUICK = Settings(embed_dim=16, regs=(1e-3, 1e-3, 0.0), learning_rates=(0.05, 0.05, 0.05), batch_size=512,
                 seeds=(0, 1), pretrain_epochs=12, finetune_epochs=4, eval_every=2, pgd_steps=10,
                 grid_eps=(0.1, 1.0), grid_adv_weight=(1.0, 10.0), grid_seeds=2,
                 eals_grid=((16.0, 0.5), (64.0, 0.0)), eals_epochs=4, band_eps=(0.1, 1.0), band_steps=10,
                 band_restarts=1)


# ---------------------------------------------------------------------------- small helpers


def _json_default(obj):
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    return str(obj)


def to_json(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=_json_default, allow_nan=True) + "\n"


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_json_default).encode()).hexdigest()[:16]


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0 for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return math.nan, math.nan
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def fmt(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def fmt_ms(mean, std, digits: int = 4) -> str:
    return f"{fmt(mean, digits)} ± {fmt(std, digits)}"


def fmt_p(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def md_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def per_user_metrics(ranks) -> dict:
    """Per-user HR@k (0/1) and NDCG@k from 0-based ranks, the quantities ``evaluate`` averages."""
    from amr_tf.evaluation import ndcg_gains

    ranks = np.asarray(ranks)
    out = {}
    for k in KS:
        out[f"HR@{k}"] = (ranks < k).astype(np.float64)
        out[f"NDCG@{k}"] = ndcg_gains(ranks, k)
    return out


def paired_tests(a, b) -> dict:
    """Paired t-test and Wilcoxon signed-rank test of ``a`` against ``b`` (two-sided, SciPy).

    Returns ``n``, ``mean_diff`` (a - b), ``t_p`` and ``wilcoxon_p``; a test that is undefined
    (fewer than two pairs, all differences equal or zero) gives NaN instead of raising.
    """
    from scipy import stats

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = a - b
    out = {"n": int(d.size), "mean_diff": float(d.mean()) if d.size else math.nan, "t_p": math.nan,
           "wilcoxon_p": math.nan}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if d.size >= 2 and np.ptp(d) > 0:
            out["t_p"] = float(stats.ttest_rel(a, b).pvalue)
        if d.size >= 2 and np.any(d != 0):
            try:
                out["wilcoxon_p"] = float(stats.wilcoxon(a, b).pvalue)
            except ValueError:
                pass
    return out


# ---------------------------------------------------------------------------- runs and their cache


@dataclasses.dataclass
class Run:
    """One trained (or loaded) model with its evaluation history.

    ``model`` holds the weights of the epoch selected on validation (``selected_epoch``; the last
    epoch under ``--validation none``); ``epochs`` is the run's budget (epochs trained).
    """

    label: str  # "AMR", "VBPR", "MF-BPR", "MF-eALS", "DUIF", "VBPR (pretrained)", "Popularity"
    seed: int | None
    model: object
    history: list  # [{"epoch": e, "val_HR@5": ..., "HR@5": ...}, ...]
    train_seconds: float
    cached: bool
    key: str | None
    params: dict
    selected_epoch: int | None = None
    epochs: int | None = None
    _metrics: dict | None = None
    _val: dict | None = None
    _ranks: np.ndarray | None = None
    _per_user: dict | None = None

    def ranks(self, ctx) -> np.ndarray:
        if self._ranks is None:
            from amr_tf.evaluation import rank_test_items

            self._ranks = rank_test_items(self.model, ctx.dataset, protocol=ctx.settings.protocol)
        return self._ranks

    def per_user(self, ctx) -> dict:
        """:func:`per_user_metrics` of the cached :meth:`ranks`, computed once per run."""
        if self._per_user is None:
            self._per_user = per_user_metrics(self.ranks(ctx))
        return self._per_user

    def metrics(self, ctx) -> dict:
        """Clean test HR/NDCG@5/10/20 of the (selected) model, from the cached :meth:`ranks` (as ``evaluate``)."""
        if self._metrics is None:
            from amr_tf.evaluation import metrics_from_ranks

            self._metrics = metrics_from_ranks(self.ranks(ctx), KS)
        return self._metrics

    def val_metrics(self, ctx) -> dict:
        """The same metrics on the validation split (NaN without one): what every choice is made on."""
        if self._val is None:
            if ctx.dataset.validation_candidates is None:
                self._val = {m: math.nan for m in METRICS}
            else:
                from amr_tf.evaluation import evaluate

                self._val = evaluate(self.model, ctx.dataset, ks=KS, protocol=ctx.settings.protocol,
                                     split="validation")
        return self._val

    def describe(self) -> dict:
        return {"label": self.label, "seed": self.seed, "key": self.key, "train_seconds": round(self.train_seconds, 2),
                "cached": self.cached, "params": self.params, "epochs": self.epochs,
                "selected_epoch": self.selected_epoch}


def _set_weights(model, arrays: dict) -> None:
    """Put ``arrays`` (from ``model.weight_arrays()``) back into the model (Keras variables or NumPy matrices)."""
    for name, value in arrays.items():
        target = getattr(model, name)
        if hasattr(target, "assign"):
            target.assign(value)
        else:
            target[...] = value


def keep_best(evaluator, model, min_epoch: int = 0):
    """A callback that snapshots the weights at the best validation evaluation from ``min_epoch`` on.

    Returns ``(callback, snapshot)``; ``snapshot["epoch"]``/``["weights"]`` are the best evaluation's
    (by ``val_NDCG@10``, the first on ties) among those at epoch ``min_epoch`` or later; with
    ``min_epoch = 0`` the evaluation before training (recorded by the caller) is a candidate.
    """
    import keras

    snapshot = {"epoch": None, "weights": None, "score": -math.inf}

    def consider(epoch):
        record = evaluator.history[-1] if evaluator.history else None
        if record is None or record["epoch"] != epoch or epoch < min_epoch or "val_NDCG@10" not in record:
            return
        if record["val_NDCG@10"] > snapshot["score"]:
            snapshot.update(epoch=epoch, weights=model.weight_arrays(), score=record["val_NDCG@10"])

    consider(0)
    return keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs=None: consider(epoch + 1)), snapshot


class RunStore:
    """Trains, caches (``cache_dir/<key>/model.{weights.h5,json}``) and hands out :class:`Run` objects.

    A key hashes everything that determines the trained weights: dataset fingerprint, model and
    its hyper-parameters, epochs, seed, the initial weights' hash, the evaluation settings and
    the selection rule.
    """

    def __init__(self, dataset, settings: Settings, cache_dir: Path | None, pretrained: dict, log=print):
        self.dataset, self.settings, self.cache_dir = dataset, settings, cache_dir
        self.pretrained_info = pretrained
        self.log = log
        self.memory: dict[str, Run] = {}
        self.used: dict[str, Run] = {}  # runs the current experiment asked for (reset per experiment)
        self.trained: set[str] = set()  # keys of the runs the current experiment had to train
        self.selections: dict[str, dict] = {}  # label -> the grid a setting was chosen from (see select)
        self._pretrained: Run | None = None

    @property
    def validated(self) -> bool:
        return self.dataset.validation_candidates is not None

    @property
    def selection_rule(self) -> str:
        return "val_NDCG@10" if self.validated else "last"

    # -- generic training with cache

    def _train(self, label, model_name, seed, epochs, init_path=None, init_hash=None, eps=None, adv_weight=None,
               model_params=None, learning_rates=None, regs=None, extra=None, min_epoch: int = 0) -> Run:
        from amr_tf.callbacks import EvaluationCallback
        from amr_tf.checkpoints import load_checkpoint, load_pretrained, read_manifest, save_checkpoint
        from amr_tf.training import build_model, fit, set_seed

        s = self.settings
        extra = dict(extra or {})
        params = {
            "label": label, "model": model_name, "seed": int(seed), "epochs": int(epochs),
            "embed_dim": (model_params or s.model_params())["embed_dim"],
            "regs": list(regs if regs is not None else s.regs),
            "learning_rates": list(learning_rates if learning_rates is not None else s.learning_rates),
            "batch_size": s.batch_size, "eps": eps, "adv_weight": adv_weight, "init": init_hash,
            "eval_every": s.eval_every, "protocol": s.protocol, "dataset": self.dataset.fingerprint,
            "selection": self.selection_rule, **extra,
        }
        if min_epoch:  # only then in the key: the runs selected from epoch 0 on keep their cache entries
            params["min_epoch"] = int(min_epoch)
        key = f"{label.lower().replace(' ', '-').replace('(', '').replace(')', '')}-s{seed}-{digest(params)}"
        if key in self.memory:
            run = self.memory[key]
            self.used[key] = run
            return run
        path = None if self.cache_dir is None else self.cache_dir / key / "model"
        if path is not None and path.with_suffix(".json").exists() and path.with_name("model.weights.h5").exists():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model, manifest = load_checkpoint(path, self.dataset, compile=False)
                run = Run(label, seed, model, manifest["history"], float(manifest["train_seconds"]), True, key, params,
                          selected_epoch=manifest.get("selected_epoch"), epochs=int(epochs))
                self.log(f"cached: {label} seed {seed} ({key})")
                self.memory[key] = self.used[key] = run
                return run
            except (AmrError, KeyError, OSError) as exc:
                self.log(f"cache entry {key} unusable ({exc}); retraining")
        set_seed(seed)
        model = build_model(model_name, self.dataset, embed_dim=params["embed_dim"], regs=params["regs"],
                            learning_rates=params["learning_rates"], eps=eps if eps is not None else 0.0,
                            adv_weight=adv_weight if adv_weight is not None else 0.0, seed=seed, **extra)
        if init_path is not None:
            load_pretrained(model, init_path)
        evaluator = EvaluationCallback(self.dataset, every=s.eval_every, ks=KS, protocol=s.protocol, print_fn=None)
        evaluator.set_model(model)
        evaluator.evaluate_now(0)
        keeper, best = keep_best(evaluator, model, min_epoch=min_epoch if self.validated else 0)
        self.log(f"training {label} seed {seed}: {epochs} epochs"
                 + (f" (eps={eps}, lambda={adv_weight})" if model_name == "AMR" else "")
                 + (f" {extra}" if extra else ""))
        started = time.perf_counter()
        if epochs > 0:
            fit(model, self.dataset, epochs=epochs, batch_size=s.batch_size, seed=seed, callbacks=[evaluator, keeper],
                verbose=0)
        seconds = time.perf_counter() - started
        last = evaluator.history[-1]
        selected = int(last["epoch"])
        if self.validated and best["epoch"] is not None and best["epoch"] != selected:
            _set_weights(model, best["weights"])  # the weights of the epoch chosen on validation
            selected = int(best["epoch"])
        chosen = next(h for h in evaluator.history if h["epoch"] == selected)
        self.log(f"  done in {seconds:.1f} s; {self.selection_rule} chose epoch {selected}: "
                 + (f"val NDCG@10 {chosen['val_NDCG@10']:.4f}, " if self.validated else "")
                 + f"test HR@10 {chosen['HR@10']:.4f} NDCG@10 {chosen['NDCG@10']:.4f}")
        if path is not None:
            save_checkpoint(model, path, self.dataset, params=params, history=evaluator.history,
                            train_seconds=seconds, key=key, selected_epoch=selected, selection=self.selection_rule)
            read_manifest(path)  # fail now, not at the next run, if the manifest did not round-trip
        run = Run(label, seed, model, evaluator.history, seconds, False, key, params, selected_epoch=selected,
                  epochs=int(epochs))
        self.memory[key] = self.used[key] = run
        self.trained.add(key)
        return run

    # -- the runs the experiments ask for

    def pretrain_epochs(self) -> int | None:
        """Epochs the pretrained VBPR was trained for (its budget; None when its record does not say)."""
        info = self.pretrained_info
        if info["source"] == "trained here":
            return self.settings.pretrain_epochs
        excerpt = info.get("manifest_excerpt") or {}
        epochs = ((excerpt.get("run") or {}).get("epochs") or (excerpt.get("args") or {}).get("epoch")
                  or (excerpt.get("params") or {}).get("epochs"))  # a CLI run's record, or a reproduce cache entry
        return int(epochs) if isinstance(epochs, int) else None

    def scratch_epochs(self) -> int:
        """Epochs of the models trained from scratch (MF-BPR, DUIF): ``mf_epochs``, else VBPR's whole budget."""
        s = self.settings
        if s.mf_epochs is not None:
            return int(s.mf_epochs)
        pre = self.pretrain_epochs()
        return int((pre if pre is not None else s.pretrain_epochs) + s.finetune_epochs)

    def pretrained(self) -> Run:
        """The VBPR that AMR starts from: the given checkpoint, or one trained here (and cached)."""
        if self._pretrained is not None:
            self.used[self._pretrained.key] = self._pretrained
            return self._pretrained
        info = self.pretrained_info
        if info["source"] == "trained here":
            run = self._train("VBPR (pretrained)", "VBPR", self.settings.pretrain_seed, self.settings.pretrain_epochs,
                              adv_weight=None)
            info["path"] = str(self.cache_dir / run.key / "model") if self.cache_dir else None
            if info["path"] is None:  # no cache: keep the weights in a temporary checkpoint
                from amr_tf.checkpoints import save_checkpoint

                tmp = Path(tempfile.mkdtemp(prefix="amr-pretrained-")) / "model"
                save_checkpoint(run.model, tmp, self.dataset)
                info["path"] = str(tmp)
            info["hash"] = weights_hash(run.model)
            info["selected_epoch"] = run.selected_epoch
        else:
            from amr_tf.checkpoints import load_pretrained
            from amr_tf.training import build_model

            s = self.settings
            model = build_model("VBPR", self.dataset, embed_dim=s.embed_dim, regs=s.regs,
                                learning_rates=s.learning_rates, seed=0)
            load_pretrained(model, info["path"])
            info["hash"] = weights_hash(model)
            run = Run("VBPR (pretrained)", None, model, [], float(info.get("train_seconds") or 0.0), True,
                      f"pretrained-{info['hash']}", {"path": info["path"]}, epochs=self.pretrain_epochs())
        run.label = "VBPR (pretrained)"
        self._pretrained = run
        self.used[run.key] = run
        return run

    def finetuned(self, model_name: str, seed: int, eps: float | None = None,
                  adv_weight: float | None = None) -> Run:
        """``"AMR"`` (adversarial fine-tuning, default eps/lambda) or ``"VBPR"`` trained on, from the pretrained VBPR.

        Both start from the pretrained weights with fresh Adagrad accumulators (the original's
        ``--pretrain``) and see the same triplets for the same seed, so they pair up by seed;
        each keeps the epoch chosen on validation within the same ``finetune_epochs`` budget, among
        the fine-tuned epochs (from the first evaluation after epoch 0 on): epoch 0 is the
        pretrained VBPR itself, its own row, and a "fine-tuned" model that was not fine-tuned would
        make the AMR-vs-VBPR comparison compare the starting point with itself.
        """
        self.pretrained()
        s = self.settings
        if model_name == "AMR":
            eps = s.eps if eps is None else eps
            adv_weight = s.adv_weight if adv_weight is None else adv_weight
            if adv_weight == 0:
                return self.finetuned("VBPR", seed)
            label = "AMR"
        elif model_name == "VBPR":
            eps = adv_weight = None
            label = "VBPR"
        else:
            raise AmrError(f"finetuned() takes AMR or VBPR, got {model_name!r}")
        return self._train(label, model_name, seed, s.finetune_epochs, init_path=self.pretrained_info["path"],
                           init_hash=self.pretrained_info["hash"], eps=eps, adv_weight=adv_weight,
                           min_epoch=1 if s.finetune_epochs > 0 else 0)

    # -- models trained from scratch, with settings chosen on validation

    def _scratch(self, label: str, seed: int, setting) -> Run:
        s = self.settings
        if label == "MF-BPR":
            lrs, regs = setting
            return self._train(label, "MFBPR", seed, self.scratch_epochs(), learning_rates=list(lrs), regs=regs)
        if label == "DUIF":
            lrs, regs = setting
            return self._train(label, "DUIF", seed, self.scratch_epochs(), learning_rates=list(lrs), regs=regs)
        if label == "MF-eALS":
            c0, alpha = setting
            return self._train(label, "EALS", seed, s.eals_epochs, learning_rates=[], regs=[],
                               extra={"c0": float(c0), "alpha": float(alpha), "reg": float(s.eals_reg)})
        raise AmrError(f"no scratch model {label!r}")

    GRIDS = {"MF-BPR": "mf_grid", "DUIF": "duif_grid", "MF-eALS": "eals_grid"}

    def select(self, label: str) -> tuple:
        """The setting of ``label`` (``MF-BPR``, ``DUIF``, ``MF-eALS``) chosen on validation.

        Every candidate of its grid (``Settings.mf_grid`` / ``duif_grid`` / ``eals_grid``) is
        trained with the first seed and the one with the best ``val_NDCG@10`` (at its own epoch
        chosen on validation) wins; without a validation split the first candidate is used. The
        grid, with validation and test numbers, is kept in :attr:`selections` for the report.
        """
        grid = tuple(getattr(self.settings, self.GRIDS[label]))
        if label in self.selections:
            return self.selections[label]["chosen"]
        seed = self.settings.seeds[0]
        rows = []
        for setting in grid if self.validated else grid[:1]:
            run = self._scratch(label, seed, setting)
            rows.append({"setting": setting, "run": run})
        best = max(rows, key=lambda r: r["run"].val_metrics(self)["NDCG@10"]) if self.validated else rows[0]
        self.selections[label] = {"chosen": best["setting"], "rows": rows, "seed": seed,
                                  "rule": self.selection_rule}
        return best["setting"]

    def scratch(self, label: str, seed: int) -> Run:
        """``label`` (MF-BPR, DUIF, MF-eALS) trained from scratch with ``seed`` and the setting chosen on validation."""
        return self._scratch(label, seed, self.select(label))

    def mf(self, seed: int) -> Run:
        return self.scratch("MF-BPR", seed)

    def popularity(self) -> Run:
        from amr_tf.training import build_model

        return Run("Popularity", None, build_model("POP", self.dataset), [], 0.0, True, None, {})


def weights_hash(model) -> str:
    h = hashlib.sha256()
    for name, arr in sorted(model.weight_arrays().items()):
        h.update(name.encode() + np.ascontiguousarray(arr, np.float32).tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------- pretrained VBPR


def _pretrained_settings(path: Path) -> tuple[dict, dict]:
    """Hyper-parameters recorded with a pretrained checkpoint, and its manifest (``{}`` for a ``.npy``)."""
    from amr_tf.checkpoints import read_manifest

    if path.suffix == ".npy":
        from amr_tf.checkpoints import read_original_npy

        arrays = read_original_npy(path)  # the allow-listed reader: a crafted pickle runs nothing
        if not arrays or np.ndim(arrays[0]) != 2:
            raise AmrError(f"{path}: expected the original release's [P, Q, E] matrices")
        return {"embed_dim": int(np.shape(arrays[0])[1])}, {}
    manifest = read_manifest(path)
    config = manifest.get("config", {})
    found = {}
    for key in ("embed_dim", "regs", "learning_rates"):
        if key in config:
            found[key] = tuple(config[key]) if isinstance(config[key], list) else config[key]
    args = manifest.get("args") or manifest.get("training") or {}
    batch = args.get("batch_size", manifest.get("batch_size"))
    if batch:
        found["batch_size"] = int(batch)
    return found, manifest


def default_pretrained(dataset) -> Path | None:
    """``amr_tf/pretrained/vbpr-<name>``, or any ``amr_tf/pretrained/vbpr-*`` checkpoint, trained on this dataset (fingerprint)."""
    from amr_tf.checkpoints import read_manifest

    named = PRETRAINED_DIR / f"vbpr-{dataset.name}.weights.h5"
    others = sorted(p for p in PRETRAINED_DIR.glob("vbpr-*.weights.h5") if p != named)
    for weights in ([named] if named.exists() else []) + others:
        base = weights.with_name(weights.name[: -len(".weights.h5")])
        try:
            fp = (read_manifest(base).get("dataset") or {}).get("fingerprint")
        except AmrError:
            continue
        if fp == dataset.fingerprint:
            return base
    return None


def resolve_pretrained(spec: str | None, dataset, log=print) -> dict:
    """Where the pretrained VBPR comes from: ``{"source", "path", "settings", "manifest_excerpt"}``.

    ``spec`` None: :func:`default_pretrained` (a checkpoint in ``pretrained/`` trained on this very
    dataset, same fingerprint); otherwise (or with ``spec="none"``) a VBPR is trained here first.
    """
    if spec and spec.lower() == "none":
        return {"source": "trained here", "path": None, "settings": {}, "manifest_excerpt": {}}
    if spec is None:
        candidate = default_pretrained(dataset)
        if candidate is None:
            log(f"no pretrained VBPR for dataset {dataset.name!r} in {PRETRAINED_DIR}/ (vbpr-{dataset.name}): "
                "training one here first, with the same settings")
            return {"source": "trained here", "path": None, "settings": {}, "manifest_excerpt": {}}
        spec = str(candidate)
    path = Path(spec)
    for suffix in (".weights.h5", ".json"):
        if path.name.endswith(suffix):
            path = path.with_name(path.name[: -len(suffix)])
    if path.suffix != ".npy" and not path.with_name(path.name + ".weights.h5").exists():
        raise AmrError(f"{spec}: no pretrained checkpoint ({path.name}.weights.h5 not found)")
    if path.suffix == ".npy" and not path.exists():
        raise AmrError(f"{spec}: file not found")
    try:
        found, manifest = _pretrained_settings(path)
    except AmrError:
        raise  # already names the file and what is wrong with it
    except Exception as exc:  # a corrupt manifest or .npy: say which file
        raise AmrError(f"{spec}: cannot read the pretrained checkpoint ({exc})") from None
    fp = (manifest.get("dataset") or {}).get("fingerprint")
    if fp and fp != dataset.fingerprint:
        raise AmrError(f"{spec}: pretrained on dataset {manifest['dataset'].get('name')!r} ({fp[:12]}...), "
                       f"not on {dataset.name!r} ({dataset.fingerprint[:12]}...); pass --pretrained none to train one")
    excerpt = {k: manifest[k] for k in ("model", "config", "dataset", "epoch", "metrics", "command", "args",
                                        "provenance", "params", "selected_epoch") if k in manifest}
    train_seconds = manifest.get("train_seconds")
    run_json = path.with_name(path.name + ".run.json")  # the CLI's metrics.json, kept beside it
    if train_seconds is None and run_json.exists():
        try:
            run_info = read_json(run_json, "run summary")
            train_seconds = run_info.get("train_seconds")
            excerpt["run"] = {k: run_info.get(k) for k in ("epochs", "train_seconds", "best_epoch", "final")}
        except (AmrError, AttributeError):
            pass
    log(f"pretrained VBPR: {path} ({', '.join(f'{k}={v}' for k, v in found.items())})")
    return {"source": "given", "path": str(path), "settings": found, "manifest_excerpt": excerpt,
            "train_seconds": train_seconds}


# ---------------------------------------------------------------------------- context and outputs


class Context:
    """What an experiment's ``run`` gets: dataset, settings, runs, output helpers and a logger."""

    def __init__(self, name: str, args, store: RunStore | None = None, shared: dict | None = None,
                 trains: bool = True):
        from amr_tf.data import resolve_dataset

        self.name, self.args = name, args
        self.manifest_extra: dict = {}  # experiment-specific manifest entries (checkpoints used, ...)
        self.started = time.perf_counter()
        self.mode = "quick" if args.quick else "full"
        self.out_root = Path(args.out)
        self.out = self.out_root / name
        self.files: list[str] = []
        self.command = getattr(args, "command_line", None) or " ".join(
            [f"python -m reproduce.{name}"] + list(getattr(args, "argv", []) or []))
        if shared is None:
            shared = {}
        if "dataset" not in shared:
            shared["dataset"] = resolve_dataset(args.dataset, cnn=args.cnn,
                                                validation=getattr(args, "validation", None) or "holdout")
        self.dataset = shared["dataset"]
        if "mean_feature_norm" not in shared:  # once per dataset; by row chunks, not one float32 copy
            feats = self.dataset.features
            chunks = feats.chunks() if hasattr(feats, "chunks") else [(0, len(feats), np.asarray(feats))]
            shared["mean_feature_norm"] = float(np.concatenate([np.linalg.norm(r, axis=1) for _, _, r in chunks]).mean())
        self.mean_feature_norm = shared["mean_feature_norm"]
        if not trains:
            self.store = self.runs = None
            self.settings = {}  # the experiment records its own
            return
        if store is None:
            settings = dataclasses.replace(QUICK if args.quick else FULL)
            pretrained = resolve_pretrained(args.pretrained, self.dataset, log=self.log)
            for key, value in pretrained["settings"].items():
                setattr(settings, key, value)
            overrides = {"seeds": tuple(range(args.seeds)) if args.seeds else None,
                         "finetune_epochs": args.epochs, "eval_every": args.eval_every,
                         "pretrain_epochs": args.pretrain_epochs, "mf_epochs": args.mf_epochs,
                         "protocol": args.protocol, "learning_rates": args.lr, "regs": args.regs,
                         "embed_dim": args.embed_dim, "batch_size": args.batch_size, "grid_seeds": args.grid_seeds,
                         "eps": args.eps, "adv_weight": args.adv_weight,
                         "validation": getattr(args, "validation", None), "band_seeds": args.band_seeds}
            for key, value in overrides.items():
                if value is not None:
                    setattr(settings, key, value)
            settings.grid_seeds = min(settings.grid_seeds, len(settings.seeds))
            settings.band_seeds = min(settings.band_seeds, len(settings.seeds))
            cache = None if args.no_cache else Path(args.cache) if args.cache else self.out_root / "cache"
            store = RunStore(self.dataset, settings, cache, pretrained, log=self.log)
        self.store = self.runs = store
        self.store.log = self.log
        self.store.used, self.store.trained = {}, set()
        self.settings = store.settings

    # -- logging

    def log(self, msg: str) -> None:
        print(f"[{self.name} {time.perf_counter() - self.started:7.1f}s] {msg}", flush=True)

    # -- writers (every file atomic)

    def _path(self, rel: str) -> Path:
        path = self.out / rel
        if rel not in self.files:
            self.files.append(rel)
        return path

    def write_text(self, rel: str, text: str) -> Path:
        path = self._path(rel)
        atomic_write_text(path, text)
        return path

    def write_csv(self, rel: str, rows: list[dict], columns: list[str]) -> Path:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else repr(row[k]) if isinstance(row.get(k), float)
                                 else row.get(k)) for k in columns})
        return self.write_text(rel, buf.getvalue())

    def save_figure(self, fig, rel: str = "figure.png") -> Path:
        import matplotlib.pyplot as plt

        path = self._path(rel)
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        return path

    def write_tensorboard(self, series: dict) -> Path:
        """``{run: {tag: [(step, value), ...]}}`` as TensorBoard scalars under ``tensorboard/<run>/``.

        The event files are written into a temporary folder that then replaces ``tensorboard/``
        as a whole, so a rerun never mixes old and new events.
        """
        import tensorflow as tf

        final = self.out / "tensorboard"
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tensorboard.", dir=self.out))
        try:
            for run, tags in series.items():
                writer = tf.summary.create_file_writer(str(tmp / run))
                with writer.as_default():
                    for tag, points in tags.items():
                        for step, value in points:
                            tf.summary.scalar(tag, float(value), step=int(step))
                writer.flush()
                writer.close()
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        if "tensorboard/" not in self.files:
            self.files.append("tensorboard/")
        return final

    # -- the manifest

    def manifest(self, results, runtime: float) -> dict:
        from amr_tf.checkpoints import provenance

        prov = provenance()
        if "git_dirty" not in prov:
            try:
                dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                       capture_output=True, text=True, timeout=5).stdout.strip()
                prov["git_dirty"] = bool(dirty)
            except (OSError, subprocess.SubprocessError):
                prov["git_dirty"] = None
        import matplotlib as mpl
        import scipy

        prov.setdefault("scipy", scipy.__version__)
        prov["matplotlib"] = mpl.__version__
        runs = list(self.store.used.values()) if self.store is not None else []
        trained = sum(r.train_seconds for r in runs if r.key in self.store.trained)
        ds = self.dataset
        return {
            "experiment": self.name,
            "mode": self.mode,
            "command": self.command,
            "runtime_seconds": round(runtime, 2),
            "training_seconds": {"trained_by_this_experiment": round(trained, 2),
                                 "all_runs_used": round(sum(r.train_seconds for r in runs), 2),
                                 "note": "all_runs_used includes runs taken from the cache (or trained by an "
                                         "earlier experiment of the same process) and the pretrained VBPR"},
            "machine": {"cpus": os.cpu_count(), "platform": sys.platform},
            "provenance": prov,
            "dataset": {"name": ds.name, "path": ds.path, "fingerprint": ds.fingerprint, "summary": ds.summary(),
                        "num_users": ds.num_users, "num_items": ds.num_items, "feature_dim": ds.feature_dim,
                        "num_train_pairs": int(len(ds.train_pairs)), "mean_feature_norm": self.mean_feature_norm},
            "pretrained": dict(self.store.pretrained_info) if self.store is not None else None,
            "settings": dataclasses.asdict(self.settings) if dataclasses.is_dataclass(self.settings)
            else dict(self.settings),
            "seeds": list(self.settings.seeds) if self.store is not None else None,
            "runs": [r.describe() for r in runs],
            "files": sorted(self.files),
            **self.manifest_extra,
            "results": results,
        }


def build_parser(name: str, description: str, trains: bool = True, add_arguments=None) -> argparse.ArgumentParser:
    """The flags of an experiment: the common ones, the training ones (``trains``), and its own (``add_arguments``)."""
    from amr_tf.data import DEFAULT_DATASET
    from amr_tf.flags import float_list, non_negative_float, non_negative_int, positive_int

    p = argparse.ArgumentParser(prog=f"python -m reproduce.{name}", description=description)
    p.add_argument("--quick", action="store_true", help="tiny settings that run in seconds (used by the tests)")
    p.add_argument("--dataset", default=DEFAULT_DATASET,
                   help=f"built-in name or a directory in the original format (default: {DEFAULT_DATASET})")
    p.add_argument("--cnn", default=None, help="feature file f_<cnn>.npy of a dataset directory")
    p.add_argument("--out", default="results", help="results root; this experiment writes <out>/<experiment>/")
    p.add_argument("--validation", choices=("holdout", "none"), default="holdout",
                   help="holdout (default, the honest protocol): epochs and settings are chosen on the dataset's "
                        "val.txt, else on one seeded training pair per user held out; none: the original protocol "
                        "(no validation split, last epoch)")
    if add_arguments is not None:
        add_arguments(p)
    if not trains:
        return p
    p.add_argument("--pretrained", default=None,
                   help="pretrained VBPR checkpoint (NAME, NAME.weights.h5 or an original .npy); default "
                        "amr_tf/pretrained/vbpr-<dataset> if it exists for this dataset; 'none' trains one here")
    p.add_argument("--cache", default=None, help="trained-model cache (default <out>/cache)")
    p.add_argument("--no-cache", action="store_true", help="train every model afresh and keep none on disk")
    p.add_argument("--seeds", type=positive_int, default=None, help="number of seeds (0..N-1)")
    p.add_argument("--epochs", type=non_negative_int, default=None, help="fine-tuning epochs of AMR and VBPR")
    p.add_argument("--eval-every", type=positive_int, default=None, help="evaluate every N epochs")
    p.add_argument("--pretrain-epochs", type=non_negative_int, default=None,
                   help="epochs of the VBPR trained here when no pretrained checkpoint is given")
    p.add_argument("--mf-epochs", type=non_negative_int, default=None,
                   help="epochs of MF-BPR and DUIF (default: VBPR's whole budget, pretraining plus fine-tuning)")
    p.add_argument("--band-seeds", type=positive_int, default=None,
                   help="seeds of the certified-vs-attacked band in robustness (default 1)")
    p.add_argument("--grid-seeds", type=positive_int, default=None,
                   help="seeds per cell of the eps/lambda grid (default 2, at most --seeds)")
    p.add_argument("--lr", type=float_list(3, 0.0, strict=True), default=None,
                   help="Adagrad learning rates of P, Q, E for VBPR/AMR, e.g. [0.05,0.05,0.005] "
                        "(default: the pretrained checkpoint's, else the original's [0.01,1e-4,1e-3])")
    p.add_argument("--regs", type=float_list(3), default=None, help="VBPR/AMR penalties (default as --lr)")
    p.add_argument("--eps", type=non_negative_float, default=None,
                   help="AMR's adversarial budget for training (default the original's 0.1)")
    p.add_argument("--lmd", dest="adv_weight", type=non_negative_float, default=None,
                   help="AMR's adversarial weight lambda (default the original's 1)")
    p.add_argument("--embed-dim", type=positive_int, default=None, help="K when a VBPR is trained here")
    p.add_argument("--batch-size", type=positive_int, default=None, help="batch size (default 512)")
    p.add_argument("--protocol", choices=("sampled", "full"), default=None,
                   help="rank the test item among the sampled candidates (default, the original) or all items")
    return p


def run_experiment(module, args, store: RunStore | None = None, shared: dict | None = None) -> dict:
    """Run ``module.run`` in a fresh :class:`Context`, then write its manifest; returns a summary."""
    ctx = Context(module.NAME, args, store=store, shared=shared, trains=getattr(module, "TRAINS", True))
    ctx.log(f"{module.TITLE} ({ctx.mode} mode) on {ctx.dataset.summary()}")
    results = module.run(ctx)
    runtime = time.perf_counter() - ctx.started
    ctx.files.append("manifest.json")
    manifest = ctx.manifest(results, runtime)
    atomic_write_text(ctx.out / "manifest.json", to_json(manifest))
    ctx.log(f"wrote {ctx.out}/ ({', '.join(sorted(ctx.files))}) in {runtime:.1f} s")
    return {"name": module.NAME, "title": module.TITLE, "out": ctx.out, "runtime": runtime,
            "manifest": manifest, "store": ctx.store, "shared": {"dataset": ctx.dataset}}


def main(module, argv=None) -> int:
    """Command-line entry point of one experiment module."""
    parser = build_parser(module.NAME, module.TITLE, trains=getattr(module, "TRAINS", True),
                          add_arguments=getattr(module, "add_arguments", None))
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        run_experiment(module, args)
    except AmrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


# ---------------------------------------------------------------------------- shared tables


def aggregate(rows: list[dict], by: list[str], metrics=METRICS) -> list[dict]:
    """Group ``rows`` by the ``by`` columns; per metric ``<m>_mean``/``<m>_std`` over the group (seeds), ``n``."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in by), []).append(row)
    out = []
    for key, members in groups.items():
        agg = dict(zip(by, key))
        agg["n"] = len(members)
        for m in metrics:
            agg[f"{m}_mean"], agg[f"{m}_std"] = mean_std([r[m] for r in members])
        out.append(agg)
    return out


def run_name(run) -> str:
    name = run.label.replace(" ", "_").replace("(", "").replace(")", "")
    return name if run.seed is None else f"{name}/seed{run.seed}"


def history_series(runs, tags=METRICS, name=run_name) -> dict:
    """TensorBoard series ``{name(run): {tag: [(epoch, value)]}}`` from runs' evaluation histories."""
    return {name(run): {t: [(h["epoch"], h[t]) for h in run.history] for t in tags} for run in runs}


def compare(ctx, runs_a: list[Run], runs_b: list[Run], metrics=METRICS) -> list[dict]:
    """Per metric: A's and B's mean ± std over seeds, the difference, and paired tests of A against B.

    * over seeds: runs paired by seed (same triplets), paired t-test and Wilcoxon on the per-seed
      metrics (with 5 seeds the smallest two-sided Wilcoxon p is 0.0625);
    * over users: each user's metric averaged over the seeds, paired t-test and Wilcoxon across
      users (zero differences dropped by the Wilcoxon test).
    """
    by_seed_b = {r.seed: r for r in runs_b}
    pairs = [(a, by_seed_b.get(a.seed, runs_b[0] if len(runs_b) == 1 else None)) for a in runs_a]
    pairs = [(a, b) for a, b in pairs if b is not None]
    per_a = [a.per_user(ctx) for a, _ in pairs]  # once per run, not once per metric or comparison
    per_b = [b.per_user(ctx) for _, b in pairs]
    users_a = {m: np.mean([p[m] for p in per_a], axis=0) for m in metrics}
    users_b = {m: np.mean([p[m] for p in per_b], axis=0) for m in metrics}
    out = []
    for m in metrics:
        va = [a.metrics(ctx)[m] for a, _ in pairs]
        vb = [b.metrics(ctx)[m] for _, b in pairs]
        ma, sa = mean_std(va)
        mb, sb = mean_std(vb)
        seeds = paired_tests(va, vb)
        users = paired_tests(users_a[m], users_b[m])
        out.append({
            "metric": m, "a": runs_a[0].label, "b": runs_b[0].label, "a_mean": ma, "a_std": sa, "b_mean": mb,
            "b_std": sb, "diff": ma - mb, "rel_improvement_pct": 100.0 * (ma - mb) / mb if mb else math.nan,
            "seeds_n": seeds["n"], "seeds_t_p": seeds["t_p"], "seeds_wilcoxon_p": seeds["wilcoxon_p"],
            "users_n": users["n"], "users_t_p": users["t_p"], "users_wilcoxon_p": users["wilcoxon_p"],
            "seeds_wins": int(sum(x > y for x, y in zip(va, vb))),
        })
    return out


COMPARE_COLUMNS = ["metric", "a", "b", "a_mean", "a_std", "b_mean", "b_std", "diff", "rel_improvement_pct",
                   "seeds_n", "seeds_wins", "seeds_t_p", "seeds_wilcoxon_p", "users_n", "users_t_p",
                   "users_wilcoxon_p"]


def compare_markdown(rows: list[dict]) -> str:
    header = ["metric", rows[0]["a"], rows[0]["b"], "diff (rel.)", "wins", "t-test p (seeds)",
              "Wilcoxon p (seeds)", "t-test p (users)", "Wilcoxon p (users)"]
    body = [[r["metric"], fmt_ms(r["a_mean"], r["a_std"]), fmt_ms(r["b_mean"], r["b_std"]),
             f"{r['diff']:+.4f} ({r['rel_improvement_pct']:+.1f}%)", f"{r['seeds_wins']}/{r['seeds_n']}",
             fmt_p(r["seeds_t_p"]), fmt_p(r["seeds_wilcoxon_p"]), fmt_p(r["users_t_p"]),
             fmt_p(r["users_wilcoxon_p"])] for r in rows]
    return md_table(header, body)


QUICK_WARNING = ("> **Smoke test (quick mode): these numbers are unfit for conclusions.** Tiny embeddings, a few "
                 "epochs and two seeds check that the pipeline runs end to end; they say nothing about the models. "
                 "Run without `--quick` for results.\n")


def selection_text(ctx) -> str:
    """How epochs and settings were chosen, in one sentence."""
    if ctx.store.validated:
        return ("Selection: every run keeps the epoch with the best validation NDCG@10 (evaluated every "
                f"{ctx.settings.eval_every} epochs within its budget), grids are decided on validation NDCG@10; "
                "the test split only measures the selected models.")
    return ("Selection: none (`--validation none`, the original protocol): the last epoch of every run and the "
            "grids' first settings.")


def settings_line(ctx) -> str:
    s = ctx.settings
    pre = ctx.store.pretrained_info
    if pre["source"] == "given":
        src = f"`{Path(pre['path']).name}` ({ctx.store.pretrain_epochs() or '?'} epochs)"
    else:
        src = (f"trained here ({s.pretrain_epochs} epochs"
               + (f", epoch {pre['selected_epoch']} selected" if pre.get("selected_epoch") is not None else "") + ")")
    text = (f"Dataset `{ctx.dataset.name}` ({ctx.dataset.num_users} users, {ctx.dataset.num_items} items, "
            f"{len(ctx.dataset.train_pairs)} training pairs, {ctx.dataset.feature_dim}-d features), "
            f"{s.protocol} protocol; {ctx.mode} mode: K={s.embed_dim}, regs={list(s.regs)}, "
            f"lr={list(s.learning_rates)}, batch {s.batch_size}, AMR eps={s.eps}, lambda={s.adv_weight}; "
            f"pretrained VBPR: {src}; fine-tuning {s.finetune_epochs} epochs; seeds {list(s.seeds)}. "
            + selection_text(ctx))
    return (QUICK_WARNING + "\n" + text) if ctx.mode == "quick" else text
