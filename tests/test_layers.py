"""The import graph of amr_tf: dependencies point downhill, no import cycles, light modules stay light.

Read from the source (``ast``), not by importing, so a violation is reported whatever is installed.
Every module has a layer (:data:`LAYERS`, by the longest matching prefix); a module may import
modules of its own layer or below, at module level or inside a function. Package ``__init__``
facades that re-export their submodules lazily are exempt from the layer rule (not from the
cycle rule). A new top-level module needs a line in :data:`LAYERS`.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Layer of each module prefix, bottom (0) to top; see docs/design.md for the picture.
LAYERS = {
    "amr_tf.errors": 0, "amr_tf.flags": 0, "amr_tf.compat": 0, "amr_tf.io": 0, "amr_tf.safe_io": 0,
    "amr_tf._startup": 0, "amr_tf.run_dir": 0,
    "amr_tf.vision": 1,
    "amr_tf.data": 2,
    "amr_tf.datasets": 3, "amr_tf.evaluation": 3, "amr_tf.metrics": 3,
    "amr_tf.models": 4,
    "amr_tf.attacks": 5, "amr_tf.checkpoints": 5,
    "amr_tf.callbacks": 6, "amr_tf.pretrained": 6, "amr_tf.run_record": 6,
    "amr_tf.training": 7,
    "amr_tf.tuning": 8,
    # The command line, bottom up inside the package (amr_tf/cli/__init__.py lists them).
    "amr_tf.cli.exits": 8.1, "amr_tf.cli.arguments": 8.1, "amr_tf.cli.common": 8.1,
    "amr_tf.cli.train_config": 8.2,
    "amr_tf.cli.train": 8.3, "amr_tf.cli.tune": 8.3, "amr_tf.cli.evaluate": 8.3, "amr_tf.cli.convert": 8.3,
    "amr_tf.cli.parser": 8.4,
    "amr_tf.cli.entry": 8.5,
    "amr_tf.cli": 8.6, "amr_tf.__main__": 8.6,
}
# ``amr_tf.datasets``' __init__ holds only the embedded data's folder (which the loader's registry names).
FACADES = {"amr_tf", "amr_tf.models", "amr_tf.attacks", "amr_tf.data", "amr_tf.datasets", "amr_tf.vision"}


def modules() -> dict:
    out = {}
    for path in sorted((ROOT / "amr_tf").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path, known) -> list:
    """``(module imported, at module level?)`` for every ``amr_tf`` import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found += [(n, id(node) in top) for n in names if n.split(".")[0] in ("amr_tf", "reproduce", "benchmarks")]
    return found


def layer(name: str):
    prefix = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len, default=None)
    return None if prefix is None else LAYERS[prefix]


def test_every_import_points_downhill():
    mods = modules()
    problems = []
    for name, path in mods.items():
        if layer(name) is None and name not in FACADES:
            problems.append(f"{name}: no layer in tests/test_layers.py LAYERS")
            continue
        for target, _ in imports(path, mods):
            if target.split(".")[0] != "amr_tf":
                problems.append(f"{name} imports {target} (amr_tf never imports reproduce or benchmarks)")
            elif name not in FACADES and target not in FACADES and layer(target) > layer(name):
                problems.append(f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})")
    assert not problems, "\n".join(problems)


def test_no_import_cycles_at_module_level():
    mods = modules()
    graph = {name: sorted({t for t, top in imports(path, mods) if top and t in mods and t != name})
             for name, path in mods.items()}
    # A package's submodule import also runs the package's __init__.
    for name in list(graph):
        parent = name.rpartition(".")[0]
        if parent in graph and parent != "amr_tf":
            graph[name] = sorted(set(graph[name]) | ({parent} if name not in graph[parent] else set()))
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule is not vacuous: an upward import in a module's source is reported."""
    fake = tmp_path / "mod.py"
    fake.write_text("from amr_tf.training import fit\n\ndef f():\n    import amr_tf.cli\n")
    found = imports(fake, modules())
    assert found == [("amr_tf.training", True), ("amr_tf.cli", False)]
    assert layer("amr_tf.training") > layer("amr_tf.models.base")


def test_light_modules_import_no_tensorflow():
    """The flag types and the model registry (read by the CLI's --help) stay free of TensorFlow."""
    code = ("import sys; import amr_tf.flags, amr_tf.models.registry as r; r.lookup('MF'); r.choices(); "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
