"""``python -m benchmarks [--quick] [--json out.json] [--markdown out.md]``: print the benchmark tables.

``python -m benchmarks --device-report [--allow-cpu] [--quick] [--out DIR]``: the standard and scaling
benchmarks on a GPU, written as one report naming the device (:mod:`benchmarks.device_report`).
"""

import sys

import amr_tf  # noqa: F401 - first, so that TensorFlow's start-up lines are filtered (amr_tf._startup)
from benchmarks.suite import main

if __name__ == "__main__":
    if "--device-report" in sys.argv[1:]:
        from benchmarks.device_report import main as device_report

        sys.exit(device_report([a for a in sys.argv[1:] if a != "--device-report"]))
    sys.exit(main())
