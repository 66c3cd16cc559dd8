"""Issue 14: crafted files run no code and read no other file, bombs are refused, no finished run
is overwritten, and every failure at the command line is one ``error:`` line with its exit status.

Each test here failed on the code before the fix (noted per test)."""

import contextlib
import io
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from amr_tf.checkpoints import load_checkpoint, load_pretrained, read_manifest, read_original_npy, save_checkpoint
from amr_tf.cli import EXIT_INPUT, EXIT_IO, main
from amr_tf.data import load_amr_dir, write_amr_dir
from amr_tf.errors import AmrError, CheckpointError, DataError, TrainingDivergedError
from amr_tf.io import recorded_writer_tags
from amr_tf.training import build_model, fit
from tests.conftest import make_tiny
from tests.test_vision import _FakeStorage, _FakeTensor, _write_fake_checkpoint, fake_torch  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--emb1_K", "4", "--batch_size", "64", "--lr", "[0.05,0.05,0.05]", "--quiet"]


@pytest.fixture(scope="module")
def ds():
    return make_tiny()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, ds):
    return write_amr_dir(ds, tmp_path_factory.mktemp("data") / "tiny", cnn="resnet")


@pytest.fixture
def no_hang():
    """Fail (instead of hanging the suite) if the test blocks, as a FIFO read would."""
    def timeout(*_):
        raise TimeoutError("blocked: the reader waited on a FIFO")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ---------------------------------------------------------------------------- the walker


UNSAFE = [
    (re.compile(r"\bpickle\.loads?\("), "raw pickle.load(s)"),
    (re.compile(r"\(\s*pickle\.Unpickler\s*\)"), "a pickle.Unpickler subclass"),
    (re.compile(r"allow_pickle\s*=\s*True"), "allow_pickle=True"),
    (re.compile(r"\bh5py\.File\("), "h5py.File("),
    (re.compile(r"\bnp\.memmap\("), "a raw np.memmap"),
    (re.compile(r"\bnp\.fromfile\("), "a raw np.fromfile"),
    (re.compile(r"\bread_magic\(|\bread_array_header_|\b_read_array_header\("), "a second .npy header reader"),
]


_WRITE_ONLY = re.compile(r"mode\s*=\s*[\"']w\+[\"']")  # open_memmap creating a file (not reading one)


def _calls(text: str, name: str = r"np\.load"):
    """Each call of ``name`` (a regex) with its text, parentheses balanced, to see its arguments."""
    for match in re.finditer(rf"\b{name}\(", text):
        depth, k = 1, match.end()
        while depth and k < len(text):
            depth += {"(": 1, ")": -1}.get(text[k], 0)
            k += 1
        yield match.start(), text[match.start():k]


