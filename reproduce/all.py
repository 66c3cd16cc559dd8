"""Run every experiment (sharing the trained models) and write ``<out>/REPORT.md`` linking the pieces.

``python -m reproduce.all [--quick] [--dataset DIR] [--pretrained PATH] [--out DIR] [--only a,b]``
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from reproduce import EXPERIMENTS, common

NAME = "all"


def _modules(names):
    import importlib

    return [importlib.import_module(f"reproduce.{n}") for n in names]


def _embed(table_md: str, folder: str) -> str:
    """An experiment's table.md one heading level down, with its links made relative to the report."""
    lines = []
    for line in table_md.splitlines():
        if line.startswith("#"):
            line = "#" + line
        lines.append(re.sub(r"\]\(([\w.-]+\.(?:png|csv|md|json))\)", rf"]({folder}/\1)", line))
    return "\n".join(lines)


def write_report(out: Path, summaries: list[dict], args, total: float) -> Path:
    """``<out>/REPORT.md``: the claims and their verdicts first, then what ran and every table."""
    from amr_tf.io import atomic_write_text
    from reproduce import claims

    first = summaries[0]["manifest"]
    prov = first["provenance"]
    quick = first["mode"] == "quick"
    results = {s["name"]: s["manifest"]["results"] for s in summaries}
    lines = ["# AMR reproduction report\n"]
    if quick:
        lines.append(common.QUICK_WARNING)
    lines += [
        "## The paper's claims, measured\n",
        f"Test metrics of models selected on validation; rules in `reproduce/claims.py`. Details below.\n",
        claims.markdown(claims.claims(results, first["mode"])),
        "## What ran\n",
        f"Command: `{first['command']}`  ",
        f"Mode: **{first['mode']}**{' (smoke test)' if quick else ''}; dataset `{first['dataset']['name']}` "
        f"({first['dataset']['summary']}; fingerprint `{first['dataset']['fingerprint'][:16]}`)  ",
        f"Git commit `{prov.get('git_commit')}`{' (with uncommitted changes)' if prov.get('git_dirty') else ''}; "
        f"TensorFlow {prov.get('tensorflow')}, Keras {prov.get('keras')}, Python {prov.get('python')}; "
        f"{first['machine']['cpus']} CPUs  ",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')}; total wall time {total:.0f} s.\n",
        "Models are trained once and shared between experiments (cache `cache/`). *wall*: the experiment's "
        "time in this run, training included; *trained here*: the part of it spent training models no earlier "
        "experiment had trained (a model from the cache, or the pretrained VBPR, adds nothing). Each table's "
        "`runs.csv` and `manifest.json` give every run's own training time.\n",
        "| experiment | wall (s) | trained here (s) | table | numbers | figure | manifest | TensorBoard |",
        "|---|---:|---:|---|---|---|---|---|",
    ]
    for s in summaries:
        m, n = s["manifest"], s["name"]
        figs = " ".join(f"[{f}]({n}/{f})" for f in m["files"] if f.endswith(".png"))
        csvs = " ".join(f"[{f}]({n}/{f})" for f in m["files"] if f.endswith(".csv"))
        lines.append(f"| [{n}]({n}/table.md) | {m['runtime_seconds']:.0f} "
                     f"| {m['training_seconds']['trained_by_this_experiment']:.0f} "
                     f"| [table.md]({n}/table.md) | {csvs} | {figs} | [manifest.json]({n}/manifest.json) "
                     f"| `{n}/tensorboard/` |")
    lines.append(f"\nBrowse every curve with `tensorboard --logdir {out}`.\n")
    for s in summaries:
        table = (out / s["name"] / "table.md").read_text()
        lines += ["", _embed(table, s["name"])]
    path = out / "REPORT.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def main(argv=None) -> int:
    parser = common.build_parser(NAME, "Run every reproduction experiment and write REPORT.md")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(EXPERIMENTS)}")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    args.command_line = " ".join(["python -m reproduce.all"] + argv)
    names = EXPERIMENTS if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown experiment(s) {unknown}; choose from {', '.join(EXPERIMENTS)}")
    started = time.perf_counter()
    store = shared = None
    summaries = []
    try:
        for module in _modules(names):
            summary = common.run_experiment(module, args, store=store, shared=shared)
            store, shared = summary["store"], summary["shared"]
            summaries.append(summary)
    except common.AmrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    total = time.perf_counter() - started
    path = write_report(Path(args.out), summaries, args, total)
    print(f"wrote {path} ({total:.1f} s in all)")
    for s in summaries:
        print(f"  {s['name']:15s} {s['runtime']:8.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
