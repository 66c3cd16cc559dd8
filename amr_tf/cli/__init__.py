"""Command line: ``python -m amr_tf {train,tune,evaluate,convert-original,features}``.

``train`` accepts the original release's flag names (``--lr '[0.01,1e-4,1e-3]'`` etc.). Problems
with the input are reported as one ``error:`` line and a non-zero exit status, never a traceback.
``train --resume`` continues the run in ``--weight_dir`` from its ``last`` checkpoint (see
docs/errors.md); a NaN/Inf loss stops training and keeps the last good checkpoint.

Modules, bottom up (each imports only those before it): :mod:`.exits` (exit statuses, one-line
messages), :mod:`.arguments` (every sub-command's flags; stored values parsed as if typed),
:mod:`.common` (the dataset the flags name, the recorded command, the results table),
:mod:`.train_config` (how a ``train`` configuration is assembled: resume, ``--pretrained``,
``--hparams``); one module per sub-command: :mod:`.train`, :mod:`.tune`, :mod:`.evaluate`,
:mod:`.convert`; :mod:`.parser` (the sub-commands and their handlers) and :mod:`.entry` (``main``).
The names below are imported on first use (nothing is imported with the package).
"""

import importlib

_LAZY = {
    "main": "amr_tf.cli.entry:main",
    "build_parser": "amr_tf.cli.parser:build_parser",
    "EXIT_INPUT": "amr_tf.cli.exits:EXIT_INPUT",
    "EXIT_SOFTWARE": "amr_tf.cli.exits:EXIT_SOFTWARE",
    "EXIT_RESOURCES": "amr_tf.cli.exits:EXIT_RESOURCES",
    "EXIT_IO": "amr_tf.cli.exits:EXIT_IO",
    "EXIT_INTERRUPTED": "amr_tf.cli.exits:EXIT_INTERRUPTED",
    "cmd_train": "amr_tf.cli.train:cmd_train",
    "cmd_tune": "amr_tf.cli.tune:cmd_tune",
    "cmd_evaluate": "amr_tf.cli.evaluate:cmd_evaluate",
    "cmd_convert": "amr_tf.cli.convert:cmd_convert",
    "print_table": "amr_tf.cli.common:print_table",
    "add_dataset_flags": "amr_tf.cli.arguments:add_dataset_flags",
    "RESUME_FIXED": "amr_tf.cli.train_config:RESUME_FIXED",
    "RESUME_INHERITED": "amr_tf.cli.train_config:RESUME_INHERITED",
    # The names of amr_tf/cli.py before it became this package (tests and scripts import them).
    "_dataset": "amr_tf.cli.common:open_dataset",
    "_explicit_dests": "amr_tf.cli.parser:explicit_dests",
    "_recommended_args": "amr_tf.cli.train_config:recommended_args",
    "_stored_flag": "amr_tf.cli.arguments:stored_flag",
    "_train_actions": "amr_tf.cli.arguments:train_actions",
}

__all__ = sorted(n for n in _LAZY if not n.startswith("_"))


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'amr_tf.cli' has no attribute {name!r}")
    module, _, attr = _LAZY[name].partition(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
