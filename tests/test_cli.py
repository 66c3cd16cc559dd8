"""The command line: a smoke run, the original's flags, and errors without tracebacks."""

import json

import numpy as np

from amr_tf.cli import build_parser, main


def test_train_evaluate_smoke(tmp_path, capsys):
    rc = main(["train", "--dataset", "synthetic", "--model", "AMR", "--epoch", "2", "--verbose", "1",
               "--emb1_K", "8", "--lr", "[0.05,0.05,0.05]", "--weight_dir", str(tmp_path / "run"), "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| AMR (epoch 2) |" in out and "epoch 2: HR@5" in out
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["epochs"] == 2 and set(summary["final"]) >= {"HR@10", "NDCG@10"}
    assert list((tmp_path / "run" / "logs").glob("events.out.tfevents.*"))
    rc = main(["evaluate", str(tmp_path / "run" / "last"), "--dataset", "synthetic"])
    assert rc == 0
    table = capsys.readouterr().out
    hr10 = f"{summary['final']['HR@10']:.4f}"
    assert "| AMR |" in table and hr10 in table


def test_pretrained_vbpr_then_amr(tmp_path, capsys):
    common = ["--dataset", "synthetic", "--emb1_K", "8", "--quiet", "--verbose", "5"]
    assert main(["train", "--model", "VBPR", "--epoch", "1", "--weight_dir", str(tmp_path / "v"),
                 "--lr", "[0.02,0.03,0.004]"] + common) == 0
    assert main(["train", "--model", "AMR", "--epoch", "1", "--pretrained", str(tmp_path / "v" / "last"),
                 "--weight_dir", str(tmp_path / "a")] + common) == 0
    out = capsys.readouterr().out
    assert "initialised from" in out and "manifest: --lr [0.02, 0.03, 0.004]" in out
    # Fine-tuning continues the pretrained run's learning rates unless --lr is given.
    config = json.loads((tmp_path / "a" / "metrics.json").read_text())["config"]
    assert config["lr"] == [0.02, 0.03, 0.004] and config["embed_dim"] == 8
    assert main(["train", "--model", "AMR", "--epoch", "1", "--pretrained", str(tmp_path / "v" / "last"),
                 "--lr", "[0.1,0.1,0.1]", "--weight_dir", str(tmp_path / "b")] + common) == 0
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["config"]["lr"] == [0.1, 0.1, 0.1]


def test_original_flag_values_are_parsed_safely():
    p = build_parser()
    args = p.parse_args(["train", "--adv", "False", "--lr", "[0.01,1e-4,1e-3]", "--regs", "[1e-1,1e-3,0]"])
    assert args.adv is False and args.lr == (0.01, 1e-4, 1e-3) and args.regs == (0.1, 1e-3, 0.0)
    assert p.parse_args(["train", "--adv", "1"]).adv is True


def test_bad_dataset_reports_error_without_traceback(tmp_path, capsys):
    (tmp_path / "pos.txt").write_text("0 1\n1 oops\n")
    (tmp_path / "neg.txt").write_text("2 0\n")
    np.save(tmp_path / "f_resnet.npy", np.ones((3, 2), np.float32))
    assert main(["train", "--dataset", str(tmp_path), "--epoch", "1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"error: {tmp_path / 'pos.txt'}, line 2: 'oops' is not an integer id" in err
