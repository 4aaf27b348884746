"""ONNX graph builders (``onnx.helper``) for models that follow :mod:`hashindex.core.onnx_contract`.

The packing tail that turns the continuous code into FAISS-ordered bytes, the linear-hasher
graph, L2 normalisation, backbone + head fusion. ``onnx`` is only in the ``train`` extra, so it
is imported inside the functions (:func:`require_onnx`).

Packing inside the graph (bit i of the code = bit ``i % 8``, LSB first, of byte ``i // 8``;
bit = ``h_i > 0``) is done in integer arithmetic so that every runtime and execution provider
gives the same bytes::

    Greater(h, 0) -> Cast int32 -> Reshape [N, K/8, 8] -> Mul [1, 2, 4, ..., 128]
    -> ReduceSum(axis=-1) -> Cast uint8
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from hashindex.core.bits import check_bits
from hashindex.core.errors import InputError
from hashindex.core.onnx_contract import (  # noqa: F401  (re-exported: the old hashindex.onnx_graph path)
    BATCH_DIM,
    CODES,
    EMBEDDING,
    FEATURES,
    FORMAT_VERSION,
    BackboneInfo,
    InputSpec,
    ModelMetadata,
    TrainingInfo,
)

if TYPE_CHECKING:  # onnx is a train-extra dependency
    import onnx

OPSET = 18
"""ONNX opset of every exported graph (with IR 9: onnxruntime >= 1.15, onnxruntime-node alike)."""
IR_VERSION = 9
"""ONNX IR version written; older than the onnx package's default so older runtimes load it."""


def require_onnx():
    """The onnx module, or an ImportError that says which extra provides it."""
    try:
        import onnx
    except ImportError as e:
        raise ImportError("building ONNX graphs needs the onnx package: pip install 'hashindex[train]'") from e
    return onnx


def _tensor_info(name: str, elem_type: int, shape):
    return require_onnx().helper.make_tensor_value_info(name, elem_type, list(shape))


