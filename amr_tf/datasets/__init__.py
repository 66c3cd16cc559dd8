"""Ready-made datasets for amr-tf and the scripts that build them.

* :mod:`amr_tf.datasets.movielens_posters` -- MovieLens-100K with movie-poster CNN features
  (build with ``python -m amr_tf.datasets.build_movielens_posters``; the result lives in
  ``amr_tf/datasets/data/movielens_posters/``).
* :mod:`amr_tf.datasets.amazon` and :mod:`amr_tf.datasets.interactions` -- your own data: Amazon
  reviews with their image features, or any CSV/TSV log with item images or features
  (``python -m amr_tf build-dataset {amazon,interactions}``, :mod:`amr_tf.datasets.cli`).
* :mod:`amr_tf.datasets.protocol` -- the split every builder shares (k-core, leave-one-out by
  time, seeded negatives, float16 features, staging, dataset card); :mod:`amr_tf.datasets.writer`
  writes a build's files.
"""

from pathlib import Path

#: Where the built datasets live (one folder per dataset).
DATA_DIR = Path(__file__).resolve().parent / "data"

__all__ = ["DATA_DIR"]
