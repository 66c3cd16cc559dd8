"""``python -m benchmarks [--quick] [--json out.json] [--markdown out.md]``: print the benchmark tables."""

import sys

import amr_tf  # noqa: F401 - first, so that TensorFlow's start-up lines are filtered (amr_tf._startup)
from benchmarks.suite import main

if __name__ == "__main__":
    sys.exit(main())
