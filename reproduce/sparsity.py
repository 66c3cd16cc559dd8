"""Sparsity study: where should AMR's accuracy gain appear? MF-BPR, DUIF, VBPR and AMR as data thins out.

The AMR paper's data (Pinterest) has about two training pairs per user; the embedded
``movielens-posters`` has about 57, and there AMR is no more accurate than VBPR
(docs/reproduction.md). This experiment thins the training data out and asks, at each level,
whether the image features help (VBPR vs MF-BPR) and whether adversarial training helps
(AMR vs VBPR).

**User arm.** Each user's distinct training items are capped at ``n`` in {1, 2, 5, 10, 20, all}
(:func:`cap_user_pairs`): a seeded random subset, nested in ``n`` (the items kept for ``n`` are
among those kept for every larger ``n``), every ``pos.txt`` line of a kept (user, item) pair kept.
The validation and test rows are not touched, no user with training pairs loses all of them
(``n >= 1``), and seed ``s`` draws the subset, the initial weights and the triplets of every
model, so the four models of one (n, seed) see the same data and pair up in the tests.

**Item arm** (evaluation restricted to items with few training pairs). The same runs, evaluated
separately on the test users whose test item has few training pairs in the full training data
(:data:`ITEM_BUCKETS`: 0, 1-4, 5-19, 20-99, 100+; the same users at every n and seed, so the runs
still pair up; at a cap n the models saw at most that many of those pairs). Image features should
matter most for an item whose ID embedding saw little or nothing; stratifying the test users by
their test item's training count measures that without retraining and without changing anything
for the other items. Capping the pairs per item instead would also strip the popular items, i.e.
thin out every user at the same time (confounding the two arms), and would need another set of
trainings the CPU budget does not have. Bucket membership depends only on the training data, never
on a score; the buckets are small (tens to hundreds of users), so their tests have little power.

**Selection on validation, never on the test items.** Every run is trained with early stopping on
the validation split's NDCG@10 (the dataset's ``val.txt``, or one pair per user carved out of the
training pairs when it has none, :func:`amr_tf.data.carve_holdout`), evaluated every
``steps_per_eval`` gradient steps (rounded to whole epochs, so a sparse dataset is evaluated after
as many updates as a dense one), stopped after ``patience`` evaluations without improvement, at
most ``max_evals`` evaluations; the weights of the best validation evaluation are the run's.
**AMR** is trained from scratch with the adversary (eps, lambda) on, under exactly VBPR's schedule and
selection (same initial weights, same triplets per seed), so that AMR and VBPR differ only in the
adversarial term; with several ``amr_eps`` the eps with the best mean validation NDCG@10 over the
seeds is chosen per n. The paper fine-tunes a pretrained VBPR instead. With early stopping that
design makes AMR train on past VBPR's validation optimum with restarted Adagrad accumulators (in a
pilot at n = 1 the fine-tuned AMR's validation NDCG@10 fell from the VBPR's 0.0430 to 0.0374), which
mixes the adversary's effect with that of the extra training; the ``overall`` experiment measures
the paper's fine-tuning design on the full data. The negative sampler does not use
the original's cold-start rule (which hides the test items absent from training, a test leak that
grows as the data thins out).

Outputs (``<out>/sparsity/``): ``runs.csv`` (every run: selected epoch, validation and test
metrics), ``results.csv`` (mean ± std per model and n), ``comparison.csv`` (paired tests per n),
``items.csv`` (the item arm), ``table.md``, ``figure.png`` (NDCG@10 against the training pairs per
user, log x axis, ± one standard deviation over seeds; the item arm beside it), ``manifest.json``
and ``tensorboard/`` (validation curves). Finished runs are cached (``<out>/cache/sparsity/``), so
an interrupted run resumes. Under ``reproduce.all`` the shared flags ``--seeds``, ``--lr``,
``--lmd`` and ``--cache`` apply; the others are this script's own.

``python -m reproduce.sparsity [--quick] [--dataset DIR] [--seeds N] [--ns 1,2,5,10,20,all] [--out DIR]``
"""

from __future__ import annotations

import dataclasses
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from reproduce import common

NAME = "sparsity"
TITLE = "Sparsity study: MF-BPR, DUIF, VBPR and AMR with at most n training pairs per user"
TRAINS = False  # trains its own runs (one dataset per n), not through common.RunStore

#: Model labels -> registry names.
MODEL_NAMES = {"MF-BPR": "MFBPR", "DUIF": "DUIF", "VBPR": "VBPR", "AMR": "AMR"}
#: Test-item training-pair counts of the item arm, inclusive (None: no upper end).
ITEM_BUCKETS = ((0, 0), (1, 4), (5, 19), (20, 99), (100, None))
#: (A, B) pairs tested at every n: is A better than B?
COMPARISONS = (("AMR", "VBPR"), ("VBPR", "MF-BPR"), ("DUIF", "MF-BPR"), ("VBPR", "DUIF"))
MAIN_METRICS = ("NDCG@10", "HR@10")
POPULARITY = "Popularity"  # the untrained reference, in every table and the figure


