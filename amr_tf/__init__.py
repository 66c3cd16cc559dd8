"""amr-tf: Adversarial Multimedia Recommendation (AMR, Tang et al., TKDE 2019) in TensorFlow / Keras 3."""

__version__ = "0.1.0"

from amr_tf.evaluation import evaluate  # noqa: E402

__all__ = ["evaluate", "__version__"]
