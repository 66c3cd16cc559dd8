"""The entry point (``python -m amr_tf``, the ``amr-tf`` script): parse, run one sub-command, and
turn every failure into one ``error:`` line and a documented exit status (:mod:`amr_tf.cli.exits`)."""

from __future__ import annotations

import sys

from amr_tf.cli.exits import (
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_IO,
    EXIT_RESOURCES,
    EXIT_SOFTWARE,
    one_line,
    os_error_message,
)
from amr_tf.cli.parser import build_parser, explicit_dests
from amr_tf.errors import AmrError


def main(argv=None) -> int:
    """Run one sub-command; every failure is one ``error:`` line on stderr and a documented exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose_tf:
        from amr_tf import _startup

        _startup.unconfigure()  # before any handler imports TensorFlow
    args._argv = argv
    args._explicit = explicit_dests(argv)
    try:
        return args.handler(args)
    except AmrError as exc:
        status, message = EXIT_INPUT, one_line(exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        status, message = EXIT_RESOURCES, "out of memory; use smaller sizes (--emb1_K, --batch_size) or a larger machine"
    except OSError as exc:
        status, message = EXIT_IO, os_error_message(exc)
    except Exception as exc:  # TensorFlow's own errors, only if TensorFlow was imported at all
        tf = sys.modules.get("tensorflow")
        errors = getattr(tf, "errors", None)
        if errors is None or not isinstance(exc, errors.OpError):
            raise  # a bug: the traceback is what a report needs
        first = one_line(str(exc.message).strip().splitlines()[0] if str(exc.message).strip() else exc)
        if isinstance(exc, errors.ResourceExhaustedError):
            status, message = EXIT_RESOURCES, f"TensorFlow ran out of memory ({first[:300]}); use smaller sizes"
        else:
            status, message = EXIT_SOFTWARE, f"TensorFlow failed: {type(exc).__name__}: {first[:300]}"
    print(f"error: {message}", file=sys.stderr)
    return status
