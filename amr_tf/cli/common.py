"""What the sub-commands share: the dataset their flags name, the command line as result files
record it, and the results table they print."""

from __future__ import annotations

import sys


def open_dataset(args):
    """The dataset named by ``--dataset``/``--path``/``--cnn`` (and ``--validation`` where the command has it)."""
    from amr_tf.data import resolve_dataset

    return resolve_dataset(args.dataset, cnn=args.cnn, path=args.path, validation=getattr(args, "validation", "auto"))


def command_line(args) -> str:
    """The command as typed (``python -m amr_tf ...``), for manifests and result files."""
    return " ".join(["python -m amr_tf"] + list(getattr(args, "_argv", sys.argv[1:])))


def print_table(rows: dict[str, dict], file=None) -> None:
    """A Markdown table: one row per model, one column per metric."""
    file = file or sys.stdout
    cols = list(next(iter(rows.values())).keys())
    print("| model | " + " | ".join(cols) + " |", file=file)
    print("|---|" + "---|" * len(cols), file=file)
    for name, metrics in rows.items():
        print(f"| {name} | " + " | ".join(f"{metrics[c]:.4f}" for c in cols) + " |", file=file)
