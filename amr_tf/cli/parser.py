"""The command line's parser: the sub-commands, their flags (:mod:`amr_tf.cli.arguments`) and handlers.

Building it imports no TensorFlow (the handlers import what they need when they run), so ``--help``
answers at once.
"""

from __future__ import annotations

import argparse

from amr_tf.cli import convert, evaluate, train, tune
from amr_tf.cli.arguments import add_convert_arguments, add_evaluate_arguments, add_train_arguments, add_tune_arguments

DESCRIPTION = "Command line: ``python -m amr_tf {train,tune,evaluate,convert-original,features}``."


def build_parser() -> argparse.ArgumentParser:
    # Building the parser imports no TensorFlow: ``--help`` answers at once (tests/test_cli.py holds it).
    parser = argparse.ArgumentParser(prog="python -m amr_tf", description=DESCRIPTION)
    parser.add_argument("--verbose-tf", action="store_true",
                        help="show TensorFlow's native start-up log lines (hidden by default; also AMR_TF_VERBOSE_TF=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train AMR, VBPR, MF-BPR (or score Popularity) and evaluate")
    add_train_arguments(t)
    t.set_defaults(handler=train.cmd_train)

    u = sub.add_parser("tune", help="search hyper-parameters on the validation split (KerasTuner; every trial in "
                                    "TensorBoard's HParams dashboard; best.json)")
    add_tune_arguments(u)
    u.set_defaults(handler=tune.cmd_tune)

    e = sub.add_parser("evaluate", help="evaluate a saved checkpoint (or Popularity) on a dataset")
    add_evaluate_arguments(e)
    e.set_defaults(handler=evaluate.cmd_evaluate)

    c = sub.add_parser("convert-original", help="turn the original release's best-vbpr.npy into a checkpoint")
    add_convert_arguments(c)
    c.set_defaults(handler=convert.cmd_convert)

    from amr_tf.datasets.cli import add_build_dataset_subcommand  # no TensorFlow at import

    add_build_dataset_subcommand(sub)
    try:
        from amr_tf.vision.features import add_features_subcommand
    except ImportError:
        pass
    else:
        add_features_subcommand(sub)
    return parser


def explicit_dests(argv) -> set[str]:
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