@dataclasses.dataclass
class Settings:
    """Every knob of the sparsity study (recorded in the manifest)."""

    ns: tuple = (1, 2, 5, 10, 20, None)  # None: all of each user's pairs
    seeds: tuple = (0, 1, 2, 3, 4)
    seeds_at: dict = dataclasses.field(default_factory=dict)  # {"20": 3}: only the first 3 seeds at n = 20
    models: tuple = ("MF-BPR", "DUIF", "VBPR", "AMR")
    embed_dim: int = 64
    batch_size: int = 512
    # The project's measured settings on movielens-posters (amr_tf/pretrained/vbpr-movielens-posters,
    # the registry's MF-BPR defaults); DUIF takes (lr_P, lr_E) from the three rates by name.
    mf_learning_rates: tuple = (0.05, 0.05)
    mf_regs: tuple = (1e-3, 1e-3, 0.0)
    learning_rates: tuple = (0.05, 0.05, 0.005)
    regs: tuple = (1e-3, 1e-3, 0.0)
    amr_eps: tuple = (0.1,)  # chosen on validation per n when more than one
    adv_weight: float = 1.0
    # early stopping on val_NDCG@10, counted in evaluations
    steps_per_eval: int = 300
    max_eval_every: int = 10  # epochs: a tiny dataset (n = 1: 2 steps an epoch) is still evaluated often
    patience: int = 2
    max_evals: int = 20
    protocol: str = "sampled"

    def n_label(self, n) -> str:
        return "all" if n is None else str(n)

    def seeds_for(self, n) -> tuple:
        """The seeds run at cap ``n`` (all of ``seeds`` unless ``seeds_at`` says fewer)."""
        k = self.seeds_at.get(self.n_label(n))
        return tuple(self.seeds[:k]) if k else tuple(self.seeds)

    def seeds_text(self) -> str:
        if not self.seeds_at:
            return f"{len(self.seeds)} seeds {list(self.seeds)}"
        fewer = ", ".join(f"{len(self.seeds_for(n))} at n = {self.n_label(n)}" for n in self.ns
                          if self.n_label(n) in self.seeds_at)
        return f"{len(self.seeds)} seeds {list(self.seeds)} ({fewer})"


#: Full mode: five seeds, every n, every model (sized for about 50 min on a shared 2-core CPU).
FULL = Settings()
#: Quick mode: seconds on the synthetic dataset (tiny K, few evaluations; smoke-test numbers only).
QUICK = Settings(ns=(1, None), seeds=(0, 1), embed_dim=8, learning_rates=(0.05, 0.05, 0.05),
                 steps_per_eval=8, patience=2, max_evals=4)


# ---------------------------------------------------------------------------- the data


def cap_user_pairs(ds, n: int | None, seed: int):
    """``ds`` with each user's distinct training items capped at ``n`` (None: unchanged).

    A uniformly random subset of each user's distinct items (``numpy.random.default_rng(seed)``
    draws one key per distinct pair; a user keeps its ``n`` smallest), so the subsets are nested in
    ``n`` for one seed. Every line of a kept (user, item) pair stays (``pos.txt`` may repeat a
    pair); validation and test rows, features and the user/item counts are unchanged.
    """
    from amr_tf.errors import AmrError

    if n is None:
        return ds
    if int(n) < 1:
        raise AmrError(f"sparsity: the cap on training pairs per user must be >= 1, got {n}")
    pairs = ds.train_pairs
    from amr_tf.data.dataset import pair_keys

    keys = pair_keys(pairs[:, 0], pairs[:, 1], ds.num_items)
    distinct = np.unique(keys)  # sorted by user, then item
    users = distinct // ds.num_items
    draw = np.random.default_rng(seed).random(len(distinct))
    order = np.lexsort((draw, users))  # by user, then by the random key
    first = np.searchsorted(users[order], users[order], side="left")  # each user's start in that order
    position = np.empty(len(distinct), np.int64)
    position[order] = np.arange(len(distinct)) - first
    kept = distinct[position < int(n)]
    return dataclasses.replace(ds, train_pairs=pairs[np.isin(keys, kept)],
                               name=f"{ds.name} (<= {int(n)} items/user, seed {seed})")


def with_validation(ds, log=print, mode: str | None = None):
    """The dataset's own validation split, or (when it has none) one pair per user carved out of training.

    ``mode`` ``"none"`` (a ``--validation none`` flag, the original protocol) is refused: every choice
    of this study is made on validation.
    """
    from amr_tf.data import carve_holdout

    if mode == "none":
        raise common.AmrError("--validation none: the sparsity study chooses every epoch on validation; "
                              "use the dataset's val.txt or a holdout (--validation holdout)")
    if ds.validation_candidates is not None:
        return ds
    log(f"{ds.name} has no validation split: carving one pair per user out of the training pairs (holdout, seed 0)")
    return carve_holdout(ds, seed=0)


def item_bucket_of_users(ds) -> np.ndarray:
    """Per test user, the index in :data:`ITEM_BUCKETS` of its test item's number of training pairs in ``ds``."""
    counts = ds.item_popularity[ds.test_candidates[:, 0]]
    out = np.full(len(counts), -1, np.int64)
    for b, (lo, hi) in enumerate(ITEM_BUCKETS):
        out[(counts >= lo) & (counts <= (np.inf if hi is None else hi))] = b
    return out


