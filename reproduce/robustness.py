"""Experiment 2, vulnerability and robustness: VBPR and AMR evaluated with perturbed item features.

At test time every item's (normalised) feature row ``c_i`` becomes ``c_i + delta_i`` with
``||delta_i||_2 = eps`` (at most ``eps`` for PGD; items that get no gradient stay clean), for
eps in ``Settings.robustness_eps``; eps is also reported relative to the mean feature norm.
The models are the fine-tuned VBPR and AMR of ``overall`` (same seeds). Attacks
(:mod:`amr_tf.attacks.features`):

* ``grad`` -- the paper's: one step along the per-item L2-normalised gradient of the **BPR loss on
  the training triplets** (one sampled negative per training pair, sampler epoch 0 of the run's
  seed), i.e. AMR's training-time adversary applied to the whole training set at once. It uses
  no test information.
* ``pgd`` -- projected gradient ascent on the same loss: random start in the ball,
  ``Settings.pgd_steps`` steps of length eps along the normalised gradient, projection onto the ball.
* ``random`` -- Gaussian noise rescaled to norm eps per item (the control).
* ``grad-test`` -- one gradient step on the pairwise ranking loss of the **test candidates**
  (test item against its sampled negatives): a white-box attack on the evaluation itself.

eps = 0 is the clean evaluation exactly. The relative drop is ``1 - mean(attacked) / mean(clean)``
over the seeds.

**The band** (eps in ``Settings.band_eps``, the first ``Settings.band_seeds`` seeds): every attack
above only shows what it achieved, a lower bound on the damage. The exact worst case per user is
computable for these models (:mod:`amr_tf.attacks.certify`): the *certified* HR@10/NDCG@10 (each
user's own worst-case perturbation) is the band's lower edge, no attack can go below it. The upper
edge is the *strongest attack found* with one perturbation per item shared by all users, as a
real attacker would change an image: the lowest of the attacks above, a PGD on the test ranking
loss, and :func:`amr_tf.attacks.shared.shared_attack` (projected gradient ascent on a smooth count
of the users pushed out of the top 10, started from zero, random points and the strongest other
attack's perturbation). The gap between the edges is what is still unknown about the true
shared-perturbation worst case.

``python -m reproduce.robustness [--quick] [--dataset DIR] [--pretrained PATH] [--out DIR]``
"""

from __future__ import annotations

import sys

import numpy as np

from reproduce import common

NAME = "robustness"
TITLE = "Vulnerability and robustness: VBPR vs AMR under test-time feature perturbations"
MODELS = ("VBPR", "AMR")
#: name -> (attack, loss the attacker maximises, description)
ATTACKS = {
    "grad": ("grad", "bpr", "one step, per-item L2-normalised gradient of the BPR loss on the training triplets "
                            "(AMR's training rule; the paper's attack)"),
    "pgd": ("pgd", "bpr", "projected gradient ascent on the same BPR loss, random start, steps of length eps"),
    "random": ("random", None, "Gaussian noise rescaled to L2 norm eps per item"),
    "grad-test": ("grad", "ranking", "one step on a pairwise ranking loss over the test candidates "
                                     "(white-box on the evaluation)"),
}
HEADLINE = ("HR@10", "NDCG@10")
WEIGHT_COLUMNS = ("E_spectral_norm", "E_frobenius_norm", "visual_to_id_ratio")
COLORS = {"VBPR": "tab:blue", "AMR": "tab:red"}


def attack_rows(ctx, run, seed: int, keep=()) -> list[dict]:
    """Every (attack, eps) evaluation of one trained model; ``keep``: eps whose perturbed features
    are kept in each row (``row["features"]``, for the band)."""
    from amr_tf.attacks import attack_loss_fn, perturbed_features
    from amr_tf.evaluation import evaluate

    s, ds = ctx.settings, ctx.dataset
    losses = {"bpr": attack_loss_fn(run.model, ds, "bpr", seed=seed), "ranking": attack_loss_fn(run.model, ds, "ranking")}
    n_triplets = len(ds.train_pairs)  # one triplet per training pair
    rows = []
    for name, (attack, loss, _) in ATTACKS.items():
        for eps in s.robustness_eps:
            feats = perturbed_features(run.model, ds, attack, eps, loss_fn=losses.get(loss), seed=seed,
                                       steps=s.pgd_steps)
            metrics = evaluate(run.model, ds, ks=common.KS, protocol=s.protocol, features=feats)
            objective = float(losses["bpr"](feats)) / n_triplets
            rows.append({"model": run.label, "attack": name, "eps": float(eps),
                         "eps_rel": float(eps) / ctx.mean_feature_norm, "seed": seed, **metrics,
                         "bpr_loss": objective})
            if eps in keep:
                rows[-1]["features"] = feats
    return rows


