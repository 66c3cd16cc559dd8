"""A quiet start: TensorFlow's native start-up log lines kept off the terminal unless asked for.

TensorFlow 2.21 writes its start-up messages from C++ before its logging is initialised
("All log messages before absl::InitializeLog() is called are written to STDERR", the oneDNN
notice, "Could not find cuda drivers", "failed call to cuInit" on a CPU machine, twice: once per
shared library), so ``TF_CPP_MIN_LOG_LEVEL`` cannot silence them. This module, run by
``amr_tf/__init__.py`` before anything imports TensorFlow, sets ``TF_CPP_MIN_LOG_LEVEL=2`` and
wraps TensorFlow's import: file descriptor 2 is captured while TensorFlow loads and probes its
devices, and replayed with only the known, harmless start-up lines removed (anything else, such
as a real error, still reaches stderr). It imports nothing heavy itself.

It also makes ``keras.models.load_model`` find amr_tf's models after a bare ``import amr_tf``:
when Keras is imported, :mod:`amr_tf.models` (which registers them) is imported right after it.

Set ``AMR_TF_VERBOSE_TF=1`` (or pass ``--verbose-tf`` to the CLI before TensorFlow is loaded)
to keep TensorFlow's output untouched.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import os
import re
import sys
import tempfile

VERBOSE_ENV = "AMR_TF_VERBOSE_TF"
_set_level = False  # whether configure() set TF_CPP_MIN_LOG_LEVEL (and unconfigure() may remove it)

# The start-up lines that say nothing actionable on a CPU machine (matched per line).
NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|^[IWE]\d{4} [\d:. ]+\d+ (port|cudart_stub|cuda_platform|cuda_executor|cpu_feature_guard|cuda_dnn|"
    r"cuda_fft|cuda_blas|gpu_device)\.cc:\d+\]"
    r"|^To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.$"
)


def verbose_tf() -> bool:
    """Whether TensorFlow's own output was asked for (``AMR_TF_VERBOSE_TF`` set to a true word)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


@contextlib.contextmanager
def filtered_stderr():
    """Capture file descriptor 2 (native code's stderr), then replay it without the :data:`NOISE` lines."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real stderr (an embedded interpreter)
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines(keepends=True)
                    if not NOISE.search(line.rstrip("\n"))]
            if kept:
                os.write(2, "".join(kept).encode())


class _WrappedLoader(importlib.abc.Loader):
    """Runs a module's own loader through ``hook.run(exec_module, module)``, then retires the hook."""

    def __init__(self, loader, hook):
        self.loader, self.hook = loader, hook

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self.hook)
        self.hook.run(self.loader.exec_module, module)


def _quiet_tensorflow(exec_module, module) -> None:
    with filtered_stderr():
        exec_module(module)
        # The CUDA probe ("failed call to cuInit") runs on the first device query; do it here,
        # where it is filtered. Listing physical devices leaves them configurable afterwards.
        module.config.list_physical_devices()


def _register_models(exec_module, module) -> None:
    exec_module(module)
    # amr_tf's Keras classes register themselves on import: with them registered whenever Keras
    # is, ``keras.models.load_model("m.keras")`` works after a bare ``import amr_tf``.
    importlib.import_module("amr_tf.models").register_keras_classes()


class _ImportHook(importlib.abc.MetaPathFinder):
    """Finds one top-level module with the other finders on ``sys.meta_path`` and wraps its loader."""

    def __init__(self, name: str, run):
        self.name, self.run = name, run

    def find_spec(self, name, path=None, target=None):
        # (A spec may be asked for without an import -- importlib.util.find_spec -- so the hook
        # stays until its wrapped loader actually runs.)
        if name != self.name or name in sys.modules:
            return None
        for finder in [f for f in sys.meta_path if f is not self]:
            spec = getattr(finder, "find_spec", lambda *a: None)(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _WrappedLoader(spec.loader, self)
                return spec
        return None


def _install(name: str, run) -> None:
    if name not in sys.modules and not any(isinstance(f, _ImportHook) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _ImportHook(name, run))


def configure() -> None:
    """Quiet TensorFlow's start-up unless :func:`verbose_tf` (a no-op once TensorFlow is imported),
    and register amr_tf's Keras classes whenever Keras is imported."""
    if "keras" in sys.modules:
        importlib.import_module("amr_tf.models").register_keras_classes()  # Keras is loaded: cheap now
    else:
        _install("keras", _register_models)
    if verbose_tf() or "tensorflow" in sys.modules:
        return
    global _set_level
    if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:  # INFO and WARNING from TensorFlow's C++ after start-up
        os.environ["TF_CPP_MIN_LOG_LEVEL"], _set_level = "2", True
    _install("tensorflow", _quiet_tensorflow)


def unconfigure() -> None:
    """Undo :func:`configure` before TensorFlow is imported (the CLI's ``--verbose-tf``)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not (isinstance(f, _ImportHook) and f.name == "tensorflow")]
    global _set_level
    if _set_level:
        os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        _set_level = False
