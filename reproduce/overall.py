"""Experiment 1, the paper's main table: HR and NDCG @5/10/20 of Popularity, MF-BPR, VBPR and AMR.

AMR starts from the pretrained VBPR and is fine-tuned with the adversary (eps, lambda); "VBPR"
is the same pretrained model trained on for the same epochs without the adversary (the fair
comparison: equal training budget, same triplets per seed), and "VBPR (pretrained)" the
starting point itself. MF-BPR is trained from scratch per seed. Numbers are the final epoch's
(no selection of the best epoch on the test items), mean ± standard deviation over the seeds,
with paired tests of AMR against VBPR (see :func:`reproduce.common.compare`).

``python -m reproduce.overall [--quick] [--dataset DIR] [--pretrained PATH] [--out DIR]``
"""

from __future__ import annotations

import sys

import numpy as np

from reproduce import common

NAME = "overall"
TITLE = "Overall performance (main table): Popularity, MF-BPR, VBPR, AMR"
MODELS = ("Popularity", "MF-BPR", "VBPR (pretrained)", "VBPR", "AMR")


def collect(ctx) -> dict[str, list]:
    seeds = ctx.settings.seeds
    return {
        "Popularity": [ctx.runs.popularity()],
        "MF-BPR": [ctx.runs.mf(s) for s in seeds],
        "VBPR (pretrained)": [ctx.runs.pretrained()],
        "VBPR": [ctx.runs.finetuned("VBPR", s) for s in seeds],
        "AMR": [ctx.runs.finetuned("AMR", s) for s in seeds],
    }


def figure(ctx, agg):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.8 / len(MODELS)
    x = np.arange(len(common.METRICS))
    for k, model in enumerate(MODELS):
        row = next(r for r in agg if r["model"] == model)
        means = [row[f"{m}_mean"] for m in common.METRICS]
        stds = [row[f"{m}_std"] for m in common.METRICS]
        ax.bar(x + (k - (len(MODELS) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=model)
    ax.set_xticks(x, common.METRICS)
    ax.set_ylabel("value")
    ax.set_title(f"{ctx.dataset.name}: mean ± std over {len(ctx.settings.seeds)} seeds")
    ax.legend(fontsize=8, ncol=len(MODELS), loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    return fig


def run(ctx) -> dict:
    s = ctx.settings
    groups = collect(ctx)
    rows = []
    for model in MODELS:
        for r in groups[model]:
            rows.append({"model": model, "seed": r.seed, "train_seconds": round(r.train_seconds, 3),
                         **r.metrics(ctx)})
    agg = common.aggregate(rows, ["model"])
    comparison = common.compare(ctx, groups["AMR"], groups["VBPR"])
    vs_pretrained = common.compare(ctx, groups["AMR"], groups["VBPR (pretrained)"])
    metric_cols = list(common.METRICS)
    ctx.write_csv("runs.csv", rows, ["model", "seed", "train_seconds"] + metric_cols)
    agg_cols = ["model", "n"] + [f"{m}_{x}" for m in metric_cols for x in ("mean", "std")]
    ctx.write_csv("results.csv", agg, agg_cols)
    ctx.write_csv("comparison.csv", comparison + vs_pretrained, common.COMPARE_COLUMNS)

    body = [[f"{r['model']}", str(r["n"])] + [common.fmt_ms(r[f"{m}_mean"], r[f"{m}_std"]) for m in metric_cols]
            for r in agg]
    text = [f"# {TITLE}\n", common.settings_line(ctx) + "\n",
            "Mean ± standard deviation over seeds (n = number of runs; Popularity and the pretrained VBPR are "
            "deterministic). *VBPR* is the pretrained VBPR trained on for the same "
            f"{s.finetune_epochs} epochs as AMR without the adversary; *VBPR (pretrained)* is AMR's starting "
            "point. Final-epoch numbers, no best-epoch selection on the test set.\n",
            common.md_table(["model", "n"] + metric_cols, body),
            "\n## AMR vs VBPR (same seeds, same training budget)\n",
            common.compare_markdown(comparison),
            "\n## AMR vs its starting point, the pretrained VBPR\n",
            common.compare_markdown(vs_pretrained),
            "\nPaired tests (SciPy, two-sided): *seeds* pairs AMR and VBPR runs of the same seed "
            "(`ttest_rel`, `wilcoxon`; with 5 seeds the smallest possible Wilcoxon p is 0.0625); *users* "
            "pairs each user's metric averaged over seeds (HR per user is 0/1, NDCG its gain).\n",
            "\n![overall](figure.png)\n"]
    ctx.write_text("table.md", "\n".join(text))
    ctx.save_figure(figure(ctx, agg))
    series = common.history_series(groups["MF-BPR"] + groups["VBPR"] + groups["AMR"])
    for model in ("Popularity", "VBPR (pretrained)"):
        m = groups[model][0].metrics(ctx)
        series[model.replace(" ", "_").replace("(", "").replace(")", "")] = {t: [(0, m[t])] for t in common.METRICS}
    ctx.write_tensorboard(series)
    return {"table": agg, "comparison": comparison, "vs_pretrained": vs_pretrained}


def main(argv=None) -> int:
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    raise SystemExit(main())
