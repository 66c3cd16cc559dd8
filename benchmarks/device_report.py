"""``python -m benchmarks --device-report``: the standard and scaling benchmarks on an accelerator, one report.

On a machine with a GPU this runs ``python -m benchmarks`` (the standard suite) and
``python -m benchmarks.scale`` (issue 17's catalogue sizes), each in its own process, and writes
``report.md`` and ``report.json`` into ``--out``, naming the device (TensorFlow's name for it,
its compute capability, ``nvidia-smi``'s view when available). Without a GPU it says so and stops,
unless ``--allow-cpu`` is given: then the same report is produced on the CPU (a smoke check of the
command, not accelerator numbers). ``--quick`` uses the suites' tiny shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def device_info() -> dict:
    """The accelerators TensorFlow sees (empty ``gpus`` without one), and ``nvidia-smi``'s summary."""
    import tensorflow as tf

    gpus = []
    for dev in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(dev)
        gpus.append({"name": dev.name, "device_name": details.get("device_name", "unknown"),
                     "compute_capability": details.get("compute_capability")})
    info = {"gpus": gpus, "tensorflow": tf.__version__, "built_with_cuda": tf.test.is_built_with_cuda(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(), "host": platform.node()}
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            info["nvidia_smi"] = out.stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            info["nvidia_smi"] = f"unavailable ({exc})"
    return info


def device_name(info: dict) -> str:
    if info["gpus"]:
        g = info["gpus"][0]
        cc = g.get("compute_capability")
        extra = f", compute capability {cc[0]}.{cc[1]}" if cc else ""
        return f"{g['device_name']}{extra}" + (f" ({len(info['gpus'])} GPUs)" if len(info["gpus"]) > 1 else "")
    return f"CPU only ({info['cpu_count']} logical cores; no GPU found)"


def _run(cmd, log) -> dict:
    log("$ " + " ".join(cmd))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    res = {"command": " ".join(cmd[1:]).replace("-m ", "python -m ", 1), "exit": proc.returncode,
           "wall_s": time.perf_counter() - t0, "stdout": proc.stdout}
    if proc.returncode != 0:
        res["stderr_tail"] = proc.stderr[-3000:]
        log(f"  failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:] }")
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks --device-report", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("device-report"), help="directory for report.md / report.json")
    p.add_argument("--allow-cpu", action="store_true", help="without a GPU, run on the CPU anyway (smoke check)")
    p.add_argument("--quick", action="store_true", help="tiny shapes for both suites")
    p.add_argument("--sizes", default=None, help="benchmarks.scale sizes (default: all; --quick: its own)")
    p.add_argument("--no-standard", action="store_true", help="skip the standard suite")
    args = p.parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    info = device_info()
    name = device_name(info)
    if not info["gpus"] and not args.allow_cpu:
        print(f"error: no GPU found (TensorFlow {info['tensorflow']}, built with CUDA: {info['built_with_cuda']}); "
              "nothing to report. Pass --allow-cpu to run the same benchmarks on the CPU as a smoke check.",
              file=sys.stderr)
        return 2
    log(f"device: {name}")
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {}
    if not args.no_standard:
        cmd = [sys.executable, "-m", "benchmarks", "--json", str(args.out / "standard.json")]
        if args.quick:
            cmd += ["--quick", "--no-memory", "--no-xla", "--no-breakdown"]
        runs["standard"] = _run(cmd, log)
    cmd = [sys.executable, "-m", "benchmarks.scale", "--json", str(args.out / "scale.json"),
           "--plot", str(args.out / "scale.png")]
    cmd += ["--quick", "--steps", "10", "--eval_users", "50"] if args.quick else []
    cmd += ["--sizes", args.sizes] if args.sizes else []
    runs["scale"] = _run(cmd, log)
    report = {"device": name, "device_info": info, "smoke_check_on_cpu": not info["gpus"], "quick": args.quick,
              "runs": {k: {kk: vv for kk, vv in v.items() if kk != "stdout"} for k, v in runs.items()}}
    for key, file in (("standard", "standard.json"), ("scale", "scale.json")):
        if (args.out / file).is_file():
            report[key] = json.loads((args.out / file).read_text())
    (args.out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    lines = [f"# Device report: {name}", ""]
    if not info["gpus"]:
        lines += ["**No GPU was found: these are CPU numbers from `--allow-cpu`, a smoke check of the command, "
                  "not accelerator results.**", ""]
    lines += [f"TensorFlow {info['tensorflow']} (CUDA build: {info['built_with_cuda']}), Python {info['python']}, "
              f"{info['cpu_count']} logical CPU cores" + (f"; nvidia-smi: {info['nvidia_smi']}" if "nvidia_smi" in info
                                                          else ""), ""]
    for key, title in (("standard", "Standard benchmarks"), ("scale", "Scaling benchmark")):
        if key not in runs:
            continue
        r = runs[key]
        lines += [f"## {title}", "", f"`{r['command']}`: exit {r['exit']}, {r['wall_s']:.0f} s", ""]
        lines += [r["stdout"].strip() or "(no output)", ""]
        if r["exit"] != 0:
            lines += ["```", r.get("stderr_tail", "").strip(), "```", ""]
    (args.out / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))
    log(f"wrote {args.out / 'report.md'} and {args.out / 'report.json'}")
    return 0 if all(r["exit"] == 0 for r in runs.values()) else 1
