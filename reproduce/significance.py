"""Experiment 5, seeds and significance: is AMR's difference to VBPR larger than the seed-to-seed noise?

Per metric (HR and NDCG @5/10/20), mean ± std over the seeds and two-sided paired tests (SciPy):

* **over seeds** -- AMR and VBPR runs with the same seed saw the same triplets from the same
  pretrained weights, so they pair up: ``scipy.stats.ttest_rel`` and ``scipy.stats.wilcoxon`` on
  the per-seed metrics (n = number of seeds; with 5 seeds Wilcoxon cannot go below p = 0.0625);
* **over users** -- each user's metric (HR@k is 0/1, NDCG@k the user's gain) averaged over the
  seeds, paired across users with the same two tests (n = number of users; the Wilcoxon test drops
  users with equal values).

Comparisons: AMR vs VBPR trained on for the same epochs (the main one), AMR vs the pretrained
VBPR it started from, and VBPR vs MF-BPR (does the visual signal help on this data at all?).

``python -m reproduce.significance [--quick] [--dataset DIR] [--pretrained PATH] [--out DIR]``
"""

from __future__ import annotations

import sys

import numpy as np

from reproduce import common

NAME = "significance"
TITLE = "Seeds and significance: AMR vs VBPR per metric"


def figure(ctx, amr, vbpr):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, metric in zip(axes[:2], ("HR@10", "NDCG@10")):
        for a, b in zip(amr, vbpr):
            ya, yb = a.metrics(ctx)[metric], b.metrics(ctx)[metric]
            ax.plot([0, 1], [yb, ya], "o-", color="tab:red" if ya > yb else "tab:gray", alpha=0.8)
            ax.annotate(f"seed {a.seed}", (1.02, ya), fontsize=7, va="center")
        ax.set_xticks([0, 1], ["VBPR", "AMR"])
        ax.set_xlim(-0.2, 1.35)
        ax.set_title(f"{metric} per seed (paired)")
        ax.grid(alpha=0.3)
    diff = np.mean([a.per_user(ctx)["NDCG@10"] - b.per_user(ctx)["NDCG@10"]
                    for a, b in zip(amr, vbpr)], axis=0)
    nonzero = diff[diff != 0]
    ax = axes[2]
    ax.hist(nonzero, bins=41, color="tab:purple", alpha=0.8)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_title(f"per-user NDCG@10, AMR - VBPR (seed mean)\n{len(nonzero)} of {len(diff)} users differ, "
                 f"mean {diff.mean():+.4f}", fontsize=9)
    ax.set_xlabel("difference")
    fig.tight_layout()
    return fig


def run(ctx) -> dict:
    s = ctx.settings
    amr = [ctx.runs.finetuned("AMR", seed) for seed in s.seeds]
    vbpr = [ctx.runs.finetuned("VBPR", seed) for seed in s.seeds]
    pre = [ctx.runs.pretrained()]
    mf = [ctx.runs.mf(seed) for seed in s.seeds]
    comparisons = {
        "AMR vs VBPR": common.compare(ctx, amr, vbpr),
        "AMR vs VBPR (pretrained)": common.compare(ctx, amr, pre),
        "VBPR vs MF-BPR": common.compare(ctx, vbpr, mf),
    }
    rows = [{"model": r.label, "seed": r.seed, **r.metrics(ctx)} for r in amr + vbpr + mf]
    metric_cols = list(common.METRICS)
    ctx.write_csv("runs.csv", rows, ["model", "seed"] + metric_cols)
    flat = [{"comparison": name, **row} for name, block in comparisons.items() for row in block]
    ctx.write_csv("results.csv", flat, ["comparison"] + common.COMPARE_COLUMNS)

    per_seed = [[str(seed)] + [f"{common.fmt(a.metrics(ctx)[m])} / {common.fmt(b.metrics(ctx)[m])}"
                               for m in metric_cols] for seed, a, b in zip(s.seeds, amr, vbpr)]
    text = [f"# {TITLE}\n", common.settings_line(ctx) + "\n",
            "Two-sided paired tests (SciPy): *seeds* pairs the runs of the same seed (`ttest_rel`, `wilcoxon`; "
            f"n = {len(s.seeds)}; with 5 seeds the smallest possible Wilcoxon p is 0.0625, so only the t-test "
            "can reach 0.05 at that size); *users* pairs each user's metric averaged over the seeds "
            f"(n = {ctx.dataset.num_users} users; Wilcoxon drops the users with equal values). "
            "*wins*: seeds where the first model is better.\n",
            "\n## Per seed: AMR / VBPR\n", common.md_table(["seed"] + metric_cols, per_seed)]
    for name, block in comparisons.items():
        text += [f"\n## {name}\n", common.compare_markdown(block)]
    text.append("\n![significance](figure.png)\n")
    ctx.write_text("table.md", "\n".join(text))
    ctx.save_figure(figure(ctx, amr, vbpr))
    series = {}
    for row in comparisons["AMR vs VBPR"]:
        for key in ("diff", "seeds_t_p", "users_wilcoxon_p"):
            series.setdefault("AMR_vs_VBPR", {})[f"{row['metric']}/{key}"] = [(0, row[key])]
    for r in amr + vbpr:
        series.setdefault(common.run_name(r), {}).update({m: [(s.finetune_epochs, r.metrics(ctx)[m])]
                                                          for m in metric_cols})
    ctx.write_tensorboard(series)
    return {"comparisons": comparisons}


def main(argv=None) -> int:
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    raise SystemExit(main())
