"""Ready-made datasets for amr-tf and the scripts that build them.

* :mod:`amr_tf.datasets.movielens_posters` -- MovieLens-100K with movie-poster CNN features
  (build with ``python -m amr_tf.datasets.build_movielens_posters``; the result lives in
  ``amr_tf/datasets/data/movielens_posters/``).
"""

from pathlib import Path

#: Where the built datasets live (one folder per dataset).
DATA_DIR = Path(__file__).resolve().parent / "data"

__all__ = ["DATA_DIR"]
