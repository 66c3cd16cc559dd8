"""The paper's claims, each with what the experiments measured and a verdict (the top of ``REPORT.md``).

:func:`claims` reads the ``results`` that :mod:`reproduce.overall`, :mod:`reproduce.robustness`,
:mod:`reproduce.eps_lambda` and :mod:`reproduce.significance` return (their manifests'
``results``) and applies fixed rules, written here once, so that the verdicts are the numbers'
and not a reader's. A claim whose experiment was not run says so. In quick mode the verdict is
withheld: the numbers are a smoke test.

Rules (HR@10/NDCG@10 on the test split of the models selected on validation):

* *fragile*: VBPR loses at least 10% of HR@10 to the paper's one-step attack (``grad``) at eps = 1;
* *noise*: random noise of the same norm costs at most a third of what ``grad`` costs, at every eps;
* *AMR robust*: AMR's relative HR@10 drop under ``grad`` and ``pgd`` at eps = 1 is at most half
  VBPR's, and its certified HR@10 at eps = 0.1 is higher;
* *better than*: A's mean NDCG@10 is above B's and the paired t-test over seeds gives p < 0.05
  ("holds"); A below B with p < 0.05 ("the opposite holds"); otherwise "not significant";
* *eps, lambda*: the cell chosen on validation beats VBPR's test NDCG@10 by more than the
  standard deviation of either over the grid's seeds.
"""

from __future__ import annotations

import math

from reproduce import common

NOT_RUN = "not run"


def _cmp(rows, metric="NDCG@10"):
    return next((r for r in rows or [] if r["metric"] == metric), None)


def _better(rows, a: str, b: str) -> tuple[str, str]:
    r = _cmp(rows)
    if r is None:
        return NOT_RUN, NOT_RUN
    p = r["seeds_t_p"]
    measured = (f"NDCG@10 {a} {common.fmt_ms(r['a_mean'], r['a_std'])} vs {b} {common.fmt_ms(r['b_mean'], r['b_std'])} "
                f"({r['rel_improvement_pct']:+.1f}%, paired t-test over {r['seeds_n']} seeds p = {common.fmt_p(p)}, "
                f"users p = {common.fmt_p(r['users_t_p'])})")
    if isinstance(p, float) and not math.isnan(p) and p < 0.05:
        verdict = "**holds**" if r["diff"] > 0 else "**the opposite holds**"
    else:
        verdict = "**not significant** (does not hold here)"
    return measured, verdict


def _row(table, model, attack, eps):
    return next((r for r in table if r["model"] == model and r["attack"] == attack and abs(r["eps"] - eps) < 1e-12),
                None)


