"""``python -m amr_tf tune``: the hyper-parameter search of :mod:`amr_tf.tuning.search`, into ``--out``."""

from __future__ import annotations

import time
from pathlib import Path

from amr_tf.cli.common import command_line, open_dataset
from amr_tf.errors import AmrError


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
    ds = open_dataset(args)
    out = Path(args.out or f"runs/tune-{ds.name}-{args.model.lower()}-{stamp}")
    refuse_non_directory(out, "--out")
    with claimed_run_directory(out, "--out", args.overwrite, stamp, process="tuning"):  # as train's --weight_dir
        print(ds.summary())
        command = command_line(args)
        run_search(ds, args.model, out, max_trials=args.max_trials, budget_seconds=args.budget_seconds,
                   max_epochs=args.max_epochs, patience=args.patience, seed=args.seed, batch_size=args.batch_size,
                   pretrained=args.pretrained, exclude_cold_start=args.cold_start_rule, protocol=args.protocol,
                   command=command)
    return 0
