"""The command line: a smoke run, the original's flags, and errors without tracebacks."""

import json

import numpy as np
import pytest

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


def _run(code, **env):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    environ = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "AMR_TF_VERBOSE_TF")}
    environ.update(PYTHONPATH=str(root), **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, cwd=root)


def test_help_does_not_import_tensorflow():
    """--help (top level and train) answers without TensorFlow: building the parser must stay light."""
    code = """
import sys
from amr_tf.cli import main
for argv in (["--help"], ["train", "--help"], ["evaluate", "--help"]):
    try:
        main(argv)
    except SystemExit as exc:
        assert exc.code == 0
heavy = sorted(m for m in ("tensorflow", "keras", "h5py") if m in sys.modules)
print("HEAVY", heavy)
hooked = lambda: [f.name for f in sys.meta_path if type(f).__name__ == "_ImportHook"]
assert "tensorflow" in hooked()
# --verbose-tf: TensorFlow's own output, untouched (a command that fails before loading TensorFlow)
assert main(["--verbose-tf", "convert-original", "no-such-file.npy", "--out", "x"]) == 2
assert "tensorflow" not in hooked(), hooked()
"""
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert "--pretrained" in proc.stdout and "HEAVY []" in proc.stdout


@pytest.mark.slow
def test_tensorflow_start_up_is_quiet_unless_asked():
    code = "import amr_tf; amr_tf.AMR; import tensorflow as tf; print(float(tf.constant(2.0) + 1))"
    quiet = _run(code)
    assert quiet.returncode == 0 and quiet.stdout.strip() == "3.0"
    assert quiet.stderr == "", quiet.stderr
    loud = _run(code, AMR_TF_VERBOSE_TF="1")
    assert loud.returncode == 0
    if "InitializeLog" not in loud.stderr:  # a TensorFlow build that says nothing at start-up
        pytest.skip("this TensorFlow prints no start-up lines; nothing to filter")


def test_filtered_stderr_keeps_real_messages(capfd):
    import os

    from amr_tf._startup import filtered_stderr

    with filtered_stderr():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1796171551.842545    6631 cudart_stub.cc:31] Could not find cuda drivers\n")
        os.write(2, b"E0000 00:00:1796171551.842545    6631 something_else.cc:12] a real problem\n")
    err = capfd.readouterr().err
    assert "a real problem" in err and "cudart_stub" not in err and "InitializeLog" not in err


def test_one_table_of_flag_names():
    """``flags.ORIGINAL_FLAG_NAMES`` is the parser's, the manifest reader's and ``tune``'s mapping:
    ``tune``'s ``train`` arguments parse back to the same values under the original names."""
    from amr_tf.flags import ORIGINAL_FLAG_NAMES, flag_name, modern_arg_names
    from amr_tf.tuning.search import flags_text

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    options = {a.dest: a.option_strings for a in train._actions}
    for dest, original in ORIGINAL_FLAG_NAMES.items():
        assert options[dest][0] == flag_name(dest) == f"--{original}"
    flags = {"lr": [0.5, 0.25, 0.125], "embed_dim": 16, "eps": 0.5, "adv_weight": 2.0, "epoch": 7}
    text = flags_text(flags)
    assert text == "--lr [0.5,0.25,0.125] --emb1_K 16 --epsilon 0.5 --lmd 2 --epoch 7"
    args = build_parser().parse_args(["train", *text.split()])
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in vars(args).items() if k in flags} == flags
    assert modern_arg_names({"emb1_K": 16, "lmd": 2.0, "epsilon": 0.5, "seed": 1}) == {
        "embed_dim": 16, "adv_weight": 2.0, "eps": 0.5, "seed": 1}


def _output_dir_command(command, directory):
    """``train`` or ``tune`` writing into ``directory`` (tiny settings; refused before any training)."""
    if command == "train":
        return ["train", "--dataset", "synthetic", "--model", "VBPR", "--emb1_K", "4", "--epoch", "1", "--quiet",
                "--weight_dir", str(directory)]
    return ["tune", "--dataset", "synthetic", "--validation", "holdout", "--max-trials", "1", "--max-epochs", "1",
            "--out", str(directory)]


@pytest.mark.parametrize("command", ["train", "tune"])
def test_tune_guards_its_output_directory_as_train_does(tmp_path, capsys, command):
    """One guard for ``train --weight_dir`` and ``tune --out``: a file or a dangling link in the way,
    a directory another process holds, another run's files: each is one ``error:`` line naming the
    directory, and nothing there is changed."""
    from amr_tf.io import directory_lock

    def refused(directory):
        assert main(_output_dir_command(command, directory)) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {directory}: "), err
        return err[0]

    (tmp_path / "file").write_text("x")
    assert "is not a directory (a file is in the way)" in refused(tmp_path / "file")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    assert "is not a directory" in refused(tmp_path / "link") and not (tmp_path / "nowhere").exists()
    busy = tmp_path / "busy"
    with directory_lock(busy):
        assert "process is writing to this directory" in refused(busy)
    assert sorted(p.name for p in busy.iterdir()) == [".amr_tf.lock"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    line = refused(other)
    assert "already holds files (notes.txt)" in line and "--overwrite to move it aside" in line
    assert sorted(p.name for p in other.iterdir()) == [".amr_tf.lock", "notes.txt"]  # the lock, as train's
    assert (other / "notes.txt").read_text() == "keep"


def test_console_script_and_module_reach_the_same_main():
    """pyproject's ``amr-tf`` entry point (``amr_tf.cli:main``, through the package's lazy names) and
    ``python -m amr_tf`` (``amr_tf/__main__.py``) both run :func:`amr_tf.cli.entry.main`."""
    import importlib.metadata
    import tomllib
    from pathlib import Path

    import amr_tf.__main__
    from amr_tf.cli.entry import main as entry_main

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    value = project["project"]["scripts"]["amr-tf"]
    script = importlib.metadata.EntryPoint(name="amr-tf", value=value, group="console_scripts").load()
    assert script is entry_main is amr_tf.__main__.main is main
