"""``python -m reproduce <experiment|all> [flags]``: the same as ``python -m reproduce.<experiment>``."""

import importlib
import sys

from reproduce import EXPERIMENTS, OPTIONAL_EXPERIMENTS


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    choices = list(EXPERIMENTS) + list(OPTIONAL_EXPERIMENTS) + ["all"]
    if not argv or argv[0] not in choices:
        print(f"usage: python -m reproduce {{{','.join(choices)}}} [--quick] [--dataset DIR] [--out DIR] ...\n"
              "       (python -m reproduce.<experiment> --help for the flags)", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return importlib.import_module(f"reproduce.{argv[0]}").main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
