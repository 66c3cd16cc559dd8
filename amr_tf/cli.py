"""Command line: ``python -m amr_tf {train,evaluate,convert-original,features}``.

``train`` accepts the original release's flag names (``--lr '[0.01,1e-4,1e-3]'`` etc.). Problems
with the input are reported as one ``error:`` line and a non-zero exit status, never a traceback.
``train --resume`` continues the run in ``--weight_dir`` from its ``last`` checkpoint (see
docs/errors.md); a NaN/Inf loss stops training and keeps the last good checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from amr_tf.errors import AmrError

from amr_tf.flags import (  # noqa: F401 - the flag types, re-exported for callers of the old place
    LEGACY_ARG_NAMES,
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

# Flags that define what is trained: on --resume they default to the checkpoint's values, and
# giving one explicitly with another value is an error (the continuation would not be the same run).
RESUME_FIXED = ("model", "adv", "adv_type", "lr", "regs", "eps", "adv_weight", "embed_dim", "batch_size", "seed",
                "cold_start_rule", "protocol")
# Taken from the checkpoint unless given (the dataset's fingerprint is checked instead of its name).
RESUME_INHERITED = ("dataset", "path", "cnn", "epoch", "verbose", "save_every", "logdir")


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m amr_tf", description=__doc__.splitlines()[0])
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
    t.add_argument("--emb1_K", "--embed_dim", dest="embed_dim", type=positive_int, default=64)
    t.add_argument("--batch_size", type=positive_int, default=512)
    t.add_argument("--epoch", type=non_negative_int, default=20, help="number of epochs (the original ran 2000)")
    t.add_argument("--verbose", type=positive_int, default=5, help="evaluate every N epochs")
    t.add_argument("--weight_dir", default=None, help="where checkpoints go (default runs/<dataset>-<model>-<time>)")
    t.add_argument("--logdir", default=None, help="TensorBoard log directory (default <weight_dir>/logs)")
    t.add_argument("--pretrained", default=None,
                   help="initialise from a checkpoint (NAME or NAME.weights.h5) or an original-release .npy")
    t.add_argument("--seed", type=seed_int, default=0,
                   help="seeds initialisation, sampling and the random adversary; with it a CPU run is "
                        "bit-for-bit repeatable (TensorFlow op determinism)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --weight_dir from its 'last' checkpoint (weights, Adagrad state, "
                        "epoch, random state); starts from epoch 0 if there is none yet")
    t.add_argument("--save_every", type=non_negative_int, default=1,
                   help="also write the 'last' checkpoint every N epochs between evaluations, to resume "
                        "from (0: only when evaluating; default 1)")
    t.add_argument("--cold_start_rule", type=parse_bool, default=True,
                   help="reject cold-start test items as negatives, as the original did (uses test information)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(handler=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a saved checkpoint (or Popularity) on a dataset")
    add_dataset_flags(e)
    e.add_argument("checkpoint", nargs="?", help="checkpoint NAME, NAME.weights.h5, or an original .npy")
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

    try:
        from amr_tf.vision.features import add_features_subcommand
    except ImportError:
        pass
    else:
        add_features_subcommand(sub)
    return parser


def _dataset(args):
    from amr_tf.data import resolve_dataset

    return resolve_dataset(args.dataset, cnn=args.cnn, path=args.path)


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


def _resume_args(args, manifest: dict, where: Path):
    """``args`` with the training configuration recorded in the checkpoint ``manifest``."""
    stored = manifest.get("args")
    if not isinstance(stored, dict):
        raise AmrError(f"{where}: the checkpoint records no training configuration ('args'); "
                       "it was not written by 'python -m amr_tf train' and cannot be resumed")
    stored = modern_arg_names(stored)  # runs written with the original's names (lmd, epsilon, emb1_K)
    epoch = manifest.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise AmrError(f"{where}: the checkpoint's epoch counter is {epoch!r}; expected a non-negative integer")
    explicit = getattr(args, "_explicit", set())
    conflicts = []
    for key in RESUME_FIXED + RESUME_INHERITED:
        if key not in stored:
            continue
        if key in explicit:
            if key in RESUME_FIXED and _plain(getattr(args, key)) != _plain(stored[key]):
                conflicts.append(f"--{key} {getattr(args, key)} (the run used {stored[key]})")
            continue
        value = stored[key]
        setattr(args, key, tuple(value) if isinstance(value, list) else value)
    if conflicts:
        raise AmrError(f"--resume: {', '.join(conflicts)}; a resumed run keeps its configuration "
                       "(start a new --weight_dir to change it)")
    return args, epoch


# Taken from a --pretrained checkpoint's manifest unless given: fine-tuning continues that run.
PRETRAINED_INHERITED = {"lr": "learning_rates", "regs": "regs", "embed_dim": "embed_dim"}


def _pretrained_args(args) -> list[str]:
    """Adopt the --pretrained checkpoint's K, learning rates and penalties for flags not given."""
    from amr_tf.checkpoints import read_manifest

    if not args.pretrained or str(args.pretrained).endswith(".npy"):
        return []
    config = read_manifest(args.pretrained).get("config") or {}
    explicit, adopted = getattr(args, "_explicit", set()), []
    for flag, key in PRETRAINED_INHERITED.items():
        if flag in explicit or key not in config:
            continue
        value = tuple(config[key]) if isinstance(config[key], list) else config[key]
        if flag == "lr" and len(value) != 3 and args.model != "MFBPR":  # an MF-BPR checkpoint has two rates
            continue
        setattr(args, flag, value)
        adopted.append(f"--{flag} {list(value) if isinstance(value, tuple) else value}")
    return adopted