def test_no_unsafe_reads_outside_safe_io():
    """Raw pickle loads, allow_pickle=True, h5py.File(, np.load without allow_pickle=False, np.memmap,
    np.fromfile, .npy header parsing and open_memmap other than for writing only in amr_tf/safe_io.py
    (failed before: reproduce/common.py, torch_checkpoint.py, checkpoints.py; then
    datasets/interactions.py's np.memmap and io.read_npy_header, its second header reader)."""
    offenders = []
    for top in ("amr_tf", "reproduce", "benchmarks"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "amr_tf/safe_io.py":
                continue
            text = path.read_text(encoding="utf-8")
            for n, line in enumerate(text.splitlines(), 1):
                code = line.split("#", 1)[0]
                offenders += [f"{rel}:{n}: {what}" for pattern, what in UNSAFE if pattern.search(code)]
            for start, call in _calls(text):
                if not re.search(r"allow_pickle\s*=\s*False", call):
                    offenders.append(f"{rel}:{text.count(chr(10), 0, start) + 1}: np.load without allow_pickle=False")
            for start, call in _calls(text, r"open_memmap"):  # its default mode, "r+", reads
                if not _WRITE_ONLY.search(call):
                    offenders.append(f"{rel}:{text.count(chr(10), 0, start) + 1}: open_memmap reading a file")
    # The one writer that must open HDF5 by name (Keras' temporary file) also lives in safe_io.
    assert not offenders, offenders


def test_walker_finds_what_it_looks_for():
    """The walker's patterns match the constructs they are meant to catch (it can fail)."""
    bad = ('x = pickle.load(f)\nclass U(pickle.Unpickler): pass\nnp.load(p, allow_pickle=True)\nh5py.File(p)\n'
           'a = np.memmap(fh, dtype=d, mode="r")\nnp.fromfile(p)\nnpformat.read_magic(fh)\n'
           'npformat.read_array_header_1_0(fh)\n')
    assert [sum(bool(p.search(line)) for p, _ in UNSAFE) for line in bad.splitlines()] == [1] * 8
    calls = dict(_calls("np.load(open(p, 'rb'))\nnp.load(fh, allow_pickle=False)"))
    assert [bool(re.search(r"allow_pickle\s*=\s*False", c)) for c in calls.values()] == [False, True]
    maps = [c for _, c in _calls('np.lib.format.open_memmap(p)\nopen_memmap(p, mode="w+", shape=(2, 3))', "open_memmap")]
    assert [bool(_WRITE_ONLY.search(c)) for c in maps] == [False, True] and maps[1].endswith("shape=(2, 3))")


# ---------------------------------------------------------------------------- code execution


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _object_npy(items) -> bytes:
    arr = np.empty(len(items), dtype=object)
    for k, item in enumerate(items):
        arr[k] = item
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def test_reproduce_pretrained_npy_runs_no_code(tmp_path, ds):
    """``reproduce --pretrained evil.npy`` (failed before: np.load(allow_pickle=True) ran the pickle)."""
    from reproduce.common import resolve_pretrained

    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.npy"
    evil.write_bytes(_object_npy([_Evil(marker), np.zeros((2, 2)), np.zeros((2, 2))]))
    with pytest.raises(AmrError, match=r"evil.npy: refers to posix.system, which is not allowed"):
        resolve_pretrained(str(evil), ds, log=lambda *_: None)
    assert not marker.exists()


def test_torch_legacy_header_runs_no_code(tmp_path):
    """The legacy .pth header records (failed before: read with plain pickle.load)."""
    from amr_tf.vision import load_torch_state_dict

    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps(_Evil(marker), protocol=2))
    with pytest.raises(CheckpointError, match=r"evil.pth: refers to posix.system, which is not allowed"):
        load_torch_state_dict(evil)
    evil.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, 2) + pickle.dumps(1001, 2) + pickle.dumps(_Evil(marker), 2))
    with pytest.raises(CheckpointError, match=r"refers to posix.system"):
        load_torch_state_dict(evil)
    assert not marker.exists()


def test_torch_stride_zero_tensor_cannot_claim_memory(tmp_path, fake_torch):
    """A 4-byte storage viewed as a 10^6 x 10^6 tensor with stride 0 (failed before: a MemoryError,
    or terabytes requested)."""
    from amr_tf.vision import load_torch_state_dict

    tiny = _FakeStorage("1", np.ones(1, np.float32))
    for zip_format in (False, True):
        path = tmp_path / f"bomb{zip_format}.pth"
        _write_fake_checkpoint(path, {"w": _FakeTensor(tiny, 0, (10**6, 10**6), (0, 0))}, zip_format, fake_torch)
        with pytest.raises(CheckpointError, match=r"larger than the file's data; refused"):
            load_torch_state_dict(path)


def test_torch_reader_refuses_a_fifo(tmp_path, no_hang):
    from amr_tf.vision import load_torch_state_dict

    os.mkfifo(tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=r"w.pth: is a named pipe \(FIFO\), not a regular file"):
        load_torch_state_dict(tmp_path / "w.pth")


# ---------------------------------------------------------------------------- pickle bombs


_RECONSTRUCT = np._core.multiarray._reconstruct  # what np.save's pickles name


class _Shared:
    """An array whose pickled state reuses one bytes object (pickle memoises it: one copy in the file)."""

    def __init__(self, data: bytes, shape):
        self.data, self.shape = data, shape

    def __reduce__(self):
        return (_RECONSTRUCT, (np.ndarray, (0,), b"b"),
                (1, self.shape, np.dtype("<f4"), False, self.data))


class _Allocate:
    def __reduce__(self):
        return (_RECONSTRUCT, (np.ndarray, (300_000_000,), np.dtype("f8")))


