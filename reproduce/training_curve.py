"""Experiment 4, training curve: HR@10 and NDCG@10 while AMR fine-tunes the pretrained VBPR.

Both curves start from the same pretrained VBPR (epoch 0); AMR trains with the adversary, VBPR
is trained on without it, same seeds and triplets, evaluated every ``Settings.eval_every``
epochs (the curves are the evaluation histories of the ``overall`` runs). The figure follows
the original release's ``training.png`` (NDCG@10 left, HR@10 right). For comparison only, the
original's curve on its Pinterest data went from HR@10 ~ 0.183 to ~ 0.203 and NDCG@10 ~ 0.116 to
~ 0.123 over 2,000 epochs; those are that dataset's numbers, not targets for another.

``python -m reproduce.training_curve [--quick] [--dataset DIR] [--pretrained PATH] [--out DIR]``
"""

from __future__ import annotations

import sys

import numpy as np

from reproduce import common

NAME = "training_curve"
TITLE = "Training curve: AMR fine-tuning the pretrained VBPR, next to VBPR trained on"
MODELS = ("VBPR", "AMR")
COLORS = {"VBPR": "tab:blue", "AMR": "tab:red"}
ORIGINAL = {"dataset": "Pinterest (original release)", "epochs": 2000, "HR@10": (0.183, 0.203),
            "NDCG@10": (0.116, 0.123)}
PANELS = ("NDCG@10", "HR@10")


def figure(ctx, agg):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, metric, letter in zip(axes, PANELS, "ab"):
        for model in MODELS:
            pts = sorted((r for r in agg if r["model"] == model), key=lambda r: r["epoch"])
            x = np.array([r["epoch"] for r in pts])
            y = np.array([r[f"{metric}_mean"] for r in pts])
            sd = np.array([r[f"{metric}_std"] for r in pts])
            ax.plot(x, y, "-", lw=2, color=COLORS[model], label=model if model == "AMR" else "VBPR (trained on)")
            ax.fill_between(x, y - sd, y + sd, color=COLORS[model], alpha=0.15, lw=0)
        ax.set_title(f"({letter}) {ctx.dataset.name}-{metric.split('@')[0]}")
        ax.set_xlabel("Epoch#")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.text(0.5, -0.04, f"mean ± std over {len(ctx.settings.seeds)} seeds; epoch 0 = the pretrained VBPR. "
             f"The original's Pinterest curve: HR@10 {ORIGINAL['HR@10'][0]} -> {ORIGINAL['HR@10'][1]}, "
             f"NDCG@10 {ORIGINAL['NDCG@10'][0]} -> {ORIGINAL['NDCG@10'][1]} over {ORIGINAL['epochs']} epochs.",
             ha="center", fontsize=8)
    fig.tight_layout()
    return fig


def run(ctx) -> dict:
    s = ctx.settings
    runs = {m: [ctx.runs.finetuned(m, seed) for seed in s.seeds] for m in MODELS}
    rows = [{"model": m, "seed": r.seed, **h} for m in MODELS for r in runs[m] for h in r.history]
    validated = all("val_NDCG@10" in r for r in rows)
    agg = common.aggregate(rows, ["model", "epoch"], metrics=common.METRICS + (("val_NDCG@10",) if validated else ()))
    metric_cols = list(common.METRICS)
    ctx.write_csv("runs.csv", rows, ["model", "seed", "epoch"] + metric_cols)
    ctx.write_csv("results.csv", agg, ["model", "epoch", "n"] + [f"{m}_{x}" for m in metric_cols for x in ("mean", "std")])

    epochs = sorted({r["epoch"] for r in agg})
    shown = sorted(set([epochs[0], epochs[-1]] + epochs[:: max(1, len(epochs) // 6)]))
    body = []
    for e in shown:
        cells = [str(e)]
        for metric in PANELS[::-1]:
            for model in MODELS:
                r = next(x for x in agg if x["model"] == model and x["epoch"] == e)
                cells.append(common.fmt_ms(r[f"{metric}_mean"], r[f"{metric}_std"]))
        body.append(cells)
    start = {m: next(x for x in agg if x["model"] == m and x["epoch"] == epochs[0]) for m in MODELS}
    end = {m: next(x for x in agg if x["model"] == m and x["epoch"] == epochs[-1]) for m in MODELS}
    # the best epoch by the validation score (the test score only reported), as every selection
    key = "val_NDCG@10_mean" if validated else "NDCG@10_mean"
    peak = {m: max((x for x in agg if x["model"] == m), key=lambda x: x[key]) for m in MODELS}
    best_label = ("epoch of the best mean validation NDCG@10: its test NDCG@10" if validated
                  else "best test NDCG@10 (no validation split; for orientation only, not a selection)")
    text = [f"# {TITLE}\n", common.settings_line(ctx) + "\n",
            f"Evaluated every {s.eval_every} epochs; mean ± std over seeds {list(s.seeds)}. Epoch 0 is the "
            "pretrained VBPR (identical for both).\n",
            common.md_table(["epoch"] + [f"{model} {metric}" for metric in PANELS[::-1] for model in MODELS], body),
            f"\n| | HR@10 start -> end | NDCG@10 start -> end | {best_label} (epoch) |\n|---|---|---|---|"]
    for m in MODELS:
        text.append(f"| {m} | {common.fmt(start[m]['HR@10_mean'])} -> {common.fmt(end[m]['HR@10_mean'])} | "
                    f"{common.fmt(start[m]['NDCG@10_mean'])} -> {common.fmt(end[m]['NDCG@10_mean'])} | "
                    f"{common.fmt(peak[m]['NDCG@10_mean'])} ({peak[m]['epoch']}) |")
    text.append(f"| original AMR, {ORIGINAL['dataset']} | {ORIGINAL['HR@10'][0]} -> {ORIGINAL['HR@10'][1]} | "
                f"{ORIGINAL['NDCG@10'][0]} -> {ORIGINAL['NDCG@10'][1]} | over {ORIGINAL['epochs']} epochs |\n")
    text.append("\nThe original's numbers are read off its published `training.png` (another dataset, 2,000 epochs); "
                "they are quoted for orientation, not as targets.\n\n![training curve](figure.png)\n")
    ctx.write_text("table.md", "\n".join(text))
    ctx.save_figure(figure(ctx, agg))
    ctx.write_tensorboard(common.history_series(runs["VBPR"] + runs["AMR"]))
    return {"table": agg, "original": ORIGINAL}


def main(argv=None) -> int:
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    raise SystemExit(main())
