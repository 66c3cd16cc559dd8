"""The flags of the sub-commands (``train``, ``tune``, ``evaluate``, ``convert-original``), and a value
recorded in a manifest parsed and checked exactly as if it had been typed.

No handler is named here, and nothing imports TensorFlow: :mod:`amr_tf.cli.parser` assembles the
command line from these, and :mod:`amr_tf.cli.train_config` re-reads stored flags through them.
The original release's flag names come from the one table, :data:`amr_tf.flags.ORIGINAL_FLAG_NAMES`.
"""

from __future__ import annotations

import argparse
import functools

from amr_tf import pretrained
from amr_tf.errors import AmrError
from amr_tf.flags import (
    cold_start_rule,
    flag_name,
    float_list,
    non_negative_float,
    non_negative_int,
    number,
    parse_bool,
    positive_int,
    seed_int,
)
from amr_tf.models import registry
from amr_tf.tuning.defaults import hparams_spec


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


def add_train_arguments(t: argparse.ArgumentParser) -> None:
    """``train``'s flags (the original release's names through ``dest=``)."""
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
    t.add_argument(flag_name("eps"), "--eps", dest="eps", type=non_negative_float, default=0.1,
                   help="adversary's L2 budget per item")
    t.add_argument(flag_name("adv_weight"), dest="adv_weight", type=non_negative_float, default=1.0,
                   help="weight of the adversarial loss")
    t.add_argument("--w0", type=non_negative_float, default=None,
                   help="--model EALS: total weight of the missing data, the eALS paper's w0 (default: the model's, 1)")
    t.add_argument("--alpha", type=non_negative_float, default=None,
                   help="--model EALS: popularity exponent of the missing-data weights c_i ~ f_i^alpha (default 0.5); "
                        "its L2 penalty lambda is --regs' first value (default 0.01)")
    t.add_argument(flag_name("embed_dim"), "--embed_dim", dest="embed_dim", type=positive_int, default=64)
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


def add_tune_arguments(u: argparse.ArgumentParser) -> None:
    """``tune``'s flags."""
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


def add_evaluate_arguments(e: argparse.ArgumentParser) -> None:
    """``evaluate``'s flags."""
    add_dataset_flags(e)
    e.add_argument("checkpoint", nargs="?", type=pretrained.resolve,
                   help="checkpoint NAME, NAME.weights.h5, a shipped checkpoint's name, or an original .npy")
    e.add_argument("--model", default=None, type=registry.canonical_name, choices=registry.NAMES,
                   help="POP to evaluate the popularity baseline; "
                   "VBPR/MFBPR when the checkpoint is an original-release .npy")
    e.add_argument(flag_name("embed_dim"), "--embed_dim", dest="embed_dim", type=positive_int, default=64)


def add_convert_arguments(c: argparse.ArgumentParser) -> None:
    """``convert-original``'s flags."""
    c.add_argument("npy", help="pickled [P, Q, E] weights file of the original release")
    c.add_argument("--out", required=True, help="checkpoint NAME to write (NAME.weights.h5 + NAME.json)")
    c.add_argument("--dataset", default=None, help="optional dataset to check the shapes against and record")
    c.add_argument("--path", default=None)
    c.add_argument("--cnn", default=None)


@functools.lru_cache(maxsize=1)
def train_actions() -> dict:
    """The ``train`` sub-command's flags by destination (to check stored values like typed ones)."""
    parser = argparse.ArgumentParser(prog="python -m amr_tf train")
    add_train_arguments(parser)
    return {a.dest: a for a in parser._actions}


def as_flag_text(value) -> str:
    """A value as it would be typed on the command line (lists as ``[a,b,c]``)."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(repr(v) if isinstance(v, float) else str(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def stored_flag(action, value, where):
    """``value`` recorded for ``action``'s flag, parsed and checked exactly as if it had been typed."""
    flag = action.option_strings[0] if action.option_strings else action.dest
    if value is None and action.default is None:
        return None
    if isinstance(value, (dict, type(None))) or (isinstance(value, (list, tuple)) and len(value) > 16):
        raise AmrError(f"{where}: the stored {flag} {value!r} is not a valid value; the checkpoint is corrupt")
    try:
        parsed = action.type(as_flag_text(value)) if action.type else as_flag_text(value)
    except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
        raise AmrError(f"{where}: the stored {flag} {value!r} is invalid: {exc}") from None
    if action.choices is not None and parsed not in action.choices:
        raise AmrError(f"{where}: the stored {flag} {value!r} is not one of {', '.join(map(str, action.choices))}")
    return parsed