def test_pickle_bombs_are_refused(tmp_path):
    """(failed before: each was unpickled; the first allocated 2.4 GB from a few hundred bytes)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": (1,)})
    cases = {
        "alloc": (header.getvalue() + pickle.dumps(_Allocate(), protocol=2), "unexpected array construction"),
        "same-array": (_object_npy([np.ones((300, 64), np.float32)] * 3), "the same array appears twice"),
        "many": (_object_npy([np.ones((1, 1), np.float32) for _ in range(5000)]), "expected a short object array"),
    }
    data = bytes(4 * 300 * 64)
    shared = _object_npy([_Shared(data, (300, 64)) for _ in range(3)])
    cases["shared-bytes"] = (shared, "more array data than the file holds")
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.npy"
        path.write_bytes(content)
        assert path.stat().st_size < 300_000
        with pytest.raises(CheckpointError, match=re.escape(message)):
            read_original_npy(path)


def test_the_real_original_weights_still_load():
    from tests.conftest import shared_path

    arrays = read_original_npy(shared_path("fixtures", "amr-original", "best-vbpr.npy"))
    assert [a.shape for a in arrays] == [(3226, 64), (4998, 64), (2048, 64)]


# ---------------------------------------------------------------------------- HDF5 references


@pytest.fixture
def checkpoint(tmp_path, ds):
    model = build_model("VBPR", ds, embed_dim=4, seed=0)
    save_checkpoint(model, tmp_path / "ck", ds)
    return model, tmp_path / "ck"


def _replace_P(path, make):
    with h5py.File(path, "a") as f:
        shape, dtype = f["vars/0"].shape, f["vars/0"].dtype
        del f["vars/0"]
        make(f, "vars/0", shape, dtype)


def test_hdf5_references_to_other_files_are_refused(tmp_path, ds, checkpoint):
    """External storage, external links, virtual datasets and soft links (failed before: the bytes of
    another local file became P)."""
    model, ck = checkpoint
    secret = tmp_path / "secret.bin"
    n = int(np.prod(model.P.shape)) * 4
    secret.write_bytes(np.full(n // 4, 7.0, np.float32).tobytes())
    donor = tmp_path / "donor.h5"
    with h5py.File(donor, "w") as f:
        f["x"] = np.full(model.P.shape, 7.0, np.float32)
    weights = Path(f"{ck}.weights.h5")
    original = weights.read_bytes()

    def external_storage(f, name, shape, dtype):
        f.create_dataset(name, shape=shape, dtype=dtype, external=[(str(secret), 0, n)])

    def external_link(f, name, shape, dtype):
        f[name] = h5py.ExternalLink(str(donor), "/x")

    def virtual(f, name, shape, dtype):
        layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
        layout[:] = h5py.VirtualSource(str(donor), "x", shape=shape)
        f.create_virtual_dataset(name, layout)

    def soft_link(f, name, shape, dtype):
        f["elsewhere"] = np.full(shape, 7.0, np.float32)
        f[name] = h5py.SoftLink("/elsewhere")

    cases = {external_storage: "keeps its data in external file(s)", external_link: "is an external link to",
             virtual: "is a virtual dataset", soft_link: "is a SoftLink"}
    for make, message in cases.items():
        weights.write_bytes(original)
        _replace_P(weights, make)
        fresh = build_model("VBPR", ds, embed_dim=4, seed=1)
        before = fresh.P.numpy().copy()
        with pytest.raises(CheckpointError, match=re.escape(message)):
            load_pretrained(fresh, ck)
        np.testing.assert_array_equal(fresh.P.numpy(), before)
        with pytest.raises(CheckpointError, match=re.escape(message)):
            load_checkpoint(ck, ds)


# ---------------------------------------------------------------------------- not regular files


def test_fifos_directories_and_link_loops_are_named_not_waited_on(tmp_path, ds, data_dir, checkpoint, no_hang):
    """(failed before: a FIFO hung the reader; a FIFO, directory or link loop was 'missing')."""
    _, ck = checkpoint
    os.mkfifo(tmp_path / "w.npy")
    with pytest.raises(CheckpointError, match=r"w.npy: is a named pipe \(FIFO\), not a regular file"):
        read_original_npy(tmp_path / "w.npy")
    Path(f"{ck}.json").unlink()
    os.mkfifo(f"{ck}.json")
    with pytest.warns(UserWarning, match=r"ck.json: is a named pipe \(FIFO\)"):  # the FIFO is named...
        assert read_manifest(ck)["model"] == "VBPR"  # ...and the copy inside the weights is used
    fifo_ck = tmp_path / "f"
    os.mkfifo(f"{fifo_ck}.weights.h5")
    model = build_model("VBPR", ds, embed_dim=4, seed=0)
    with pytest.raises(CheckpointError, match=r"f.weights.h5: is a named pipe \(FIFO\)"):
        load_pretrained(model, fifo_ck)
    for kind, make, message in (
        ("fifo", lambda p: os.mkfifo(p), r"is a named pipe \(FIFO\), not a regular file"),
        ("dir", lambda p: p.mkdir(), r"is a directory"),
        ("loop", lambda p: (os.symlink(p.name + ".b", p), os.symlink(p.name, str(p) + ".b")),
         r"is a symbolic link loop"),
    ):
        root = tmp_path / kind
        shutil.copytree(data_dir, root)
        (root / "pos.txt").unlink()
        make(root / "pos.txt")
        with pytest.raises(DataError, match=rf"pos.txt: {message}"):
            load_amr_dir(root, cnn="resnet")


def test_hashing_a_fifo_or_a_device_is_refused_at_once(tmp_path, no_hang):
    """``io.sha256_file`` (the builders' source and output hashes) goes through ``open_regular``
    (failed before: opening the FIFO waited for a writer, /dev/zero was read forever; no_hang's
    alarm turned the hang into a failure)."""
    import hashlib

    from amr_tf.io import sha256_file

    os.mkfifo(tmp_path / "src.csv")
    with pytest.raises(AmrError, match=r"src.csv: is a named pipe \(FIFO\), not a regular file"):
        sha256_file(tmp_path / "src.csv")
    if os.path.exists("/dev/zero"):
        with pytest.raises(AmrError, match=r"^/dev/zero: is a character device, not a regular file"):
            sha256_file("/dev/zero")
    (tmp_path / "ok.bin").write_bytes(b"x" * (3 << 20))
    assert sha256_file(tmp_path / "ok.bin") == hashlib.sha256(b"x" * (3 << 20)).hexdigest()


def test_deeply_nested_manifest_is_one_error(tmp_path, checkpoint):
    """(failed before: RecursionError escaped as a traceback)."""
    _, ck = checkpoint
    Path(f"{ck}.weights.h5").unlink()
    Path(f"{ck}.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(CheckpointError, match=r"ck.json: corrupt manifest \(nested too deeply\)"):
        read_manifest(ck)


# ---------------------------------------------------------------------------- sizes


def test_absurd_sizes_are_one_error_line(tmp_path, data_dir, capsys, checkpoint, ds):
    """(failed before: TensorFlow errors or allocations as tracebacks)."""
    common = ["train", "--dataset", str(data_dir), "--epoch", "1", "--quiet"]
    assert main(common + ["--batch_size", str(10**20), "--weight_dir", str(tmp_path / "a")]) == EXIT_INPUT
    assert one_error_line(capsys) == f"error: --batch_size {10**20} is more than 2147483647 (a batch may hold at most the 200 training pairs anyway)"
    assert main(common + ["--emb1_K", str(10**20), "--weight_dir", str(tmp_path / "b")]) == EXIT_INPUT
    assert re.fullmatch(r"error: --emb1_K: a model with embedding size 1{1}0{20} for 40 users, 60 items and 12-d "
                        r"features would need .* more than the .* of memory available; use smaller sizes",
                        one_error_line(capsys))
    _, ck = checkpoint
    for key, value in (("embed_dim", 10**9), ("embed_dim", 1e9), ("num_users", "forty")):
        manifest = json.loads(Path(f"{ck}.json").read_text())
        manifest["config"][key] = value
        bad = tmp_path / f"bad-{key}-{value}"
        Path(f"{bad}.json").write_text(json.dumps(manifest))
        shutil.copy(f"{ck}.weights.h5", f"{bad}.weights.h5")
        with h5py.File(f"{bad}.weights.h5", "a") as f:
            del f.attrs["amr_tf_manifest"]
        assert main(["evaluate", str(bad), "--dataset", str(data_dir)]) == EXIT_INPUT
        line = one_error_line(capsys)
        assert line.startswith(f"error: {bad}: ")


# ---------------------------------------------------------------------------- runs are never destroyed


def test_a_finished_run_is_refused_then_moved_aside_with_overwrite(tmp_path, data_dir, capsys):
    """(failed before: a 1-epoch run silently replaced best, last and metrics.json)."""
    run = tmp_path / "run"
    common = ["train", "--dataset", str(data_dir)] + FLAGS
    assert main(common + ["--epoch", "2", "--weight_dir", str(run)]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".amr_tf.lock"}
    assert main(common + ["--epoch", "1", "--weight_dir", str(run)]) == EXIT_INPUT
    assert one_error_line(capsys) == (
        f"error: {run}: already holds files (best.json, best.weights.h5, last.json, last.weights.h5, logs, ...); "
        "pass --resume to continue it, --overwrite to move it aside and start afresh, or choose another --weight_dir")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".amr_tf.lock"} == before
    assert main(common + ["--epoch", "1", "--weight_dir", str(run), "--overwrite"]) == 0
    out = capsys.readouterr().out
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert f"--overwrite: moved the previous contents of {run} to {aside}" in out
    assert {p.name: p.read_bytes() for p in aside.iterdir() if p.is_file() and p.name != ".amr_tf.lock"} == before
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 1
    assert main(common + ["--weight_dir", str(run), "--resume", "--overwrite"]) == EXIT_INPUT
    assert "give one of them" in one_error_line(capsys)


def test_an_unrelated_directory_is_refused_even_with_resume(tmp_path, data_dir, capsys):
    run = tmp_path / "mine"
    run.mkdir()
    (run / "thesis.tex").write_text("precious")
    (run / ".thesis.tex.0123abcd.zzzzzzzz.tmp").write_text("looks like ours, is not")
    assert main(["train", "--dataset", str(data_dir), "--epoch", "1", "--weight_dir", str(run), "--resume"] + FLAGS) == 2
    assert "already holds a run (.thesis.tex.0123abcd.zzzzzzzz.tmp, thesis.tex); --resume found no 'last'" in one_error_line(capsys)
    assert sorted(p.name for p in run.iterdir()) == [".amr_tf.lock", ".thesis.tex.0123abcd.zzzzzzzz.tmp", "thesis.tex"]
    assert recorded_writer_tags(run)  # the lock records who held it


# ---------------------------------------------------------------------------- bad directories, OS errors


def test_weight_dir_or_logdir_that_is_a_file(tmp_path, data_dir, capsys):
    (tmp_path / "f").write_text("x")
    common = ["train", "--dataset", str(data_dir), "--epoch", "1"] + FLAGS
    assert main(common + ["--weight_dir", str(tmp_path / "f")]) == EXIT_INPUT
    assert one_error_line(capsys) == f"error: {tmp_path / 'f'}: --weight_dir is not a directory (a file is in the way)"
    assert main(common + ["--weight_dir", str(tmp_path / "r"), "--logdir", str(tmp_path / "f")]) == EXIT_INPUT
    assert one_error_line(capsys) == f"error: {tmp_path / 'f'}: --logdir is not a directory (a file is in the way)"
    assert main(common + ["--weight_dir", str(tmp_path / "f" / "sub")]) == EXIT_IO
    assert one_error_line(capsys) == f"error: {tmp_path / 'f' / 'sub'}: Not a directory"


@contextlib.contextmanager
def mounted_tmpfs(path: Path, size: str, options: str = ""):
    """A small tmpfs at ``path`` (root only); skips the test where mounting is not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}{options}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _train_process(args, timeout=300):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-m", "amr_tf", "train"] + args, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    return proc, errors


