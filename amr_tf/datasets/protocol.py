"""The split protocol every dataset builder shares, as named stages.

A builder turns a raw interaction log into the AMR directory format. Whatever the source
(MovieLens ratings, Amazon reviews, any CSV), the stages and their rules are the same, so results
on datasets built by different builders compare:

1. :func:`dedupe_latest` -- one interaction per (user, item): the latest, ties to the higher rating;
2. :func:`positive_mask` -- implicit feedback: a rating at or above ``min_rating`` is a positive
   (``None``: every interaction is);
3. :func:`k_core` -- repeatedly drop users with fewer than ``min_user`` positives and items with
   fewer than ``min_item`` until both hold (a user always needs one positive per held-out item
   plus one to train on);
4. :func:`renumber` -- users and items renumbered 0.. in ascending order of their source keys;
5. :func:`leave_one_out` -- per user, by time: the latest positive is the test item, the one
   before it the validation item (when asked), the rest train. **Ties** (equal timestamps) go to
   the larger item id: among positives with the latest timestamp the largest id is the test item;
6. :func:`sample_negatives` -- per held-out row, ``n`` distinct items the user never interacted
   with at any rating (among the kept items), uniformly without replacement from one
   ``numpy.random.default_rng(seed)``: test rows for users 0.. in order, then validation rows the
   same way; each row sorted ascending;
7. :func:`to_float16` -- item features stored unscaled as float16 (the loader divides by the
   global max |value|, as the original code does);
8. :func:`staging` -- every file written into a temporary directory beside the output, which
   replaces any previous build in one rename (the id files through
   :func:`amr_tf.data.dataset.write_split`);
9. :func:`dataset_card` -- a README.md stating sources with their SHA-256, filters, counts,
   density and the command that built the directory.

:func:`split` runs stages 1-6. Rebuilding from the same inputs gives byte-identical files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from array import array
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import scipy.sparse as sp

from amr_tf.errors import AmrError, DataError
from amr_tf.io import UMASK

__all__ = [
    "InteractionLog",
    "Protocol",
    "Split",
    "dataset_card",
    "dedupe_latest",
    "k_core",
    "leave_one_out",
    "positive_mask",
    "renumber",
    "sample_negatives",
    "sorted_codes",
    "split",
    "staging",
    "to_float16",
]

FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The options of the split. ``num_negatives=None``: the largest count every user can supply."""

    min_rating: float | None = None
    min_user: int = 1
    min_item: int = 1
    num_negatives: int | None = 100
    seed: int = 0
    validation: bool = True

    @property
    def held_out(self) -> int:
        """Positives held out per user: the test item, and the validation item when asked."""
        return 2 if self.validation else 1

    @property
    def effective_min_user(self) -> int:
        """``min_user``, raised to one training positive plus the held-out ones."""
        return max(self.min_user, self.held_out + 1)

    def check(self) -> None:
        if self.min_user < 1 or self.min_item < 1:
            raise AmrError(f"min_user and min_item must be at least 1, got {self.min_user} and {self.min_item}")
        if self.num_negatives is not None and self.num_negatives < 1:
            raise AmrError(f"num_negatives must be at least 1, got {self.num_negatives}")


@dataclasses.dataclass
class Split:
    """Result of :func:`split`: new ids, the three id tables and what each stage counted."""

    user_keys: np.ndarray  # source key of user u
    item_keys: np.ndarray  # source key of item i
    train: np.ndarray  # int64 (N, 2), sorted by user then item
    test_rows: np.ndarray  # int64 (users, 1 + n): test item, then negatives
    val_rows: np.ndarray | None  # same layout for the validation item
    counts: dict[str, int]

    @property
    def num_users(self) -> int:
        return len(self.user_keys)

    @property
    def num_items(self) -> int:
        return len(self.item_keys)