BAND_METRICS = ("HR@10", "NDCG@10")


def band_rows(ctx, run, seed: int, attacked: list[dict]) -> list[dict]:
    """The certified lower edge and the strongest shared attack found (upper edge) per band eps.

    ``attacked``: this run's :func:`attack_rows` (with ``features`` kept at the band's eps).
    """
    from amr_tf.attacks import attack_loss_fn, perturbed_features
    from amr_tf.attacks.certify import Certifier
    from amr_tf.attacks.shared import shared_attack
    from amr_tf.evaluation import evaluate

    s, ds = ctx.settings, ctx.dataset
    cert = Certifier(run.model, ds, ks=common.KS)
    clean = cert.at(0.0).metrics  # the unperturbed metrics, the same at every eps
    ranking = attack_loss_fn(run.model, ds, "ranking")
    radius = cert.radius[10]
    inside = radius[np.isfinite(radius) & (radius > 0)]
    out = []
    for eps in s.band_eps:
        lower = cert.at(eps).metrics
        found = {r["attack"]: r for r in attacked if r["eps"] == eps}
        feats = perturbed_features(run.model, ds, "pgd", eps, loss_fn=ranking, seed=seed, steps=s.pgd_steps)
        candidates = {name: {m: r[m] for m in common.METRICS} for name, r in found.items()}
        candidates["pgd-test"] = evaluate(run.model, ds, ks=common.KS, protocol=s.protocol, features=feats)
        found_feats = {name: r.get("features") for name, r in found.items()}
        found_feats["pgd-test"] = feats
        strongest = min(candidates, key=lambda n: (candidates[n]["HR@10"], candidates[n]["NDCG@10"]))
        init = None if found_feats.get(strongest) is None else found_feats[strongest] - ds.features
        shared = shared_attack(run.model, ds, eps, ks=common.KS, steps=s.band_steps, restarts=s.band_restarts,
                               target_k=10, seed=seed, init=init)
        candidates["shared"] = shared.metrics
        best = min(candidates, key=lambda n: (candidates[n]["HR@10"], candidates[n]["NDCG@10"]))
        row = {"model": run.label, "seed": seed, "eps": float(eps), "eps_rel": float(eps) / ctx.mean_feature_norm,
               "clean_HR@10": clean["HR@10"], "clean_NDCG@10": clean["NDCG@10"],
               "strongest": best, "radius10_median": float(np.median(inside)) if inside.size else float("nan"),
               "users_in_top10": int(inside.size)}
        for m in BAND_METRICS:
            row[f"certified_{m}"] = lower[m]
            row[f"attacked_{m}"] = min(c[m] for c in candidates.values())
            row[f"shared_{m}"] = shared.metrics[m]
            row[f"previous_{m}"] = min(c[m] for n, c in candidates.items() if n not in ("shared", "pgd-test"))
            row[f"gap_{m}"] = row[f"attacked_{m}"] - row[f"certified_{m}"]
        out.append(row)
        ctx.log(f"  band {run.label} seed {seed} eps {eps}: HR@10 certified {lower['HR@10']:.4f}, shared "
                f"{shared.metrics['HR@10']:.4f}, strongest found {row['attacked_HR@10']:.4f} ({best})")
    return out


