"""Pixel-level attacks on the posters of the embedded MovieLens dataset, through the CNN into VBPR/AMR.

For a seeded random subset of test items (``--max-items``; items whose poster is in ``--images``), the
224x224 model input of each poster (centre crop 224/256, bilinear resize) is attacked with FGSM (L-inf),
PGD-L-inf and PGD-L2 at pixel budgets eps in {1, 2, 4, 8}/255 (:mod:`amr_tf.attacks.pixel`), untargeted:
the attacker lowers ``sum_u s_ui`` over the users ``u`` whose held-out test item is ``i`` (equivalently
raises their score margins against their candidates).  For PGD-L2 the ball has radius
``eps * sqrt(224*224*3)``: a root-mean-square pixel change of at most eps.

Each attacked image is evaluated three ways: ``float`` (the attacker's unquantised image, the
idealised number), ``png`` (8-bit, lossless) and ``jpeg90`` (8-bit JPEG, quality 90).  The file is
encoded, decoded, the feature re-extracted and divided by the dataset's feature scale (the global
max |value| of the raw feature file), and only the attacked items' feature rows are replaced.
The ``png`` / ``jpeg90`` rows are the honest numbers.

Metrics (sampled protocol: test item vs the user's sampled negatives, as everywhere in the project)
are over the users whose test item was attacked only.  ``clean`` uses the dataset's stored features;
``none`` rows re-extract the clean crops through the same save path (the control: what saving alone
does).  Also reported: mean relative feature change ``||c' - c|| / ||c||`` (against the clean
re-extracted feature), mean PSNR and SSIM (``tf.image``, ``max_val=255``) against the clean crop,
and a small targeted experiment (PGD-L-inf pushing a few items up for all users that have them
among their candidates).  The figure shows a few posters before and after with the mean rank of the
test item for its users.  Posters are third-party: none is written, only the figure.

Runs on the experiment framework of :mod:`reproduce.common` (writes ``<out>/pixel_attack/``; it
trains nothing, so it has no run store and no training flags).

``python -m reproduce.pixel_attack [--quick] [--images DIR] [--dataset NAME|DIR] [--out results]``
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

from amr_tf import pretrained
from amr_tf.errors import AmrError, DataError
from reproduce import common

NAME = "pixel_attack"
TITLE = "Pixel-level attacks on the posters, through the CNN into VBPR and AMR"
TRAINS = False

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "ml1m-posters" / "images"
DEFAULT_MODELS = {"VBPR": pretrained.DIR / "vbpr-movielens-posters",
                  "AMR": pretrained.DIR / "amr-movielens-posters"}
KS = (10,)
QUICK = dict(max_items=2, eps=(8.0,), steps=1, targeted_items=1, figure_items=2)
FULL = dict(max_items=64, eps=(1.0, 2.0, 4.0, 8.0), steps=10, targeted_items=4, figure_items=4)
COLUMNS = ["model", "attack", "eps", "eps_255", "save", "HR@10", "NDCG@10", "mean_rank", "rel_feature_change",
           "psnr", "ssim", "linf", "rms"]


def add_arguments(p) -> None:
    """The experiment's own flags (beside reproduce.common's --quick, --dataset, --cnn, --out)."""
    from amr_tf.flags import positive_int

    p.set_defaults(cnn="effnet")
    p.add_argument("--images", default=str(DEFAULT_IMAGES),
                   help="folder of the posters, <ml1m id>.jpg (default ../shared/data/ml1m-posters/images)")
    p.add_argument("--vbpr", default=str(DEFAULT_MODELS["VBPR"]), help="VBPR checkpoint")
    p.add_argument("--amr", default=str(DEFAULT_MODELS["AMR"]), help="AMR checkpoint")
    p.add_argument("--max-items", type=positive_int, default=None, help="test items attacked (full 64, quick 2)")
    p.add_argument("--eps", default=None, help="pixel budgets in 1/255 units, comma-separated (full 1,2,4,8)")
    p.add_argument("--attacks", default="fgsm,pgd-linf,pgd-l2", help="comma-separated subset of fgsm,pgd-linf,pgd-l2")
    p.add_argument("--steps", type=positive_int, default=None, help="PGD iterations (full 10, quick 1)")
    p.add_argument("--step-size", type=float, default=None, help="PGD step in pixel units (default 2.5*eps/steps)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per attack batch")
    p.add_argument("--targeted-items", type=int, default=None, help="items of the targeted experiment (0: skip)")
    p.add_argument("--figure-items", type=int, default=None, help="posters in the figure")
    p.add_argument("--seed", type=int, default=0, help="item selection and PGD random starts")
    p.add_argument("--cache-dir", default=None, help="where the converted EfficientNet weights are cached")


def settings(args) -> dict:
    """Quick or full settings with the flags given applied; the attacks checked."""
    from amr_tf.attacks import pixel

    cfg = dict(QUICK if args.quick else FULL)
    for key in ("max_items", "steps", "targeted_items", "figure_items"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if args.eps is not None:
        cfg["eps"] = tuple(float(e) for e in args.eps.split(","))
    cfg["attacks"] = [a.strip() for a in args.attacks.split(",") if a.strip()]
    for a in cfg["attacks"]:
        if a not in pixel.PIXEL_ATTACKS:
            raise AmrError(f"unknown attack {a!r}; choose from {', '.join(pixel.PIXEL_ATTACKS)}")
    cfg.update(step_size=args.step_size, batch_size=args.batch_size, seed=args.seed, images=str(args.images),
               save_formats=list(pixel.SAVE_FORMATS))
    return cfg


def _item_posters(dataset, images_dir: Path) -> dict:
    """item index -> poster path, from the dataset's items.tsv (column ml1m_id)."""
    if not dataset.path:
        raise DataError(f"dataset {dataset.name!r} has no folder, so no items.tsv to find its posters")
    tsv = Path(dataset.path) / "items.tsv"
    if not tsv.is_file():
        raise DataError(f"{tsv}: not found; the pixel attack needs the item -> poster mapping")
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: poster folder not found (see the dataset card, "
                        f"{Path(dataset.path) / 'README.md'}, for where to get the posters)")
    out = {}
    with open(tsv, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        col = header.index("ml1m_id")
        for line in f:
            parts = line.rstrip("\n").split("\t")
            path = images_dir / f"{parts[col]}.jpg"
            if path.is_file():
                out[int(parts[0])] = path
    return out


def _metrics(ranks) -> dict:
    from amr_tf.evaluation import metrics_from_ranks

    m = metrics_from_ranks(ranks, KS)
    m["mean_rank"] = float(np.mean(np.asarray(ranks) + 1))
    return m


def _candidate_rank(model, dataset, features, item, users):
    """0-based rank of ``item`` among each user's test candidates (item itself excluded as a competitor)."""
    import tensorflow as tf

    iv = model.item_vectors(tf.constant(features)).numpy()
    P = np.asarray(model.P.numpy())
    cands = np.asarray(dataset.test_candidates)[users]
    s_t = P[users] @ iv[item]
    s_c = np.einsum("uk,unk->un", P[users], iv[cands])
    return ((s_c >= s_t[:, None]) & (cands != item)).sum(axis=1)


class Setup:
    """What every part of the experiment shares: the attacked items, their users and clean crops, the CNN, the models."""

    def __init__(self, ctx, cfg):
        from amr_tf.attacks import pixel
        from amr_tf.checkpoints import load_checkpoint
        from amr_tf.vision.efficientnet_lite import build_feature_extractor
        from amr_tf.vision.preprocess import load_and_preprocess

        args, ds = ctx.args, ctx.dataset
        self.ds, self.cfg = ds, cfg
        self.feature_file = Path(ds.path) / f"f_{args.cnn}.npy" if ds.path else None
        if self.feature_file is None:
            raise DataError(f"dataset {ds.name!r} has no folder, so no feature file to take the scale from")
        self.scale = pixel.raw_feature_scale(self.feature_file)
        posters = _item_posters(ds, Path(args.images))
        self.test_items = np.asarray(ds.test_candidates)[:, 0]
        pool = np.array(sorted(set(int(i) for i in self.test_items) & set(posters)))
        if len(pool) == 0:
            raise DataError(f"no test item has a poster in {args.images}")
        rng = np.random.default_rng(args.seed)
        self.items = np.sort(rng.choice(pool, size=min(cfg["max_items"], len(pool)), replace=False))
        self.users = np.flatnonzero(np.isin(self.test_items, self.items))
        ctx.log(f"{ctx.mode} mode: {len(self.items)} attacked test items ({len(pool)} with posters), "
                f"{len(self.users)} users; feature scale {self.scale:.4f}")
        self.clean = np.stack([load_and_preprocess(posters[int(i)]) for i in self.items]).astype(np.float32)
        self.extractor = build_feature_extractor(weights="imagenet", cache_dir=args.cache_dir)
        self.clean_feat = pixel.extract(self.extractor, self.scale, self.clean)
        self.pipeline_gap = pixel.relative_change(ds.features[self.items], self.clean_feat)
        ctx.log(f"re-extracted clean features vs stored (float16) features: mean relative difference "
                f"{self.pipeline_gap.mean():.2e}")
        self.models = {"VBPR": load_checkpoint(args.vbpr, ds, compile=False)[0],
                       "AMR": load_checkpoint(args.amr, ds, compile=False)[0]}


def evaluate_saved(setup, model_name, model, attack, eps, adv, rows, per_item) -> None:
    """Rows of ``adv`` (attacked crops) saved in each format, reloaded, re-extracted and ranked."""
    from amr_tf.attacks import pixel
    from amr_tf.evaluation import rank_test_items

    s = setup
    for fmt in pixel.SAVE_FORMATS:
        reloaded = pixel.save_and_reload(adv, fmt)
        feats = pixel.extract(s.extractor, s.scale, reloaded)
        F = s.ds.features.copy()
        F[s.items] = feats
        ranks = rank_test_items(model, s.ds, features=F)[s.users]
        q = pixel.image_quality(s.clean, reloaded)
        rel = pixel.relative_change(s.clean_feat, feats)
        rows.append({"model": model_name, "attack": attack, "eps": eps, "eps_255": f"{eps:g}/255", "save": fmt,
                     **_metrics(ranks), "rel_feature_change": float(rel.mean()),
                     "psnr": float(np.mean(np.minimum(q["psnr"], 99.0))), "ssim": float(np.mean(q["ssim"])),
                     "linf": float(q["linf"].max()), "rms": float(q["rms"].mean())})
        per_item[(model_name, attack, eps, fmt)] = {
            int(i): float(np.mean(ranks[s.test_items[s.users] == i] + 1)) for i in s.items}


def untargeted(ctx, setup):
    """Every model x attack x eps: ``(rows, per-item mean ranks, seconds per attack, the figure's images)``."""
    from amr_tf.attacks import pixel
    from amr_tf.evaluation import rank_test_items

    s, cfg = setup, setup.cfg
    rows, per_item, seconds, fig_adv = [], {}, {}, None
    fig_attack = figure_attack(cfg)
    for model_name, model in s.models.items():
        base = _metrics(rank_test_items(model, s.ds)[s.users])
        rows.append({"model": model_name, "attack": "clean", "eps": 0.0, "eps_255": "0", "save": "stored",
                     **base, "rel_feature_change": 0.0, "psnr": 99.0, "ssim": 1.0, "linf": 0.0, "rms": 0.0})
        evaluate_saved(s, model_name, model, "none", 0.0, s.clean, rows, per_item)
        directions = pixel.untargeted_directions(model, s.ds, s.items)
        for attack in cfg["attacks"]:
            for eps in cfg["eps"]:
                radius = eps * np.sqrt(s.clean[0].size) if attack == "pgd-l2" else eps
                t = time.perf_counter()
                adv = pixel.attack_images(s.extractor, s.scale, s.clean, directions, attack=attack, eps=radius,
                                          steps=cfg["steps"], step_size=cfg["step_size"], seed=cfg["seed"],
                                          batch_size=cfg["batch_size"])
                seconds[f"{model_name}/{attack}/{eps:g}"] = round(time.perf_counter() - t, 2)
                evaluate_saved(s, model_name, model, attack, eps, adv, rows, per_item)
                r = rows[-2]  # png
                ctx.log(f"{model_name} {attack} eps {eps:g}/255: HR@10 {r['HR@10']:.3f} NDCG@10 "
                        f"{r['NDCG@10']:.3f} (png reload), PSNR {r['psnr']:.1f} dB, SSIM {r['ssim']:.3f}")
                if model_name == "VBPR" and attack == fig_attack and eps == max(cfg["eps"]):
                    fig_adv = adv
    return rows, per_item, seconds, fig_adv


def figure_attack(cfg) -> str:
    return "pgd-linf" if "pgd-linf" in cfg["attacks"] else cfg["attacks"][-1]


def targeted(ctx, setup, per_item) -> list[dict]:
    """Push the worst-ranked attacked items up for every user that has them as a candidate (PGD-L-inf, PNG reload)."""
    from amr_tf.attacks import pixel

    s, cfg = setup, setup.cfg
    out = []
    cands = np.asarray(s.ds.test_candidates)
    eps = max(cfg["eps"])
    for model_name, model in s.models.items():
        order = sorted(s.items, key=lambda i: -per_item[(model_name, "none", 0.0, "png")][int(i)])
        chosen = np.array(order[:cfg["targeted_items"]])
        tusers = [np.flatnonzero((cands == i).any(axis=1)) for i in chosen]
        d = pixel.targeted_directions(model, chosen, tusers)
        idx = np.searchsorted(s.items, chosen)
        adv = pixel.attack_images(s.extractor, s.scale, s.clean[idx], d, attack="pgd-linf", eps=eps,
                                  steps=cfg["steps"], seed=cfg["seed"], batch_size=cfg["batch_size"])
        feats = pixel.extract(s.extractor, s.scale, pixel.save_and_reload(adv, "png"))
        for k, i in enumerate(chosen):
            F0 = s.ds.features.copy()
            F0[s.items] = s.clean_feat
            F1 = F0.copy()
            F1[i] = feats[k]
            before = _candidate_rank(model, s.ds, F0, int(i), tusers[k])
            after = _candidate_rank(model, s.ds, F1, int(i), tusers[k])
            out.append({"model": model_name, "item": int(i), "users": int(len(tusers[k])), "eps": eps,
                        "mean_rank_before": float(before.mean() + 1), "mean_rank_after": float(after.mean() + 1),
                        "top10_before": float(np.mean(before < 10)), "top10_after": float(np.mean(after < 10))})
    ctx.log("targeted: " + "; ".join(f"{t['model']} item {t['item']} rank {t['mean_rank_before']:.1f} -> "
                                     f"{t['mean_rank_after']:.1f}" for t in out))
    return out


def figure(setup, per_item, fig_adv):
    """Clean crop vs attacked (VBPR, the figure's attack, largest eps, PNG reload) with the mean ranks."""
    import matplotlib.pyplot as plt

    from amr_tf.attacks import pixel

    s, cfg = setup, setup.cfg
    attack, eps = figure_attack(cfg), max(cfg["eps"])
    n = min(cfg["figure_items"], len(s.items))
    key_clean, key_adv = ("VBPR", "none", 0.0, "png"), ("VBPR", attack, eps, "png")
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.6), squeeze=False)
    shown = pixel.quantize(fig_adv)
    for k in range(n):
        i = int(s.items[k])
        axes[0, k].imshow(s.clean[k].astype(np.uint8))
        axes[0, k].set_title(f"item {i}: clean\nmean rank {per_item[key_clean][i]:.1f}", fontsize=8)
        axes[1, k].imshow(shown[k])
        axes[1, k].set_title(f"{attack} {eps:g}/255\nmean rank {per_item[key_adv][i]:.1f}", fontsize=8)
        for ax in axes[:, k]:
            ax.axis("off")
    fig.suptitle("VBPR: posters (224x224 model input) before/after, rank of the test item among its "
                 "user's candidates (1 = top)", fontsize=8)
    return fig


