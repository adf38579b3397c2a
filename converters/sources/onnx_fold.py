"""Fold what the user fixed into an ONNX graph: named input shapes, constant inputs, and what follows from them.

A streaming model may take a sample rate as an input and branch on it with ``If``; once the rate is a constant
the condition is one, and the branch not taken (whose shapes need not fit the static shapes) must go. So:
constant inputs become initializers; nodes whose inputs are all constant are evaluated (onnx's reference
evaluator); ``Shape`` of a statically known tensor becomes a constant; an ``If`` on a constant condition is
replaced by the nodes of the branch it takes; repeated with shape inference until nothing changes; then nodes
no output needs are dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from edge_runtime.errors import ConversionError

log = logging.getLogger(__name__)
_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                     "Bernoulli", "Dropout"}  # fmt: skip
_SKIP = _NONDETERMINISTIC | {"If", "Loop", "Scan"}
_MAX_FOLD_ELEMENTS = 1 << 22  # keep folded constants below 16 MB of float32
_MAX_PASSES = 16


def _graph_inputs(model):  # type: ignore[no-untyped-def]
    init = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in init]


def set_shapes(model, first: Sequence[int] | None, named: Mapping[str, Sequence[int]], skip: set[str]):  # type: ignore[no-untyped-def]
    """Static input shapes: ``named`` by input, ``first`` for the first input, a dynamic batch dimension 1.
    Inputs in ``skip`` (constants about to be folded) are left alone."""
    inputs = [vi for vi in _graph_inputs(model) if vi.name not in skip]
    names = [vi.name for vi in inputs]
    unknown = sorted(set(named) - set(names) - skip)
    if unknown:
        raise ConversionError(
            f"--input-shape names {', '.join(unknown)}, not an input of the model ({', '.join(names)})"
        )
    for idx, vi in enumerate(inputs):
        dims = vi.type.tensor_type.shape.dim
        want = named.get(vi.name, first if idx == 0 else None)
        flag = f"--input-shape {vi.name}=" if len(inputs) > 1 else "--input-shape "
        if want is not None:
            if len(want) != len(dims):
                raise ConversionError(f"{flag}{','.join(map(str, want))} has {len(want)} dimensions but input "
                                      f"{vi.name!r} has {len(dims)}")  # fmt: skip
            for d, w in zip(dims, want, strict=True):
                if d.HasField("dim_value") and d.dim_value != w:
                    raise ConversionError(f"{flag}{','.join(map(str, want))} does not fit input {vi.name!r} "
                                          f"({[x.dim_value or x.dim_param or '?' for x in dims]})")  # fmt: skip
                d.ClearField("dim_param")
                d.dim_value = int(w)
            continue
        for pos, d in enumerate(dims):
            if not d.HasField("dim_value"):
                if pos != 0:
                    shown = ",".join(str(x.dim_value) if x.HasField("dim_value") else "N" for x in dims)
                    raise ConversionError(f"input {vi.name!r} has a dynamic dimension {pos} "
                                          f"({d.dim_param or '?'}): give its shape with {flag}{shown}")  # fmt: skip
                d.ClearField("dim_param")
                d.dim_value = 1
    return model


def set_constants(model, constants: Mapping[str, Sequence[float]]):  # type: ignore[no-untyped-def]
    """Constant inputs -> initializers of the input's dtype and shape (one value fills the shape)."""
    from onnx import helper, numpy_helper

    by_name = {vi.name: vi for vi in _graph_inputs(model)}
    for name, values in constants.items():
        vi = by_name.get(name)
        if vi is None:
            raise ConversionError(f"--const {name}: the model has no input {name!r} (inputs: {', '.join(by_name)})")
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
        arr = np.asarray(values, dtype=np.float64)
        size = int(np.prod(dims)) if dims else 1
        if arr.size == 1:
            arr = np.full(dims, arr.item())
        elif arr.size != size:
            raise ConversionError(f"--const {name}: {arr.size} values for an input of shape {dims} ({size} values)")
        model.graph.initializer.append(numpy_helper.from_array(arr.reshape(dims).astype(dtype), name))
        model.graph.input.remove(vi)
    return model


def _constants(graph) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in graph.initializer}


