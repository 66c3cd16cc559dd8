"""Ops of one training step after Grappler, per model: ``python -m benchmarks.graph_ops``.

A load-independent companion of the timings: on a shared CPU, epoch times of two versions can
differ by +-30% from load alone, while the optimised graph of ``train_step`` (what actually runs,
after constant folding and pruning of unused gradients) is exact. Run it in two checkouts
(``cd OTHER && PYTHONPATH=. python -m benchmarks.graph_ops``) and compare the op counts, the
matrix products above all. Uses TensorFlow's Grappler entry point
(``tensorflow.python.grappler.tf_optimizer``, private; benchmarks only).
"""

from __future__ import annotations

import collections
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402
from tensorflow.core.protobuf import config_pb2  # noqa: E402
from tensorflow.python.grappler import tf_optimizer  # noqa: E402

from amr_tf.data import TripletSampler, make_synthetic  # noqa: E402
from amr_tf.training import build_model  # noqa: E402
from benchmarks.suite import QUICK_SHAPE  # noqa: E402

STATEFUL_UPDATES = ("AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp", "ResourceScatterAdd",
                    "ResourceScatterSub", "ResourceScatterUpdate")


def step_ops(model, batch) -> collections.Counter:
    """Op types of ``model.train_step`` on ``batch`` after Grappler (function bodies included)."""
    fn = tf.function(lambda u, i, j: model.train_step(((u, i, j),)))
    concrete = fn.get_concrete_function(*(tf.constant(a) for a in batch))
    graph = concrete.graph
    meta = tf.compat.v1.train.export_meta_graph(graph_def=graph.as_graph_def(add_shapes=True), graph=graph)
    fetch = meta.collection_def["train_op"].node_list.value
    fetch.extend(t.name for t in concrete.outputs)
    fetch.extend(op.name for op in graph.get_operations() if op.type in STATEFUL_UPDATES)
    config = config_pb2.ConfigProto()
    config.graph_options.rewrite_options.min_graph_nodes = -1
    optimised = tf_optimizer.OptimizeGraph(config, meta)
    ops = collections.Counter(n.op for n in optimised.node)
    for function in optimised.library.function:
        ops.update(n.op for n in function.node_def)
    return ops


def main() -> int:
    ds = make_synthetic(seed=0, name="tiny", **QUICK_SHAPE)
    batch = next(iter(TripletSampler(ds, seed=0).batches(0, 128)))
    for name, kw in (("VBPR", {}), ("AMR", {}), ("AMR", {"adversary": "tape"})):
        ops = step_ops(build_model(name, ds, seed=0, **kw), batch)
        label = name + "".join(f" {k}={v}" for k, v in kw.items())
        print(f"{label}: {sum(ops.values())} ops, {ops['MatMul'] + ops['BatchMatMulV2']} matrix products; "
              + ", ".join(f"{k} {v}" for k, v in sorted(ops.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
