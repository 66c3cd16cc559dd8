"""Experiment 1, the paper's main table: Pop, MF-eALS, MF-BPR, DUIF, VBPR and AMR, HR and NDCG @5/10/20.

Every row of the paper's table (Tang et al., TKDE 2019, Table 3):

* *Popularity* -- items ranked by their number of training pairs (nothing to choose);
* *MF-eALS* (He et al. 2016) -- element-wise ALS over all missing data, ``Settings.eals_epochs``
  closed-form epochs (its own kind of budget), ``(w0, alpha)`` chosen on validation;
* *MF-BPR* and *DUIF* (image features only, Geng et al. 2015) -- trained from scratch with BPR for
  VBPR's whole budget (pretraining plus fine-tuning epochs), settings chosen on validation;
* *VBPR (pretrained)* -- AMR's starting point; *VBPR* -- that model trained on for the same
  fine-tuning epochs as AMR without the adversary (the fair comparison: equal budget, same
  triplets per seed); *AMR* -- fine-tuned with the adversary (eps, lambda).

Every run keeps the epoch chosen on validation (:mod:`reproduce.common`, the honest protocol);
numbers are test metrics of the selected models, mean ± standard deviation over the seeds, with
paired tests of AMR against VBPR and of VBPR against MF-BPR (see :func:`reproduce.common.compare`).

``python -m reproduce.overall [--quick] [--dataset DIR] [--pretrained PATH] [--out DIR]``
"""

from __future__ import annotations

import sys

import numpy as np

from reproduce import common

NAME = "overall"
TITLE = "Overall performance (main table): Pop, MF-eALS, MF-BPR, DUIF, VBPR, AMR"
MODELS = ("Popularity", "MF-eALS", "MF-BPR", "DUIF", "VBPR (pretrained)", "VBPR", "AMR")
SCRATCH = ("MF-eALS", "MF-BPR", "DUIF")


def collect(ctx) -> dict[str, list]:
    seeds = ctx.settings.seeds
    groups = {"Popularity": [ctx.runs.popularity()], "VBPR (pretrained)": [ctx.runs.pretrained()],
              "VBPR": [ctx.runs.finetuned("VBPR", s) for s in seeds], "AMR": [ctx.runs.finetuned("AMR", s) for s in seeds]}
    for label in SCRATCH:
        groups[label] = [ctx.runs.scratch(label, s) for s in seeds]
    return {model: groups[model] for model in MODELS}


