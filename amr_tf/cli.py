"""Command line: ``python -m amr_tf {train,tune,evaluate,convert-original,features}``.

``train`` accepts the original release's flag names (``--lr '[0.01,1e-4,1e-3]'`` etc.). Problems
with the input are reported as one ``error:`` line and a non-zero exit status, never a traceback.
``train --resume`` continues the run in ``--weight_dir`` from its ``last`` checkpoint (see
docs/errors.md); a NaN/Inf loss stops training and keeps the last good checkpoint.
"""

from __future__ import annotations

import argparse
import functools
import errno
import json
import math
import os
import sys
import time
from pathlib import Path

from amr_tf import pretrained
from amr_tf.errors import AmrError

from amr_tf.flags import (  # noqa: F401 - the flag types, re-exported for callers of the old place
    LEGACY_ARG_NAMES,
    cold_start_rule,
    flag_name,
    float_list,
    modern_arg_names,
    non_negative_float,
    non_negative_int,
    number,
    parse_bool,
    positive_int,
    seed_int,
)
from amr_tf.models import registry
from amr_tf.tuning.defaults import hparams_spec

# Flags that define what is trained: on --resume they default to the checkpoint's values, and
# giving one explicitly with another value is an error (the continuation would not be the same run).
RESUME_FIXED = ("model", "adv", "adv_type", "lr", "regs", "eps", "adv_weight", "embed_dim", "batch_size", "seed",
                "cold_start_rule", "protocol", "w0", "alpha")
# Taken from the checkpoint unless given (the dataset's fingerprint is checked instead of its name).
RESUME_INHERITED = ("dataset", "path", "cnn", "validation", "epoch", "verbose", "save_every", "logdir", "patience")


# ---------------------------------------------------------------------------- sub-commands


def add_dataset_flags(p: argparse.ArgumentParser) -> None:
    from amr_tf.data import DEFAULT_DATASET

    p.add_argument("--dataset", default=DEFAULT_DATASET,
                   help=f"built-in name (movielens-posters, synthetic, synthetic-original) or a directory "
                        f"in the original format (default: {DEFAULT_DATASET})")
    p.add_argument("--path", default=None, help="parent directory of --dataset (the original's --path Data/)")
    p.add_argument("--cnn", default=None, help="feature file f_<cnn>.npy to use (default: the only one present)")
    p.add_argument("--protocol", choices=("sampled", "full"), default="sampled",
                   help="rank the test item among neg.txt's candidates (the original) or all untrained items")
    p.add_argument("--validation", choices=("auto", "holdout", "none"), default="auto",
                   help="validation split: auto = the dataset's val.txt if it has one, else none; holdout = "
                        "val.txt, else one seeded pair per user carved from pos.txt; none = the original protocol")


