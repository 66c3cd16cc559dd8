"""How a ``train`` run's configuration is assembled before anything trains.

Precedence: flags given > the dataset's recommended hyper-parameters (``--hparams``) > a
``--pretrained`` checkpoint's manifest > the model's defaults; ``--resume`` takes the configuration
recorded in the run's checkpoint (and refuses a flag that contradicts it). Every stored value is
parsed as if typed (:func:`amr_tf.cli.arguments.stored_flag`), and sizes are checked before
anything is allocated.
"""

from __future__ import annotations

import json
from pathlib import Path

from amr_tf.cli.arguments import as_flag_text, stored_flag, train_actions
from amr_tf.errors import AmrError
from amr_tf.flags import flag_name, modern_arg_names

# Flags that define what is trained: on --resume they default to the checkpoint's values, and
# giving one explicitly with another value is an error (the continuation would not be the same run).
RESUME_FIXED = ("model", "adv", "adv_type", "lr", "regs", "eps", "adv_weight", "embed_dim", "batch_size", "seed",
                "cold_start_rule", "protocol", "w0", "alpha")

# Taken from the checkpoint unless given (the dataset's fingerprint is checked instead of its name).
RESUME_INHERITED = ("dataset", "path", "cnn", "validation", "epoch", "verbose", "save_every", "logdir", "patience")

MAX_EPOCHS = 1_000_000  # the original ran 2000

MAX_BATCH_SIZE = 2**31 - 1  # TensorFlow's int32 dimension limit

# Taken from a --pretrained checkpoint's manifest unless given: fine-tuning continues that run.
PRETRAINED_INHERITED = {"lr": "learning_rates", "regs": "regs", "embed_dim": "embed_dim"}


def _plain(value):
    """``value`` as it reads back from JSON (tuples become lists), for comparisons with a manifest."""
    return json.loads(json.dumps(value))


def resume_args(args, manifest: dict, where: Path):
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
    actions = train_actions()
    conflicts = []
    for key in RESUME_FIXED + RESUME_INHERITED:
        if key not in stored:
            continue
        value = stored_flag(actions[key], stored[key], where)
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


def check_sizes(args, ds) -> None:
    """Sizes from the command line or a resumed run's record, checked before anything is allocated."""
    from amr_tf.checkpoints import check_model_fits

    if args.epoch > MAX_EPOCHS:
        raise AmrError(f"--epoch {args.epoch} is more than {MAX_EPOCHS}")
    if args.batch_size > MAX_BATCH_SIZE:
        raise AmrError(f"--batch_size {args.batch_size} is more than {MAX_BATCH_SIZE} (a batch may hold at most "
                       f"the {len(ds.train_pairs)} training pairs anyway)")
    if args.model != "POP":
        check_model_fits(ds.num_users, ds.num_items, ds.feature_dim, args.embed_dim, flag_name("embed_dim"), AmrError)


def pretrained_args(args) -> list[tuple[str, str]]:
    """Adopt the --pretrained checkpoint's K, learning rates and penalties for flags not given;
    returns ``(flag, shown)`` for each one adopted."""
    from amr_tf.checkpoints import read_manifest

    if not args.pretrained or str(args.pretrained).endswith(".npy"):
        return []
    config = read_manifest(args.pretrained).get("config") or {}
    explicit, adopted, actions = getattr(args, "_explicit", set()), [], train_actions()
    for flag, key in PRETRAINED_INHERITED.items():
        if flag in explicit or key not in config:
            continue
        if flag == "lr" and isinstance(config[key], list) and len(config[key]) == 2:  # MF-BPR has two rates
            continue
        value = stored_flag(actions[flag], config[key], args.pretrained)  # checked as if typed
        setattr(args, flag, value)
        adopted.append((flag, f"--{flag} {list(value) if isinstance(value, tuple) else value}"))
    return adopted


def recommended_args(args, ds) -> set[str]:
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
    explicit, actions, used = getattr(args, "_explicit", set()), train_actions(), {}
    for key, value in flags.items():
        if key in explicit or (key == "embed_dim" and args.pretrained):
            continue
        value = stored_flag(actions[key], value, source)  # checked as if typed
        setattr(args, key, value)
        used[key] = f"{flag_name(key)} {as_flag_text(value)}"
    if used:
        print(f"defaults: {source}, tuned on validation: {' '.join(used.values())} "
              "(flags given override them; --hparams original for the original release's)")
    return set(used)
