"""Reproduction of the AMR paper's experiments (Tang et al., TKDE 2019), one module per table/figure.

Run one experiment with ``python -m reproduce.<experiment> [--quick] [--dataset DIR] [--out DIR]``
or all of them with ``python -m reproduce.all``; ``python -m reproduce <experiment> ...`` does the same.

=================  ==============================================================================
``overall``        main table: Popularity, MF-BPR, VBPR and AMR (fine-tuned from the pretrained VBPR)
``robustness``     VBPR vs AMR under test-time feature perturbations (gradient, PGD, random noise)
``eps_lambda``     AMR's clean accuracy over a grid of the adversary's budget eps and weight lambda
``training_curve`` HR@10 / NDCG@10 while AMR fine-tunes the pretrained VBPR, next to VBPR trained on
``significance``   AMR vs VBPR per metric: per-seed values, paired t-tests and Wilcoxon tests
``sparsity``       MF-BPR, DUIF, VBPR and AMR with at most n training pairs per user (n = 1 ... all)
``pixel_attack``   FGSM / PGD on the posters' pixels, through the CNN into VBPR and AMR (needs the
                   poster images, which are not shipped; not part of ``all``)
=================  ==============================================================================

Every experiment writes ``<out>/<experiment>/``: ``table.md``, ``results.csv`` (aggregates),
``runs.csv`` (every per-seed number), ``figure.png``, ``manifest.json`` (provenance, settings,
seeds, dataset fingerprint, command, runtime) and ``tensorboard/``. Trained models are cached
in ``<out>/cache/`` (keyed by dataset, settings and seed), so experiments that need the same
runs share them; ``--no-cache`` retrains.
"""

EXPERIMENTS = ("overall", "robustness", "eps_lambda", "training_curve", "significance",
               "sparsity")
# Experiments that need inputs the project does not ship; run on their own, never by ``all``.
OPTIONAL_EXPERIMENTS = ("pixel_attack",)