class InteractionLog:
    """The interactions a builder collects while it streams a source, before the stages run.

    User and item names are coded 0.. in order of first appearance (:func:`sorted_codes` recodes
    them in name order later); only four numbers per interaction are held, in compact arrays, so
    a multi-gigabyte source is never in memory.
    """

    def __init__(self):
        self._user_code: dict[str, int] = {}
        self._item_code: dict[str, int] = {}
        self._users, self._items, self._ts, self._rating = array("q"), array("q"), array("q"), array("d")

    def add(self, user: str, item: str, ts: int, rating: float) -> None:
        self._users.append(self._user_code.setdefault(user, len(self._user_code)))
        self._items.append(self._item_code.setdefault(item, len(self._item_code)))
        self._ts.append(ts)
        self._rating.append(rating)

    def __len__(self) -> int:
        return len(self._users)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
        """``(users, items, ts, rating, user_names, item_names)``: int64 codes into the name lists."""
        return (np.frombuffer(self._users, np.int64), np.frombuffer(self._items, np.int64),
                np.frombuffer(self._ts, np.int64), np.frombuffer(self._rating, np.float64),
                list(self._user_code), list(self._item_code))


# ------------------------------------------------------------------------------------- stages


def dedupe_latest(user, item, ts, rating) -> tuple[np.ndarray, int]:
    """Indices of one interaction per (user, item): the latest, ties to the higher rating; and the
    number of interactions dropped. Returned in (user, item) order."""
    rating = np.nan_to_num(np.asarray(rating, dtype=np.float64), nan=-np.inf)
    order = np.lexsort((rating, ts, item, user))
    u, i = user[order], item[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
    return order[last], int((~last).sum())


def positive_mask(rating, min_rating: float | None) -> np.ndarray:
    """Which interactions are positives: ``rating >= min_rating`` (all when ``min_rating`` is None)."""
    rating = np.asarray(rating, dtype=np.float64)
    if min_rating is None:
        return np.ones(len(rating), dtype=bool)
    with np.errstate(invalid="ignore"):
        return rating >= min_rating  # a missing rating (NaN) is not a positive under a threshold


def k_core(user, item, min_user: int, min_item: int) -> tuple[np.ndarray, int]:
    """Mask of the positives left when users with fewer than ``min_user`` and items with fewer
    than ``min_item`` positives are dropped repeatedly until neither remains; and the rounds taken."""
    _, u = np.unique(user, return_inverse=True)
    _, i = np.unique(item, return_inverse=True)
    keep = np.ones(len(u), dtype=bool)
    rounds = 0
    while True:
        rounds += 1
        uc = np.bincount(u[keep], minlength=u.max() + 1 if len(u) else 0)
        ic = np.bincount(i[keep], minlength=i.max() + 1 if len(i) else 0)
        new = keep & (uc[u] >= min_user) & (ic[i] >= min_item)
        if new.sum() == keep.sum():
            return keep, rounds
        keep = new


def sorted_codes(names: Sequence[str], codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recode ``codes`` (indices into ``names``, e.g. in order of first appearance) so that code
    order is the sort order of the names: numeric when every name is a decimal integer (``2`` before
    ``10``), else by string. Returns the sorted names and the new codes."""
    names = list(names)
    if names and all(n.isdecimal() and n.isascii() for n in names):
        order = np.argsort(np.array([int(n) for n in names], dtype=object), kind="stable")
    else:
        order = np.argsort(np.asarray(names, dtype=str), kind="stable")
    rank = np.empty(len(names), dtype=np.int64)
    rank[order] = np.arange(len(names))
    return np.asarray(names, dtype=object)[order], rank[np.asarray(codes, dtype=np.int64)]


def renumber(keys) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct ``keys`` (new id = position) and each key's new id (``distinct[new] == keys``)."""
    return np.unique(keys, return_inverse=True)


def leave_one_out(u, i, ts, num_users: int, held_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positives (new ids) by time: per user the latest ``held_out`` positives, latest first
    (ties to the larger item id), as ``(num_users, held_out)``; the rest as training pairs sorted
    by user then item. Every user must have more than ``held_out`` positives."""
    order = np.lexsort((i, ts, u))  # by user, then time, then item
    u, i = u[order], i[order]
    ends = np.flatnonzero(np.r_[u[1:] != u[:-1], True])  # last row of each user's block
    if len(ends) != num_users:
        raise AmrError(f"leave_one_out: {len(ends)} users have positives, expected {num_users}")
    held = np.empty((num_users, held_out), dtype=np.int64)
    is_held = np.zeros(len(u), dtype=bool)
    for k in range(held_out):
        rows = ends - k
        held[u[ends], k] = i[rows]
        is_held[rows] = True
    train = np.stack([u[~is_held], i[~is_held]], axis=1)
    return held, train[np.lexsort((train[:, 1], train[:, 0]))]


def sample_negatives(rated: sp.csr_matrix, positives: np.ndarray, n: int, rng: np.random.Generator,
                     users: Iterable[int] | None = None) -> np.ndarray:
    """Rows ``[positive, n sorted negatives]``: per user (in order) ``n`` distinct items the user
    never interacted with (``rated`` row empty there), drawn uniformly without replacement."""
    num_items = rated.shape[1]
    users = range(rated.shape[0]) if users is None else users
    out = np.empty((len(positives), 1 + n), dtype=np.int64)
    seen = np.zeros(num_items, dtype=bool)
    for row, u in enumerate(users):
        items = rated.indices[rated.indptr[u]:rated.indptr[u + 1]]
        seen[items] = True
        candidates = np.flatnonzero(~seen)
        seen[items] = False
        out[row, 0] = positives[row]
        out[row, 1:] = np.sort(rng.choice(candidates, size=n, replace=False))
    return out


def split(user, item, ts, rating, protocol: Protocol, *,
          user_label: Callable[[object], str] = lambda key: f"source id {key}",
          negatives_option: str = "--negatives", log: Callable[[str], None] | None = None) -> Split:
    """Stages 1-6 on a log of sortable keys (ints, or strings). ``user_label(key)`` describes a
    user's source key in messages; ``negatives_option`` is the option an error about the count
    tells the user to lower."""
    protocol.check()
    say = log or (lambda _msg: None)
    user, item, ts = np.asarray(user), np.asarray(item), np.asarray(ts, dtype=np.int64)
    rating = np.asarray(rating, dtype=np.float64)
    counts: dict[str, int] = {"interactions": int(len(user))}

    keep, counts["duplicates_collapsed"] = dedupe_latest(user, item, ts, rating)
    user, item, ts, rating = user[keep], item[keep], ts[keep], rating[keep]
    pos = positive_mask(rating, protocol.min_rating)
    counts["below_min_rating"] = int((~pos).sum())
    pu, pi, pts = user[pos], item[pos], ts[pos]
    counts.update(positive_interactions=int(len(pu)), positive_users=int(len(np.unique(pu))),
                  positive_items=int(len(np.unique(pi))))
    if len(pu) == 0:
        raise DataError("no positive interaction is left (check --min-rating)")
    core, counts["k_core_rounds"] = k_core(pu, pi, protocol.effective_min_user, protocol.min_item)
    user_keys, u_new = renumber(pu[core])
    item_keys, i_new = renumber(pi[core])
    counts.update(users_removed=counts["positive_users"] - len(user_keys),
                  items_removed=counts["positive_items"] - len(item_keys),
                  positives_removed=int((~core).sum()))
    if len(user_keys) == 0:
        raise DataError(
            f"no user is left with at least {protocol.effective_min_user} positives on items with at least "
            f"{protocol.min_item} (check --min-user/--min-item)"
        )
    num_users, num_items = len(user_keys), len(item_keys)
    say(f"{counts['positive_interactions']} positives from {counts['positive_users']} users on "
        f"{counts['positive_items']} items; k-core kept {num_users} users, {num_items} items")

    held, train = leave_one_out(u_new, i_new, pts[core], num_users, protocol.held_out)
    counts.update(num_users=num_users, num_items=num_items, train_pairs=int(len(train)),
                  test_pairs=num_users, validation_pairs=num_users if protocol.validation else 0,
                  items_without_train_positive=int(num_items - len(np.unique(train[:, 1]))))

    # Negatives: never interacted with at any rating, among the kept users and items.
    in_scope = np.isin(user, user_keys) & np.isin(item, item_keys)
    ru = np.searchsorted(user_keys, user[in_scope])
    ri = np.searchsorted(item_keys, item[in_scope])
    rated = sp.csr_matrix((np.ones(len(ru), dtype=bool), (ru, ri)), shape=(num_users, num_items))
    rated.sum_duplicates()
    rated.sort_indices()
    unrated = num_items - np.diff(rated.indptr)
    max_negatives = int(unrated.min())
    n = max_negatives if protocol.num_negatives is None else protocol.num_negatives
    if n > max_negatives or n < 1:
        worst = int(np.argmin(unrated))
        raise DataError(
            f"cannot sample {n} negatives per user: user {worst} ({user_label(user_keys[worst])}) rated all but "
            f"{max_negatives} of "
            f"the {num_items} items; use {negatives_option} <= {max_negatives}"
        )
    counts.update(num_negatives=int(n), max_negatives=max_negatives)
    rng = np.random.default_rng(protocol.seed)
    test_rows = sample_negatives(rated, held[:, 0], n, rng)
    val_rows = sample_negatives(rated, held[:, 1], n, rng) if protocol.validation else None
    say(f"{num_users} users, {num_items} items, {len(train)} training pairs, {n} negatives per user"
        + (" (test and validation)" if protocol.validation else ""))
    return Split(user_keys=user_keys, item_keys=item_keys, train=train, test_rows=test_rows,
                 val_rows=val_rows, counts=counts)


def to_float16(feats: np.ndarray, what: str = "features") -> np.ndarray:
    """``feats`` as float16, unscaled; ``AmrError`` for non-finite values or float16 overflow."""
    feats = np.asarray(feats)
    if not np.all(np.isfinite(feats)):
        raise AmrError(f"{what}: non-finite values")
    with np.errstate(over="ignore"):
        out = feats.astype(np.float16)
    if not np.all(np.isfinite(out)):
        raise AmrError(f"{what}: features overflow float16 (|value| > {FLOAT16_MAX:g}); scale them before storing")
    return out


# ------------------------------------------------------------------------------------ output


def check_out_dir(out_dir: Path, own_files: Sequence[str]) -> None:
    """Refuse to replace a directory holding anything but a previous build (``own_files``)."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise AmrError(f"{out_dir}: output path exists and is not a directory")
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in own_files)
        if foreign:
            raise AmrError(
                f"{out_dir}: refusing to replace a directory that holds files this builder does not write "
                f"({', '.join(foreign[:5])}{'...' if len(foreign) > 5 else ''}); choose another --out"
            )


def _install(tmp_dir: Path, out_dir: Path) -> None:
    """Move the finished ``tmp_dir`` to ``out_dir``, replacing any previous build in one rename."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.rmdir(old)
        os.replace(out_dir, old)
    try:
        os.replace(tmp_dir, out_dir)
    except BaseException:
        if old is not None:
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staging(out_dir: Path, own_files: Sequence[str]):
    """Yield a temporary directory beside ``out_dir``; on success fsync its files and move it to
    ``out_dir`` in one rename (replacing a previous build); on error remove it, ``out_dir`` untouched."""
    out_dir = Path(out_dir)
    check_out_dir(out_dir, own_files)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        os.chmod(tmp_dir, 0o777 & ~UMASK)  # mkdtemp makes it private; the dataset is not
        yield tmp_dir
        for entry in tmp_dir.iterdir():
            if entry.is_file():
                with open(entry, "rb+") as fh:
                    os.fsync(fh.fileno())
        _install(tmp_dir, out_dir)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)


def dataset_card(title: str, intro: str, sources: Sequence[tuple[str, str, str]], protocol: Protocol,
                 counts: dict, drops: Sequence[tuple[int, str]], files: dict, file_notes: dict,
                 feature_note: str, command: str, cnn: str) -> str:
    """A generated README.md: what the directory is, its sources (label, file name, SHA-256), the
    filters, the counts with density, what was dropped and why, the files, and the command.

    Depends only on the build's inputs (no dates, no absolute paths), so rebuilds are identical.
    """
    c = counts
    density = c["train_pairs"] / (c["num_users"] * c["num_items"])
    source_rows = "".join(f"| {label} | `{name}` | `{digest}` |\n" for label, name, digest in sources)
    drop_rows = "".join(f"| {n:,} | {why} |\n" for n, why in drops) or "| 0 | - |\n"
    file_rows = "".join(
        f"| `{name}` | {file_notes.get(name, '')} | {info['bytes']:,} | `{info['sha256']}` |\n"
        for name, info in files.items()
    )
    threshold = ("every interaction is a positive" if protocol.min_rating is None
                 else f"a rating >= {protocol.min_rating:g} is a positive")
    val = protocol.validation
    return f"""# {title}

{intro}

| | |
|---|---|
| users | {c['num_users']:,} |
| items | {c['num_items']:,} |
| training pairs (`pos.txt`) | {c['train_pairs']:,} |
| test pairs (`neg.txt`, one per user) | {c['test_pairs']:,} |
| validation pairs (`val.txt`, one per user) | {c['validation_pairs']:,} |
| negatives per row | {c['num_negatives']} |
| training density | {density:.6f} |
| items with no training positive (held-out only) | {c['items_without_train_positive']} |
| feature dimension | {c['feature_dim']} |
| seed | {protocol.seed} |

## Sources

| source | file | SHA-256 |
|---|---|---|
{source_rows}
## Protocol (`amr_tf/datasets/protocol.py`)

1. One interaction per (user, item): the latest, ties to the higher rating
   ({c['duplicates_collapsed']:,} duplicates collapsed).
2. Implicit feedback: {threshold} ({c['below_min_rating']:,} interactions below the threshold stay
   "interacted" and are never sampled as negatives).
3. k-core: users with fewer than {protocol.effective_min_user} positives (`--min-user`
   {protocol.min_user}, raised to one training positive plus the {'test and validation items' if val else 'test item'})
   and items with fewer than {protocol.min_item} positives (`--min-item`) dropped repeatedly,
   {c['k_core_rounds']} rounds: {c['users_removed']:,} users, {c['items_removed']:,} items and
   {c['positives_removed']:,} positives removed.
4. Ids: users and items renumbered 0.. in ascending order of their source ids (`users.tsv`, `items.tsv`).
5. Leave-one-out by time: each user's latest positive is the test item (first number of the
   user's row in `neg.txt`){', the one before it the validation item (first number of the row in `val.txt`)' if val else ''};
   the rest are the training pairs in `pos.txt`. Ties of timestamps go to the larger item id.
6. Negatives: {c['num_negatives']} distinct items per row that the user never interacted with at any
   rating, uniformly without replacement from `numpy.random.default_rng({protocol.seed})`: the test
   rows for users 0.. in order{', then the validation rows' if val else ''}; each row sorted ascending
   (at most {c['max_negatives']} were possible for every user).
7. Features: {feature_note}; stored unscaled as float16 in `f_{cnn}.npy` (the loader divides by the
   global max |value|, as the original AMR code does).

## Dropped

| count | why |
|---:|---|
{drop_rows}
## Files

| file | contents | bytes | SHA-256 |
|---|---|---:|---|
{file_rows}
Load with `amr_tf.data.load_amr_dir(<this folder>, cnn="{cnn}")` or train with
`python -m amr_tf train --dataset <this folder>`.

## Reproduce

```
{command}
```

Rebuilding from the same source files with the same options gives byte-identical files (given
the same NumPy random stream).
"""