def _write_summary(weight_dir: Path, ds, args, name, command, final, evaluator, epochs_done, resumed_from,
                   seconds) -> None:
    from amr_tf.checkpoints import provenance
    from amr_tf.io import atomic_write_text

    best = evaluator.best if math.isfinite(evaluator.best) else None
    summary = {
        "model": name,
        "dataset": ds.record(),
        "epochs": epochs_done,
        "resumed_from_epoch": resumed_from,
        "train_seconds": round(seconds, 2),
        "final": final,
        "best_epoch": evaluator.best_epoch,
        "best_NDCG@10": best,
        "evaluations": evaluator.history,
        "seed": args.seed,
        "command": command,
        "config": _config(args),
        "provenance": provenance(),
    }
    atomic_write_text(weight_dir / "metrics.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")


def _config(args) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("handler", "_explicit", "_argv")}


def cmd_train(args) -> int:
    from amr_tf.checkpoints import checkpoint_exists, read_manifest
    from amr_tf.evaluation import evaluate
    from amr_tf.io import directory_lock
    from amr_tf.training import build_model, set_seed

    resume, initial_epoch = None, 0
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
        adopted = _pretrained_args(args)
        if adopted:
            print(f"from {args.pretrained}'s manifest: {' '.join(adopted)} (give the flags to override)")
    set_seed(args.seed)
    ds = _dataset(args)
    print(ds.summary())
    name = args.model
    if name == "AMR" and not args.adv:
        name = "VBPR"  # the original's --adv False trains plain VBPR
    defaults = registry.lookup(name).defaults
    for flag, key in (("lr", "learning_rates"), ("regs", "regs")):
        if getattr(args, flag) is None and key in defaults:  # recorded in the manifest as used
            setattr(args, flag, tuple(defaults[key]))
    model = build_model(name, ds, embed_dim=args.embed_dim, regs=args.regs, learning_rates=args.lr,
                        eps=args.eps, adv_weight=args.adv_weight, adv_type=args.adv_type, seed=args.seed)
    if name == "POP":
        print_table({"POP": evaluate(model, ds, protocol=args.protocol)})
        return 0
    stamp = time.strftime("%Y%m%d-%H%M%S")
    weight_dir = Path(args.weight_dir or f"runs/{ds.name}-{name.lower()}-{stamp}")
    try:
        with directory_lock(weight_dir):
            return _train_in(weight_dir, args, ds, name, model, resume, initial_epoch)
    except BlockingIOError:
        raise AmrError(f"{weight_dir}: another training process is writing to this directory; wait for it to "
                       "finish or choose another --weight_dir") from None


def _train_in(weight_dir: Path, args, ds, name, model, resume, initial_epoch) -> int:
    """The rest of ``cmd_train``, while holding ``weight_dir``'s lock."""
    from amr_tf.callbacks import EvaluationCallback
    from amr_tf.checkpoints import checkpoint_exists, load_pretrained, load_weights, read_manifest
    from amr_tf.errors import CheckpointError, TrainingDivergedError
    from amr_tf.evaluation import evaluate
    from amr_tf.io import remove_stale_temp_files
    from amr_tf.training import fit

    removed = remove_stale_temp_files(weight_dir)
    if removed:
        print(f"removed {len(removed)} temporary file(s) left by an interrupted run in {weight_dir}")
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
                                   save_every=args.save_every)
    evaluator.set_model(model)
    if resume is None:
        evaluator.evaluate_now(0)  # also writes the epoch-0 'last' and 'best' checkpoints
    elif checkpoint_exists(weight_dir / "best"):
        try:
            evaluator.restore(read_manifest(weight_dir / "best"))
        except CheckpointError as exc:
            print(f"warning: {exc}; the best checkpoint will be chosen afresh", file=sys.stderr)
    epochs = max(args.epoch, initial_epoch)
    started = time.perf_counter()
    if initial_epoch < args.epoch:
        try:
            fit(model, ds, epochs=args.epoch, batch_size=args.batch_size, seed=args.seed, callbacks=[evaluator],
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
    if evaluator.history and evaluator.history[-1]["epoch"] == epochs:
        final = {k: v for k, v in evaluator.history[-1].items() if k != "epoch"}
    else:  # a resumed run that was already complete
        final = evaluate(model, ds, protocol=args.protocol)
    _write_summary(weight_dir, ds, args, name, command, final, evaluator, epochs,
                   initial_epoch if resume is not None else None, seconds)
    print(f"\ntrained {epochs - initial_epoch} epochs in {seconds:.1f} s; checkpoints in {weight_dir}, "
          f"TensorBoard: tensorboard --logdir {logdir}")
    print_table({f"{name} (epoch {epochs})": final})
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
        label = args.model or "VBPR"
        model = build_model(label, ds, embed_dim=args.embed_dim, compile=False)
        load_original_npy(args.checkpoint, model)
    else:
        model, manifest = load_checkpoint(args.checkpoint, ds)
        label = manifest["model"]
    print(ds.summary())
    print_table({label: evaluate(model, ds, protocol=args.protocol)})
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


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args._argv = argv
    args._explicit = _explicit_dests(argv)
    try:
        return args.handler(args)
    except AmrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
