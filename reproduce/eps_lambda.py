"""Experiment 3, effect of the adversary's budget eps and weight lambda on AMR's clean accuracy.

AMR is fine-tuned from the pretrained VBPR for every (eps, lambda) of the grid
(``Settings.grid_eps`` x ``Settings.grid_adv_weight``, around the defaults eps = 0.1, lambda = 1) with the
first ``Settings.grid_seeds`` seeds; lambda = 0 is VBPR trained on for the same epochs (the
reference). Cells are clean HR@10 / NDCG@10, mean ± std over those seeds, on the validation split
and on the test split; the selected cell is the one with the best mean *validation* NDCG@10 (the
test numbers are only reported, never used to choose). Each run keeps its epoch chosen on
validation (:mod:`reproduce.common`).

``python -m reproduce.eps_lambda [--quick] [--dataset DIR] [--pretrained PATH] [--out DIR]``
"""

from __future__ import annotations

import sys

import numpy as np

from reproduce import common

NAME = "eps_lambda"
TITLE = "Effect of eps and lambda on AMR's clean accuracy"
HEADLINE = ("HR@10", "NDCG@10")


def figure(ctx, agg, reference):
    import matplotlib.pyplot as plt

    s = ctx.settings
    fig, axes = plt.subplots(1, len(HEADLINE), figsize=(4.6 * len(HEADLINE), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], HEADLINE):
        grid = np.array([[next(r for r in agg if r["eps"] == e and r["adv_weight"] == l)[f"{metric}_mean"]
                          for l in s.grid_adv_weight] for e in s.grid_eps])
        im = ax.imshow(grid, cmap="viridis", origin="lower", aspect="auto")
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                ax.text(j, i, f"{grid[i, j]:.4f}\n({grid[i, j] - reference[metric]:+.4f})", ha="center",
                        va="center", fontsize=7, color="w" if grid[i, j] < grid.mean() else "k")
        ax.set_xticks(range(len(s.grid_adv_weight)), [f"{v:g}" for v in s.grid_adv_weight])
        ax.set_yticks(range(len(s.grid_eps)), [f"{v:g}" for v in s.grid_eps])
        ax.set_xlabel("lambda (adversarial weight)")
        ax.set_ylabel("eps (adversary's L2 budget)")
        ax.set_title(f"AMR {metric} (VBPR, lambda=0: {reference[metric]:.4f})", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"{ctx.dataset.name}: clean accuracy after {s.finetune_epochs} fine-tuning epochs, mean of "
                 f"{s.grid_seeds} seed(s); in brackets the difference to VBPR", fontsize=9)
    fig.tight_layout()
    return fig


def run(ctx) -> dict:
    s = ctx.settings
    seeds = list(s.seeds)[: s.grid_seeds]
    rows, runs = [], []
    for seed in seeds:
        ref = ctx.runs.finetuned("VBPR", seed)
        runs.append(ref)
        rows.append({"eps": 0.0, "adv_weight": 0.0, "seed": seed, **ref.metrics(ctx),
                     **{f"val_{m}": v for m, v in ref.val_metrics(ctx).items()}})
        for eps in s.grid_eps:
            for adv_weight in s.grid_adv_weight:
                r = ctx.runs.finetuned("AMR", seed, eps=eps, adv_weight=adv_weight)
                runs.append(r)
                rows.append({"eps": float(eps), "adv_weight": float(adv_weight), "seed": seed, **r.metrics(ctx),
                             **{f"val_{m}": v for m, v in r.val_metrics(ctx).items()}})
    val_cols = [f"val_{m}" for m in common.METRICS]
    agg = common.aggregate(rows, ["eps", "adv_weight"], metrics=common.METRICS + tuple(val_cols))
    reference = next(r for r in agg if r["adv_weight"] == 0.0)
    ref_means = {m: reference[f"{m}_mean"] for m in common.METRICS}
    metric_cols = list(common.METRICS)
    ctx.write_csv("runs.csv", rows, ["eps", "adv_weight", "seed"] + metric_cols + val_cols)
    ctx.write_csv("results.csv", agg, ["eps", "adv_weight", "n"]
                  + [f"{m}_{x}" for m in metric_cols + val_cols for x in ("mean", "std")])

    text = [f"# {TITLE}\n", common.settings_line(ctx) + "\n",
            f"AMR fine-tuned from the pretrained VBPR for {s.finetune_epochs} epochs per cell, seeds {seeds}; "
            "mean ± std over those seeds. Rows: eps (the adversary's per-item L2 budget, in normalised-feature "
            f"units; mean feature norm {ctx.mean_feature_norm:.3f}); columns: lambda (the adversarial loss's weight). "
            f"lambda = 0 is VBPR trained on for the same epochs.\n"]
    validated = ctx.runs.validated
    best = max((r for r in agg if r["adv_weight"] > 0),
               key=lambda r: r["val_NDCG@10_mean"] if validated else r["NDCG@10_mean"])
    for split, prefix in (("validation", "val_"), ("test", "")):
        if split == "validation" and not validated:
            continue
        for metric in HEADLINE:
            key = prefix + metric
            body = []
            for eps in s.grid_eps:
                cells = [f"{eps:g}"]
                for adv_weight in s.grid_adv_weight:
                    r = next(x for x in agg if x["eps"] == eps and x["adv_weight"] == adv_weight)
                    mark = " **(selected)**" if r is best else ""
                    cells.append(common.fmt_ms(r[f"{key}_mean"], r[f"{key}_std"]) + mark)
                body.append(cells)
            ref_cell = common.fmt_ms(reference[f"{key}_mean"], reference[f"{key}_std"])
            text += [f"\n## {metric}, {split} split\n",
                     common.md_table(["eps \\ lambda"] + [f"{v:g}" for v in s.grid_adv_weight], body),
                     f"\nVBPR (lambda = 0): {ref_cell}\n"]
    if validated:
        text.append(f"\nSelected on validation NDCG@10: eps = {best['eps']:g}, lambda = {best['adv_weight']:g} "
                    f"(validation {common.fmt(best['val_NDCG@10_mean'])}, VBPR {common.fmt(reference['val_NDCG@10_mean'])}; "
                    f"its test NDCG@10 {common.fmt(best['NDCG@10_mean'])}, VBPR {common.fmt(ref_means['NDCG@10'])}).\n")
    else:
        text.append(f"\nNo validation split (`--validation none`): the best cell by **test** NDCG@10 is shown for "
                    f"orientation only (chosen on the test set, not a selection): eps = {best['eps']:g}, "
                    f"lambda = {best['adv_weight']:g} ({common.fmt(best['NDCG@10_mean'])}, VBPR "
                    f"{common.fmt(ref_means['NDCG@10'])}).\n")
    text.append("\n![eps-lambda grid](figure.png)\n")
    ctx.write_text("table.md", "\n".join(text))
    ctx.save_figure(figure(ctx, agg, ref_means))
    def cell(r):
        name = "VBPR" if r.label == "VBPR" else f"AMR_eps{r.params['eps']:g}_lmd{r.params['adv_weight']:g}"
        return f"{name}/seed{r.seed}"

    ctx.write_tensorboard(common.history_series(runs, tags=HEADLINE, name=cell))
    return {"table": agg, "best": {"eps": best["eps"], "adv_weight": best["adv_weight"]}, "seeds": seeds,
            "selection": "val_NDCG@10" if validated else "none (test NDCG@10 shown for orientation)"}


def main(argv=None) -> int:
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    raise SystemExit(main())
