"""``python -m amr_tf train``: train (or resume) a run in ``--weight_dir`` and report its metrics.

The configuration comes from :mod:`amr_tf.cli.train_config`; the directory is held by
:func:`amr_tf.run_dir.claimed_run_directory` (locked, never clobbered); the run writes
``metrics.json`` after every evaluation, so a kill loses none of its history.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from amr_tf.cli.common import command_line, open_dataset, print_table
from amr_tf.cli.train_config import check_sizes, pretrained_args, recommended_args, resume_args
from amr_tf.errors import AmrError
from amr_tf.models import registry


def cmd_train(args) -> int:
    """Train (``--resume``: continue) one run into ``--weight_dir``; print its test metrics."""
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
            args, initial_epoch = resume_args(args, resume, last)
        else:
            print(f"--resume: no checkpoint in {args.weight_dir} yet; starting from epoch 0")
    elif args.pretrained:
        adopted_from_pretrained = pretrained_args(args)
    set_seed(args.seed)
    ds = open_dataset(args)
    print(ds.summary())
    recommended = recommended_args(args, ds) if resume is None else set()
    adopted = [text for key, text in adopted_from_pretrained if key not in recommended]
    if adopted:
        print(f"from {args.pretrained}'s manifest: {' '.join(adopted)} (give the flags to override)")
    check_sizes(args, ds)
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
    command = command_line(args)
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


def _write_summary(weight_dir: Path, ds, args, name, command, final, evaluator, epochs_done, resumed_from,
                   seconds, previous=(), complete=True) -> None:
    """Write ``metrics.json``: the whole evaluation history (``previous``, from the runs this one
    resumes, then this process's), also while training (``"complete": false``) so that a kill
    loses none of it."""
    from amr_tf.checkpoints import provenance
    from amr_tf.io import atomic_write_text

    best = evaluator.best if math.isfinite(evaluator.best) else None
    selected = evaluator.evaluations.record_at(evaluator.best_epoch, previous)
    summary = {
        "complete": complete,
        "model": name,
        "dataset": ds.record(),  # its path package-relative for the embedded data
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
    from amr_tf.io import portable_path

    config = {k: v for k, v in vars(args).items() if k not in ("handler", "_explicit", "_argv", "verbose_tf")}
    if config.get("pretrained"):
        config["pretrained"] = portable_path(config["pretrained"])
    return config
