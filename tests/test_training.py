"""Training through ``fit``: TensorBoard scalars, checkpoints, learning on synthetic data."""

import numpy as np
import tensorflow as tf

from amr_tf import evaluate
from amr_tf.callbacks import EvaluationCallback
from amr_tf.data import make_synthetic
from amr_tf.training import build_model, fit


def read_scalars(logdir):
    """{tag: [(step, value), ...]} from the event files under ``logdir``."""
    out = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for v in event.summary.value:
                value = tf.make_ndarray(v.tensor) if v.HasField("tensor") else v.simple_value
                out.setdefault(v.tag, []).append((event.step, float(value)))
    return out


def test_fit_writes_metrics_to_tensorboard_and_keeps_checkpoints(tmp_path, tiny_dataset):
    ds = tiny_dataset
    model = build_model("AMR", ds, embed_dim=8, seed=0)
    cb = EvaluationCallback(ds, every=2, logdir=tmp_path / "logs", checkpoint_dir=tmp_path / "ck", print_fn=None)
    history = fit(model, ds, epochs=5, batch_size=64, callbacks=[cb], verbose=0)
    scalars = read_scalars(tmp_path / "logs")
    for k in (5, 10, 20):
        assert [s for s, _ in scalars[f"HR@{k}"]] == [2, 4, 5]
        assert [s for s, _ in scalars[f"NDCG@{k}"]] == [2, 4, 5]
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4, 5]
    assert len(scalars["train/adv_loss"]) == 5 and len(scalars["train/bpr_loss"]) == 5
    final = evaluate(model, ds)
    assert scalars["NDCG@10"][-1][1] == np.float32(final["NDCG@10"])
    assert history.history["NDCG@10"][-1] == final["NDCG@10"]
    assert (tmp_path / "ck" / "best.weights.h5").exists() and (tmp_path / "ck" / "last.json").exists()
    assert np.float32(cb.best) == max(v for _, v in scalars["NDCG@10"])


def test_vbpr_beats_mf_and_learns_on_synthetic_data():
    ds = make_synthetic(300, 400, 32, num_pairs=1500, num_negatives=100, seed=0)
    results = {}
    for name in ("POP", "MFBPR", "VBPR"):
        model = build_model(name, ds, embed_dim=16, regs=(1e-3, 1e-3, 0), learning_rates=(0.05, 0.05, 0.05), seed=1)
        if name != "POP":
            fit(model, ds, epochs=25, batch_size=128, verbose=0, seed=1)
        results[name] = evaluate(model, ds)["NDCG@10"]
    untrained = evaluate(build_model("VBPR", ds, embed_dim=16, seed=1), ds)["NDCG@10"]
    assert results["VBPR"] > results["MFBPR"] and results["VBPR"] > untrained + 0.05
    # ...and the popularity baseline (untrained: it ranks by training counts; here it edges out MF).
    assert results["VBPR"] > results["POP"] + 0.03


def test_steps_per_execution_divides_the_epoch():
    from amr_tf.training import steps_per_execution_for

    assert steps_per_execution_for(13) == 13
    assert steps_per_execution_for(104) == 104
    assert steps_per_execution_for(1000, limit=256) == 250
    assert steps_per_execution_for(257, limit=256) == 1  # a prime: one step per call
    for steps in range(1, 600):
        assert steps % steps_per_execution_for(steps) == 0


def test_fit_restores_the_model_and_reuses_its_traced_function(tiny_dataset):
    from amr_tf import training
    model = build_model("VBPR", tiny_dataset, embed_dim=4, seed=0)
    fit(model, tiny_dataset, epochs=1, batch_size=64, verbose=0)
    assert model.steps_per_execution == 1 and model.train_function is None  # as compiled
    cached = dict(training._train_functions[model])
    assert len(cached) == 1
    fit(model, tiny_dataset, epochs=2, initial_epoch=1, batch_size=64, verbose=0)
    assert dict(training._train_functions[model]) == cached  # the same traced function, not retraced
    model.compile()  # new optimisers: the old traced function must not be reused
    fit(model, tiny_dataset, epochs=3, initial_epoch=2, batch_size=64, verbose=0)
    assert list(training._train_functions[model].values()) != list(cached.values())


def test_runs_written_with_the_original_names_still_load_and_resume(tmp_path, capsys):
    """Manifests from before one vocabulary: ``lmd``/``epsilon``/``emb1_K`` in "args", ``adv_impl`` in "config"."""
    import json

    from amr_tf.checkpoints import load_checkpoint
    from amr_tf.cli import main
    from amr_tf.data import resolve_dataset

    run = tmp_path / "run"
    flags = ["--dataset", "synthetic", "--model", "AMR", "--emb1_K", "8", "--lmd", "0.5", "--epsilon", "0.2",
             "--lr", "[0.05,0.05,0.05]", "--weight_dir", str(run), "--quiet", "--verbose", "1"]
    assert main(["train", "--epoch", "1"] + flags) == 0
    for name in ("last", "best"):  # rewrite the manifests as the older code wrote them
        path = run / f"{name}.json"
        manifest = json.loads(path.read_text())
        for old, new in (("lmd", "adv_weight"), ("epsilon", "eps"), ("emb1_K", "embed_dim")):
            manifest["args"][old] = manifest["args"].pop(new)
        manifest["config"].pop("adversary")
        manifest["config"]["adv_impl"] = "projected"
        path.write_text(json.dumps(manifest))

    model, _ = load_checkpoint(run / "best", resolve_dataset("synthetic"))
    assert (model.embed_dim, model.eps, model.adv_weight, model.adversary) == (8, 0.2, 0.5, "auto")

    # Resuming takes K, lambda and eps from the old names (K=64, the default, would not even load).
    assert main(["train", "--resume", "--weight_dir", str(run), "--epoch", "2", "--quiet"]) == 0
    config = json.loads((run / "metrics.json").read_text())["config"]
    assert (config["embed_dim"], config["adv_weight"], config["eps"]) == (8, 0.5, 0.2)
    assert json.loads((run / "last.json").read_text())["epoch"] == 2
    # ... and still refuses a flag that changes them, given by its original name.
    capsys.readouterr()
    assert main(["train", "--resume", "--weight_dir", str(run), "--epoch", "3", "--lmd", "1", "--quiet"]) == 2
    assert "--adv_weight 1.0 (the run used 0.5)" in capsys.readouterr().err


def test_mfbpr_defaults_are_one_set_for_every_entry_point(tiny_dataset):
    """The class, ``build_model``, the CLI and ``reproduce`` all take MF-BPR's defaults from the registry."""
    from amr_tf.cli import build_parser
    from amr_tf.models import MFBPR, registry
    from reproduce.common import FULL, QUICK

    defaults = registry.lookup("mf").defaults
    assert defaults["learning_rates"] == (0.05, 0.05) and defaults["regs"] == (1e-3, 1e-3, 0.0)
    mf = build_model("MFBPR", tiny_dataset, embed_dim=4)
    plain = MFBPR(tiny_dataset.num_users, tiny_dataset.num_items, embed_dim=4)
    assert mf.learning_rates == plain.learning_rates == defaults["learning_rates"]
    assert mf.regs == plain.regs == defaults["regs"]
    args = build_parser().parse_args(["train", "--model", "mf"])
    assert args.model == "MFBPR" and args.lr is None and args.regs is None  # filled from the registry
    assert build_parser().parse_args(["train", "--model", "vbpr"]).model == "VBPR"
    assert FULL.mf_learning_rates == QUICK.mf_learning_rates == defaults["learning_rates"]
    assert FULL.mf_regs == QUICK.mf_regs == defaults["regs"]
