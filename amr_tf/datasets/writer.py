"""Writing a built dataset: the files every builder of :mod:`amr_tf.datasets` produces.

``write_staged`` is the one writer of a build's directory, for every builder (the embedded
MovieLens build included): pos/neg/val (through :func:`amr_tf.data.dataset.write_split`), the
float16 features (streamed row by row: never all in memory), the builder's text files, the sizes
and SHA-256 of the files, then the card, staged and moved into place in one rename.
``write_build`` is its use by the generic builders (``users.tsv``, ``items.tsv``, ``stats.json``
and the generated card).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from amr_tf.data.dataset import write_split
from amr_tf.datasets.protocol import Protocol, Split, dataset_card, staging, to_float16
from amr_tf.errors import AmrError
from amr_tf.io import atomic_write_text, sha256_file

__all__ = ["BuildResult", "FeatureWriter", "output_files", "write_build", "write_staged"]


def output_files(cnn: str) -> tuple[str, ...]:
    """The files a builder writes, in the order the card lists them."""
    return ("pos.txt", "neg.txt", "val.txt", f"f_{cnn}.npy", "items.tsv", "users.tsv", "stats.json", "README.md")


@dataclasses.dataclass
class BuildResult:
    """What a builder wrote: the directory, the protocol's counts, the files and what was dropped."""

    out_dir: Path
    counts: dict
    files: dict
    drops: list

    def summary(self) -> str:
        c = self.counts
        lines = [f"{c['num_users']:,} users, {c['num_items']:,} items, {c['train_pairs']:,} training pairs, "
                 f"{c['num_negatives']} negatives per row, {c['feature_dim']}-d features -> {self.out_dir}"]
        lines += [f"  dropped {n:,} {why}" for n, why in self.drops if n]
        return "\n".join(lines)


class FeatureWriter:
    """Append float16 rows to an ``.npy`` of a known shape, in order (a builder's features never
    need to be in memory at once). Values are checked by :func:`~amr_tf.datasets.protocol.to_float16`."""

    def __init__(self, fh, rows: int, dim: int):
        self._fh, self.rows, self.dim, self.written = fh, rows, dim, 0
        np.lib.format.write_array_header_1_0(fh, {"descr": np.dtype(np.float16).str, "fortran_order": False,
                                                  "shape": (rows, dim)})

    def write(self, block, what: str = "features") -> None:
        block = np.asarray(block)
        block = block.reshape(1, -1) if block.ndim == 1 else block
        if block.shape[1:] != (self.dim,) or self.written + len(block) > self.rows:
            raise AmrError(f"{what}: got rows of shape {block.shape}, expected {self.dim} values per row "
                           f"and {self.rows} rows in all")
        self._fh.write(to_float16(block, what).astype("<f2", copy=False).tobytes())
        self.written += len(block)


def write_staged(out_dir: Path, own: Sequence[str], split: Split, *, feature_file: str, feature_dim: int,
                 write_features: Callable[[FeatureWriter], None], texts: dict[str, str], listed: Sequence[str],
                 card: Callable[[dict], str]) -> dict:
    """Write a build of ``split`` into ``out_dir`` (replacing a previous build of the files ``own``).

    Into a staging directory (:func:`~amr_tf.datasets.protocol.staging`): the id files
    (:func:`~amr_tf.data.dataset.write_split`), ``feature_file`` (``write_features`` appends the
    rows, in item order, to a :class:`FeatureWriter`), each of ``texts`` (name -> content), then
    ``README.md`` = ``card(files)``, where ``files`` (returned) maps each of ``listed`` that was
    written to its ``{"bytes", "sha256"}``.
    """
    with staging(out_dir, own) as tmp:
        write_split(tmp, split.train, split.test_rows, split.val_rows)
        with open(tmp / feature_file, "wb") as fh:
            writer = FeatureWriter(fh, split.num_items, feature_dim)
            write_features(writer)
            if writer.written != split.num_items:
                raise AmrError(f"wrote {writer.written} feature rows, expected {split.num_items}")
        for name, text in texts.items():
            atomic_write_text(tmp / name, text)
        files = {name: {"bytes": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}
                 for name in listed if (tmp / name).exists()}
        atomic_write_text(tmp / "README.md", card(files))
    return files


def _clean(name) -> str:
    return str(name).replace("\t", " ").replace("\n", " ").replace("\r", " ")


def write_build(out_dir: Path, split: Split, protocol: Protocol, *, cnn: str, feature_dim: int,
                write_features: Callable[[FeatureWriter], None], users_header: str, user_names: Sequence,
                items_header: str, item_names: Sequence, sources: Sequence[tuple[str, Path]], title: str,
                intro: str, feature_note: str, drops: list, command: str,
                log: Callable[[str], None] | None = None) -> BuildResult:
    """Write every file of a build of ``split`` into ``out_dir`` (replacing a previous build)."""
    say = log or (lambda _msg: None)
    counts = dict(split.counts, feature_dim=int(feature_dim))
    own = output_files(cnn)
    source_rows = [(label, Path(p).name, sha256_file(p)) for label, p in sources]
    stats = {"counts": counts, "protocol": dataclasses.asdict(protocol),
             "dropped": {why: n for n, why in drops},
             "sources": {name: {"role": label, "sha256": digest} for label, name, digest in source_rows},
             "command": command}
    texts = {
        "users.tsv": users_header + "\n" + "".join(f"{n}\t{_clean(name)}\n" for n, name in enumerate(user_names)),
        "items.tsv": items_header + "\n" + "".join(f"{n}\t{_clean(name)}\n" for n, name in enumerate(item_names)),
        "stats.json": json.dumps(stats, indent=2, sort_keys=True) + "\n",
    }
    notes = {
        "pos.txt": "training pairs `user item`, 0-based, sorted by user then item",
        "neg.txt": "row u = user u: test item, then the sampled negatives (ascending)",
        "val.txt": "row u = user u: validation item, then the sampled negatives (ascending)",
        f"f_{cnn}.npy": f"item features, row i = item i, float16 ({feature_dim}-d, unscaled)",
        "items.tsv": f"new item id, source id ({items_header.split(chr(9))[-1]})",
        "users.tsv": f"new user id, source id ({users_header.split(chr(9))[-1]})",
        "stats.json": "the counts, options, drops and sources, machine-readable",
    }
    say(f"writing {split.num_items:,} x {feature_dim} features")
    files = write_staged(
        out_dir, own, split, feature_file=f"f_{cnn}.npy", feature_dim=feature_dim, write_features=write_features,
        texts=texts, listed=own[:-1],
        card=lambda files: dataset_card(title, intro, source_rows, protocol, counts, drops, files, notes,
                                        feature_note, command, cnn))
    return BuildResult(out_dir=Path(out_dir), counts=counts, files=files, drops=drops)
