"""amr-tf: Adversarial Multimedia Recommendation (AMR, Tang et al., TKDE 2019) in TensorFlow / Keras 3."""

__version__ = "0.1.0"

__all__ = ["evaluate", "__version__"]


def __getattr__(name):
    # Lazy, so that light tools (the dataset builder, the CLI's --help) do not pay TensorFlow's import.
    if name == "evaluate":
        from amr_tf.evaluation import evaluate

        return evaluate
    raise AttributeError(f"module 'amr_tf' has no attribute {name!r}")
