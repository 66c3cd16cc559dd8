"""Nothing lost, resumable, deterministic (issue 6): atomic writes, SIGKILL at random moments,
``--resume`` bit-for-bit, NaN/Inf stops without overwriting the last good checkpoint, and
seeded runs that repeat bit for bit with their provenance recorded."""

import contextlib
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from amr_tf.callbacks import EvaluationCallback
from amr_tf.checkpoints import MANIFEST_ATTR, load_checkpoint, read_manifest, save_checkpoint
from amr_tf.cli import main
from amr_tf.data import resolve_dataset
from amr_tf.errors import CheckpointError, TrainingDivergedError
from amr_tf.io import (
    LOCK_NAME,
    WRITER_TAG,
    atomic_path,
    atomic_write_text,
    directory_lock,
    is_temp_file,
    recorded_writer_tags,
    remove_stale_temp_files,
)
from amr_tf.training import build_model, fit

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3  # ceil(300 training pairs / batch 128)
FLAGS = ["--model", "AMR", "--emb1_K", "8", "--lr", "[0.05,0.05,0.05]", "--batch_size", "128", "--quiet"]


def h5_arrays(path) -> dict:
    """Every array in a ``.weights.h5``: P, Q, E and the three optimisers' accumulators and counters."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def assert_same_arrays(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    different = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not different, f"differ: {different}"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A small dataset directory in the original format (quick epochs, quick start-up)."""
    from amr_tf.data import make_synthetic, write_amr_dir

    ds = make_synthetic(num_users=60, num_items=90, feature_dim=16, num_pairs=300, num_negatives=20, seed=2)
    return write_amr_dir(ds, tmp_path_factory.mktemp("data") / "small", cnn="resnet")


@pytest.fixture(scope="module")
def small_ds(data_dir):
    return resolve_dataset(str(data_dir))


@pytest.fixture(scope="module")
def COMMON(data_dir):
    return ["train", "--dataset", str(data_dir)] + FLAGS


# ---------------------------------------------------------------------------- atomic writes


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "result.json"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_stale_temp_files_are_recognised_and_removed(tmp_path):
    """Only temporary files carrying a writer tag recorded in the directory's lock are removed:
    a look-alike from another writer (or another program) is kept (issue 14)."""
    with directory_lock(tmp_path):
        pass  # records this process's tag in the lock file, as a training process does
    ours, theirs = WRITER_TAG, "0123abcd" if WRITER_TAG != "0123abcd" else "4567cdef"
    stale = [tmp_path / f".last.weights.h5.{ours}.ab_c12x9.tmp.weights.h5", tmp_path / f".metrics.json.{ours}.k2j4h5g6.tmp"]
    lookalike = [tmp_path / f".last.weights.h5.{theirs}.ab_c12x9.tmp.weights.h5", tmp_path / ".metrics.json.k2j4h5g6.tmp"]
    keep = [tmp_path / ".hidden", tmp_path / "last.weights.h5", tmp_path / ".x.tmp"] + lookalike
    for p in stale + keep:
        p.write_text("x")
    assert all(is_temp_file(p) for p in stale) and not any(is_temp_file(p) for p in keep[:3])
    assert remove_stale_temp_files(tmp_path) == sorted(stale)
    assert sorted(p for p in tmp_path.iterdir() if p.name != LOCK_NAME) == sorted(keep)


def test_manifest_inside_the_weights_wins_over_a_stale_json(tmp_path, small_ds):
    """A kill between the weights' rename and the manifest's leaves an older .json: the copy
    inside the weights file (renamed together with them) is used."""
    model = build_model("MFBPR", small_ds, embed_dim=4, seed=0)
    save_checkpoint(model, tmp_path / "last", small_ds, epoch=3)
    old_json = (tmp_path / "last.json").read_text()
    save_checkpoint(model, tmp_path / "last", small_ds, epoch=4)
    (tmp_path / "last.json").write_text(old_json)
    assert read_manifest(tmp_path / "last")["epoch"] == 4
    with h5py.File(tmp_path / "last.weights.h5", "r") as f:
        assert json.loads(f.attrs[MANIFEST_ATTR])["epoch"] == 4


WRITES = re.compile(r"\.write_(text|bytes)\(|\bopen\([^)]*[\"'][wax]|np\.save\(|\.save_weights\(|"
                    r"h5py\.File\([^)]*[\"'][wax]|json\.dump\(")


