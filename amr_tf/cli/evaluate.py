"""``python -m amr_tf evaluate``: the test (and validation) metrics of a checkpoint or of Popularity."""

from __future__ import annotations

from amr_tf.cli.common import open_dataset, print_table
from amr_tf.errors import AmrError
from amr_tf.flags import flag_name


def cmd_evaluate(args) -> int:
    """Print the metrics of a checkpoint (or of ``--model POP``) on the dataset's test and validation splits."""
    from amr_tf.checkpoints import load_checkpoint, load_original_npy
    from amr_tf.evaluation import evaluate
    from amr_tf.training import build_model

    ds = open_dataset(args)
    if args.model == "POP" or not args.checkpoint:
        if args.model != "POP":
            raise AmrError("give a checkpoint to evaluate, or --model POP")
        label, model = "POP", build_model("POP", ds)
    elif args.checkpoint.endswith(".npy"):
        from amr_tf.checkpoints import check_model_fits

        label = args.model or "VBPR"
        check_model_fits(ds.num_users, ds.num_items, ds.feature_dim, args.embed_dim, flag_name("embed_dim"), AmrError)
        model = build_model(label, ds, embed_dim=args.embed_dim, compile=False)
        load_original_npy(args.checkpoint, model)
    else:
        model, manifest = load_checkpoint(args.checkpoint, ds)
        label = manifest["model"]
    print(ds.summary())
    rows = {}
    if ds.validation_candidates is not None:
        from amr_tf.evaluation import model_vectors

        vectors = model_vectors(model)  # one computation for both splits
        rows[f"{label} (validation)"] = evaluate(model, ds, protocol=args.protocol, split="validation", vectors=vectors)
        rows[f"{label} (test)"] = evaluate(model, ds, protocol=args.protocol, vectors=vectors)
    else:
        rows[label] = evaluate(model, ds, protocol=args.protocol)
    print_table(rows)
    return 0
