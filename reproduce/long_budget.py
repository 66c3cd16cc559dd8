"""The original release's training budget: 2,000 epochs of AMR fine-tuning beside VBPR trained on.

The original fine-tuned AMR for 2,000 epochs from its pretrained VBPR and published the test curve
every 50 epochs (``training.png``: Pinterest, NDCG@10 0.116 -> 0.123, HR@10 0.183 -> 0.203). The
``overall`` and ``training_curve`` experiments stop at 40 epochs; this one runs the original's
budget, one seed, and draws both curves. It runs the original protocol (no validation split, the
test item evaluated every 50 epochs, as the original did): the curves are *observations* over the
budget, not a selection, so the report gives the first, last, and the range of each curve and picks
no "best" epoch.

The two trainings are plain CLI runs (what a user would type), so they can run in parallel, be
resumed with ``--resume`` and be watched in TensorBoard::

    python -m amr_tf train --pretrained vbpr-movielens-posters --model AMR  --validation none \\
        --epoch 2000 --verbose 50 --save_every 50 --seed 0 --weight_dir runs/budget/amr
    python -m amr_tf train --pretrained vbpr-movielens-posters --model VBPR --validation none \\
        --epoch 2000 --verbose 50 --save_every 50 --seed 0 --weight_dir runs/budget/vbpr
    python -m reproduce.long_budget --amr runs/budget/amr --vbpr runs/budget/vbpr --out results/long_budget

This script reads the two runs' ``metrics.json`` (through the project's safe JSON reader), checks
that they share the dataset, seed and starting checkpoint, and writes ``long_budget.json``,
``long_budget.md`` and ``long_budget.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from amr_tf.errors import AmrError
from amr_tf.safe_io import read_json

PANELS = ("NDCG@10", "HR@10")
COLORS = {"VBPR": "tab:blue", "AMR": "tab:red"}
ORIGINAL = "the original's Pinterest curve (its training.png): NDCG@10 0.116 -> 0.123, HR@10 0.183 -> 0.203"


def load_run(path: Path, model: str) -> dict:
    """The evaluation history and identity of one CLI run directory."""
    record = read_json(path / "metrics.json", what="run metrics file")
    if not isinstance(record, dict) or not isinstance(record.get("evaluations"), list):
        raise AmrError(f"{path / 'metrics.json'}: not a training run's metrics file (no 'evaluations' list)")
    if record.get("model") != model:
        raise AmrError(f"{path}: a {record.get('model')} run, expected {model}")
    evals = sorted(record["evaluations"], key=lambda e: e["epoch"])
    return {"path": str(path), "complete": bool(record.get("complete")), "epochs": record.get("epochs"),
            "train_seconds": record.get("train_seconds"), "seed": record.get("seed"),
            "dataset": record.get("dataset", {}).get("fingerprint"),
            "pretrained": record.get("config", {}).get("pretrained"),
            "command": record.get("command"), "evaluations": evals}


def check_comparable(runs: dict) -> None:
    """Both runs must start from the same checkpoint, on the same data, with the same seed."""
    a, b = runs["AMR"], runs["VBPR"]
    for key in ("dataset", "seed"):
        if a[key] != b[key]:
            raise AmrError(f"the two runs differ in {key}: {a[key]!r} vs {b[key]!r}")
    if Path(str(a["pretrained"])).name != Path(str(b["pretrained"])).name:
        raise AmrError(f"the two runs start from different checkpoints: {a['pretrained']} vs {b['pretrained']}")


def summarise(run: dict) -> dict:
    """First and last evaluation and each metric's range over the curve (no epoch is selected)."""
    ev = run["evaluations"]
    out = {"first_epoch": ev[0]["epoch"], "last_epoch": ev[-1]["epoch"], "evaluations": len(ev)}
    for m in PANELS:
        ys = [e[m] for e in ev]
        out[m] = {"first": ev[0][m], "last": ev[-1][m], "min": min(ys), "max": max(ys)}
    return out


def figure(runs: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, metric, letter in zip(axes, PANELS, "ab"):
        for model, run in runs.items():
            x = [e["epoch"] for e in run["evaluations"]]
            y = [e[metric] for e in run["evaluations"]]
            ax.plot(x, y, "-", lw=2, color=COLORS[model], label="AMR" if model == "AMR" else "VBPR (trained on)")
        ax.set_title(f"({letter}) movielens-posters-{metric.split('@')[0]}, test item, every 50 epochs")
        ax.set_xlabel("Epoch#")
        ax.set_ylabel(metric)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left")
    fig.text(0.5, -0.04, f"one seed; epoch 0 = the pretrained VBPR; original protocol (no validation split). "
             f"For comparison, {ORIGINAL}.", ha="center", fontsize=8)
    fig.tight_layout()
    return fig


def markdown(runs: dict, summary: dict) -> str:
    lines = ["# The original's budget: 2,000 epochs", "",
             "One seed, original protocol (test item every 50 epochs; no epoch is selected). "
             f"For comparison, {ORIGINAL}.", "",
             "| model | epochs run | train s | NDCG@10 first → last (min–max) | HR@10 first → last (min–max) |",
             "|---|---|---|---|---|"]
    for model, run in runs.items():
        s = summary[model]
        cells = [f"{s[m]['first']:.4f} → {s[m]['last']:.4f} ({s[m]['min']:.4f}–{s[m]['max']:.4f})" for m in PANELS]
        status = "" if run["complete"] else " (unfinished)"
        lines.append(f"| {model} | {s['last_epoch']}{status} | {run['train_seconds']:.0f} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m reproduce.long_budget", description=__doc__.split("\n")[0])
    p.add_argument("--amr", type=Path, required=True, help="the AMR run directory (its metrics.json)")
    p.add_argument("--vbpr", type=Path, required=True, help="the VBPR run directory (its metrics.json)")
    p.add_argument("--out", type=Path, default=Path("results/long_budget"))
    args = p.parse_args(argv)
    try:
        runs = {"VBPR": load_run(args.vbpr, "VBPR"), "AMR": load_run(args.amr, "AMR")}
        check_comparable(runs)
    except AmrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = {m: summarise(r) for m, r in runs.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "long_budget.json").write_text(json.dumps({"runs": runs, "summary": summary}, indent=2))
    (args.out / "long_budget.md").write_text(markdown(runs, summary))
    figure(runs).savefig(args.out / "long_budget.png", dpi=120, bbox_inches="tight")
    print(markdown(runs, summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