def test_all_writers_go_through_amr_tf_io():
    """Our modules write files only into atomic_path's temporary file or an in-memory buffer that
    amr_tf.io then writes atomically."""
    offenders = []
    names = ["callbacks.py", "training.py", "data/dataset.py", "safe_io.py"]
    for package in ("checkpoints", "cli"):
        names += [f"{package}/{p.name}" for p in sorted((ROOT / "amr_tf" / package).glob("*.py"))]
    for name in names:
        for n, line in enumerate((ROOT / "amr_tf" / name).read_text().splitlines(), 1):
            if WRITES.search(line) and not re.search(r"\b(tmp|buf)\b", line):
                offenders.append(f"amr_tf/{name}:{n}: {line.strip()}")
    assert not offenders, offenders


# ---------------------------------------------------------------------------- NaN / Inf


def test_nan_loss_stops_the_cli_and_keeps_the_last_good_checkpoint(tmp_path, capsys, COMMON, small_ds):
    run = tmp_path / "run"
    rc = main(COMMON + ["--lr", "[1e30,1e30,1e30]", "--epoch", "3", "--verbose", "1", "--weight_dir", str(run)])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: training diverged in epoch 1: loss = nan")
    assert err.rstrip().endswith(f"The last good checkpoint is kept: {run / 'last'} (epoch 0)")
    assert read_manifest(run / "last")["epoch"] == 0 and not (run / "metrics.json").exists()
    model, _ = load_checkpoint(run / "last", small_ds)  # finite, loadable
    assert all(np.isfinite(v).all() for v in model.weight_arrays().values())


class PoisonAt(keras.callbacks.Callback):
    """Inject NaN into the item embeddings at the start of one epoch (a stand-in for bad features)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            q = self.model.Q.numpy()
            q[0, 0] = np.nan
            self.model.Q.assign(q)


def test_nan_in_a_later_epoch_never_overwrites_the_checkpoint(tmp_path, tiny_dataset):
    ds = tiny_dataset
    model = build_model("VBPR", ds, embed_dim=8, seed=0)
    cb = EvaluationCallback(ds, every=5, checkpoint_dir=tmp_path, print_fn=None, save_every=1)
    with pytest.raises(TrainingDivergedError, match=r"^training diverged in epoch 3: loss = nan, bpr_loss = nan; "
                                                      r"P, Q, E hold NaN/Inf; the optimiser state \(Adagrad "
                                                      r"accumulators\) of P, Q, E holds NaN/Inf\. Stopped without "
                                                      r"saving that epoch"):
        fit(model, ds, epochs=5, batch_size=64, verbose=0, callbacks=[PoisonAt(2), cb])
    assert read_manifest(tmp_path / "last")["epoch"] == 2
    back, _ = load_checkpoint(tmp_path / "last", ds)
    assert np.isfinite(back.Q.numpy()).all()
    # save_checkpoint itself refuses non-finite weights and leaves the previous files alone.
    before = (tmp_path / "last.weights.h5").read_bytes()
    with pytest.raises(CheckpointError, match=r"last.weights.h5: not saved: P, Q, E contain NaN or infinite values"):
        save_checkpoint(model, tmp_path / "last", ds, epoch=3)
    assert (tmp_path / "last.weights.h5").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ---------------------------------------------------------------------------- resume and determinism


EPOCHS = 12


@pytest.fixture(scope="module")
def run_flags(COMMON):
    """A seeded AMR run with the random adversary (so its noise state matters too)."""
    return COMMON + ["--adv_type", "random", "--seed", "11", "--verbose", "4", "--epoch", str(EPOCHS)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, run_flags):
    """The same run three times: ``a`` and ``b`` uninterrupted; ``r`` started with ``--resume`` in an
    empty directory, stopped after 5 epochs (not a multiple of --verbose: the resume point is a
    per-epoch 'last' checkpoint), then resumed with a stale temporary file lying around."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name in ("a", "b"):
        assert main(run_flags + ["--weight_dir", str(root / name)]) == 0
    with contextlib.redirect_stdout(io.StringIO()) as buf:
        assert main(run_flags + ["--epoch", "5", "--weight_dir", str(root / "r"), "--resume"]) == 0
    out["fresh"] = buf.getvalue()
    # A temporary file of a recorded writer of the run (as a kill leaves it), and a look-alike that is not.
    (tag,) = recorded_writer_tags(root / "r")
    (root / "r" / f".last.weights.h5.{tag}.zzzz9999.tmp.weights.h5").write_bytes(b"half a checkpoint")
    (root / "r" / ".last.weights.h5.0000aaaa.zzzz9999.tmp.weights.h5").write_bytes(b"not ours")
    with contextlib.redirect_stdout(io.StringIO()) as buf:
        assert main(run_flags + ["--weight_dir", str(root / "r"), "--resume"]) == 0
    out["resumed"] = buf.getvalue()
    (root / "stdout.json").write_text(json.dumps(out))
    return root