def figure(ctx, agg):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3.8))
    width = 0.8 / len(MODELS)
    x = np.arange(len(common.METRICS))
    for k, model in enumerate(MODELS):
        row = next(r for r in agg if r["model"] == model)
        means = [row[f"{m}_mean"] for m in common.METRICS]
        stds = [row[f"{m}_std"] for m in common.METRICS]
        ax.bar(x + (k - (len(MODELS) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=model)
    ax.set_xticks(x, common.METRICS)
    ax.set_ylabel("test value")
    title = f"{ctx.dataset.name}: mean ± std over {len(ctx.settings.seeds)} seeds"
    ax.set_title(title + (" -- SMOKE TEST (quick mode), not a result" if ctx.mode == "quick" else ""), fontsize=9)
    ax.legend(fontsize=7, ncol=4, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    return fig


def budget_text(ctx, label: str, runs) -> str:
    s = ctx.settings
    if label == "Popularity":
        return "-"
    if label == "MF-eALS":
        return f"{s.eals_epochs} ALS epochs"
    if label == "VBPR (pretrained)":
        return f"{runs[0].epochs} epochs" if runs[0].epochs else "?"
    if label in ("VBPR", "AMR"):
        pre = ctx.runs.pretrain_epochs()
        return f"{pre or '?'} + {s.finetune_epochs} epochs"
    return f"{ctx.runs.scratch_epochs()} epochs"


def grid_rows(ctx) -> list[dict]:
    """The settings each scratch model was chosen from: validation and test NDCG@10/HR@10 of each (first seed)."""
    out = []
    for label in SCRATCH:
        sel = ctx.runs.selections.get(label)
        if sel is None:
            continue
        for row in sel["rows"]:
            run = row["run"]
            val, test = run.val_metrics(ctx), run.metrics(ctx)
            out.append({"model": label, "setting": setting_text(label, row["setting"]),
                        "chosen": row["setting"] == sel["chosen"], "seed": sel["seed"],
                        "selected_epoch": run.selected_epoch, "val_HR@10": val["HR@10"],
                        "val_NDCG@10": val["NDCG@10"], "HR@10": test["HR@10"], "NDCG@10": test["NDCG@10"]})
    return out


def setting_text(label: str, setting) -> str:
    if label == "MF-eALS":
        return f"w0={setting[0]:g}, alpha={setting[1]:g}"
    lrs, regs = setting
    if label == "DUIF":
        return f"lr(P,E)=({lrs[0]:g},{lrs[2]:g}), regs(P,E)=({regs[0]:g},{regs[2]:g})"
    return f"lr=({lrs[0]:g},{lrs[1]:g}), regs=({regs[0]:g},{regs[1]:g})"


def run(ctx) -> dict:
    s = ctx.settings
    groups = collect(ctx)
    rows = []
    for model in MODELS:
        for r in groups[model]:
            val = r.val_metrics(ctx)
            rows.append({"model": model, "seed": r.seed, "train_seconds": round(r.train_seconds, 3),
                         "budget": budget_text(ctx, model, groups[model]), "selected_epoch": r.selected_epoch,
                         **{f"val_{m}": val[m] for m in common.METRICS}, **r.metrics(ctx)})
    val_cols = [f"val_{m}" for m in common.METRICS]
    agg = common.aggregate(rows, ["model"], metrics=common.METRICS + tuple(val_cols))
    for a in agg:
        members = [r for r in rows if r["model"] == a["model"]]
        a["budget"] = members[0]["budget"]
        epochs = [r["selected_epoch"] for r in members if r["selected_epoch"] is not None]
        a["selected_epochs"] = epochs
        a["train_seconds_mean"] = float(np.mean([r["train_seconds"] for r in members]))
    comparison = common.compare(ctx, groups["AMR"], groups["VBPR"])
    vs_pretrained = common.compare(ctx, groups["AMR"], groups["VBPR (pretrained)"])
    vbpr_vs_mf = common.compare(ctx, groups["VBPR"], groups["MF-BPR"])
    grid = grid_rows(ctx)
    metric_cols = list(common.METRICS)
    ctx.write_csv("runs.csv", rows, ["model", "seed", "budget", "selected_epoch", "train_seconds"] + val_cols
                  + metric_cols)
    agg_cols = (["model", "n", "budget", "train_seconds_mean"]
                + [f"{m}_{x}" for m in metric_cols + val_cols for x in ("mean", "std")])
    ctx.write_csv("results.csv", agg, agg_cols)
    ctx.write_csv("comparison.csv", comparison + vs_pretrained + vbpr_vs_mf, common.COMPARE_COLUMNS)
    ctx.write_csv("grid.csv", grid, ["model", "setting", "chosen", "seed", "selected_epoch", "val_HR@10",
                                     "val_NDCG@10", "HR@10", "NDCG@10"])

    body = []
    for r in agg:
        epochs = r["selected_epochs"]
        sel = "-" if not epochs else (str(epochs[0]) if len(set(epochs)) == 1 else
                                      f"{min(epochs)}–{max(epochs)}")
        body.append([r["model"], str(r["n"]), r["budget"], sel, common.fmt(r["val_NDCG@10_mean"])]
                    + [common.fmt_ms(r[f"{m}_mean"], r[f"{m}_std"]) for m in metric_cols]
                    + [f"{r['train_seconds_mean']:.1f}"])
    text = [f"# {TITLE}\n", common.settings_line(ctx) + "\n",
            "Test metrics, mean ± standard deviation over seeds (n = number of runs; Popularity and the "
            "pretrained VBPR are deterministic). *budget*: epochs the run could train (MF-BPR and DUIF get "
            "VBPR's whole budget, pretraining plus fine-tuning; VBPR and AMR fine-tune for the same epochs from "
            "the same pretrained model); *selected epoch*: the epoch chosen on validation NDCG@10 (range over "
            "seeds; for VBPR and AMR among the fine-tuned epochs, epoch 0 being the pretrained row); *val NDCG@10*: the selection score; *train s*: mean seconds of one run's own training "
            "(the pretrained VBPR's time is not added to the fine-tuning runs; for a given checkpoint it is "
            "what its record says; MF-eALS's epochs are closed-form ALS sweeps, not SGD epochs).\n",
            common.md_table(["model", "n", "budget", "selected epoch", "val NDCG@10"] + metric_cols + ["train s"],
                            body)]
    if grid:
        text += ["\n## Settings chosen on validation (first seed)\n",
                 common.md_table(["model", "setting", "chosen", "selected epoch", "val NDCG@10", "val HR@10",
                                  "test NDCG@10", "test HR@10"],
                                 [[g["model"], g["setting"], "**yes**" if g["chosen"] else "", str(g["selected_epoch"]),
                                   common.fmt(g["val_NDCG@10"]), common.fmt(g["val_HR@10"]), common.fmt(g["NDCG@10"]),
                                   common.fmt(g["HR@10"])] for g in grid])]
    text += ["\n## AMR vs VBPR (same seeds, same fine-tuning budget)\n",
             common.compare_markdown(comparison),
             "\n## VBPR vs MF-BPR (same total budget: does the visual signal help on this data?)\n",
             common.compare_markdown(vbpr_vs_mf),
             "\n## AMR vs its starting point, the pretrained VBPR\n",
             common.compare_markdown(vs_pretrained),
             "\nPaired tests (SciPy, two-sided): *seeds* pairs runs of the same seed "
             "(`ttest_rel`, `wilcoxon`; with 5 seeds the smallest possible Wilcoxon p is 0.0625); *users* "
             "pairs each user's metric averaged over seeds (HR per user is 0/1, NDCG its gain).\n",
             "\n![overall](figure.png)\n"]
    ctx.write_text("table.md", "\n".join(text))
    ctx.save_figure(figure(ctx, agg))
    series = common.history_series([r for m in ("MF-eALS", "MF-BPR", "DUIF", "VBPR", "AMR") for r in groups[m]])
    for model in ("Popularity", "VBPR (pretrained)"):
        m = groups[model][0].metrics(ctx)
        series[model.replace(" ", "_").replace("(", "").replace(")", "")] = {t: [(0, m[t])] for t in common.METRICS}
    ctx.write_tensorboard(series)
    return {"table": agg, "comparison": comparison, "vs_pretrained": vs_pretrained, "vbpr_vs_mf": vbpr_vs_mf,
            "grid": grid, "selection": ctx.runs.selection_rule,
            "budgets": {"finetune_epochs": s.finetune_epochs, "pretrain_epochs": ctx.runs.pretrain_epochs(),
                        "scratch_epochs": ctx.runs.scratch_epochs(), "eals_epochs": s.eals_epochs}}


def main(argv=None) -> int:
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    raise SystemExit(main())