def build_parser() -> argparse.ArgumentParser:
    # Building the parser imports no TensorFlow: ``--help`` answers at once (tests/test_cli.py holds it).
    parser = argparse.ArgumentParser(prog="python -m amr_tf", description=__doc__.splitlines()[0])
    parser.add_argument("--verbose-tf", action="store_true",
                        help="show TensorFlow's native start-up log lines (hidden by default; also AMR_TF_VERBOSE_TF=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train AMR, VBPR, MF-BPR (or score Popularity) and evaluate")
    add_dataset_flags(t)
    t.add_argument("--model", default="AMR", type=registry.canonical_name, choices=registry.NAMES,
                   help="the model (amr_tf.models.registry; MF and BPR are aliases of MFBPR)")
    t.add_argument("--adv", type=parse_bool, default=True, help="adversarial training for --model AMR (true/false)")
    t.add_argument("--adv_type", choices=("grad", "random"), default="grad")
    # Defaults of None are the model's own (amr_tf.models.registry); the original's names through dest=.
    t.add_argument("--lr", type=float_list(3, 0.0, strict=True), default=None,
                   help="Adagrad learning rates of P, Q, E (default: the model's; VBPR/AMR [0.01,1e-4,1e-3], "
                        "MFBPR [0.05,0.05] (the third value is ignored))")
    t.add_argument("--regs", type=float_list(3), default=None,
                   help="penalties on user, item and E (default: the model's; VBPR/AMR [1e-1,1e-3,0], "
                        "MFBPR [1e-3,1e-3,0])")
    t.add_argument("--epsilon", "--eps", dest="eps", type=non_negative_float, default=0.1,
                   help="adversary's L2 budget per item")
    t.add_argument("--lmd", dest="adv_weight", type=non_negative_float, default=1.0,
                   help="weight of the adversarial loss")
    t.add_argument("--w0", type=non_negative_float, default=None,
                   help="--model EALS: total weight of the missing data, the eALS paper's w0 (default: the model's, 1)")
    t.add_argument("--alpha", type=non_negative_float, default=None,
                   help="--model EALS: popularity exponent of the missing-data weights c_i ~ f_i^alpha (default 0.5); "
                        "its L2 penalty lambda is --regs' first value (default 0.01)")
    t.add_argument("--emb1_K", "--embed_dim", dest="embed_dim", type=positive_int, default=64)
    t.add_argument("--batch_size", type=positive_int, default=512)
    t.add_argument("--epoch", type=non_negative_int, default=20, help="number of epochs (the original ran 2000)")
    t.add_argument("--verbose", type=positive_int, default=5, help="evaluate every N epochs")
    t.add_argument("--patience", type=non_negative_int, default=0,
                   help="stop after N evaluations without improvement of val_NDCG@10 (needs a validation split: "
                        "--validation holdout or a val.txt; 0: never stop early)")
    t.add_argument("--weight_dir", default=None, help="where checkpoints go (default runs/<dataset>-<model>-<time>)")
    t.add_argument("--logdir", default=None, help="TensorBoard log directory (default <weight_dir>/logs)")
    t.add_argument("--pretrained", default=None, type=pretrained.resolve,
                   help="initialise from a checkpoint (NAME or NAME.weights.h5), a shipped one by name "
                        f"({', '.join(pretrained.names())}) or an original-release .npy")
    t.add_argument("--seed", type=seed_int, default=0,
                   help="seeds initialisation, sampling and the random adversary; with it a CPU run is "
                        "bit-for-bit repeatable (TensorFlow op determinism)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --weight_dir from its 'last' checkpoint (weights, Adagrad state, "
                        "epoch, random state); starts from epoch 0 if there is none yet")
    t.add_argument("--overwrite", action="store_true",
                   help="start afresh in a --weight_dir that holds another run: the old contents are first moved "
                        "aside to a timestamped sibling directory (nothing is deleted)")
    t.add_argument("--save_every", type=non_negative_int, default=1,
                   help="also write the 'last' checkpoint every N epochs between evaluations, to resume "
                        "from (0: only when evaluating; default 1)")
    t.add_argument("--cold_start_rule", type=cold_start_rule, default="auto",
                   help="items never sampled as negatives: original = test positives with no training pair, as "
                        "the original did (reads the test split); train = items with no training pair; off; auto "
                        "(default) = original under --validation none, train with a validation split. "
                        "true/false = original/off")
    t.add_argument("--hparams", default="recommended", type=hparams_spec,
                   help="defaults of the flags not given: recommended = the dataset's hyper-parameters tuned on its "
                        "validation split (<dataset directory>.hparams.json; the original's where it has none), "
                        "original = the original release's, or a 'tune' result (best.json)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(handler=cmd_train)

    u = sub.add_parser("tune", help="search hyper-parameters on the validation split (KerasTuner; every trial in "
                                    "TensorBoard's HParams dashboard; best.json)")
    add_dataset_flags(u)
    u.add_argument("--model", default="VBPR", type=registry.canonical_name, choices=("VBPR", "MFBPR", "AMR"),
                   help="VBPR/MFBPR: learning rates, penalties, K (and epochs, by the best validation epoch); "
                        "AMR: epsilon, lambda and the fine-tuning learning rate from --pretrained")
    u.add_argument("--max-trials", "--max_trials", dest="max_trials", type=positive_int, default=10,
                   help="at most this many trials (default 10)")
    u.add_argument("--budget-seconds", "--budget_seconds", dest="budget_seconds", type=number(float, 0.0, True),
                   default=None, help="start no trial after this many seconds (a running trial finishes)")
    u.add_argument("--max-epochs", "--max_epochs", dest="max_epochs", type=positive_int, default=30,
                   help="epochs per trial at most; a trial's epochs are its best validation epoch (default 30)")
    u.add_argument("--patience", type=non_negative_int, default=5,
                   help="stop a trial after N epochs without improvement of val_NDCG@10 (0: never; default 5)")
    u.add_argument("--batch_size", type=positive_int, default=512)
    u.add_argument("--pretrained", default=None, type=pretrained.resolve,
                   help="--model AMR: the VBPR checkpoint every trial fine-tunes (its K and penalties are kept)")
    u.add_argument("--seed", type=seed_int, default=0, help="seeds the search and every trial")
    u.add_argument("--cold_start_rule", type=cold_start_rule, default="auto",
                   help="as train's: which items are never sampled as negatives (default auto)")
    u.add_argument("--out", default=None, help="output directory (default runs/tune-<dataset>-<model>-<time>)")
    u.add_argument("--overwrite", action="store_true",
                   help="move an existing --out aside to a timestamped sibling and start afresh")
    u.set_defaults(handler=cmd_tune)

    e = sub.add_parser("evaluate", help="evaluate a saved checkpoint (or Popularity) on a dataset")
    add_dataset_flags(e)
    e.add_argument("checkpoint", nargs="?", type=pretrained.resolve,
                   help="checkpoint NAME, NAME.weights.h5, a shipped checkpoint's name, or an original .npy")
    e.add_argument("--model", default=None, type=registry.canonical_name, choices=registry.NAMES,
                   help="POP to evaluate the popularity baseline; "
                   "VBPR/MFBPR when the checkpoint is an original-release .npy")
    e.add_argument("--emb1_K", "--embed_dim", dest="embed_dim", type=positive_int, default=64)
    e.set_defaults(handler=cmd_evaluate)

    c = sub.add_parser("convert-original", help="turn the original release's best-vbpr.npy into a checkpoint")
    c.add_argument("npy", help="pickled [P, Q, E] weights file of the original release")
    c.add_argument("--out", required=True, help="checkpoint NAME to write (NAME.weights.h5 + NAME.json)")
    c.add_argument("--dataset", default=None, help="optional dataset to check the shapes against and record")
    c.add_argument("--path", default=None)
    c.add_argument("--cnn", default=None)
    c.set_defaults(handler=cmd_convert)

    from amr_tf.datasets.cli import add_build_dataset_subcommand  # no TensorFlow at import

    add_build_dataset_subcommand(sub)
    try:
        from amr_tf.vision.features import add_features_subcommand
    except ImportError:
        pass
    else:
        add_features_subcommand(sub)
    return parser


def _dataset(args):
    from amr_tf.data import resolve_dataset

    return resolve_dataset(args.dataset, cnn=args.cnn, path=args.path, validation=getattr(args, "validation", "auto"))


def print_table(rows: dict[str, dict], file=None) -> None:
    """A Markdown table: one row per model, one column per metric."""
    file = file or sys.stdout
    cols = list(next(iter(rows.values())).keys())
    print("| model | " + " | ".join(cols) + " |", file=file)
    print("|---|" + "---|" * len(cols), file=file)
    for name, metrics in rows.items():
        print(f"| {name} | " + " | ".join(f"{metrics[c]:.4f}" for c in cols) + " |", file=file)


def _plain(value):
    """``value`` as it reads back from JSON (tuples become lists), for comparisons with a manifest."""
    return json.loads(json.dumps(value))


@functools.lru_cache(maxsize=1)
def _train_actions() -> dict:
    """The ``train`` sub-command's flags by destination (to check stored values like typed ones)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices["train"]._actions}


def _as_flag_text(value) -> str:
    """A value as it would be typed on the command line (lists as ``[a,b,c]``)."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(repr(v) if isinstance(v, float) else str(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _stored_flag(action, value, where):
    """``value`` recorded for ``action``'s flag, parsed and checked exactly as if it had been typed."""
    flag = action.option_strings[0] if action.option_strings else action.dest
    if value is None and action.default is None:
        return None
    if isinstance(value, (dict, type(None))) or (isinstance(value, (list, tuple)) and len(value) > 16):
        raise AmrError(f"{where}: the stored {flag} {value!r} is not a valid value; the checkpoint is corrupt")
    try:
        parsed = action.type(_as_flag_text(value)) if action.type else _as_flag_text(value)
    except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
        raise AmrError(f"{where}: the stored {flag} {value!r} is invalid: {exc}") from None
    if action.choices is not None and parsed not in action.choices:
        raise AmrError(f"{where}: the stored {flag} {value!r} is not one of {', '.join(map(str, action.choices))}")
    return parsed


def _resume_args(args, manifest: dict, where: Path):
    """``args`` with the training configuration recorded in the checkpoint ``manifest``.

    Every stored value goes through the same parser (type, range, choices) as the command line,
    and then through the same size checks (``_check_sizes``); a stored ``logdir`` outside the run's
    directory is honoured only when given again explicitly.
    """
    stored = manifest.get("args")
    if not isinstance(stored, dict):
        raise AmrError(f"{where}: the checkpoint records no training configuration ('args'); "
                       "it was not written by 'python -m amr_tf train' and cannot be resumed")
    stored = modern_arg_names(stored)  # runs written with the original's names (lmd, epsilon, emb1_K)
    epoch = manifest.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise AmrError(f"{where}: the checkpoint's epoch counter is {epoch!r}; expected a non-negative integer")
    if epoch > MAX_EPOCHS:
        raise AmrError(f"{where}: the checkpoint's epoch counter {epoch} is more than {MAX_EPOCHS}; it is corrupt")
    explicit = getattr(args, "_explicit", set())
    actions = _train_actions()
    conflicts = []
    for key in RESUME_FIXED + RESUME_INHERITED:
        if key not in stored:
            continue
        value = _stored_flag(actions[key], stored[key], where)
        if key in explicit:
            if key in RESUME_FIXED and _plain(getattr(args, key)) != _plain(value):
                conflicts.append(f"--{key} {getattr(args, key)} (the run used {stored[key]})")
            continue
        if key == "logdir" and value is not None and not _inside(Path(value), Path(args.weight_dir)):
            raise AmrError(f"{where}: the run logged to {value}, outside {args.weight_dir}; give --logdir {value} "
                           "again to continue logging there (a checkpoint cannot choose where to write)")
        setattr(args, key, value)
    if conflicts:
        raise AmrError(f"--resume: {', '.join(conflicts)}; a resumed run keeps its configuration "
                       "(start a new --weight_dir to change it)")
    return args, epoch


def _inside(path: Path, directory: Path) -> bool:
    """Whether ``path`` (relative paths taken as given, like the flags) lies inside ``directory``."""
    try:
        path.resolve().relative_to(directory.resolve())
    except ValueError:
        return False
    return True


MAX_EPOCHS = 1_000_000  # the original ran 2000
MAX_BATCH_SIZE = 2**31 - 1  # TensorFlow's int32 dimension limit


def _check_sizes(args, ds) -> None:
    """Sizes from the command line or a resumed run's record, checked before anything is allocated."""
    from amr_tf.checkpoints import check_model_fits

    if args.epoch > MAX_EPOCHS:
        raise AmrError(f"--epoch {args.epoch} is more than {MAX_EPOCHS}")
    if args.batch_size > MAX_BATCH_SIZE:
        raise AmrError(f"--batch_size {args.batch_size} is more than {MAX_BATCH_SIZE} (a batch may hold at most "
                       f"the {len(ds.train_pairs)} training pairs anyway)")
    if args.model != "POP":
        check_model_fits(ds.num_users, ds.num_items, ds.feature_dim, args.embed_dim, "--emb1_K", AmrError)


# Taken from a --pretrained checkpoint's manifest unless given: fine-tuning continues that run.
PRETRAINED_INHERITED = {"lr": "learning_rates", "regs": "regs", "embed_dim": "embed_dim"}


def _pretrained_args(args) -> list[tuple[str, str]]:
    """Adopt the --pretrained checkpoint's K, learning rates and penalties for flags not given;
    returns ``(flag, shown)`` for each one adopted."""
    from amr_tf.checkpoints import read_manifest

    if not args.pretrained or str(args.pretrained).endswith(".npy"):
        return []
    config = read_manifest(args.pretrained).get("config") or {}
    explicit, adopted, actions = getattr(args, "_explicit", set()), [], _train_actions()
    for flag, key in PRETRAINED_INHERITED.items():
        if flag in explicit or key not in config:
            continue
        if flag == "lr" and isinstance(config[key], list) and len(config[key]) == 2:  # MF-BPR has two rates
            continue
        value = _stored_flag(actions[flag], config[key], args.pretrained)  # checked as if typed
        setattr(args, flag, value)
        adopted.append((flag, f"--{flag} {list(value) if isinstance(value, tuple) else value}"))
    return adopted


def _write_summary(weight_dir: Path, ds, args, name, command, final, evaluator, epochs_done, resumed_from,
                   seconds, previous=(), complete=True) -> None:
    """Write ``metrics.json``: the whole evaluation history (``previous``, from the runs this one
    resumes, then this process's), also while training (``"complete": false``) so that a kill
    loses none of it."""
    from amr_tf.checkpoints import provenance
    from amr_tf.checkpoints.provenance import portable_record
    from amr_tf.io import atomic_write_text

    best = evaluator.best if math.isfinite(evaluator.best) else None
    selected = evaluator.evaluations.record_at(evaluator.best_epoch, previous)
    summary = {
        "complete": complete,
        "model": name,
        "dataset": portable_record(ds.record()),
        "epochs": epochs_done,
        "resumed_from_epoch": resumed_from,
        "train_seconds": round(seconds, 2),
        # How best_epoch and the 'best' checkpoint were chosen: "val_NDCG@10", or the test metric
        # labelled as such when the dataset has no validation split (the original protocol).
        "selection": evaluator.selection,
        "patience": getattr(args, "patience", 0),
        "stopped_early": evaluator.stopped,
        "final": final,  # the last epoch's metrics (val_... with a validation split, then test)
        "selected": None if selected is None else {"epoch": evaluator.best_epoch, **selected},
        "best_epoch": evaluator.best_epoch,
        f"best_{evaluator.monitor}": best,
        "evaluations": list(previous) + list(evaluator.history),
        "seed": args.seed,
        "command": command,
        "config": _config(args),
        "provenance": provenance(),
    }
    atomic_write_text(weight_dir / "metrics.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")


def _config(args) -> dict:
    """The arguments as result files record them; a shipped checkpoint given by name (``--pretrained``)
    is recorded by its package-relative path, not this machine's."""
    from amr_tf.checkpoints.provenance import portable_path

    config = {k: v for k, v in vars(args).items() if k not in ("handler", "_explicit", "_argv", "verbose_tf")}
    if config.get("pretrained"):
        config["pretrained"] = portable_path(config["pretrained"])
    return config


def _recommended_args(args, ds) -> set[str]:
    """Apply the dataset's recommended hyper-parameters (``--hparams``) to the flags not given.

    Precedence: flags given > the recommendation > a ``--pretrained`` checkpoint's manifest >
    the original release's values; K always follows a ``--pretrained`` checkpoint (the shapes
    must fit). AMR's entry is for fine-tuning a ``--pretrained`` checkpoint; without one, AMR
    takes VBPR's. Prints one line naming what was used and how to get the original's; returns the
    flags (destinations) it set.
    """
    from amr_tf.tuning.defaults import recommended_flags

    model = args.model
    if model == "AMR" and not (args.adv and args.pretrained):
        # The AMR entry is for fine-tuning a --pretrained VBPR (what the search tuned); from scratch
        # (or as plain VBPR, --adv false) AMR trains with VBPR's recommendation and its own eps, lambda.
        model = "VBPR"
    found = recommended_flags(args.hparams, ds, model)
    if found is None:
        return set()
    flags, source = found
    explicit, actions, used = getattr(args, "_explicit", set()), _train_actions(), {}
    for key, value in flags.items():
        if key in explicit or (key == "embed_dim" and args.pretrained):
            continue
        value = _stored_flag(actions[key], value, source)  # checked as if typed
        setattr(args, key, value)
        used[key] = f"{flag_name(key)} {_as_flag_text(value)}"
    if used:
        print(f"defaults: {source}, tuned on validation: {' '.join(used.values())} "
              "(flags given override them; --hparams original for the original release's)")
    return set(used)


def cmd_train(args) -> int:
    from amr_tf.checkpoints import checkpoint_exists, read_manifest
    from amr_tf.evaluation import evaluate
    from amr_tf.run_dir import claimed_run_directory, refuse_non_directory
    from amr_tf.training import build_model, set_seed

    if args.resume and args.overwrite:
        raise AmrError("--resume continues the run in --weight_dir and --overwrite moves it aside; give one of them")
    for flag in ("weight_dir", "logdir"):
        refuse_non_directory(getattr(args, flag), f"--{flag}")
    resume, initial_epoch, adopted_from_pretrained = None, 0, []
    if args.resume:
        if not args.weight_dir:
            raise AmrError("--resume needs --weight_dir: the directory of the run to continue")
        last = Path(args.weight_dir) / "last"
        if checkpoint_exists(last):
            resume = read_manifest(last)
            args, initial_epoch = _resume_args(args, resume, last)
        else:
            print(f"--resume: no checkpoint in {args.weight_dir} yet; starting from epoch 0")
    elif args.pretrained:
        adopted_from_pretrained = _pretrained_args(args)
    set_seed(args.seed)
    ds = _dataset(args)
    print(ds.summary())
    recommended = _recommended_args(args, ds) if resume is None else set()
    adopted = [text for key, text in adopted_from_pretrained if key not in recommended]
    if adopted:
        print(f"from {args.pretrained}'s manifest: {' '.join(adopted)} (give the flags to override)")
    _check_sizes(args, ds)
    from amr_tf.data.sampling import resolve_cold_start_rule

    args.cold_start_rule = resolve_cold_start_rule(args.cold_start_rule, ds)  # the manifest records the rule used
    if args.patience and ds.validation_candidates is None:
        raise AmrError(f"--patience {args.patience}: dataset {ds.name} has no validation split to stop on "
                       "(early stopping never reads the test items); add --validation holdout (one seeded "
                       "training pair per user held out) or give the dataset a val.txt")
    name = args.model
    if name == "AMR" and not args.adv:
        name = "VBPR"  # the original's --adv False trains plain VBPR
    defaults = registry.lookup(name).defaults
    for flag, key in (("lr", "learning_rates"), ("regs", "regs")):
        if getattr(args, flag) is None and key in defaults:  # recorded in the manifest as used
            setattr(args, flag, tuple(defaults[key]))
    eals = {"c0": args.w0, "alpha": args.alpha, "reg": args.regs[0] if args.regs else None} if name == "EALS" else {}
    model = build_model(name, ds, embed_dim=args.embed_dim, regs=args.regs, learning_rates=args.lr,
                        eps=args.eps, adv_weight=args.adv_weight, adv_type=args.adv_type, seed=args.seed, **eals)
    if name == "POP":
        print_table({"POP": evaluate(model, ds, protocol=args.protocol)})
        return 0
    stamp = time.strftime("%Y%m%d-%H%M%S")
    weight_dir = Path(args.weight_dir or f"runs/{ds.name}-{name.lower()}-{stamp}")
    with claimed_run_directory(weight_dir, "--weight_dir", args.overwrite, stamp, has_checkpoint=resume is not None,
                               resuming=args.resume):
        return _train_in(weight_dir, args, ds, name, model, resume, initial_epoch)


def _train_in(weight_dir: Path, args, ds, name, model, resume, initial_epoch) -> int:
    """The rest of ``cmd_train``, while holding ``weight_dir``'s lock."""
    import keras

    from amr_tf.callbacks import EvaluationCallback
    from amr_tf.checkpoints import checkpoint_exists, load_pretrained, load_weights, read_manifest
    from amr_tf.errors import CheckpointError, TrainingDivergedError
    from amr_tf.run_dir import previous_evaluations
    from amr_tf.training import fit

    previous = []
    if resume is not None:
        last = weight_dir / "last"
        fp = (resume.get("dataset") or {}).get("fingerprint")
        if fp != ds.fingerprint:
            raise CheckpointError(
                f"{last}: --resume: the run was trained on dataset {(resume.get('dataset') or {}).get('name')!r} "
                f"(SHA-256 {str(fp)[:12]}...) but --dataset {args.dataset} gives {ds.name!r} "
                f"(SHA-256 {ds.fingerprint[:12]}...)"
            )
        if resume.get("model") != type(model).__name__:
            raise CheckpointError(f"{last}: holds a {resume.get('model')} model, not {type(model).__name__}")
        load_weights(model, last, resume)  # weights, Adagrad accumulators and counters, random state
        previous = previous_evaluations(weight_dir, initial_epoch)
        print(f"resuming {weight_dir} from epoch {initial_epoch}")
    elif args.pretrained:
        load_pretrained(model, args.pretrained)
        print(f"initialised from {args.pretrained}")
    logdir = Path(args.logdir or weight_dir / "logs")
    command = " ".join(["python -m amr_tf"] + list(getattr(args, "_argv", sys.argv[1:])))
    cfg = _config(args)
    evaluator = EvaluationCallback(ds, every=args.verbose, logdir=logdir, checkpoint_dir=weight_dir,
                                   protocol=args.protocol, manifest_extra={"command": command, "args": cfg},
                                   print_fn=print if args.quiet else None,  # the progress bar shows them
                                   save_every=args.save_every, patience=args.patience)
    evaluator.set_model(model)
    if resume is None:
        evaluator.evaluate_now(0)  # also writes the epoch-0 'last' and 'best' checkpoints
    elif checkpoint_exists(weight_dir / "best"):
        try:
            evaluator.restore(read_manifest(weight_dir / "best"), previous)
        except (CheckpointError, TypeError, ValueError) as exc:  # a damaged or crafted 'best' manifest
            print(f"warning: {exc}; the best checkpoint will be chosen afresh", file=sys.stderr)
    stopped = resume.get("stopped_early") if resume is not None else None
    if isinstance(stopped, dict):  # the run being resumed had stopped early: it is complete
        evaluator.stopped = stopped
    epochs = max(args.epoch, initial_epoch)
    started = time.perf_counter()
    resumed_from = initial_epoch if resume is not None else None
    written = [len(evaluator.history)]

    def progress(epoch, logs=None):  # metrics.json after each new evaluation: a kill loses no history
        if len(evaluator.history) != written[0]:
            written[0] = len(evaluator.history)
            _write_summary(weight_dir, ds, args, name, command, None, evaluator, epoch + 1, resumed_from,
                           time.perf_counter() - started, previous, complete=False)

    if evaluator.stopped is not None:
        print(f"{weight_dir} stopped early at epoch {initial_epoch} ({evaluator.stopped.get('reason')}); "
              "nothing to do (start a new --weight_dir to train further)")
    elif initial_epoch < args.epoch:
        try:
            fit(model, ds, epochs=args.epoch, batch_size=args.batch_size, seed=args.seed,
                callbacks=[evaluator, keras.callbacks.LambdaCallback(on_epoch_end=progress)],
                verbose=0 if args.quiet else "auto", exclude_cold_start=args.cold_start_rule,
                initial_epoch=initial_epoch)
        except TrainingDivergedError as exc:
            kept = weight_dir / "last"
            try:
                at = f" (epoch {read_manifest(kept).get('epoch')})"
            except CheckpointError:
                at = ""
            raise TrainingDivergedError(f"{exc}. The last good checkpoint is kept: {kept}{at}") from None
    else:
        print(f"{weight_dir} is already trained for {initial_epoch} epochs (--epoch {args.epoch}); nothing to do")
    seconds = time.perf_counter() - started
    if evaluator.stopped is not None:
        epochs = int(evaluator.stopped.get("epoch", initial_epoch))
    if evaluator.history and evaluator.history[-1]["epoch"] == epochs:
        final = {k: v for k, v in evaluator.history[-1].items() if k != "epoch"}
    else:  # a resumed run that was already complete
        final = evaluator.measure()
    _write_summary(weight_dir, ds, args, name, command, final, evaluator, epochs, resumed_from, seconds, previous)
    print(f"\ntrained {epochs - initial_epoch} epochs in {seconds:.1f} s; checkpoints in {weight_dir}, "
          f"TensorBoard: tensorboard --logdir {logdir}")
    if not evaluator.validated:
        print_table({f"{name} (epoch {epochs})": final})
        return 0
    # Test metrics at the epoch selected on validation and at the last epoch.
    test_only = lambda m: {k: v for k, v in m.items() if not k.startswith("val_")}  # noqa: E731
    rows = {}
    selected = evaluator.evaluations.record_at(evaluator.best_epoch, previous)
    if selected is not None and evaluator.best_epoch != epochs:
        rows[f"{name} (epoch {evaluator.best_epoch}, selected on {evaluator.selection})"] = test_only(selected)
    label = "selected and last" if selected is not None and evaluator.best_epoch == epochs else "last"
    rows[f"{name} (epoch {epochs}, {label})"] = test_only(final)
    print(f"test metrics; {evaluator.selection} chose epoch {evaluator.best_epoch}"
          + (f"; {evaluator.stopped.get('reason')}" if evaluator.stopped else ""))
    print_table(rows)
    return 0


def cmd_tune(args) -> int:
    """Search on the validation split (:mod:`amr_tf.tuning.search`) and write ``best.json``."""
    from amr_tf.run_dir import claimed_run_directory, refuse_non_directory
    from amr_tf.training import set_seed
    from amr_tf.tuning.search import run_search

    if args.validation == "none":
        raise AmrError("--validation none: the search selects on a validation split; use --validation auto "
                       "(the dataset's val.txt) or holdout")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    set_seed(args.seed)
    ds = _dataset(args)
    out = Path(args.out or f"runs/tune-{ds.name}-{args.model.lower()}-{stamp}")
    refuse_non_directory(out, "--out")
    with claimed_run_directory(out, "--out", args.overwrite, stamp, process="tuning"):  # as train's --weight_dir
        print(ds.summary())
        command = " ".join(["python -m amr_tf"] + list(getattr(args, "_argv", sys.argv[1:])))
        run_search(ds, args.model, out, max_trials=args.max_trials, budget_seconds=args.budget_seconds,
                   max_epochs=args.max_epochs, patience=args.patience, seed=args.seed, batch_size=args.batch_size,
                   pretrained=args.pretrained, exclude_cold_start=args.cold_start_rule, protocol=args.protocol,
                   command=command)
    return 0


def cmd_evaluate(args) -> int:
    from amr_tf.checkpoints import load_checkpoint, load_original_npy
    from amr_tf.evaluation import evaluate
    from amr_tf.training import build_model

    ds = _dataset(args)
    if args.model == "POP" or not args.checkpoint:
        if args.model != "POP":
            raise AmrError("give a checkpoint to evaluate, or --model POP")
        label, model = "POP", build_model("POP", ds)
    elif args.checkpoint.endswith(".npy"):
        from amr_tf.checkpoints import check_model_fits

        label = args.model or "VBPR"
        check_model_fits(ds.num_users, ds.num_items, ds.feature_dim, args.embed_dim, "--emb1_K", AmrError)
        model = build_model(label, ds, embed_dim=args.embed_dim, compile=False)
        load_original_npy(args.checkpoint, model)
    else:
        model, manifest = load_checkpoint(args.checkpoint, ds)
        label = manifest["model"]
    print(ds.summary())
    rows = {}
    if ds.validation_candidates is not None:
        rows[f"{label} (validation)"] = evaluate(model, ds, protocol=args.protocol, split="validation")
        rows[f"{label} (test)"] = evaluate(model, ds, protocol=args.protocol)
    else:
        rows[label] = evaluate(model, ds, protocol=args.protocol)
    print_table(rows)
    return 0


def cmd_convert(args) -> int:
    import numpy as np

    from amr_tf.checkpoints import load_original_npy, read_original_npy, save_checkpoint
    from amr_tf.models import VBPR

    arrays = read_original_npy(args.npy)
    shapes = [np.shape(a) for a in arrays]
    if len(shapes) != 3 or any(len(s) != 2 for s in shapes) or len({s[1] for s in shapes}) != 1:
        raise AmrError(f"{args.npy}: expected the original release's [P, Q, E] (three matrices with K "
                       f"columns each), got shapes {shapes}")
    (nu, k), (ni, _), (f, _) = shapes
    ds = None
    if args.dataset:
        ds = _dataset(args)
        if (ds.num_users, ds.num_items, ds.feature_dim) != (nu, ni, f):
            raise AmrError(f"{args.npy}: weights are for {nu} users, {ni} items, {f}-d features; dataset "
                           f"{ds.name} has {ds.num_users}, {ds.num_items}, {ds.feature_dim}")
    feats = ds.features if ds is not None else np.zeros((ni, f), np.float32)
    model = VBPR(nu, ni, feats, embed_dim=k)
    load_original_npy(args.npy, model, arrays)
    path = save_checkpoint(model, args.out, ds, converted_from=str(args.npy))
    print(f"wrote {path} ({nu} users, {ni} items, {f}-d features, K={k})")
    return 0


def _explicit_dests(argv) -> set[str]:
    """The destinations of the flags given on the command line (not left at their defaults)."""
    parser = build_parser()
    stack = [parser]
    while stack:
        p = stack.pop()
        for action in p._actions:
            action.default = argparse.SUPPRESS
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
    return set(vars(parser.parse_args(argv)))


# Exit statuses (docs/errors.md): argparse also exits with 2 on a malformed command line.
EXIT_INPUT = 2  # a problem with the input you can fix: AmrError (bad file, flag, checkpoint; divergence)
EXIT_SOFTWARE = 70  # TensorFlow failed in a way no check foresaw
EXIT_RESOURCES = 71  # out of memory (MemoryError, TensorFlow's ResourceExhaustedError)
EXIT_IO = 74  # the operating system refused a read or write (disk full, read-only, not a directory...)
EXIT_INTERRUPTED = 130


def _one_line(text) -> str:
    """``text`` on one line (library messages, h5py's in particular, can span several)."""
    return " ".join(str(text).split())


def _os_error_message(exc: OSError) -> str:
    """``path: reason`` for an OSError, with what it means for the files already written."""
    reason = _one_line(exc.strerror) if exc.strerror and "\n" not in exc.strerror else (
        os.strerror(exc.errno) if exc.errno else _one_line(exc))
    where = exc.filename if exc.filename is not None else None
    text = f"{where}: {reason}" if where is not None else _one_line(exc) if not exc.errno else reason
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
        text += " (nothing was half-written: the files written before are complete and kept)"
    return text


def main(argv=None) -> int:
    """Run one sub-command; every failure is one ``error:`` line on stderr and a documented exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose_tf:
        from amr_tf import _startup

        _startup.unconfigure()  # before any handler imports TensorFlow
    args._argv = argv
    args._explicit = _explicit_dests(argv)
    try:
        return args.handler(args)
    except AmrError as exc:
        status, message = EXIT_INPUT, _one_line(exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        status, message = EXIT_RESOURCES, "out of memory; use smaller sizes (--emb1_K, --batch_size) or a larger machine"
    except OSError as exc:
        status, message = EXIT_IO, _os_error_message(exc)
    except Exception as exc:  # TensorFlow's own errors, only if TensorFlow was imported at all
        tf = sys.modules.get("tensorflow")
        errors = getattr(tf, "errors", None)
        if errors is None or not isinstance(exc, errors.OpError):
            raise  # a bug: the traceback is what a report needs
        first = _one_line(str(exc.message).strip().splitlines()[0] if str(exc.message).strip() else exc)
        if isinstance(exc, errors.ResourceExhaustedError):
            status, message = EXIT_RESOURCES, f"TensorFlow ran out of memory ({first[:300]}); use smaller sizes"
        else:
            status, message = EXIT_SOFTWARE, f"TensorFlow failed: {type(exc).__name__}: {first[:300]}"
    print(f"error: {message}", file=sys.stderr)
    return status
