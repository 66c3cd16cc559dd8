"""A dataset's recommended hyper-parameters: ``<dataset directory>.hparams.json``, beside its folder.

Beside the folder rather than in it: the folder (pos.txt, val.txt, neg.txt, features and the
generated card) is exactly what the dataset builder writes, byte for byte, and a builder refuses
to replace a folder holding files it does not write. For the embedded dataset the file is
``amr_tf/datasets/data/movielens_posters.hparams.json``.

Written from ``python -m amr_tf tune`` searches on the dataset's validation split (its
``best.json`` ``train_flags``), one entry per model::

    {"selection": "val_NDCG@10",
     "models": {"VBPR": {"flags": {"lr": [...], "regs": [...], "embed_dim": 64, "epoch": 30},
                         "validation": {...}, "search": "python -m amr_tf tune ..."}, ...}}

``flags`` uses ``train``'s flag destinations (:data:`FLAGS`). ``train`` applies them to the flags
not given on its command line (``--hparams recommended``, the default); ``--hparams original``
keeps the original release's values; ``--hparams PATH/best.json`` takes a search's result. The
file is untrusted input like any dataset file: read through :mod:`amr_tf.safe_io`, and each value
is then checked by the caller with the same parser as the typed flag.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from amr_tf.errors import AmrError
from amr_tf.safe_io import read_json

SUFFIX = ".hparams.json"


def card_path(dataset_dir) -> Path:
    """Where the recommended hyper-parameters of the dataset in ``dataset_dir`` are kept."""
    dataset_dir = Path(dataset_dir)
    return dataset_dir.parent / f"{dataset_dir.name}{SUFFIX}"

# The train flags (by destination) a recommendation may set.
FLAGS = ("lr", "regs", "embed_dim", "epoch", "eps", "adv_weight", "batch_size")
CHOICES = ("recommended", "original")


def hparams_spec(text: str) -> str:
    """``--hparams``: ``recommended``, ``original`` or a search's ``best.json``."""
    if text in CHOICES or text.endswith(".json"):
        return text
    raise argparse.ArgumentTypeError(f"expected recommended, original or a tune result (best.json), got {text!r}")




def recommended_flags(spec: str, dataset, model: str) -> tuple[dict, str] | None:
    """``(flags, source)``: what ``spec`` recommends for ``model`` on ``dataset``, or ``None``.

    ``recommended``: the dataset's :func:`card_path` entry for ``model`` (``None`` when
    the dataset has no such file or entry); ``original``: ``None``; a ``.json`` path: a tune
    result's ``train_flags`` (refused when it is for another model).
    """
    if spec == "original":
        return None
    if spec != "recommended":
        result = read_json(spec, "tune result (best.json)", missing="--hparams: no such file")
        if not isinstance(result, dict) or not isinstance(result.get("train_flags"), dict):
            raise AmrError(f"{spec}: --hparams expects a 'python -m amr_tf tune' result with 'train_flags'")
        if result.get("model") != model:
            raise AmrError(f"{spec}: holds hyper-parameters for --model {result.get('model')}, not {model}")
        return _picked(result["train_flags"], spec), spec
    if not getattr(dataset, "path", None):
        return None
    path = card_path(dataset.path)
    if not path.is_file():
        return None
    card = read_json(path, "recommended hyper-parameters file")
    entry = card.get("models", {}).get(model) if isinstance(card, dict) and isinstance(card.get("models"), dict) else None
    if entry is None:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("flags"), dict):
        raise AmrError(f"{path}: the entry for {model} has no 'flags' object")
    return _picked(entry["flags"], path), f"{dataset.name}'s recommended {model} hyper-parameters ({path.name})"


def _picked(flags: dict, where) -> dict:
    unknown = sorted(set(flags) - set(FLAGS))
    if unknown:
        raise AmrError(f"{where}: unknown hyper-parameter(s) {', '.join(unknown)} (known: {', '.join(FLAGS)})")
    return dict(flags)
