"""The checkpoints shipped with the package, by name (see README.md in this folder).

``path("vbpr-movielens-posters")`` is the checkpoint's base path (``NAME.weights.h5`` plus its
manifest ``NAME.json``), usable wherever a checkpoint is expected -- ``load_checkpoint``,
``load_pretrained``, the CLI's ``--pretrained`` and ``evaluate`` (which also accept the bare name).
Imports nothing heavy.
"""

from __future__ import annotations

from pathlib import Path

from amr_tf.errors import AmrError

DIR = Path(__file__).resolve().parent
_SUFFIX = ".weights.h5"


def names() -> list[str]:
    """The shipped checkpoints' names, sorted."""
    return sorted(p.name[: -len(_SUFFIX)] for p in DIR.glob(f"*{_SUFFIX}"))


def path(name: str) -> Path:
    """The base path of the shipped checkpoint ``name`` (raises ``AmrError`` naming the choices)."""
    if name not in names():
        raise AmrError(f"no shipped checkpoint named {name!r}; choose one of {', '.join(names())}")
    return DIR / name


def resolve(spec):
    """``spec`` as given if it names an existing file or checkpoint, else the shipped checkpoint of that name.

    A bare name such as ``vbpr-movielens-posters`` therefore works from any directory, while a
    local path (``runs/x/best``, ``w.npy``) keeps its meaning; ``None`` stays ``None``.
    """
    if spec is None:
        return None
    given = Path(spec)
    if given.exists() or given.with_name(given.name + _SUFFIX).exists() or given.name.endswith((_SUFFIX, ".json", ".npy")):
        return spec
    if str(spec) in names():
        return str(path(str(spec)))
    return spec
