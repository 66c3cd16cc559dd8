"""Issue 13, defaults that train well: a dataset's recommended hyper-parameters
(``<dataset directory>.hparams.json``) are what ``train`` uses for the flags not given;
``--hparams original`` restores the original release's values; a resumed run keeps its own.
"""

from __future__ import annotations

import json

import pytest

from amr_tf.cli import _recommended_args, _train_actions, build_parser, main
from amr_tf.data import resolve_dataset
from amr_tf.models import registry
from amr_tf.tuning.defaults import card_path, recommended_flags
from tests.test_selection import _write

CARD = {"selection": "val_NDCG@10",
        "models": {"VBPR": {"flags": {"lr": [0.2, 0.2, 0.02], "regs": [0.003, 0.002, 0.0], "embed_dim": 8, "epoch": 1}},
                   "AMR": {"flags": {"eps": 0.3, "adv_weight": 2.0, "epoch": 1}}}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = _write(tmp_path_factory.mktemp("defaults") / "tiny")
    card_path(root).write_text(json.dumps(CARD))
    return root


def _args(*argv):
    """``train``'s parsed arguments as ``main`` prepares them (with the set of flags given)."""
    from amr_tf.cli import _explicit_dests

    argv = ["train", *argv]
    args = build_parser().parse_args(argv)
    args._explicit = _explicit_dests(argv)
    return args


def test_card_defaults_are_used_and_announced_in_one_line(data, capsys):
    args = _args("--dataset", str(data), "--model", "VBPR")
    _recommended_args(args, resolve_dataset(str(data)))
    flags = CARD["models"]["VBPR"]["flags"]
    assert (list(args.lr), list(args.regs), args.embed_dim, args.epoch) == (flags["lr"], flags["regs"], 8, 1)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("defaults: ") and "--hparams original" in lines[0]
    assert "--lr [0.2,0.2,0.02]" in lines[0] and "--emb1_K 8" in lines[0]


def test_flags_given_override_the_card(data):
    args = _args("--dataset", str(data), "--model", "VBPR", "--lr", "[0.01,0.01,0.01]", "--emb1_K", "4")
    _recommended_args(args, resolve_dataset(str(data)))
    assert list(args.lr) == [0.01, 0.01, 0.01] and args.embed_dim == 4  # given
    assert list(args.regs) == CARD["models"]["VBPR"]["flags"]["regs"] and args.epoch == 1  # from the card


def test_hparams_original_restores_the_original_release(data, capsys):
    args = _args("--dataset", str(data), "--model", "VBPR", "--hparams", "original")
    untouched = vars(_args("--dataset", str(data), "--model", "VBPR", "--hparams", "original")).copy()
    _recommended_args(args, resolve_dataset(str(data)))
    assert vars(args) == untouched and capsys.readouterr().out == ""
    # ... which are the original release's values once the model fills in its own.
    assert (args.lr, args.regs, args.embed_dim, args.epoch) == (None, None, 64, 20)
    assert registry.lookup("VBPR").defaults["learning_rates"] == (0.01, 1e-4, 1e-3)


def test_amr_fine_tuning_takes_its_entry_and_from_scratch_vbpr_s(data, tmp_path):
    ds = resolve_dataset(str(data))
    ck = tmp_path / "v"
    assert main(["train", "--dataset", str(data), "--model", "VBPR", "--emb1_K", "4", "--epoch", "0",
                 "--weight_dir", str(ck), "--quiet"]) == 0
    args = _args("--dataset", str(data), "--pretrained", str(ck / "last"))  # --model AMR, fine-tuning
    args.embed_dim = 4  # as adopted from the checkpoint's manifest
    _recommended_args(args, ds)
    assert (args.eps, args.adv_weight, args.epoch, args.lr, args.embed_dim) == (0.3, 2.0, 1, None, 4)
    scratch = _args("--dataset", str(data))  # AMR from scratch: VBPR's entry, AMR's own eps and lambda
    _recommended_args(scratch, ds)
    assert (scratch.embed_dim, list(scratch.lr), scratch.eps, scratch.adv_weight) == (8, [0.2, 0.2, 0.02], 0.1, 1.0)
    plain = _args("--dataset", str(data), "--adv", "false", "--pretrained", str(ck / "last"))  # plain VBPR
    _recommended_args(plain, ds)
    assert list(plain.lr) == [0.2, 0.2, 0.02] and plain.eps == 0.1


def test_bad_card_values_are_one_error(tmp_path, capsys):
    root = _write(tmp_path / "tiny")
    card_path(root).write_text(json.dumps({"models": {"VBPR": {"flags": {"lr": [1, -2, 3]}}}}))
    assert main(["train", "--dataset", str(root), "--model", "VBPR", "--weight_dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and card_path(root).name in err[0] and "--lr" in err[0]
    card_path(root).write_text(json.dumps({"models": {"VBPR": {"flags": {"learning_rate": 1}}}}))
    assert main(["train", "--dataset", str(root), "--model", "VBPR", "--weight_dir", str(tmp_path / "r")]) == 2
    assert "unknown hyper-parameter(s) learning_rate" in capsys.readouterr().err


def test_train_uses_the_card_and_resume_keeps_the_run_s_values(data, tmp_path):
    run = tmp_path / "run"
    common = ["train", "--dataset", str(data), "--model", "VBPR", "--weight_dir", str(run), "--quiet",
              "--batch_size", "64", "--cold_start_rule", "false"]
    assert main(common) == 0
    first = json.loads((run / "metrics.json").read_text())
    assert first["epochs"] == 1 and first["config"]["lr"] == CARD["models"]["VBPR"]["flags"]["lr"]
    card_path(data).write_text(json.dumps({"models": {"VBPR": {"flags": {"lr": [0.5, 0.5, 0.5], "epoch": 1}}}}))
    try:  # a changed card does not change a run being resumed
        assert main(common + ["--resume", "--epoch", "2"]) == 0
    finally:
        card_path(data).write_text(json.dumps(CARD))
    second = json.loads((run / "metrics.json").read_text())
    assert second["epochs"] == 2 and second["config"]["lr"] == CARD["models"]["VBPR"]["flags"]["lr"]


def test_the_embedded_dataset_recommends_settings_for_its_models():
    ds = resolve_dataset("movielens-posters")
    actions = _train_actions()
    for model in ("VBPR", "MFBPR", "AMR"):
        found = recommended_flags("recommended", ds, model)
        assert found is not None, model
        for key, value in found[0].items():  # every value parses like the typed flag
            assert actions[key].type(value if isinstance(value, str) else json.dumps(value).replace(" ", ""))