def band_figure(ctx, band_agg):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(BAND_METRICS), figsize=(5.2 * len(BAND_METRICS), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], BAND_METRICS):
        for model in MODELS:
            pts = sorted((r for r in band_agg if r["model"] == model), key=lambda r: r["eps"])
            if not pts:
                continue
            x = np.array([r["eps"] for r in pts])
            lo = np.array([r[f"certified_{metric}_mean"] for r in pts])
            hi = np.array([r[f"attacked_{metric}_mean"] for r in pts])
            ax.fill_between(x, lo, hi, color=COLORS[model], alpha=0.25, lw=0)
            ax.plot(x, hi, "o-", ms=3, color=COLORS[model], label=f"{model}: strongest attack found")
            ax.plot(x, lo, "v--", ms=3, color=COLORS[model], label=f"{model}: certified (exact per-user worst case)")
            ax.axhline(pts[0][f"clean_{metric}_mean"], color=COLORS[model], lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel(f"eps (mean ||c_i|| = {ctx.mean_feature_norm:.2f})")
        ax.set_ylabel(f"test {metric}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{ctx.dataset.name}: the true worst case lies in the band (dotted: clean); "
                 f"{ctx.settings.band_seeds} seed(s)" + (" -- SMOKE TEST (quick mode)" if ctx.mode == "quick" else ""),
                 fontsize=9)
    fig.tight_layout()
    return fig


def visual_weight(ctx, run) -> dict:
    """How much a model leans on the features: ``||E||_2`` bounds how far any ``delta`` with
    ``||delta_i|| <= eps`` moves an item vector (``||delta_i E|| <= eps ||E||_2``); the ratio compares
    the visual part ``C E`` of the item vectors with the ID part ``Q``."""
    w = run.model.weight_arrays()
    visual = ctx.dataset.features @ w["E"]
    return {"model": run.label, "seed": run.seed, "E_spectral_norm": float(np.linalg.norm(w["E"], 2)),
            "E_frobenius_norm": float(np.linalg.norm(w["E"])),
            "visual_to_id_ratio": float(np.linalg.norm(visual) / np.linalg.norm(w["Q"]))}


def add_drops(agg: list[dict]) -> None:
    clean = {(r["model"], r["attack"]): r for r in agg if r["eps"] == 0.0}
    for r in agg:
        c = clean[(r["model"], r["attack"])]
        for m in common.METRICS:
            base = c[f"{m}_mean"]
            r[f"{m}_drop_pct"] = 100.0 * (1.0 - r[f"{m}_mean"] / base) if base else float("nan")


def figure(ctx, agg, key: str, ylabel: str):
    import matplotlib.pyplot as plt

    eps_nonzero = [e for e in ctx.settings.robustness_eps if e > 0]
    fig, axes = plt.subplots(len(HEADLINE), len(ATTACKS), figsize=(3.2 * len(ATTACKS), 2.8 * len(HEADLINE)),
                             sharex=True, sharey="row", squeeze=False)
    for col, attack in enumerate(ATTACKS):
        for row, metric in enumerate(HEADLINE):
            ax = axes[row][col]
            for model in MODELS:
                pts = sorted((r for r in agg if r["model"] == model and r["attack"] == attack), key=lambda r: r["eps"])
                x = np.array([r["eps"] for r in pts])
                if key == "drop":
                    y = np.array([r[f"{metric}_drop_pct"] for r in pts])
                    ax.plot(x, y, "o-", ms=3, color=COLORS[model], label=model)
                else:
                    y = np.array([r[f"{metric}_mean"] for r in pts])
                    sd = np.array([r[f"{metric}_std"] for r in pts])
                    ax.plot(x, y, "o-", ms=3, color=COLORS[model], label=model)
                    ax.fill_between(x, y - sd, y + sd, color=COLORS[model], alpha=0.15, lw=0)
            ax.set_xscale("symlog", linthresh=min(eps_nonzero) if eps_nonzero else 0.01)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(attack)
            if row == len(HEADLINE) - 1:
                ax.set_xlabel(f"eps (mean ||c_i|| = {ctx.mean_feature_norm:.2f})")
            if col == 0:
                ax.set_ylabel(f"{metric} {ylabel}")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{ctx.dataset.name}: test-time feature perturbation (mean ± std over "
                 f"{len(ctx.settings.seeds)} seed(s); y shared per row)", fontsize=10)
    fig.tight_layout()
    return fig


def run(ctx) -> dict:
    s = ctx.settings
    rows, weights, band = [], [], []
    band_seeds = list(s.seeds)[: s.band_seeds]
    for model in MODELS:
        for seed in s.seeds:
            r = ctx.runs.finetuned(model, seed)
            ctx.log(f"attacking {model} seed {seed}")
            attacked = attack_rows(ctx, r, seed, keep=s.band_eps if seed in band_seeds else ())
            if seed in band_seeds:
                band.extend(band_rows(ctx, r, seed, attacked))
            for row in attacked:
                row.pop("features", None)
            rows.extend(attacked)
            weights.append(visual_weight(ctx, r))
    band_cols = [f"{kind}_{m}" for kind in ("clean", "certified", "shared", "previous", "attacked", "gap")
                 for m in BAND_METRICS] + ["radius10_median", "users_in_top10"]
    band_agg = common.aggregate(band, ["model", "eps"], metrics=tuple(band_cols))
    for r in band_agg:
        r["strongest"] = sorted({b["strongest"] for b in band if b["model"] == r["model"] and b["eps"] == r["eps"]})
    weight_agg = common.aggregate(weights, ["model"], metrics=WEIGHT_COLUMNS)
    agg = common.aggregate(rows, ["model", "attack", "eps"], metrics=common.METRICS + ("bpr_loss",))
    for r in agg:
        r["eps_rel"] = r["eps"] / ctx.mean_feature_norm
    add_drops(agg)
    metric_cols = list(common.METRICS)
    ctx.write_csv("runs.csv", rows, ["model", "attack", "eps", "eps_rel", "seed"] + metric_cols + ["bpr_loss"])
    agg_cols = (["model", "attack", "eps", "eps_rel", "n"]
                + [f"{m}_{x}" for m in metric_cols + ["bpr_loss"] for x in ("mean", "std")]
                + [f"{m}_drop_pct" for m in metric_cols])
    ctx.write_csv("results.csv", agg, agg_cols)

    text = [f"# {TITLE}\n", common.settings_line(ctx) + "\n",
            f"Item features are perturbed at test time with per-item L2 norm eps (in the units of the normalised "
            f"features; mean feature norm {ctx.mean_feature_norm:.3f}, so eps/mean-norm is given too). "
            "Cells: mean ± std over seeds and, in brackets, the relative change from eps = 0 (of the means). Attacks:\n"]
    text.append("".join(f"* `{name}`: {desc}" + (f" ({s.pgd_steps} steps)" if name == "pgd" else "") + "\n"
                        for name, (_, _, desc) in ATTACKS.items()))
    for attack in ATTACKS:
        body = []
        for eps in s.robustness_eps:
            cells = [common.fmt(eps, 3), common.fmt(eps / ctx.mean_feature_norm, 4)]
            for metric in HEADLINE:
                for model in MODELS:
                    r = next(x for x in agg if x["model"] == model and x["attack"] == attack and x["eps"] == eps)
                    change = f" ({-r[f'{metric}_drop_pct']:+.1f}%)" if eps > 0 else ""
                    cells.append(f"{common.fmt_ms(r[f'{metric}_mean'], r[f'{metric}_std'])}{change}")
            body.append(cells)
        header = ["eps", "eps / mean norm"] + [f"{model} {metric}" for metric in HEADLINE for model in MODELS]
        text += [f"\n## Attack `{attack}`\n", common.md_table(header, body)]
    body = []
    for eps in s.robustness_eps:
        cells = [common.fmt(eps, 3)]
        for model in MODELS:
            for attack in ATTACKS:
                r = next(x for x in agg if x["model"] == model and x["attack"] == attack and x["eps"] == eps)
                cells.append(common.fmt(r["bpr_loss_mean"]))
        body.append(cells)
    text += ["\n## The attacked objective\n",
             "Mean BPR loss per training triplet (the triplets the `grad` and `pgd` attacks maximise) at the "
             "perturbed features: PGD must reach at least the one-step value on it, whatever it does to the "
             "test metrics.\n",
             common.md_table(["eps"] + [f"{model} {attack}" for model in MODELS for attack in ATTACKS], body)]
    text += ["\n## How much each model relies on the features\n",
             "A perturbation with ‖δ_i‖ ≤ eps moves item i's vector by at most eps · ‖E‖₂ (the spectral "
             "norm of the visual projection E); ‖CE‖_F / ‖Q‖_F compares the visual part of the item vectors "
             "with the ID part. Mean ± std over seeds.\n",
             common.md_table(["model", "‖E‖₂", "‖E‖_F", "‖CE‖_F / ‖Q‖_F"],
                             [[r["model"]] + [common.fmt_ms(r[f"{c}_mean"], r[f"{c}_std"], 3) for c in WEIGHT_COLUMNS]
                              for r in weight_agg])]
    ctx.write_csv("weights.csv", weights, ["model", "seed"] + list(WEIGHT_COLUMNS))
    ctx.write_csv("band.csv", band, ["model", "seed", "eps", "eps_rel", "strongest"] + band_cols)
    text += [f"\n## The band: certified worst case vs the strongest attack found (seeds {band_seeds})\n",
             "Lower edge: the **certified** metric, each user's exact worst case over all perturbations with "
             "‖δ_i‖ ≤ eps (`amr_tf.attacks.certify`; no attack can do worse). Upper edge: the **strongest "
             "attack found** with one δ per item shared by all users: the lowest of the attacks above, a PGD on "
             f"the test ranking loss and the shared attack (`amr_tf.attacks.shared`, {s.band_steps} steps, "
             f"{s.band_restarts} restarts plus a start at the strongest other attack). The true shared worst case "
             "lies between them; *gap* is their difference. *previous best* is the strongest of the four attacks "
             "above alone.\n",
             common.md_table(["model", "eps", "clean HR@10", "certified HR@10", "shared attack HR@10",
                              "previous best HR@10", "strongest found HR@10", "gap HR@10", "certified NDCG@10",
                              "strongest found NDCG@10", "gap NDCG@10", "strongest"],
                             [[r["model"], f"{r['eps']:g}", common.fmt(r["clean_HR@10_mean"]),
                               common.fmt(r["certified_HR@10_mean"]), common.fmt(r["shared_HR@10_mean"]),
                               common.fmt(r["previous_HR@10_mean"]), common.fmt(r["attacked_HR@10_mean"]),
                               common.fmt(r["gap_HR@10_mean"]), common.fmt(r["certified_NDCG@10_mean"]),
                               common.fmt(r["attacked_NDCG@10_mean"]), common.fmt(r["gap_NDCG@10_mean"]),
                               ", ".join(r["strongest"])] for r in band_agg]),
             "\nMedian certified radius at K=10 (over the users whose test item is in the clean top 10): "
             + "; ".join(f"{m} {common.fmt(next(r['radius10_median_mean'] for r in band_agg if r['model'] == m), 3)}"
                         for m in MODELS if any(r["model"] == m for r in band_agg)) + ".\n"]
    text.append("\n![robustness](figure.png)\n\n![relative drop](drop.png)\n\n![band](band.png)\n")
    ctx.write_text("table.md", "\n".join(text))
    ctx.save_figure(figure(ctx, agg, "value", ""), "figure.png")
    ctx.save_figure(figure(ctx, agg, "drop", "drop (%)"), "drop.png")
    ctx.save_figure(band_figure(ctx, band_agg), "band.png")
    series = {}
    for r in agg:
        tags = series.setdefault(f"{r['model']}/{r['attack']}", {})
        step = int(round(1000 * r["eps"]))
        for m in HEADLINE:
            tags.setdefault(m, []).append((step, r[f"{m}_mean"]))
            tags.setdefault(f"{m}_drop_pct", []).append((step, r[f"{m}_drop_pct"]))
    ctx.write_tensorboard(series)
    return {"table": agg, "visual_weight": weight_agg, "band": band_agg, "band_runs": band, "band_seeds": band_seeds,
            "mean_feature_norm": ctx.mean_feature_norm,
            "attacks": {k: v[2] for k, v in ATTACKS.items()}, "tensorboard_step": "1000 * eps"}


def main(argv=None) -> int:
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    raise SystemExit(main())
