"""Benchmarks of amr-tf: training epochs (VBPR, AMR, the original AMR graph, plain-TF VBPR),
evaluation (vectorised vs the original's per-user loop), XLA, and memory. Run ``python -m benchmarks``.
"""
