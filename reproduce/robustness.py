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


def attack_rows(ctx, run, seed: int) -> list[dict]:
    """Every (attack, eps) evaluation of one trained model."""
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
    return rows


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
    rows, weights = [], []
    for model in MODELS:
        for seed in s.seeds:
            r = ctx.runs.finetuned(model, seed)
            ctx.log(f"attacking {model} seed {seed}")
            rows.extend(attack_rows(ctx, r, seed))
            weights.append(visual_weight(ctx, r))
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
    text.append("\n![robustness](figure.png)\n\n![relative drop](drop.png)\n")
    ctx.write_text("table.md", "\n".join(text))
    ctx.save_figure(figure(ctx, agg, "value", ""), "figure.png")
    ctx.save_figure(figure(ctx, agg, "drop", "drop (%)"), "drop.png")
    series = {}
    for r in agg:
        tags = series.setdefault(f"{r['model']}/{r['attack']}", {})
        step = int(round(1000 * r["eps"]))
        for m in HEADLINE:
            tags.setdefault(m, []).append((step, r[f"{m}_mean"]))
            tags.setdefault(f"{m}_drop_pct", []).append((step, r[f"{m}_drop_pct"]))
    ctx.write_tensorboard(series)
    return {"table": agg, "visual_weight": weight_agg, "mean_feature_norm": ctx.mean_feature_norm,
            "attacks": {k: v[2] for k, v in ATTACKS.items()}, "tensorboard_step": "1000 * eps"}


def main(argv=None) -> int:
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    raise SystemExit(main())