def bucket_label(b: int) -> str:
    lo, hi = ITEM_BUCKETS[b]
    return f"{lo}" if lo == hi else f"{lo}+" if hi is None else f"{lo}-{hi}"


# ---------------------------------------------------------------------------- training with selection on validation


def schedule(num_pairs: int, s: Settings, evals: int) -> tuple[int, int]:
    """``(eval_every, max_epochs)``: evaluate about every ``steps_per_eval`` steps but at least every
    ``max_eval_every`` epochs, at most ``evals`` times."""
    steps = max(1, -(-num_pairs // s.batch_size))
    every = min(s.max_eval_every, max(1, int(round(s.steps_per_eval / steps))))
    return every, every * evals


def _validation_callback(ds, every: int, patience: int, protocol: str):
    """An evaluation callback that ranks only the validation split (the test items are ranked once,
    after selection)."""
    from amr_tf.callbacks import EvaluationCallback
    from amr_tf.evaluation import evaluate

    class ValidationOnly(EvaluationCallback):
        def measure(self):
            val = evaluate(self.model, self.dataset, ks=self.ks, protocol=self.protocol, split="validation")
            return {f"val_{k}": v for k, v in val.items()}

    evaluator = ValidationOnly(ds, every=every, ks=common.KS, monitor="val_NDCG@10", protocol=protocol,
                               print_fn=None, patience=patience)
    return evaluator


def train_selected(ds, label: str, seed: int, s: Settings, eps: float | None = None) -> dict:
    """Train one model on ``ds`` from scratch with early stopping on validation; the selected model's ranks and record."""
    from amr_tf.checkpoints import assign_finite
    from amr_tf.evaluation import model_vectors, rank_test_items
    from amr_tf.training import build_model, fit, set_seed

    name = MODEL_NAMES[label]
    mf = name == "MFBPR"
    set_seed(seed)
    model = build_model(name, ds, seed=seed, embed_dim=s.embed_dim,
                        learning_rates=s.mf_learning_rates if mf else s.learning_rates,
                        regs=s.mf_regs if mf else s.regs,
                        eps=eps if eps is not None else 0.0, adv_weight=s.adv_weight if eps is not None else 0.0)
    every, epochs = schedule(len(ds.train_pairs), s, s.max_evals)
    evaluator = _validation_callback(ds, every, s.patience, s.protocol)
    keeper, best = common.keep_best(evaluator, model)
    started = time.perf_counter()
    fit(model, ds, epochs=epochs, batch_size=s.batch_size, seed=seed, callbacks=[evaluator, keeper], verbose=0,
        exclude_cold_start=False)
    seconds = time.perf_counter() - started
    assign_finite(model, list(best["weights"]), list(best["weights"].values()), f"{label} best epoch")
    history = evaluator.history
    vectors = model_vectors(model)  # the selected weights' vectors, for both splits
    return {
        "model": label, "seed": int(seed), "eps": eps, "best_epoch": int(evaluator.best_epoch),
        "epochs_run": int(history[-1]["epoch"]), "eval_every": every, "max_epochs": epochs,
        "stopped_early": evaluator.stopped is not None, "train_seconds": round(seconds, 3),
        "history": [{"epoch": h["epoch"], "val_NDCG@10": h["val_NDCG@10"], "val_HR@10": h["val_HR@10"]}
                    for h in history],
        "val_ranks": rank_test_items(model, ds, protocol=s.protocol, split="validation", vectors=vectors).tolist(),
        "test_ranks": rank_test_items(model, ds, protocol=s.protocol, vectors=vectors).tolist(),
    }


class Study:
    """Trains (or reads from the cache) the runs of every (n, seed, model)."""

    def __init__(self, ds, settings: Settings, cache_dir: Path, log, cached_only: bool = False):
        self.ds, self.s, self.cache, self.log = ds, settings, cache_dir, log
        self.cache.mkdir(parents=True, exist_ok=True)
        self.trained = self.reused = 0
        self.cached_only = cached_only
        self.missing: list[str] = []  # with cached_only: the runs not in the cache, left out
        self.per_user = PerUserMetrics()

    def _key(self, data, label, seed, eps) -> str:
        s = self.s
        mf = MODEL_NAMES[label] == "MFBPR"
        params = {"data": data.fingerprint, "model": MODEL_NAMES[label], "seed": seed, "eps": eps,
                  "adv_weight": s.adv_weight if eps is not None else None, "K": s.embed_dim, "batch": s.batch_size,
                  "lr": list(s.mf_learning_rates if mf else s.learning_rates), "regs": list(s.mf_regs if mf else s.regs),
                  "steps_per_eval": s.steps_per_eval, "max_eval_every": s.max_eval_every, "patience": s.patience,
                  "evals": s.max_evals, "protocol": s.protocol, "sampler": "no-cold-start-rule"}
        return f"{label.lower().replace('-', '')}-s{seed}-{common.digest(params)}"

    def run(self, data, n, label, seed, eps=None) -> dict:
        from amr_tf.io import atomic_write_text
        from amr_tf.safe_io import read_json

        key = self._key(data, label, seed, eps)
        path = self.cache / f"{key}.json"
        if path.exists():
            try:
                record = read_json(path, "sparsity run record")
                self.reused += 1
                return record
            except common.AmrError as exc:
                self.log(f"cache entry {path} unusable ({exc}); retraining")
        if self.cached_only:
            self.missing.append(f"n={self.s.n_label(n)} {label} seed {seed}")
            return None
        record = train_selected(data, label, seed, self.s, eps=eps)
        record.update({"cap": self.s.n_label(n), "key": key})
        atomic_write_text(path, common.to_json(record))
        self.trained += 1
        val = self.per_user(record, "val")["NDCG@10"].mean()
        self.log(f"  n={self.s.n_label(n):>3} {label:6s} seed {seed}{'' if eps is None else f' eps {eps}'}: "
                 f"best epoch {record['best_epoch']}/{record['epochs_run']} (every {record['eval_every']}), "
                 f"val NDCG@10 {val:.4f}, {record['train_seconds']:.1f} s")
        return record


# ---------------------------------------------------------------------------- the experiment


def add_arguments(p) -> None:
    from amr_tf.flags import float_list, non_negative_float, non_negative_int, positive_int

    p.add_argument("--seeds", type=positive_int, default=None, help="number of seeds; default 5 (quick: 2)")
    p.add_argument("--first-seed", type=non_negative_int, default=0,
                   help="seeds are FIRST..FIRST+N-1 (to split the runs over processes sharing one cache)")
    p.add_argument("--seeds-at", type=_seeds_at, default=None,
                   help="fewer seeds at some caps, e.g. 20=3,all=3 (the first 3 seeds there)")
    p.add_argument("--ns", type=_ns, default=None,
                   help="caps on training items per user, comma-separated, 'all' for no cap (default 1,2,5,10,20,all)")
    p.add_argument("--models", type=_models, default=None, help=f"comma-separated subset of {','.join(MODEL_NAMES)}")
    p.add_argument("--amr-eps", type=_eps_list, default=None,
                   help="AMR's eps, comma-separated; several: chosen per n on validation (default 0.1)")
    p.add_argument("--lmd", dest="adv_weight", type=non_negative_float, default=None, help="AMR's lambda (default 1)")
    p.add_argument("--lr", type=float_list(3, 0.0, strict=True), default=None,
                   help="Adagrad rates of P, Q, E for DUIF/VBPR/AMR (default [0.05,0.05,0.005])")
    p.add_argument("--max-evals", type=positive_int, default=None, help="most evaluations per run from scratch")
    p.add_argument("--patience", type=positive_int, default=None, help="evaluations without improvement before stopping")
    p.add_argument("--steps-per-eval", type=positive_int, default=None, help="gradient steps between evaluations")
    p.add_argument("--cache", default=None, help="cache root; the runs go to <cache>/sparsity/ (default <out>/cache)")
    p.add_argument("--no-cache", action="store_true", help="train every run afresh and keep none on disk")
    p.add_argument("--cached-only", action="store_true",
                   help="train nothing: tabulate the runs found in the cache and list the missing ones")
    

def _ns(text: str) -> tuple:
    import argparse

    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if part == "all":
            out.append(None)
            continue
        try:
            value = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected integers >= 1 or 'all', got {part!r} in {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"a cap must be >= 1 (a user keeps at least one pair), got {value}")
        out.append(value)
    if not out:
        raise argparse.ArgumentTypeError("no cap given")
    return tuple(sorted(set(out), key=lambda n: math.inf if n is None else n))


def _seeds_at(text: str) -> dict:
    import argparse

    out = {}
    for part in text.split(","):
        cap, _, k = part.partition("=")
        try:
            (n,) = _ns(cap)
            out["all" if n is None else str(n)] = int(k)
        except (ValueError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(f"expected CAP=SEEDS pairs like 20=3,all=3, got {part!r}") from None
        if int(k) < 1:
            raise argparse.ArgumentTypeError(f"at least one seed per cap, got {part!r}")
    return out


def _models(text: str) -> tuple:
    import argparse

    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in MODEL_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown model(s) {unknown}; choose from {', '.join(MODEL_NAMES)}")
    return tuple(m for m in MODEL_NAMES if m in names)


def _eps_list(text: str) -> tuple:
    import argparse

    try:
        values = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"every eps must be finite and > 0, got {text!r}")
    return values


def settings_from(args) -> Settings:
    s = dataclasses.replace(QUICK if args.quick else FULL)
    # Under ``reproduce.all`` only the flags every experiment has are present (--seeds, --lr, --lmd, --cache).
    flag = lambda name: getattr(args, name, None)  # noqa: E731
    first = flag("first_seed") or 0
    seeds = tuple(range(first, first + flag("seeds"))) if flag("seeds") else None
    if seeds is None and first:
        seeds = tuple(range(first, first + len(s.seeds)))
    overrides = {"seeds": seeds, "seeds_at": flag("seeds_at"), "ns": flag("ns"),
                 "models": flag("models"), "amr_eps": flag("amr_eps"), "adv_weight": flag("adv_weight"),
                 "learning_rates": flag("lr"), "max_evals": flag("max_evals"),
                 "patience": flag("patience"), "steps_per_eval": flag("steps_per_eval")}
    for key, value in overrides.items():
        if value is not None:
            setattr(s, key, value)
    return s


def popularity(data, seed: int, s: Settings) -> dict:
    """The untrained reference: items ranked by their number of training pairs in ``data``."""
    from amr_tf.evaluation import rank_test_items
    from amr_tf.training import build_model

    model = build_model("POP", data)
    return {"model": POPULARITY, "seed": int(seed), "eps": None, "best_epoch": 0, "epochs_run": 0, "eval_every": 0,
            "stopped_early": False, "train_seconds": 0.0, "history": [],
            "val_ranks": rank_test_items(model, data, protocol=s.protocol, split="validation").tolist(),
            "test_ranks": rank_test_items(model, data, protocol=s.protocol).tolist()}


def _labels(s) -> tuple:
    return (POPULARITY,) + tuple(s.models)


class PerUserMetrics:
    """Per-user metrics (:func:`reproduce.common.per_user_metrics`) of a record's stored ranks of a split
    (``"test"`` or ``"val"``), computed once per record and split however many tables read them.
    The records themselves are left as the cache holds them."""

    def __init__(self):
        self._memo = {}  # (id(record), split) -> (record, metrics); the record is held so its id stays its own

    def __call__(self, record, split: str = "test") -> dict:
        key = (id(record), split)
        if key not in self._memo:
            self._memo[key] = (record, common.per_user_metrics(record[f"{split}_ranks"]))
        return self._memo[key][1]


def _as_run(record, per_user: PerUserMetrics, label=None, mask=None) -> common.Run:
    """A :class:`reproduce.common.Run` holding a record's test ranks and per-user metrics (all users,
    or those of ``mask``)."""
    ranks, metrics = np.asarray(record["test_ranks"]), per_user(record)
    if mask is not None:
        ranks, metrics = ranks[mask], {m: v[mask] for m, v in metrics.items()}
    return common.Run(label or record["model"], record["seed"], None, record.get("history", []),
                      float(record["train_seconds"]), True, record.get("key"), {}, _ranks=ranks, _per_user=metrics)


def _val_ndcg(record, per_user: PerUserMetrics) -> float:
    return float(per_user(record, "val")["NDCG@10"].mean())


def collect(ctx, s: Settings, study: Study) -> tuple[dict, dict, dict]:
    """Every run: ``{(n, model): [record per seed]}``, the capped datasets by n, and AMR's eps per n."""
    records, datasets, chosen = {}, {}, {}
    for n in s.ns:
        ctx.log(f"n = {s.n_label(n)}")
        seeds = s.seeds_for(n)
        by_seed = {seed: cap_user_pairs(ctx.dataset, n, seed) for seed in seeds}
        datasets[n] = by_seed
        records[(n, POPULARITY)] = [popularity(by_seed[seed], seed, s) for seed in seeds]
        for seed in seeds:
            for label in ("MF-BPR", "DUIF", "VBPR"):
                if label in s.models:
                    record = study.run(by_seed[seed], n, label, seed)
                    if record is not None:  # None: --cached-only and not in the cache
                        records.setdefault((n, label), []).append(record)
        if "AMR" in s.models:
            grid = {eps: [r for r in (study.run(by_seed[seed], n, "AMR", seed, eps=eps) for seed in seeds)
                          if r is not None] for eps in s.amr_eps}
            grid = {eps: runs for eps, runs in grid.items() if runs}
            if not grid:
                continue
            scores = {eps: float(np.mean([_val_ndcg(r, study.per_user) for r in runs])) for eps, runs in grid.items()}
            best = max(scores, key=scores.get)
            chosen[n] = {"eps": best, "val_NDCG@10_by_eps": scores}
            records[(n, "AMR")] = grid[best]
            for eps, runs in grid.items():
                records[(n, f"AMR eps={eps}")] = runs
    return records, datasets, chosen


def _run_rows(s, records, per_user: PerUserMetrics) -> list[dict]:
    rows = []
    for (n, label), recs in records.items():
        if label.startswith("AMR eps="):
            continue
        for r in recs:
            test, val = per_user(r), per_user(r, "val")
            rows.append({"cap": s.n_label(n), "model": label, "seed": r["seed"], "eps": r.get("eps"),
                         "best_epoch": r["best_epoch"], "epochs_run": r["epochs_run"], "eval_every": r["eval_every"],
                         "stopped_early": r["stopped_early"], "train_seconds": r["train_seconds"],
                         "val_NDCG@10": float(val["NDCG@10"].mean()), "val_HR@10": float(val["HR@10"].mean()),
                         **{m: float(v.mean()) for m, v in test.items()}})
    return rows


def _comparisons(ctx, s, records, per_user: PerUserMetrics, mask_of=None) -> list[dict]:
    """Paired tests of every :data:`COMPARISONS` pair at every n (``mask_of(n, seed)``: users to keep)."""
    out = []
    for n in s.ns:
        for a, b in COMPARISONS:
            if (n, a) not in records or (n, b) not in records:
                continue
            # only the seeds both have (common.compare would pair a lone run of B with every run of A)
            seeds = sorted({r["seed"] for r in records[(n, a)]} & {r["seed"] for r in records[(n, b)]})
            if not seeds:
                continue
            masks = {seed: None if mask_of is None else mask_of(n, seed) for seed in seeds}
            runs_a = [_as_run(r, per_user, a, masks[r["seed"]]) for r in records[(n, a)] if r["seed"] in masks]
            runs_b = [_as_run(r, per_user, b, masks[r["seed"]]) for r in records[(n, b)] if r["seed"] in masks]
            if min(len(r.ranks(ctx)) for r in runs_a) == 0:
                continue
            for row in common.compare(ctx, runs_a, runs_b, metrics=MAIN_METRICS):
                out.append({"cap": s.n_label(n), **row})
    return out


def _items(ctx, s, records, per_user: PerUserMetrics) -> tuple[list[dict], list[dict]]:
    """The item arm: per n, bucket and model, NDCG@10/HR@10 over the users of that bucket; and the tests.

    The buckets count the test item's pairs in the full training data (the same users in a bucket
    at every n and seed, so that runs pair up); at a cap n the models saw at most that many.
    """
    bucket = item_bucket_of_users(ctx.dataset)
    rows, tests = [], []
    for b in range(len(ITEM_BUCKETS)):
        members = bucket == b
        users = int(members.sum())
        if not users:
            continue
        for n in s.ns:
            for label in _labels(s):
                if (n, label) not in records:
                    continue
                vals = {m: [] for m in MAIN_METRICS}
                for r in records[(n, label)]:
                    per = per_user(r)
                    for m in MAIN_METRICS:
                        vals[m].append(float(per[m][members].mean()))
                row = {"cap": s.n_label(n), "bucket": bucket_label(b), "users": users, "model": label}
                for m in MAIN_METRICS:
                    row[f"{m}_mean"], row[f"{m}_std"] = common.mean_std(vals[m])
                rows.append(row)
            for row in _comparisons(ctx, dataclasses.replace(s, ns=(n,)), records, per_user,
                                    mask_of=lambda n_, seed: members):
                tests.append({"bucket": bucket_label(b), "users": users, **row})
    return rows, tests


def verdicts(s, comparison, alpha: float = 0.05) -> list[str]:
    """Plain sentences: at which n A is better / worse than B on NDCG@10 (paired t-test over seeds and
    Wilcoxon over users both below ``alpha``), and where the difference is not significant."""
    lines = []
    for a, b in COMPARISONS:
        rows = [r for r in comparison if r["a"] == a and r["b"] == b and r["metric"] == "NDCG@10"]
        if not rows:
            continue
        better = [r["cap"] for r in rows if r["diff"] > 0 and r["seeds_t_p"] < alpha and r["users_wilcoxon_p"] < alpha]
        worse = [r["cap"] for r in rows if r["diff"] < 0 and r["seeds_t_p"] < alpha and r["users_wilcoxon_p"] < alpha]
        unclear = [r["cap"] for r in rows if r["cap"] not in better + worse]
        parts = [f"better at n = {', '.join(better)}" if better else "better at no n",
                 f"worse at n = {', '.join(worse)}" if worse else "worse at no n"]
        if unclear:
            parts.append(f"no significant difference at n = {', '.join(unclear)}")
        lines.append(f"* **{a} vs {b}** (NDCG@10; both p < {alpha}): " + "; ".join(parts) + ".")
    return lines


def _item_cap(s, item_rows) -> str:
    """The cap shown in the item arm: the largest n at which every model has runs (else the largest n)."""
    have = {(r["cap"], r["model"]) for r in item_rows}
    full = [s.n_label(n) for n in s.ns if all((s.n_label(n), m) in have for m in s.models)]
    return full[-1] if full else s.n_label(s.ns[-1])


def figure(ctx, s, agg, item_rows, x_of):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    ax = axes[0]
    for label in _labels(s):
        pts = [(x_of[r["cap"]], r["NDCG@10_mean"], r["NDCG@10_std"]) for r in agg if r["model"] == label]
        if pts:
            xs, ys, es = zip(*sorted(pts))
            style = dict(color="gray", linestyle="--") if label == POPULARITY else {}
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label, alpha=0.9, **style)
    ax.set_xscale("log")
    ticks = sorted(x_of.items(), key=lambda kv: kv[1])
    ax.set_xticks([v for _, v in ticks], [f"{k}\n({v:.1f})" for k, v in ticks])
    ax.minorticks_off()
    ax.set_xlabel("cap n on training items per user (mean training items per user)")
    ax.set_ylabel("test NDCG@10")
    complete = all(r["n"] >= len(s.seeds_for(n)) for r in agg for n in s.ns if r["cap"] == s.n_label(n))
    ax.set_title(f"{ctx.dataset.name}: mean ± std over "
                 + (s.seeds_text() if complete else "the seeds run (some points have fewer: see table.md)"), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    n_all = _item_cap(s, item_rows)
    rows = [r for r in item_rows if r["cap"] == n_all]
    labels = list(dict.fromkeys(r["bucket"] for r in rows))
    labels_m = _labels(s)
    width = 0.8 / len(labels_m)
    for k, label in enumerate(labels_m):
        sel = {r["bucket"]: r for r in rows if r["model"] == label}
        if not sel:
            continue
        ax.bar(np.arange(len(labels)) + (k - (len(labels_m) - 1) / 2) * width,
               [sel[b]["NDCG@10_mean"] if b in sel else np.nan for b in labels], width,
               yerr=[sel[b]["NDCG@10_std"] if b in sel else 0 for b in labels], capsize=2, label=label,
               **({"color": "gray"} if label == POPULARITY else {}))
    users = {r["bucket"]: r["users"] for r in rows}
    ax.set_xticks(np.arange(len(labels)), [f"{b}\n({users[b]:.0f} users)" for b in labels])
    ax.set_xlabel(f"training pairs of the test item (n = {n_all})")
    ax.set_ylabel("test NDCG@10")
    ax.set_title("item arm: test users by their test item's training count", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def run(ctx) -> dict:
    s = settings_from(ctx.args)
    ctx.settings = s
    ctx.dataset = with_validation(ctx.dataset, log=ctx.log, mode=getattr(ctx.args, "validation", None))
    if ctx.args.no_cache:
        cache = Path(tempfile.mkdtemp(prefix="amr-sparsity-"))
    else:
        cache = (Path(ctx.args.cache) if ctx.args.cache else ctx.out_root / "cache") / "sparsity"
    study = Study(ctx.dataset, s, cache, ctx.log, cached_only=bool(getattr(ctx.args, "cached_only", False)))
    records, datasets, chosen = collect(ctx, s, study)

    rows = _run_rows(s, records, study.per_user)
    metric_cols = list(common.METRICS)
    ctx.write_csv("runs.csv", rows, ["cap", "model", "seed", "eps", "best_epoch", "epochs_run", "eval_every",
                                     "stopped_early", "train_seconds", "val_NDCG@10", "val_HR@10"] + metric_cols)
    agg = common.aggregate(rows, ["model", "cap"], metrics=metric_cols + ["val_NDCG@10", "best_epoch", "train_seconds"])
    ctx.write_csv("results.csv", agg, ["model", "cap", "n"] + [f"{m}_{x}" for m in metric_cols + ["val_NDCG@10"]
                                                                   for x in ("mean", "std")])
    comparison = _comparisons(ctx, s, records, study.per_user)
    ctx.write_csv("comparison.csv", comparison, ["cap"] + common.COMPARE_COLUMNS)
    item_rows, item_tests = _items(ctx, s, records, study.per_user)
    ctx.write_csv("items.csv", item_rows, ["cap", "bucket", "users", "model"]
                  + [f"{m}_{x}" for m in MAIN_METRICS for x in ("mean", "std")])
    ctx.write_csv("items_comparison.csv", item_tests, ["bucket", "users", "cap"] + common.COMPARE_COLUMNS)

    pairs_per_user = {s.n_label(n): float(np.mean([len(d.train_pairs) for d in datasets[n].values()]))
                      / ctx.dataset.num_users for n in s.ns}
    ctx.write_text("table.md", _markdown(ctx, s, agg, comparison, item_rows, item_tests, chosen, pairs_per_user, study))
    ctx.save_figure(figure(ctx, s, agg, item_rows, pairs_per_user))
    series = {}
    for (n, label), recs in records.items():
        for r in recs:
            run_name = f"n{s.n_label(n)}/{label.replace(' ', '_').replace('(', '').replace(')', '').replace('+', '')}" \
                       f"/seed{r['seed']}"
            series[run_name] = {t: [(h["epoch"], h[t]) for h in r["history"]] for t in ("val_NDCG@10", "val_HR@10")}
    ctx.write_tensorboard(series)
    ctx.manifest_extra = {
        "seeds": list(s.seeds),
        "pretrained": {"source": "trained here", "path": None,
                       "note": "no pretrained checkpoint: AMR starts from the VBPR trained here for the same n and seed"},
        "validation": ctx.dataset.validation, "amr_eps_chosen": {s.n_label(n): c for n, c in chosen.items()},
        "pairs_per_user": pairs_per_user, "runs_trained": study.trained, "runs_from_cache": study.reused,
        "runs_missing": study.missing,
        "cache": str(cache), "train_seconds_total": round(sum(r["train_seconds"] for r in rows), 1),
    }
    return {"table": agg, "comparison": comparison, "items": item_rows, "items_comparison": item_tests,
            "verdicts": verdicts(s, comparison)}


def _cell(by, label, n, metric, planned) -> str:
    """mean ± std, with the number of runs when fewer than planned (``--cached-only``)."""
    row = by.get((label, n))
    if row is None:
        return "not run"
    text = common.fmt_ms(row[f"{metric}_mean"], row[f"{metric}_std"])
    return text if row["n"] >= planned else f"{text} ({row['n']} of {planned} seeds)"


def _markdown(ctx, s, agg, comparison, item_rows, item_tests, chosen, pairs_per_user, study) -> str:
    ns = [s.n_label(n) for n in s.ns]
    by = {(r["model"], r["cap"]): r for r in agg}
    ds = ctx.dataset
    text = [f"# {TITLE}\n",
            f"Dataset `{ds.name}` ({ds.num_users} users, {ds.num_items} items, {len(ds.train_pairs)} training "
            f"pairs, validation {ds.validation}), {s.protocol} protocol, {ctx.mode} mode"
            + (" (**smoke-test numbers, unfit for conclusions**)" if ctx.mode == "quick" else "")
            + f"; {s.seeds_text()}; K={s.embed_dim}, batch {s.batch_size}; MF-BPR lr {list(s.mf_learning_rates)}, "
            f"regs {list(s.mf_regs)}; DUIF/VBPR/AMR lr {list(s.learning_rates)}, regs {list(s.regs)}; AMR lambda "
            f"{s.adv_weight}, eps from {list(s.amr_eps)} (chosen on validation per n). Early stopping on validation "
            f"NDCG@10: an evaluation about every {s.steps_per_eval} steps, patience {s.patience}, at most "
            f"{s.max_evals} evaluations, every model from scratch (AMR too: same initial weights and triplets as VBPR, "
            "plus the adversary). Test numbers are those of the epoch selected on validation.\n",
            "## Test NDCG@10 (mean ± std over seeds) by the cap n on training items per user\n"]
    header = ["model"] + [f"n={n} ({pairs_per_user[n]:.1f}/user)" for n in ns]
    for metric in MAIN_METRICS:
        body = [[label] + [_cell(by, label, n, metric, len(s.seeds_for(n_))) for n, n_ in zip(ns, s.ns)]
                for label in _labels(s)]
        if metric != "NDCG@10":
            text.append(f"\n{metric}:\n")
        text.append(common.md_table(header, body))
    text += ["\n## Paired tests at each n\n",
             "Two-sided, SciPy: *seeds* pairs the runs of the same seed (same subsample, same triplets; "
             "`ttest_rel`, `wilcoxon`; the smallest two-sided Wilcoxon p is "
             + ", ".join(f"{2 / 2 ** k:.3g} with {k} seeds" for k in sorted({len(s.seeds_for(n)) for n in s.ns}))
             + "); *users* pairs each test user's metric averaged over the seeds.\n",
             *verdicts(s, comparison), ""]
    body = [[r["cap"], f"{r['a']} vs {r['b']}", r["metric"], f"{r['diff']:+.4f} ({r['rel_improvement_pct']:+.1f}%)",
             f"{r['seeds_wins']}/{r['seeds_n']}", common.fmt_p(r["seeds_t_p"]), common.fmt_p(r["seeds_wilcoxon_p"]),
             common.fmt_p(r["users_t_p"]), common.fmt_p(r["users_wilcoxon_p"])]
            for r in comparison if r["metric"] == "NDCG@10"]
    text.append(common.md_table(["n", "comparison", "metric", "diff (rel.)", "wins", "t p (seeds)", "Wilcoxon p (seeds)",
                                 "t p (users)", "Wilcoxon p (users)"], body))
    n_all = _item_cap(s, item_rows)
    text += [f"\n## Item arm: test users by their test item's training pairs (n = {n_all})\n",
             "NDCG@10 over the test users whose test item has that many training pairs in the full training data "
             "(every n in `items.csv`, the tests in `items_comparison.csv`).\n"]
    rows = [r for r in item_rows if r["cap"] == n_all]
    buckets = list(dict.fromkeys(r["bucket"] for r in rows))
    cell = {(r["bucket"], r["model"]): r for r in rows}
    users = {r["bucket"]: r["users"] for r in rows}
    body = [[b, f"{users[b]:.0f}"] + [common.fmt_ms(cell[(b, m)]["NDCG@10_mean"], cell[(b, m)]["NDCG@10_std"])
                                      if (b, m) in cell else "n/a" for m in _labels(s)] for b in buckets]
    text.append(common.md_table(["test item's training pairs", "users"] + list(_labels(s)), body))
    tests = [r for r in item_tests if r["cap"] == n_all and r["metric"] == "NDCG@10"]
    if tests:
        body = [[r["bucket"], f"{r['a']} vs {r['b']}", f"{r['diff']:+.4f}", f"{r['seeds_wins']}/{r['seeds_n']}",
                 common.fmt_p(r["seeds_t_p"]), common.fmt_p(r["users_wilcoxon_p"])] for r in tests]
        text.append("\n" + common.md_table(["bucket", "comparison", "NDCG@10 diff", "wins", "t p (seeds)",
                                            "Wilcoxon p (users)"], body))
    text += ["\n## Selection (on validation)\n"]
    body = []
    for n in s.ns:
        for label in s.models:
            r = by.get((label, s.n_label(n)))
            if r is None:
                continue
            body.append([s.n_label(n), label, f"{r['val_NDCG@10_mean']:.4f}", f"{r['best_epoch_mean']:.0f}",
                         f"{r['train_seconds_mean']:.1f}",
                         f"{chosen[n]['eps']}" if label == "AMR" and n in chosen else ""])
    text.append(common.md_table(["n", "model", "val NDCG@10", "selected epoch (mean)", "train s (mean)", "AMR eps"], body))
    text.append(f"\nRuns trained now: {study.trained}; taken from the cache: {study.reused}.\n")
    if study.missing:
        text.append(f"\n**Not run** (left out of every table above; `--cached-only` found no result): "
                    f"{len(study.missing)} runs: {'; '.join(study.missing)}.\n")
    text.append("\n![sparsity](figure.png)\n")
    return "\n".join(text)


def main(argv=None) -> int:
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    raise SystemExit(main())