def test_two_seeded_runs_are_bit_identical(runs):
    for name in ("last", "best"):
        assert_same_arrays(h5_arrays(runs / "a" / f"{name}.weights.h5"), h5_arrays(runs / "b" / f"{name}.weights.h5"))
    a, b = (json.loads((runs / r / "metrics.json").read_text()) for r in "ab")
    assert a["final"] == b["final"] and a["evaluations"] == b["evaluations"] and a["best_epoch"] == b["best_epoch"]


def test_resumed_run_equals_uninterrupted_run_bit_for_bit(runs):
    """Weights, the three Adagrad accumulators and iteration counters, and the noise state."""
    assert_same_arrays(h5_arrays(runs / "a" / "last.weights.h5"), h5_arrays(runs / "r" / "last.weights.h5"))
    ma, mr = read_manifest(runs / "a" / "last"), read_manifest(runs / "r" / "last")
    assert ma["epoch"] == mr["epoch"] == EPOCHS and ma["metrics"] == mr["metrics"]
    assert ma["seed_generators"] == mr["seed_generators"] != {"noise_seed": [11, 0]}
    a, r = (json.loads((runs / x / "metrics.json").read_text()) for x in "ar")
    assert r["resumed_from_epoch"] == 5 and a["resumed_from_epoch"] is None
    assert a["final"] == r["final"]
    # (best_epoch may differ here: stopping with --epoch 5 evaluated epoch 5, which run a never did.)
    # metrics.json keeps the whole history across the resume (issue 14): the first part's evaluations
    # (0, 4 and its final epoch 5), then the resumed part's, equal to the uninterrupted run's.
    assert [e["epoch"] for e in r["evaluations"]] == [0, 4, 5, 8, 12]
    assert [e for e in r["evaluations"] if e["epoch"] != 5] == a["evaluations"]
    assert r["complete"] is True
    # The stale temp file of the run's own writer was removed, the look-alike kept.
    assert [p.name for p in (runs / "r").iterdir() if is_temp_file(p)] == [".last.weights.h5.0000aaaa.zzzz9999.tmp.weights.h5"]


def test_metrics_json_records_provenance(runs, small_ds, data_dir):
    summary = json.loads((runs / "a" / "metrics.json").read_text())
    assert summary["seed"] == 11 and summary["config"]["seed"] == 11 and summary["config"]["adv_type"] == "random"
    assert summary["dataset"]["name"] == "small" and len(summary["dataset"]["fingerprint"]) == 64
    assert summary["dataset"]["fingerprint"] == small_ds.fingerprint
    assert summary["dataset"]["path"] == str(data_dir) and set(summary["dataset"]["files_sha256"]) == {
        "pos.txt", "neg.txt", "f_resnet.npy"}
    prov = summary["provenance"]
    assert {"git_commit", "git_dirty", "tensorflow", "keras", "numpy", "python", "amr_tf"} <= set(prov)
    assert summary["command"].startswith("python -m amr_tf train")
    manifest = read_manifest(runs / "a" / "best")
    assert manifest["provenance"] == prov and manifest["args"]["seed"] == 11


def test_directory_dataset_records_file_hashes(tmp_path, tiny_dataset):
    import hashlib

    from amr_tf.data import load_amr_dir, write_amr_dir

    write_amr_dir(tiny_dataset, tmp_path, cnn="x")
    record = load_amr_dir(tmp_path, cnn="x").record()
    assert record["files_sha256"]["pos.txt"] == hashlib.sha256((tmp_path / "pos.txt").read_bytes()).hexdigest()
    assert set(record["files_sha256"]) == {"pos.txt", "neg.txt", "f_x.npy"}