def markdown(ctx, setup, rows, targeted_rows) -> str:
    cfg = setup.cfg

    def table(save_filter):
        body = [[r["model"], r["attack"], r["eps_255"], r["save"], f"{r['HR@10']:.3f}", f"{r['NDCG@10']:.3f}",
                 f"{r['mean_rank']:.1f}", f"{r['rel_feature_change']:.3f}",
                 "inf" if r["psnr"] >= 99 else f"{r['psnr']:.1f}", f"{r['ssim']:.3f}"]
                for r in rows if r["save"] in save_filter]
        return common.md_table(["model", "attack", "eps", "saved as", "HR@10", "NDCG@10", "mean rank", "‖Δc‖/‖c‖",
                                "PSNR dB", "SSIM"], body)

    runtime = time.perf_counter() - ctx.started
    md = [f"# Pixel-level attacks ({ctx.mode} mode)\n",
          f"{len(setup.items)} attacked test items, metrics over their {len(setup.users)} users (sampled protocol). "
          f"PGD: {cfg['steps']} steps, step 2.5·eps/steps, random start; PGD-L2 radius eps·sqrt(224·224·3). "
          f"Runtime {runtime:.0f} s on {os.cpu_count()} CPU cores.\n",
          "## Honest numbers (8-bit PNG and JPEG q=90 reloaded)\n", table({"stored", "png", "jpeg90"}),
          "\n## Unquantised attacker images (float)\n", table({"float"})]
    if targeted_rows:
        md += ["\n## Targeted PGD-L∞ (PNG reload): mean rank of the item among the candidates of every user "
               "that has it as a candidate\n",
               common.md_table(["model", "item", "users", "eps", "mean rank before", "after", "top-10 before",
                                "after"],
                               [[t["model"], t["item"], t["users"], f"{t['eps']:g}/255", f"{t['mean_rank_before']:.1f}",
                                 f"{t['mean_rank_after']:.1f}", f"{t['top10_before']:.2f}", f"{t['top10_after']:.2f}"]
                                for t in targeted_rows])]
    return "\n".join(md)


def run(ctx) -> dict:
    cfg = settings(ctx.args)
    ctx.settings = cfg
    setup = Setup(ctx, cfg)
    ctx.manifest_extra = {"checkpoints": {"VBPR": ctx.args.vbpr, "AMR": ctx.args.amr},
                          "feature_file": str(setup.feature_file), "feature_scale": setup.scale}
    rows, per_item, seconds, fig_adv = untargeted(ctx, setup)
    targeted_rows = targeted(ctx, setup, per_item) if cfg["targeted_items"] > 0 else []
    if cfg["figure_items"] > 0:
        ctx.save_figure(figure(setup, per_item, fig_adv))
    ctx.write_csv("results.csv", rows, COLUMNS)
    ctx.write_text("results.md", markdown(ctx, setup, rows, targeted_rows))
    return {"rows": rows, "targeted": targeted_rows, "items": [int(i) for i in setup.items],
            "num_users": int(len(setup.users)), "pipeline_gap_mean": float(setup.pipeline_gap.mean()),
            "attack_seconds": seconds}


def main(argv=None) -> int:
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    raise SystemExit(main())
