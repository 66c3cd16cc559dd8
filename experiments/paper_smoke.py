"""Smoke measurements for issue 15's new modules on the embedded dataset (movielens-posters).

    python experiments/paper_smoke.py eals   # MF-eALS: epoch time, HR/NDCG after 5 and 10 epochs
    python experiments/paper_smoke.py band   # HR@10: certified vs shared attack vs the existing attacks

Everything is measured on the TEST split (the project has no validation split yet); the eALS
settings and the shared attack's defaults were chosen on it, so these are smoke numbers, not
results for claims. ``band`` uses the shipped checkpoints ``vbpr-movielens-posters`` and ``amr-movielens-posters`` (amr_tf/pretrained).
"""

import sys
import time
import warnings

import numpy as np

from amr_tf import pretrained
from amr_tf.data import resolve_dataset
from amr_tf.evaluation import evaluate


def eals(ds):
    from amr_tf.models.eals import EALS

    for c0, alpha in [(16.0, 0.0), (16.0, 0.5), (256.0, 0.5)]:
        model = EALS(ds.num_users, ds.num_items, embed_dim=64, c0=c0, alpha=alpha, reg=0.01, init_stddev=0.01, seed=0)
        times, objective = [], []
        for epoch in range(1, 11):
            start = time.perf_counter()
            objective += model.fit(ds, 1)
            times.append(time.perf_counter() - start)
            if epoch in (5, 10):
                m = evaluate(model, ds)
                print(f"c0={c0} alpha={alpha} epoch {epoch}: HR@10 {m['HR@10']:.4f} NDCG@10 {m['NDCG@10']:.4f} "
                      f"HR@5 {m['HR@5']:.4f} HR@20 {m['HR@20']:.4f} objective {objective[-1]:.2f}", flush=True)
        print(f"  epoch time (incl. the objective): median {np.median(times):.3f}s, min {min(times):.3f}s; "
              f"objective non-increasing: {all(b <= a for a, b in zip(objective, objective[1:]))}", flush=True)


def band(ds):
    from amr_tf.attacks import feature_perturbation
    from amr_tf.attacks.certify import Certifier
    from amr_tf.attacks.shared import shared_attack
    from amr_tf.checkpoints import load_checkpoint

    print("model eps | clean certified | shared (time) | grad-bpr grad-ranking pgd-ranking", flush=True)
    for name in ("vbpr", "amr"):
        model, _ = load_checkpoint(pretrained.path(f"{name}-movielens-posters"), ds, compile=False)
        cert = Certifier(model, ds)
        clean = cert.at(0.0).metrics["HR@10"]
        assert abs(clean - evaluate(model, ds)["HR@10"]) < 1e-12
        for eps in (0.05, 0.1, 0.2, 0.5, 1.0):
            certified = cert.at(eps).metrics
            start = time.perf_counter()
            shared = shared_attack(model, ds, eps, steps=50, restarts=3, target_k=10, seed=0)
            seconds = time.perf_counter() - start
            old = {f"{a}-{loss}": evaluate(model, ds, features=ds.features + feature_perturbation(
                model, ds, a, eps, loss=loss, seed=0))["HR@10"]
                for a, loss in (("grad", "bpr"), ("grad", "ranking"), ("pgd", "ranking"))}
            print(f"{name} {eps} | {clean:.4f} {certified['HR@10']:.4f} | {shared.metrics['HR@10']:.4f} "
                  f"({seconds:.0f}s) | {old['grad-bpr']:.4f} {old['grad-ranking']:.4f} {old['pgd-ranking']:.4f} "
                  f"| NDCG@10 certified {certified['NDCG@10']:.4f} shared {shared.metrics['NDCG@10']:.4f}",
                  flush=True)
        for k, radius in cert.radius.items():
            inside = radius[np.isfinite(radius) & (radius > 0)]
            print(f"  {name} radius@{k}: {len(inside)} users in the top {k}; radius median {np.median(inside):.4f}, "
                  f"10% {np.quantile(inside, 0.1):.4f}, 90% {np.quantile(inside, 0.9):.4f}", flush=True)


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    what = sys.argv[1:] or ["eals", "band"]
    dataset = resolve_dataset("movielens-posters")
    for job in what:
        {"eals": eals, "band": band}[job](dataset)
