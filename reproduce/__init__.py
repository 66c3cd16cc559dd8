"""Reproduction of the AMR paper's experiments (Tang et al., TKDE 2019), one module per table/figure.

Run one experiment with ``python -m reproduce.<experiment> [--quick] [--dataset DIR] [--out DIR]``
or all of them with ``python -m reproduce.all``; ``python -m reproduce <experiment> ...`` does the same.

=================  ==============================================================================
``overall``        main table: Pop, MF-eALS, MF-BPR, DUIF, VBPR and AMR (fine-tuned from the pretrained VBPR)
``robustness``     VBPR vs AMR under test-time feature perturbations (gradient, PGD, random noise), and
                   the band between the certified worst case and the strongest shared attack found
``eps_lambda``     AMR's clean accuracy over a grid of the adversary's budget eps and weight lambda
``training_curve`` HR@10 / NDCG@10 while AMR fine-tunes the pretrained VBPR, next to VBPR trained on
``significance``   AMR vs VBPR per metric: per-seed values, paired t-tests and Wilcoxon tests
``sparsity``       MF-BPR, DUIF, VBPR and AMR with at most n training pairs per user (n = 1 ... all)
``pixel_attack``   FGSM / PGD on the posters' pixels, through the CNN into VBPR and AMR (needs the
                   poster images, which are not shipped; not part of ``all``)
=================  ==============================================================================

Every epoch count and hyper-parameter is chosen on the validation split (``--validation holdout``,
the default; ``none`` is the original protocol). ``reproduce.all`` writes ``<out>/REPORT.md``, which
opens with the paper's claims and their verdicts (:mod:`reproduce.claims`).

Every experiment writes ``<out>/<experiment>/``: ``table.md``, ``results.csv`` (aggregates),
``runs.csv`` (every per-seed number), ``figure.png``, ``manifest.json`` (provenance, settings,
seeds, dataset fingerprint, command, runtime) and ``tensorboard/``. Trained models are cached
in ``<out>/cache/`` (keyed by dataset, settings and seed), so experiments that need the same
runs share them; ``--no-cache`` retrains.
"""

EXPERIMENTS = ("overall", "robustness", "eps_lambda", "training_curve", "significance")
# Run on their own, never by ``all``: pixel_attack needs images the project does not ship,
# long_budget reads two 2,000-epoch CLI runs, sparsity trains about 120 models in full mode (hours
# on 2 cores; ``python -m reproduce.sparsity``).
OPTIONAL_EXPERIMENTS = ("pixel_attack", "long_budget", "sparsity")