def _static_shapes(model) -> dict[str, tuple[int, ...]]:  # type: ignore[no-untyped-def]
    out = {}
    g = model.graph
    for vi in (*g.input, *g.value_info, *g.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            if all(d.HasField("dim_value") for d in dims):
                out[vi.name] = tuple(d.dim_value for d in dims)
    return out


def _evaluate(node, feeds: dict[str, np.ndarray], opset: list) -> list[np.ndarray] | None:  # type: ignore[no-untyped-def]
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(feeds[n].dtype), feeds[n].shape)
           for n in dict.fromkeys(i for i in node.input if i)]  # fmt: skip
    outs = [helper.make_empty_tensor_value_info(o) for o in node.output]
    g = helper.make_graph([node], "fold", ins, outs)
    try:
        evaluator = ReferenceEvaluator(helper.make_model(g, opset_imports=opset))
        res = evaluator.run(None, {i.name: feeds[i.name] for i in ins})
    except Exception as exc:  # the reference evaluator raises whatever the op implementation raises
        log.debug("cannot fold %s %s: %s", node.op_type, node.name, exc)
        return None
    return [np.asarray(r) for r in res]


def _inline_if(graph, node, cond: bool) -> None:  # type: ignore[no-untyped-def]
    """Replace ``node`` (an If) by the nodes of the branch taken, its outputs renamed to the If's."""
    from onnx import helper

    branch = next(a.g for a in node.attribute if a.name == ("then_branch" if cond else "else_branch"))
    rename = {o.name: want for o, want in zip(branch.output, node.output, strict=True)}
    pos = list(graph.node).index(node)
    graph.node.remove(node)
    new_nodes = []
    for init in branch.initializer:
        graph.initializer.append(init)
    for n in branch.node:
        c = type(n)()
        c.CopyFrom(n)
        for i, o in enumerate(c.output):
            c.output[i] = rename.get(o, o)
        new_nodes.append(c)
    for src, dst in rename.items():  # a branch output that is an outer name or an initializer: copy it through
        if not any(dst in n.output for n in new_nodes):
            new_nodes.append(helper.make_node("Identity", [src], [dst], name=f"{node.name}_{dst}_identity"))
    for k, n in enumerate(new_nodes):
        graph.node.insert(pos + k, n)


def _fold_once(model) -> bool:  # type: ignore[no-untyped-def]
    from onnx import numpy_helper

    g = model.graph
    consts, shapes, changed = _constants(g), _static_shapes(model), False
    for node in list(g.node):
        if node.op_type == "If" and node.input[0] in consts:
            _inline_if(g, node, bool(np.asarray(consts[node.input[0]]).ravel()[0]))
            return True
        if node.op_type == "Shape" and node.input[0] in shapes and len(node.attribute) == 0:
            value: list[np.ndarray] | None = [np.asarray(shapes[node.input[0]], dtype=np.int64)]
        elif node.op_type in _SKIP or node.domain not in ("", "ai.onnx"):
            continue
        elif all((not i) or i in consts for i in node.input):
            value = _evaluate(node, {i: consts[i] for i in node.input if i}, list(model.opset_import))
        else:
            continue
        if value is None or any(v.size > _MAX_FOLD_ELEMENTS for v in value):
            continue
        g.node.remove(node)
        for name, v in zip(node.output, value, strict=True):
            g.initializer.append(numpy_helper.from_array(v, name))
            consts[name] = v
        changed = True
    return changed


def _prune(model) -> None:  # type: ignore[no-untyped-def]
    """Drop nodes and initializers no graph output depends on."""
    g = model.graph
    needed = {o.name for o in g.output}
    keep = []
    for node in reversed(list(g.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
            for a in node.attribute:  # names a subgraph reads from the outer scope
                if a.g is not None and a.g.node:
                    needed.update(i for n in a.g.node for i in n.input)
    for node in list(g.node):
        if node not in keep:
            g.node.remove(node)
    for init in list(g.initializer):
        if init.name not in needed:
            g.initializer.remove(init)
    live = {i.name for i in g.initializer} | {o for n in g.node for o in n.output} | {i.name for i in g.input}
    for vi in list(g.value_info):
        if vi.name not in live:
            g.value_info.remove(vi)


def fold(model, first: Sequence[int] | None, named: Mapping[str, Sequence[int]],  # type: ignore[no-untyped-def]
         constants: Mapping[str, Sequence[float]]):  # fmt: skip
    """Static shapes and constants into the graph, then fold until nothing changes (see the module docstring)."""
    import onnx

    model = set_shapes(model, first, named, set(constants))
    if not constants and not named:
        return model
    model = set_constants(model, constants)
    for _ in range(_MAX_PASSES):
        try:
            model = onnx.shape_inference.infer_shapes(model)
        except Exception as exc:  # best effort, as for loading
            log.debug("shape inference failed while folding: %s", exc)
        if not _fold_once(model):
            break
    _prune(model)
    del model.graph.value_info[:]  # stale after folding; inferred again by the caller
    return model