def code_packing_nodes(bits: int, h: str = EMBEDDING, codes: str = CODES, prefix: str = "pack/"):
    """Nodes + initializers computing ``codes uint8 [N, bits/8]`` from ``h float [N, bits]``.

    Returns ``(nodes, initializers)``; see the module docstring for the arithmetic.
    """
    onnx = require_onnx()
    make_node, const = onnx.helper.make_node, onnx.numpy_helper.from_array
    check_bits(bits)
    p = prefix
    inits = [
        const(np.zeros((), np.float32), p + "zero"),
        # 0 in a Reshape target copies the input's dim: keeps N dynamic (and N = 0 legal).
        const(np.array([0, bits // 8, 8], np.int64), p + "grouped_shape"),
        const(1 << np.arange(8, dtype=np.int32), p + "bit_weights"),
        const(np.array([-1], np.int64), p + "last_axis"),
    ]
    nodes = [
        make_node("Greater", [h, p + "zero"], [p + "is_positive"], name=p + "greater"),
        make_node("Cast", [p + "is_positive"], [p + "bits"], to=onnx.TensorProto.INT32, name=p + "cast_bits"),
        make_node("Reshape", [p + "bits", p + "grouped_shape"], [p + "grouped"], name=p + "group_bytes"),
        make_node("Mul", [p + "grouped", p + "bit_weights"], [p + "weighted"], name=p + "weigh_bits"),
        make_node("ReduceSum", [p + "weighted", p + "last_axis"], [p + "byte_values"], keepdims=0, name=p + "sum_bits"),
        make_node("Cast", [p + "byte_values"], [codes], to=onnx.TensorProto.UINT8, name=p + "cast_bytes"),
    ]
    return nodes, inits


def add_code_outputs(model: "onnx.ModelProto", bits: int, signs: str = EMBEDDING) -> "onnx.ModelProto":
    """Append the packing tail to a model whose graph outputs ``embedding [N, bits]``.

    The outputs become ``codes`` then ``embedding`` (then any others, e.g. ``features``); the
    codes are the signs of ``signs`` (a tensor ``[N, bits]`` of the graph: the embedding unless
    the bits are not its signs, as for a residual hasher). Modifies and returns ``model``.
    """
    float_t, uint8_t = require_onnx().TensorProto.FLOAT, require_onnx().TensorProto.UINT8
    graph = model.graph
    names = [o.name for o in graph.output]
    if EMBEDDING not in names:
        raise InputError(f"graph has no '{EMBEDDING}' output (outputs: {names})")
    if CODES in names:
        raise InputError("graph already has a 'codes' output")
    nodes, inits = code_packing_nodes(bits, h=signs)
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    others = [o for o in graph.output if o.name != EMBEDDING]
    outputs = [_tensor_info(CODES, uint8_t, [BATCH_DIM, bits // 8]), _tensor_info(EMBEDDING, float_t, [BATCH_DIM, bits])]
    del graph.output[:]
    graph.output.extend([*outputs, *others])
    return model


def finalize_model(model: "onnx.ModelProto", metadata: ModelMetadata) -> "onnx.ModelProto":
    """Name the batch axis ``N`` on every graph input/output, pin IR version, write metadata.

    Checks that the graph's input matches ``metadata.input``. Modifies and returns ``model``.
    """
    graph = model.graph
    inputs = data_inputs(graph)
    if [i.name for i in inputs] != [metadata.input.name]:
        raise InputError(f"graph inputs {[i.name for i in inputs]} != ['{metadata.input.name}']")
    in_dims = inputs[0].type.tensor_type.shape.dim
    static = tuple(d.dim_value if d.HasField("dim_value") else None for d in in_dims[1:])
    if len(in_dims) != 1 + len(metadata.input.sample_shape) or static != metadata.input.sample_shape:
        raise InputError(f"graph input shape {static} != metadata sample shape {metadata.input.sample_shape}")
    for value in [*inputs, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = BATCH_DIM
    model.ir_version = IR_VERSION
    del model.metadata_props[:]
    require_onnx().helper.set_model_props(model, metadata.to_props())
    model.producer_name = "hashindex"
    return model


def data_inputs(graph) -> list:
    """Graph inputs that are not initializers (IR < 4 models list weights as inputs too)."""
    init_names = {t.name for t in graph.initializer}
    return [i for i in graph.input if i.name not in init_names]


def residual_sign_nodes(stages: tuple[int, ...], gram: np.ndarray, rounds: int, h: str, signs: str, prefix: str = "residual/"):
    """Nodes + initializers computing a residual hasher's signs ``float [N, K]`` from ``h`` (as
    :func:`hashindex.serving.hashers.residual_signs`: stage i is the sign of ``h_i - sum_j
    gram_ij s_j`` over the stages j already coded, then ``rounds`` passes over all others)."""
    onnx = require_onnx()
    make_node, const = onnx.helper.make_node, onnx.numpy_helper.from_array
    p, bounds = prefix, np.cumsum((0, *stages))
    cuts = list(zip(bounds[:-1], bounds[1:]))
    inits = [const(np.array(1.0, np.float32), p + "one"), const(np.array(-1.0, np.float32), p + "minus_one"),
             const(np.zeros((), np.float32), p + "zero"), const(np.array([1], np.int64), p + "axis")]  # fmt: skip
    nodes = []
    for i, (lo, hi) in enumerate(cuts):
        inits += [const(np.array([lo], np.int64), f"{p}lo{i}"), const(np.array([hi], np.int64), f"{p}hi{i}")]
        nodes.append(make_node("Slice", [h, f"{p}lo{i}", f"{p}hi{i}", p + "axis"], [f"{p}h{i}"], name=f"{p}slice{i}"))
        for j, (jlo, jhi) in enumerate(cuts):  # gram block (j, i): used once stage j is coded (j < i, or any pass after the first)
            if j < i or (j != i and rounds > 0):
                inits.append(const(np.ascontiguousarray(gram[jlo:jhi, lo:hi], dtype=np.float32), f"{p}g{j}_{i}"))
    coded: dict[int, str] = {}
    for step in range(rounds + 1):
        for i in range(len(cuts)):
            v = f"{p}h{i}"
            for j in (j for j in coded if j != i):
                t, out = f"{p}t{step}_{i}_{j}", f"{p}v{step}_{i}_{j}"
                nodes += [make_node("MatMul", [coded[j], f"{p}g{j}_{i}"], [t], name=t),
                          make_node("Sub", [v, t], [out], name=out)]  # fmt: skip
                v = out
            pos, s = f"{p}pos{step}_{i}", f"{p}s{step}_{i}"
            nodes += [make_node("Greater", [v, p + "zero"], [pos], name=pos),
                      make_node("Where", [pos, p + "one", p + "minus_one"], [s], name=s)]  # fmt: skip
            coded[i] = s
    nodes.append(make_node("Concat", [coded[i] for i in range(len(stages))], [signs], axis=1, name=p + "concat"))
    return nodes, inits


def make_linear_hasher_model(
    weight: np.ndarray, bias: np.ndarray, metadata: ModelMetadata, stages: tuple[int, ...] = (), rounds: int = 0
) -> "onnx.ModelProto":  # fmt: skip
    """Graph for ``h = tanh(x @ W.T + b)`` (``W float32 [K, D]``, ``b [K]``) plus the packing tail.

    The tanh changes no bit; it makes ``embedding`` the bounded continuous code that
    ARCHITECTURE.md §3 promises for every model, so a consumer (e.g. asymmetric ranking,
    :func:`hashindex.core.codes.pre_tanh`) reads every exported model the same way. With
    ``stages`` (a residual hasher) the codes are :func:`residual_sign_nodes` of ``h``."""
    onnx = require_onnx()
    make_node, const = onnx.helper.make_node, onnx.numpy_helper.from_array
    weight = np.asarray(weight, np.float32)
    bias = np.asarray(bias, np.float32)
    k, d = weight.shape
    if bias.shape != (k,) or k != metadata.bits or metadata.input.sample_shape != (d,):
        raise InputError(
            f"weight {weight.shape} / bias {bias.shape} do not match bits {metadata.bits} "
            f"and input {metadata.input.sample_shape}"
        )
    graph = onnx.helper.make_graph(
        nodes=[
            make_node("MatMul", [FEATURES, "hasher/weight_t"], ["hasher/xw"], name="hasher/matmul"),
            make_node("Add", ["hasher/xw", "hasher/bias"], ["hasher/z"], name="hasher/add_bias"),
            make_node("Tanh", ["hasher/z"], [EMBEDDING], name="hasher/tanh"),
        ],
        name="linear_hasher",
        inputs=[_tensor_info(FEATURES, onnx.TensorProto.FLOAT, [BATCH_DIM, d])],
        outputs=[_tensor_info(EMBEDDING, onnx.TensorProto.FLOAT, [BATCH_DIM, k])],
        initializer=[const(np.ascontiguousarray(weight.T), "hasher/weight_t"), const(bias, "hasher/bias")],
    )
    if stages:
        nodes, inits = residual_sign_nodes(stages, weight @ weight.T, rounds, "hasher/z", "hasher/signs")
        graph.node.extend(nodes)
        graph.initializer.extend(inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)])
    return finalize_model(add_code_outputs(model, k, "hasher/signs" if stages else EMBEDDING), metadata)


def to_common_version(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """Convert the default-domain opset to :data:`OPSET` and set :data:`IR_VERSION`.

    Needed before ``onnx.compose.merge_models``, which requires equal opsets and IR versions
    (MobileFaceNet.onnx is opset 9 / IR 4). Returns a new model.
    """
    onnx = require_onnx()
    opset = {o.domain: o.version for o in model.opset_import}.get("", None)
    if opset is None or opset > OPSET:
        raise InputError(f"model opset {opset} cannot be converted to opset {OPSET}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if opset != OPSET:
        out = onnx.version_converter.convert_version(out, OPSET)
    out.ir_version = IR_VERSION
    return out


def _rename_value(graph, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.name == old:
            value.name = new


def l2_normalize_nodes(x: str, y: str, prefix: str = "l2norm/", eps: float = 1e-12):
    """``y = x / max(||x||_2, eps)`` along axis 1, as ``torch.nn.functional.normalize``."""
    onnx = require_onnx()
    make_node, const = onnx.helper.make_node, onnx.numpy_helper.from_array
    p = prefix
    inits = [const(np.array([1], np.int64), p + "axes"), const(np.array(eps, np.float32), p + "eps")]
    nodes = [
        make_node("ReduceL2", [x, p + "axes"], [p + "norm"], keepdims=1, name=p + "norm"),
        make_node("Max", [p + "norm", p + "eps"], [p + "safe_norm"], name=p + "clamp"),
        make_node("Div", [x, p + "safe_norm"], [y], name=p + "divide"),
    ]
    return nodes, inits


def fuse_models(backbone: "onnx.ModelProto", head: "onnx.ModelProto", metadata: ModelMetadata) -> "onnx.ModelProto":
    """``images -> backbone -> L2 norm -> features -> head -> codes, embedding``; outputs all three.

    ``backbone``: one 4-D image input and one ``[N, D]`` output (any names, any opset <= OPSET).
    ``head``: a hashindex model with input ``features [N, D]`` and outputs codes, embedding.
    ``onnx.compose.add_prefix`` keeps the two name spaces apart (graph I/O names are kept)
    and ``onnx.compose.merge_models`` connects ``features``.
    """
    onnx = require_onnx()
    if len(data_inputs(backbone.graph)) != 1 or len(backbone.graph.output) != 1:
        raise InputError("backbone must have exactly one (image) input and one output")
    if metadata.backbone is None:
        raise InputError("fused model metadata needs backbone info")
    bb = onnx.compose.add_prefix(to_common_version(backbone), "backbone/", rename_inputs=False, rename_outputs=False)
    _rename_value(bb.graph, data_inputs(bb.graph)[0].name, metadata.input.name)
    nodes, inits = l2_normalize_nodes(bb.graph.output[0].name, FEATURES)
    bb.graph.node.extend(nodes)
    bb.graph.initializer.extend(inits)
    del bb.graph.output[:]
    bb.graph.output.append(_tensor_info(FEATURES, onnx.TensorProto.FLOAT, [BATCH_DIM, metadata.backbone.output_dim]))

    hd = onnx.compose.add_prefix(to_common_version(head), "head/", rename_inputs=False, rename_outputs=False)
    del bb.metadata_props[:], hd.metadata_props[:]  # replaced by the fused model's own
    fused = onnx.compose.merge_models(
        bb, hd, io_map=[(FEATURES, FEATURES)], outputs=[CODES, EMBEDDING, FEATURES],
        producer_name="hashindex", name="fused_backbone_head",
    )
    order = {CODES: 0, EMBEDDING: 1, FEATURES: 2}  # merge_models lists the first graph's outputs first
    outputs = sorted(fused.graph.output, key=lambda o: order[o.name])
    del fused.graph.output[:]
    fused.graph.output.extend(outputs)
    return finalize_model(fused, metadata)