def test_training_on_a_full_file_system(tmp_path, data_dir):
    """A tiny tmpfs: training fails with one error line and status 74; then a disk that fills up
    after the first checkpoints keeps them intact (failed before: OSError traceback, then a
    segmentation fault, exit 139)."""
    with mounted_tmpfs(tmp_path / "tiny", "16k") as tiny:
        proc, errors = _train_process(["--dataset", str(data_dir), "--epoch", "2", "--weight_dir", str(tiny / "r")] + FLAGS)
        assert proc.returncode == EXIT_IO, proc.stderr[-2000:]
        assert len(errors) == 1 and errors[0].startswith(
            f"error: {tiny / 'r' / 'best.weights.h5'}: No space left on device"), proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert not [p for p in (tiny / "r").iterdir() if p.name.endswith((".h5", ".json", ".tmp"))]
    with mounted_tmpfs(tmp_path / "fills", "8m") as disk:
        run = disk / "r"
        proc, _ = _train_process(["--dataset", str(data_dir), "--epoch", "1", "--weight_dir", str(run)] + FLAGS)
        assert proc.returncode == 0, proc.stderr[-2000:]
        kept = (run / "last.weights.h5").read_bytes()
        used = shutil.disk_usage(disk).used
        subprocess.run(["mount", "-o", f"remount,size={used + 8192}", str(disk)], check=True)
        proc, errors = _train_process(["--dataset", str(data_dir), "--epoch", "3", "--weight_dir", str(run),
                                       "--resume"] + FLAGS)
        assert proc.returncode == EXIT_IO and len(errors) == 1 and "No space left on device" in errors[0], proc.stderr
        assert "Traceback" not in proc.stderr and "Segmentation" not in proc.stderr
        assert (run / "last.weights.h5").read_bytes() == kept
        assert read_manifest(run / "last")["epoch"] == 1


