"""Command-line flag types and the flag vocabulary, shared by every entry point.

``amr_tf.cli``, ``amr_tf.vision.features``, the dataset builders and ``reproduce`` parse their
flags with these (one module at the bottom of the import graph: it imports nothing of amr_tf).
Values are checked as they are parsed, so a bad flag is one ``error:`` line from argparse.
"""

from __future__ import annotations

import argparse
import math

TRUE_WORDS, FALSE_WORDS = {"1", "true", "t", "yes", "y", "on"}, {"0", "false", "f", "no", "n", "off"}


def parse_bool(text: str) -> bool:
    """A real boolean (the original's ``type=bool`` turned ``--adv=False`` into True)."""
    word = str(text).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


#: ``--cold_start_rule`` values; see :func:`amr_tf.data.sampling.resolve_cold_start_rule`.
COLD_START_RULES = ("auto", "original", "train", "off")


def cold_start_rule(text: str) -> str:
    """``--cold_start_rule``: ``auto``, ``original``, ``train`` or ``off``; ``true``/``false`` (what
    runs before these names recorded) mean ``original``/``off``."""
    word = str(text).strip().lower()
    if word in COLD_START_RULES:
        return word
    try:
        return "original" if parse_bool(word) else "off"
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(COLD_START_RULES)} (or true/false), got {text!r}") from None


def float_list(length: int, minimum: float = 0.0, strict: bool = False):
    """Parse ``'[0.01,1e-4,1e-3]'`` (brackets optional) into ``length`` floats without ``eval``."""

    def parse(text: str) -> tuple[float, ...]:
        body = text.strip()
        if body.startswith("[") and body.endswith("]"):
            body = body[1:-1]
        try:
            values = tuple(float(part) for part in body.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a list of {length} numbers like [0.01,1e-4,1e-3], got {text!r}")
        if len(values) != length:
            raise argparse.ArgumentTypeError(f"expected {length} numbers, got {len(values)} in {text!r}")
        for v in values:
            if not math.isfinite(v) or v < minimum or (strict and v == minimum):
                rel = ">" if strict else ">="
                raise argparse.ArgumentTypeError(f"every value must be finite and {rel} {minimum}, got {v} in {text!r}")
        return values

    return parse


def number(kind, minimum, strict: bool, maximum=None):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {minimum}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {text}")
        return value

    return parse


positive_int = number(int, 0, strict=True)
non_negative_int = number(int, 0, strict=False)
non_negative_float = number(float, 0.0, strict=False)
seed_int = number(int, 0, strict=False, maximum=2**32 - 1)  # what NumPy's legacy seeding accepts


def negatives_count(text: str) -> int | None:
    """``--negatives``: a positive integer, or 'max' (None: the largest count every user can supply)."""
    return None if text == "max" else positive_int(text)


#: The one table of flag names: the code's name of a flag (its argparse ``dest``) -> the original
#: release's name, which the command line keeps (``--emb1_K``, with ``--embed_dim`` as an alias).
ORIGINAL_FLAG_NAMES = {"adv_weight": "lmd", "eps": "epsilon", "embed_dim": "emb1_K"}
#: The same table read the other way: runs and checkpoints written before the code took one
#: vocabulary record the original names in their manifest's ``"args"``; :func:`modern_arg_names` reads them.
LEGACY_ARG_NAMES = {original: dest for dest, original in ORIGINAL_FLAG_NAMES.items()}


def flag_name(dest: str) -> str:
    """The command line's flag for a destination: ``"embed_dim"`` -> ``"--emb1_K"``, ``"lr"`` -> ``"--lr"``."""
    return "--" + ORIGINAL_FLAG_NAMES.get(dest, dest)


def modern_arg_names(args: dict) -> dict:
    """``args`` (a manifest's recorded flags) with the original release's names replaced by the code's."""
    out = {}
    for key, value in args.items():
        new = LEGACY_ARG_NAMES.get(key, key)
        if new == key or new not in args:  # a manifest holding both keeps the new one
            out[new] = value
    return out
