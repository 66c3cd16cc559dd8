"""``python -m benchmarks [--quick] [--json out.json] [--markdown out.md]``: print the benchmark tables."""

import sys

from benchmarks.suite import main

if __name__ == "__main__":
    sys.exit(main())