def test_a_failed_hdf5_write_does_not_crash_the_process(tmp_path, data_dir, monkeypatch):
    """Disk full in the middle of Keras' write (the free-space check passed): the leaked HDF5 handle is
    closed, one error line, status 74 (failed before: a segmentation fault at exit)."""
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\nimport amr_tf.checkpoints.project as p\np._check_free_space = lambda *a: None\n"
        "from amr_tf.cli import main\nsys.exit(main())\n")
    with mounted_tmpfs(tmp_path / "tiny", "96k") as tiny:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
        proc = subprocess.run([sys.executable, str(script), "train", "--dataset", str(data_dir), "--epoch", "1",
                               "--weight_dir", str(tiny / "r")] + FLAGS, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == EXIT_IO, proc.stderr[-3000:]
        assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
            f"error: {tiny / 'r' / 'best.weights.h5'}: No space left on device (nothing was half-written: the files "
            "written before are complete and kept)"]
        assert "Traceback" not in proc.stderr


def test_read_only_file_system(tmp_path, data_dir, ds, capsys):
    with mounted_tmpfs(tmp_path / "ro", "1m", ",ro") as ro:
        assert main(["train", "--dataset", str(data_dir), "--epoch", "1", "--weight_dir", str(ro / "r")] + FLAGS) == EXIT_IO
        assert one_error_line(capsys) == (f"error: {ro / 'r'}: Read-only file system (nothing was half-written: the "
                                          "files written before are complete and kept)")
        model = build_model("VBPR", ds, embed_dim=4, seed=0)
        from amr_tf.checkpoints import export_original_npy

        export_original_npy(model, tmp_path / "w.npy")
        assert main(["convert-original", str(tmp_path / "w.npy"), "--out", str(ro / "ck")]) == EXIT_IO
        assert one_error_line(capsys) == (f"error: {ro / 'ck.weights.h5'}: Read-only file system (nothing was "
                                          "half-written: the files written before are complete and kept)")


