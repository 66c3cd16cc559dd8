"""``amr-tf build-dataset {amazon,interactions}``: build an AMR dataset directory from your own data.

Both sources share the split protocol of :mod:`amr_tf.datasets.protocol` and its options
(``--min-rating``, ``--min-user``, ``--min-item``, ``--negatives``, ``--seed``). Nothing here
imports TensorFlow; only ``interactions --images`` loads it, to run the CNN.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

from amr_tf.flags import negatives_count, non_negative_float, positive_int, seed_int

__all__ = ["add_build_dataset_subcommand", "run_build_dataset"]

DEFAULT_NEGATIVES = 500  # as the embedded dataset (see its card for why)
DEFAULT_MIN_USER = 5
DEFAULT_MIN_ITEM = 1


def _add_protocol_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="output dataset directory (replaced atomically)")
    g = p.add_argument_group("split protocol (amr_tf/datasets/protocol.py)")
    g.add_argument("--min-rating", type=non_negative_float, default=None, metavar="R",
                   help="ratings >= R are positives (default: every interaction is a positive)")
    g.add_argument("--min-user", type=positive_int, default=DEFAULT_MIN_USER, metavar="N",
                   help=f"k-core: users need N positives (at least 3: test, validation, one to train; default {DEFAULT_MIN_USER})")
    g.add_argument("--min-item", type=positive_int, default=DEFAULT_MIN_ITEM, metavar="N",
                   help=f"k-core: items need N positives (default {DEFAULT_MIN_ITEM})")
    g.add_argument("--negatives", type=negatives_count, default=DEFAULT_NEGATIVES, metavar="N",
                   help=f"sampled negatives per test/validation row, or 'max' (default {DEFAULT_NEGATIVES})")
    g.add_argument("--seed", type=seed_int, default=0, help="negative-sampling seed (default 0)")
    g.add_argument("--no-validation", action="store_true",
                   help="no validation item (val.txt); users then need only 2 positives")
    p.add_argument("--quiet", action="store_true", help="no progress messages")


def add_build_dataset_subcommand(subparsers) -> argparse.ArgumentParser:
    """Add ``build-dataset`` (with ``amazon`` and ``interactions``) to an argparse subparsers object."""
    p = subparsers.add_parser(
        "build-dataset", help="build a dataset directory from Amazon reviews or any interaction log",
        description=__doc__.splitlines()[0],
    )
    kinds = p.add_subparsers(dest="source", required=True)
    a = kinds.add_parser(
        "amazon", help="Amazon review dump + image_features_<Category>.b",
        description="Amazon reviews (reviews_<Category>.json[.gz]: strict JSON or Python-literal lines) with "
                    "the 4,096-d image features (image_features_<Category>.b); both streamed.",
    )
    a.add_argument("--reviews", required=True, metavar="FILE", help="reviews_<Category>.json.gz")
    a.add_argument("--features", required=True, metavar="FILE", help="image_features_<Category>.b")
    _add_protocol_flags(a)
    i = kinds.add_parser(
        "interactions", help="a CSV/TSV interaction log + item images or an item-feature .npy",
        description="Any interaction log (.csv or .tsv with a header) with item images (EfficientNet-Lite0 "
                    "features, resumable) or precomputed item features.",
    )
    i.add_argument("--interactions", required=True, metavar="FILE", help="FILE.csv or FILE.tsv with a header row")
    i.add_argument("--columns", default="user,item,timestamp,rating", metavar="U,I,T[,R]",
                   help="header names of the user, item, timestamp and (optional) rating columns "
                        "(default user,item,timestamp,rating; the default rating column may be absent)")
    src = i.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", metavar="DIR", help="one image per item: DIR/<item id>.jpg (or .png, ...)")
    src.add_argument("--features", metavar="F.npy", help="item features, row r = the item on line r+1 of --item-ids")
    i.add_argument("--item-ids", metavar="FILE", help="with --features: one item id per line")
    i.add_argument("--batch-size", type=positive_int, default=32, metavar="N", help="CNN batch size (--images)")
    i.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="resumable feature cache for --images (default: .<out name>.feature-cache beside --out)")
    _add_protocol_flags(i)
    p.set_defaults(handler=run_build_dataset)
    return p


def _command(args) -> str:
    """The command line for the dataset card, with --out reduced to the directory's name (so that
    rebuilding elsewhere gives the same card)."""
    from pathlib import Path

    argv = list(getattr(args, "_argv", None) or sys.argv[1:])
    for k, tok in enumerate(argv):
        if tok == "--out" and k + 1 < len(argv):
            argv[k + 1] = Path(argv[k + 1]).name
        elif tok.startswith("--out="):
            argv[k] = "--out=" + Path(tok[6:]).name
    return "python -m amr_tf " + " ".join(shlex.quote(t) for t in argv)


def run_build_dataset(args) -> int:
    """Handler of ``build-dataset``: build, then print what was kept and what was dropped and why."""
    from amr_tf.datasets.protocol import Protocol

    protocol = Protocol(min_rating=args.min_rating, min_user=args.min_user, min_item=args.min_item,
                        num_negatives=args.negatives, seed=args.seed, validation=not args.no_validation)
    log = None if args.quiet else (lambda msg: print(msg, flush=True))
    started = time.perf_counter()
    if args.source == "amazon":
        from amr_tf.datasets.amazon import build_amazon

        result = build_amazon(args.reviews, args.features, args.out, protocol, command=_command(args), log=log)
    else:
        from amr_tf.datasets.interactions import build_interactions
        from amr_tf.errors import AmrError

        if args.item_ids and not args.features:
            raise AmrError("--item-ids goes with --features")
        if args.features and not args.item_ids:
            raise AmrError("--features needs --item-ids (one item id per line, line r+1 = row r)")
        columns = tuple(c.strip() for c in args.columns.split(","))
        result = build_interactions(
            args.interactions, args.out, protocol, columns=columns, images=args.images, features=args.features,
            item_ids=args.item_ids, batch_size=args.batch_size, cache_dir=args.cache_dir,
            progress=not args.quiet, command=_command(args), log=log,
        )
    print(result.summary())
    print(f"built in {time.perf_counter() - started:.1f} s; train with: python -m amr_tf train --dataset {args.out}")
    return 0