def test_resume_keeps_the_configuration_and_the_dataset(runs, tmp_path, capsys, COMMON):
    # A copy: the last call rewrites metrics.json, which other tests read from runs/r.
    run = tmp_path / "r"
    shutil.copytree(runs / "r", run)
    assert main(COMMON + ["--lr", "[0.1,0.05,0.05]", "--weight_dir", str(run), "--resume", "--epoch", "20"]) == 2
    assert ("error: --resume: --lr (0.1, 0.05, 0.05) (the run used [0.05, 0.05, 0.05]); a resumed run keeps its "
            "configuration") in capsys.readouterr().err
    other = tmp_path / "other"
    from amr_tf.data import make_synthetic, write_amr_dir

    write_amr_dir(make_synthetic(60, 90, 16, num_pairs=300, num_negatives=20, seed=5), other)
    assert main(["train", "--weight_dir", str(run), "--resume", "--dataset", str(other), "--epoch", "20"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run / 'last'}: --resume: the run was trained on dataset 'small'")
    # Already complete: nothing to train, the summary is rewritten.
    assert main(["train", "--weight_dir", str(run), "--resume", "--quiet"]) == 0
    assert f"already trained for {EPOCHS} epochs" in capsys.readouterr().out
    assert [e["epoch"] for e in json.loads((run / "metrics.json").read_text())["evaluations"]] == [0, 4, 5, 8, 12]


def test_a_second_process_cannot_train_into_the_same_directory(tmp_path, COMMON, capsys):
    run = tmp_path / "busy"
    with directory_lock(run):
        assert main(COMMON + ["--epoch", "1", "--weight_dir", str(run), "--resume"]) == 2
    assert capsys.readouterr().err == (f"error: {run}: another training process is writing to this directory; "
                                       "wait for it to finish or choose another --weight_dir\n")
    assert not (run / "last.json").exists()


def test_resume_messages(runs):
    out = json.loads((runs / "stdout.json").read_text())
    assert f"--resume: no checkpoint in {runs / 'r'} yet; starting from epoch 0" in out["fresh"]
    assert f"removed 1 temporary file(s) left by an interrupted run in {runs / 'r'}" in out["resumed"]
    assert f"resuming {runs / 'r'} from epoch 5" in out["resumed"]


# ---------------------------------------------------------------------------- SIGKILL at random moments


def _last_epoch(run: Path) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return int(read_manifest(run / "last")["epoch"])
        except CheckpointError:
            return -1


def assert_everything_left_is_complete(run: Path, ds) -> None:
    """Every checkpoint, manifest and result file is complete, loadable and self-consistent:
    the optimisers' iteration counters match the manifest's epoch (weights and manifest agree)."""
    for f in sorted(run.iterdir()):
        if f.name.startswith("."):
            assert is_temp_file(f) or f.name == LOCK_NAME, f  # only temporary files may be left by a kill
        elif f.name.endswith(".weights.h5"):
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a stale .json would be fine, a corrupt one is not
                model, manifest = load_checkpoint(f, ds)
            counters = [int(opt.iterations.numpy()) for opt in model.optimizers_by_param]
            assert counters == [manifest["epoch"] * STEPS] * 3, (f, counters, manifest["epoch"])
        elif f.suffix == ".json":
            json.loads(f.read_text())


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(tmp_path, small_ds, run_flags, runs):
    """Kill ``python -m amr_tf train ... --resume`` three times at seeded random moments after it has
    written a new checkpoint; check every file left; resume to the end; compare with run ``a``."""
    rng = random.Random(6)
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "amr_tf"] + run_flags + ["--weight_dir", str(run), "--resume"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    t0, log = time.monotonic(), []
    for attempt in range(3):
        before = _last_epoch(run)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 240
        while proc.poll() is None and _last_epoch(run) <= before and time.monotonic() < deadline:
            time.sleep(0.02)  # wait for this process to write a new checkpoint...
        delay = rng.uniform(0.0, 0.4)
        time.sleep(delay)  # ...then kill it a random moment later: mid-epoch, mid-evaluation or mid-write
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        stderr = proc.communicate()[1].decode()
        assert killed or proc.returncode == 0, stderr
        log.append((attempt, before, round(delay, 3), killed, _last_epoch(run), round(time.monotonic() - t0, 1)))
        assert_everything_left_is_complete(run, small_ds)
    assert any(entry[3] for entry in log), log
    # The last resume runs in-process (same numbers as a subprocess, without another TF start-up).
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(run_flags + ["--weight_dir", str(run), "--resume"]) == 0
    assert_everything_left_is_complete(run, small_ds)
    assert not [p for p in run.iterdir() if is_temp_file(p)]  # stale temp files cleaned at start
    print("kills (attempt, epoch before, delay s, killed, epoch after, elapsed s):", log)
    assert_same_arrays(h5_arrays(runs / "a" / "last.weights.h5"), h5_arrays(run / "last.weights.h5"))
    ref, res = (json.loads((d / "metrics.json").read_text()) for d in (runs / "a", run))
    assert ref["final"] == res["final"] and ref["best_epoch"] == res["best_epoch"], log
    assert ref["best_NDCG@10"] == res["best_NDCG@10"]
    print("total", round(time.monotonic() - t0, 1), "s")


def test_a_blocking_io_error_inside_the_run_is_not_reported_as_the_lock(tmp_path):
    """Only the directory lock's BlockingIOError means "another process is writing here"; one
    raised by the run itself (non-blocking I/O) reaches the caller unchanged."""
    from amr_tf.run_dir import claimed_run_directory

    with pytest.raises(BlockingIOError, match="the run's own"):
        with claimed_run_directory(tmp_path / "run", "--weight_dir", overwrite=False, stamp="s"):
            raise BlockingIOError("the run's own")