# ---------------------------------------------------------------------------- training that does nothing


def test_absurd_penalties_do_not_exit_0(tmp_path, data_dir, capsys):
    """(failed before: exit 0 with the weights unchanged and infinite Adagrad accumulators saved)."""
    run = tmp_path / "r"
    rc = main(["train", "--dataset", str(data_dir), "--epoch", "2", "--weight_dir", str(run),
               "--regs", "[1e30,1e30,1e30]"] + FLAGS)
    assert rc == EXIT_INPUT
    line = one_error_line(capsys)
    assert line.startswith("error: training diverged in epoch 1: the loss was finite; the optimiser state (Adagrad "
                           "accumulators) of P, Q, E holds NaN/Inf. Stopped without saving that epoch")
    assert read_manifest(run / "last")["epoch"] == 0


def test_an_epoch_that_changes_no_weight_is_reported(ds):
    model = build_model("VBPR", ds, embed_dim=4, learning_rates=(1e-45, 1e-45, 1e-45), seed=0)
    with pytest.raises(TrainingDivergedError, match=r"training stalled in epoch 1: no weight \(P, Q, E\) changed"):
        fit(model, ds, epochs=1, batch_size=64, verbose=0)


# ---------------------------------------------------------------------------- --resume trusts nothing


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir):
    run = tmp_path_factory.mktemp("resume") / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "--dataset", str(data_dir), "--epoch", "1", "--weight_dir", str(run)] + FLAGS) == 0
    return run


