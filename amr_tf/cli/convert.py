"""``python -m amr_tf convert-original``: the original release's ``best-vbpr.npy`` as a checkpoint."""

from __future__ import annotations

from amr_tf.cli.common import open_dataset
from amr_tf.errors import AmrError


def cmd_convert(args) -> int:
    """Write the original release's pickled ``[P, Q, E]`` as a VBPR checkpoint, checked against a dataset if given."""
    import numpy as np

    from amr_tf.checkpoints import load_original_npy, read_original_npy, save_checkpoint
    from amr_tf.models import VBPR

    arrays = read_original_npy(args.npy)
    shapes = [np.shape(a) for a in arrays]
    if len(shapes) != 3 or any(len(s) != 2 for s in shapes) or len({s[1] for s in shapes}) != 1:
        raise AmrError(f"{args.npy}: expected the original release's [P, Q, E] (three matrices with K "
                       f"columns each), got shapes {shapes}")
    (nu, k), (ni, _), (f, _) = shapes
    ds = None
    if args.dataset:
        ds = open_dataset(args)
        if (ds.num_users, ds.num_items, ds.feature_dim) != (nu, ni, f):
            raise AmrError(f"{args.npy}: weights are for {nu} users, {ni} items, {f}-d features; dataset "
                           f"{ds.name} has {ds.num_users}, {ds.num_items}, {ds.feature_dim}")
    feats = ds.features if ds is not None else np.zeros((ni, f), np.float32)
    model = VBPR(nu, ni, feats, embed_dim=k)
    load_original_npy(args.npy, model, arrays)
    path = save_checkpoint(model, args.out, ds, converted_from=str(args.npy))
    print(f"wrote {path} ({nu} users, {ni} items, {f}-d features, K={k})")
    return 0
