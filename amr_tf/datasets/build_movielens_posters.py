"""Build the MovieLens-100K poster dataset: ``python -m amr_tf.datasets.build_movielens_posters``.

Reads ``ml-100k/``, ``ml-1m/`` and ``ml1m-posters/`` from ``--shared`` and writes the AMR
directory format (``pos.txt``, ``neg.txt``, ``val.txt``, ``f_effnet.npy``, ``items.tsv``, ``users.tsv``,
``stats.json``, ``README.md``) to ``--out``. See :mod:`amr_tf.datasets.movielens_posters`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from amr_tf.datasets.movielens_posters import (
    DEFAULT_MIN_POSITIVES,
    DEFAULT_NUM_NEGATIVES,
    DEFAULT_OUT_DIR,
    DEFAULT_SEED,
    DEFAULT_VALIDATION,
    build,
    default_shared_data_dir,
)
from amr_tf.errors import AmrError
from amr_tf.flags import negatives_count, non_negative_int, positive_int


def main(argv: list[str] | None = None) -> int:
    default_shared = default_shared_data_dir()
    parser = argparse.ArgumentParser(
        prog="python -m amr_tf.datasets.build_movielens_posters",
        description="Build MovieLens-100K with movie-poster CNN features in the AMR directory format.",
    )
    parser.add_argument(
        "--shared", type=Path, default=default_shared if default_shared.is_dir() else None,
        help=f"folder holding ml-100k/, ml-1m/ and ml1m-posters/ (default: {default_shared} if present)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR, help=f"output folder (default: {DEFAULT_OUT_DIR})")
    parser.add_argument("--seed", type=non_negative_int, default=DEFAULT_SEED, help=f"negative-sampling seed (default: {DEFAULT_SEED})")
    parser.add_argument(
        "--negatives", type=negatives_count, default=DEFAULT_NUM_NEGATIVES,
        help=f"negatives per user in neg.txt, or 'max' for the most every user allows (default: {DEFAULT_NUM_NEGATIVES})",
    )
    parser.add_argument("--min-positives", type=int, default=DEFAULT_MIN_POSITIVES,
                        help=f"drop users with fewer positives (>= 2; default: {DEFAULT_MIN_POSITIVES})")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="CNN batch size (default: 32)")
    parser.add_argument("--validation", action=argparse.BooleanOptionalAction, default=DEFAULT_VALIDATION,
                        help="hold out each user's second latest positive as the validation item (val.txt); "
                             "users then need 3 positives. On by default, as shipped; --no-validation writes the "
                             "previous release's files")
    parser.add_argument("--reuse-features", type=Path, default=None, metavar="DIR",
                        help="copy f_effnet.npy from the earlier build in DIR (e.g. the shipped folder) instead of "
                             "running the CNN; refused unless DIR/items.tsv is this build's")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar during feature extraction")
    args = parser.parse_args(argv)
    if args.shared is None:
        parser.error(f"--shared is required ({default_shared} does not exist)")

    start = time.perf_counter()
    try:
        report = build(
            args.shared, args.out, num_negatives=args.negatives, seed=args.seed, min_positives=args.min_positives,
            batch_size=args.batch_size, progress=not args.no_progress,
            validation=args.validation, reuse_features=args.reuse_features, log=lambda msg: print(msg, flush=True),
        )
    except AmrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    total = sum(int(info["bytes"]) for info in report.files.values())
    for name, info in report.files.items():
        print(f"  {name:14s} {int(info['bytes']):>10,d} bytes  sha256 {info['sha256']}")
    print(f"{report.num_users} users, {report.num_items} items, {report.train_pairs} training pairs, "
          f"{report.num_negatives} negatives per user; {total:,} bytes of data; {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