def _edit_args(run: Path, dest: Path, **changes) -> Path:
    shutil.copytree(run, dest)
    for name in ("last.json",):
        manifest = json.loads((dest / name).read_text())
        manifest["args"].update(changes)
        (dest / name).write_text(json.dumps(manifest))
    with h5py.File(dest / "last.weights.h5", "a") as f:
        del f.attrs["amr_tf_manifest"]  # the .json alone describes the checkpoint now
    return dest


@pytest.mark.parametrize("changes, message", [
    (dict(epoch=10**12), "--epoch 1000000000000 is more than 1000000"),
    (dict(lr=[-1, 0.1, 0.1]), "the stored --lr [-1, 0.1, 0.1] is invalid: every value must be finite and > 0.0"),
    (dict(batch_size="64; rm -rf /"), "the stored --batch_size '64; rm -rf /' is invalid: expected an integer"),
    (dict(model="EVIL"), "the stored --model 'EVIL' is not one of MFBPR, VBPR, AMR, DUIF, AMR_DUIF, EALS, POP"),
    (dict(logdir="/tmp/elsewhere"), "the run logged to /tmp/elsewhere, outside"),
])
def test_resume_checks_stored_arguments_like_typed_ones(tmp_path, finished_run, capsys, changes, message):
    """(failed before: the stored values were used as they were: an endless run, a log directory anywhere)."""
    run = _edit_args(finished_run, tmp_path / "run", **changes)
    assert main(["train", "--weight_dir", str(run), "--resume", "--quiet"]) == EXIT_INPUT
    assert message in one_error_line(capsys)


# ---------------------------------------------------------------------------- exit statuses


def _raiser(exc):
    def handler(args):
        raise exc
    return handler


@pytest.mark.parametrize("exc, status, line", [
    (MemoryError(), 71, "error: out of memory; use smaller sizes (--emb1_K, --batch_size) or a larger machine"),
    (OSError(28, "No space left on device", "runs/x/last.weights.h5"), 74,
     "error: runs/x/last.weights.h5: No space left on device (nothing was half-written: the files written before "
     "are complete and kept)"),
    (OSError(20, "Not a directory\nsecond line"), 74, "error: Not a directory"),
    ("ResourceExhaustedError", 71, "error: TensorFlow ran out of memory (OOM when allocating tensor with shape "
                                   "[100000000000,64]); use smaller sizes"),
    ("InvalidArgumentError", 70, "error: TensorFlow failed: InvalidArgumentError: OOM when allocating tensor with "
                                 "shape [100000000000,64]"),
])
def test_every_failure_is_one_line_with_its_status(monkeypatch, capsys, exc, status, line):
    import amr_tf.cli.evaluate as cli  # the handler's module (the parser binds cmd_evaluate from it)

    if isinstance(exc, str):
        import tensorflow as tf

        exc = getattr(tf.errors, exc)(None, None, "OOM when allocating tensor with shape [100000000000,64]\n more")
    monkeypatch.setattr(cli, "cmd_evaluate", _raiser(exc))
    assert main(["evaluate", "--model", "POP"]) == status
    assert one_error_line(capsys) == line


def test_a_bug_keeps_its_traceback(monkeypatch):
    import amr_tf.cli.evaluate as cli  # the handler's module (the parser binds cmd_evaluate from it)

    monkeypatch.setattr(cli, "cmd_evaluate", _raiser(ZeroDivisionError("a bug")))
    with pytest.raises(ZeroDivisionError):
        main(["evaluate", "--model", "POP"])


def test_a_crafted_best_manifest_is_a_warning_not_a_traceback(tmp_path, finished_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    manifest = json.loads((run / "best.json").read_text())
    manifest["metrics"]["NDCG@10"] = "not a number"
    (run / "best.json").write_text(json.dumps(manifest))
    with h5py.File(run / "best.weights.h5", "a") as f:
        del f.attrs["amr_tf_manifest"]
    assert main(["train", "--weight_dir", str(run), "--resume", "--epoch", "2", "--quiet"]) == 0
    assert "warning: could not convert string to float: 'not a number'; the best checkpoint will be chosen afresh" in (
        capsys.readouterr().err)
    summary = json.loads((run / "metrics.json").read_text())
    assert [e["epoch"] for e in summary["evaluations"]] == [0, 1, 2] and summary["complete"] is True