def claims(results: dict, mode: str) -> list[dict]:
    """``[{"claim", "measured", "verdict"}]`` from ``{experiment name: its results}``."""
    out = []
    overall, rob = results.get("overall"), results.get("robustness")
    grid, sig = results.get("eps_lambda"), results.get("significance")

    def add(claim, measured, verdict):
        out.append({"claim": claim, "measured": measured, "verdict": verdict})

    # robustness
    if rob is None:
        for claim in ("VBPR is fragile to small purposeful feature perturbations",
                      "random noise of the same size barely matters", "AMR is much more robust than VBPR"):
            add(claim, NOT_RUN, NOT_RUN)
    else:
        table = rob["table"]
        eps_max = max(r["eps"] for r in table)
        v = _row(table, "VBPR", "grad", eps_max)
        drop = v["HR@10_drop_pct"]
        add("VBPR is fragile to small purposeful feature perturbations",
            f"the one-step attack (`grad`) costs VBPR {drop:.1f}% of HR@10 at eps = {eps_max:g} "
            f"({100 * eps_max / rob['mean_feature_norm']:.0f}% of the mean feature norm)",
            "**holds**" if drop >= 10 else "**does not hold**")
        worst_random = max(abs(r["HR@10_drop_pct"]) for r in table if r["model"] == "VBPR" and r["attack"] == "random")
        add("random noise of the same size barely matters",
            f"random noise changes VBPR's HR@10 by at most {worst_random:.1f}% (grad: {drop:.1f}% at eps = {eps_max:g})",
            "**holds**" if worst_random <= max(drop, 1e-9) / 3 else "**does not hold**")
        a_grad, a_pgd = _row(table, "AMR", "grad", eps_max), _row(table, "AMR", "pgd", eps_max)
        v_pgd = _row(table, "VBPR", "pgd", eps_max)
        band = {(r["model"], r["eps"]): r for r in rob.get("band", [])}
        cert_v, cert_a = band.get(("VBPR", 0.1)), band.get(("AMR", 0.1))
        measured = (f"HR@10 drop at eps = {eps_max:g}: AMR {a_grad['HR@10_drop_pct']:.1f}% vs VBPR {drop:.1f}% (`grad`), "
                    f"{a_pgd['HR@10_drop_pct']:.1f}% vs {v_pgd['HR@10_drop_pct']:.1f}% (`pgd`)")
        robust = (a_grad["HR@10_drop_pct"] <= drop / 2 and a_pgd["HR@10_drop_pct"] <= v_pgd["HR@10_drop_pct"] / 2)
        if cert_v and cert_a:
            measured += (f"; certified HR@10 at eps = 0.1: AMR {common.fmt(cert_a['certified_HR@10_mean'])} vs VBPR "
                         f"{common.fmt(cert_v['certified_HR@10_mean'])} (strongest attack found: "
                         f"{common.fmt(cert_a['attacked_HR@10_mean'])} vs {common.fmt(cert_v['attacked_HR@10_mean'])})")
            robust = robust and cert_a["certified_HR@10_mean"] > cert_v["certified_HR@10_mean"]
        add("AMR is much more robust than VBPR", measured, "**holds**" if robust else "**does not hold**")

    # accuracy
    if overall is None:
        add("AMR is more accurate than VBPR (same budget)", NOT_RUN, NOT_RUN)
        add("visual features help: VBPR beats MF-BPR", NOT_RUN, NOT_RUN)
        add("AMR is the best of the paper's rows (Pop, MF-eALS, MF-BPR, DUIF, VBPR, AMR)", NOT_RUN, NOT_RUN)
    else:
        add("AMR is more accurate than VBPR (same budget)", *_better(overall["comparison"], "AMR", "VBPR"))
        add("visual features help: VBPR beats MF-BPR", *_better(overall["vbpr_vs_mf"], "VBPR", "MF-BPR"))
        ranked = sorted(overall["table"], key=lambda r: -r["NDCG@10_mean"])
        order = " > ".join(f"{r['model']} {common.fmt(r['NDCG@10_mean'])}" for r in ranked)
        top = ranked[0]["model"]
        add("AMR is the best of the paper's rows (Pop, MF-eALS, MF-BPR, DUIF, VBPR, AMR)",
            f"test NDCG@10: {order}",
            "**holds**" if top == "AMR" else f"**does not hold** (best: {top}; see the paired tests for significance)")
    if overall is None and sig is None:
        add("adversarial fine-tuning improves the pretrained VBPR", NOT_RUN, NOT_RUN)
    else:
        rows = (overall or {}).get("vs_pretrained") or (sig or {}).get("comparisons", {}).get("AMR vs VBPR (pretrained)")
        r = _cmp(rows)
        if r is None:
            add("adversarial fine-tuning improves the pretrained VBPR", NOT_RUN, NOT_RUN)
        else:
            add("adversarial fine-tuning improves the pretrained VBPR",
                f"NDCG@10 AMR {common.fmt_ms(r['a_mean'], r['a_std'])} vs its start {common.fmt(r['b_mean'])} "
                f"({r['rel_improvement_pct']:+.1f}%, users p = {common.fmt_p(r['users_t_p'])})",
                "**holds**" if r["diff"] > 0 and r["users_t_p"] < 0.05 else "**does not hold**")

    # eps / lambda
    if grid is None:
        add("a moderate adversary (eps, lambda) improves clean accuracy", NOT_RUN, NOT_RUN)
    else:
        best = grid["best"]
        table = grid["table"]
        cell = next(r for r in table if r["eps"] == best["eps"] and r["adv_weight"] == best["adv_weight"])
        ref = next(r for r in table if r["adv_weight"] == 0.0)
        diff = cell["NDCG@10_mean"] - ref["NDCG@10_mean"]
        noise = max(cell["NDCG@10_std"], ref["NDCG@10_std"])
        add("a moderate adversary (eps, lambda) improves clean accuracy",
            f"cell chosen on validation: eps = {best['eps']:g}, lambda = {best['adv_weight']:g}; test NDCG@10 "
            f"{common.fmt(cell['NDCG@10_mean'])} vs VBPR {common.fmt(ref['NDCG@10_mean'])} ({diff:+.4f}; seed std "
            f"{common.fmt(noise)}, {len(grid['seeds'])} seeds)",
            "**holds**" if diff > noise and noise > 0 else "**no measurable effect**")
    if mode == "quick":
        for c in out:
            if c["verdict"] != NOT_RUN:
                c["verdict"] = "withheld: smoke test (quick mode)"
    return out


def markdown(rows: list[dict]) -> str:
    return common.md_table(["the paper's claim", "measured here", "verdict"],
                           [[r["claim"], r["measured"], r["verdict"]] for r in rows])
