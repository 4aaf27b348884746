"""Export an image hashing network to the ONNX contract (ARCHITECTURE.md §3), with features.

An exported image model is always *fused*: ``images [N, 3, H, W] -> codes, embedding,
features``, so :meth:`HashIndex.add_images` / ``search_images`` get the codes and the reranking
features from one run.

* Without a teacher, ``features`` is the network's own L2-normalised backbone output.
* With a teacher (the ONNX face model the student was distilled from), ``features`` is the
  teacher's L2-normalised output: the student's graph and the teacher's run side by side on
  the same ``images`` input (both take the same preprocessing: the student resizes inside its
  graph, :attr:`ImageHashNetConfig.work_size`). ``hashindex.backbone`` records the teacher.

A model directory whose start was shipped with a teacher (``metrics.json`` ``shipped:
"start"``) holds an ITQ :class:`HashHead` over the teacher's features; it is exported as
teacher -> head (:func:`hashindex.export.onnx.fuse_backbone_and_head`).
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hashindex.core.codes import binarize
from hashindex.core.errors import InputError
from hashindex.core.onnx_contract import CODES, EMBEDDING, FEATURES, BackboneInfo, ModelMetadata, TrainingInfo
from hashindex.export.graph import (
    OPSET,
    _rename_value,
    add_code_outputs,
    data_inputs,
    finalize_model,
    l2_normalize_nodes,
    require_onnx,
    to_common_version,
)
from hashindex.export.onnx import export_model, fuse_backbone_and_head, save_model

if TYPE_CHECKING:
    import onnx
    import torch


def _student_graph(model, with_features: bool) -> "onnx.ModelProto":
    """TorchScript-export ``images -> embedding (, features)`` of an ImageHashNet."""
    import torch
    from torch.nn import functional as F

    class _Both(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            b = self.net.backbone_features(x)
            return torch.tanh(self.net.hash_fc(b)), F.normalize(b, dim=1)

    module = _Both(model) if with_features else model
    outputs = [EMBEDDING, FEATURES] if with_features else [EMBEDDING]
    example = torch.randn(2, *model.input_spec.sample_shape, generator=torch.Generator().manual_seed(0))
    buf = io.BytesIO()
    was = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deprecated, still fine here
            torch.onnx.export(
                module, (example,), buf, dynamo=False, opset_version=OPSET, input_names=["images"],
                output_names=outputs, dynamic_axes={"images": {0: "N"}, **{o: {0: "N"} for o in outputs}},
            )
    finally:
        model.train(was)
    return require_onnx().load_from_string(buf.getvalue())


def _weights_sha256(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.backbone.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _with_teacher(student: "onnx.ModelProto", teacher: "onnx.ModelProto", feature_dim: int) -> "onnx.ModelProto":
    """Teacher and student side by side on one ``images`` input; the teacher gives ``features``."""
    onnx = require_onnx()
    compose = onnx.compose
    t = compose.add_prefix(to_common_version(teacher), "teacher/", rename_inputs=False, rename_outputs=False)
    if len(data_inputs(t.graph)) != 1 or len(t.graph.output) != 1:
        raise InputError("the teacher must have exactly one (image) input and one output")
    _rename_value(t.graph, data_inputs(t.graph)[0].name, "images")
    nodes, inits = l2_normalize_nodes(t.graph.output[0].name, FEATURES, prefix="teacher/l2norm/")
    t.graph.node.extend(nodes)
    t.graph.node.append(onnx.helper.make_node("Identity", ["images"], ["student_images"], name="teacher/pass_images"))
    t.graph.initializer.extend(inits)
    del t.graph.output[:]
    info = onnx.helper.make_tensor_value_info
    t.graph.output.extend([info(FEATURES, onnx.TensorProto.FLOAT, ["N", feature_dim]),
                           info("student_images", onnx.TensorProto.FLOAT, list(_dims(data_inputs(t.graph)[0])))])
    s = compose.add_prefix(to_common_version(student), "student/", rename_inputs=False, rename_outputs=False)
    _rename_value(s.graph, "images", "student_images")
    del t.metadata_props[:], s.metadata_props[:]
    fused = compose.merge_models(t, s, io_map=[("student_images", "student_images")], outputs=[CODES, EMBEDDING, FEATURES],
                                 producer_name="hashindex", name="student_codes_teacher_features")
    order = {CODES: 0, EMBEDDING: 1, FEATURES: 2}
    outputs = sorted(fused.graph.output, key=lambda o: order[o.name])
    del fused.graph.output[:]
    fused.graph.output.extend(outputs)
    return fused


def _dims(value) -> list:
    return [d.dim_param or d.dim_value or "N" for d in value.type.tensor_type.shape.dim]


def export_image_model(
    model,
    path: str | os.PathLike,
    training: TrainingInfo,
    teacher: str | os.PathLike | None = None,
    verify: bool = True,
    atol: float = 1e-3,
) -> ModelMetadata:
    """Export an :class:`~hashindex.training.models.ImageHashNet` as a fused image model.

    Args:
        model: the network (its ``input_spec`` is the graph input).
        path: the ``.onnx`` file.
        training: loss, data, date for ``hashindex.training``.
        teacher: ONNX model whose features become the ``features`` output (module docstring);
            it must take the same images (size checked).
        verify: compare onnxruntime with torch on a random batch (embedding within ``atol``,
            codes equal to packing it, own features within ``atol``).
    """
    import torch

    onnx = require_onnx()
    bits, spec = model.bits, model.input_spec
    student = _student_graph(model, with_features=teacher is None)
    student = add_code_outputs(student, bits)
    if teacher is None:
        backbone = BackboneInfo(f"ImageHashNet {model.config.backbone} width {model.config.width}", _weights_sha256(model),
                                model.in_dim)
        proto = student
    else:
        raw = Path(teacher).read_bytes()
        t = onnx.load_from_string(raw)
        t_in = data_inputs(t.graph)
        if len(t_in) != 1 or [d.dim_value for d in t_in[0].type.tensor_type.shape.dim][1:] != list(spec.sample_shape):
            raise InputError(f"teacher {teacher} does not take the student's images {list(spec.sample_shape)}")
        out_dims = [d.dim_value for d in t.graph.output[0].type.tensor_type.shape.dim]
        if len(out_dims) != 2 or out_dims[1] <= 0:
            raise InputError(f"teacher {teacher}: output is {out_dims}, expected [N, D]")
        backbone = BackboneInfo(Path(teacher).name, hashlib.sha256(raw).hexdigest(), out_dims[1])
        proto = _with_teacher(student, t, out_dims[1])
    metadata = ModelMetadata(bits=bits, input=spec, training=training, backbone=backbone)
    proto = finalize_model(proto, metadata)
    if verify:
        import onnxruntime as ort

        x = torch.randn(3, *spec.sample_shape, generator=torch.Generator().manual_seed(1))
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        codes, emb, feats = sess.run([CODES, EMBEDDING, FEATURES], {"images": x.numpy()})
        was = model.training
        model.eval()
        with torch.no_grad():
            ref, own = model(x).numpy(), model.features(x).numpy()
        model.train(was)
        if float(np.abs(emb - ref).max()) > atol:
            raise RuntimeError(f"exported graph differs from the torch model: max |dh| = {np.abs(emb - ref).max():.3g}")
        if not np.array_equal(codes, binarize(emb)):
            raise RuntimeError("exported graph packs codes differently from hashindex.core.codes.binarize")
        if teacher is None and float(np.abs(feats - own).max()) > atol:
            raise RuntimeError("exported features differ from the torch model's")
        if not np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-4):
            raise RuntimeError("exported features are not L2-normalised")
    save_model(proto, path)
    return metadata


def export_image_model_dir(model_dir: str | os.PathLike, out_path: str | os.PathLike, data: str | None = None) -> ModelMetadata:
    """Export a model directory written by :func:`hashindex.training.image_training.train_images`.

    A learned :class:`ImageHashNet` goes through :func:`export_image_model` (with the run's
    teacher, when it had one); a shipped start with a teacher is teacher -> ITQ head.
    """
    import tempfile

    from hashindex.core.preprocess import ImagePreprocessing
    from hashindex.training.checkpoints import load_checkpoint

    model, config, metrics = load_checkpoint(model_dir)
    teacher = metrics.get("teacher")
    loss = config.loss if config is not None else "unknown"
    shipped = metrics.get("shipped", "learned")
    data = str(data or metrics.get("images", {}).get("root") or model_dir)
    if teacher is not None and not Path(teacher).is_file():
        raise InputError(f"{model_dir}: its teacher {teacher} is missing (the exported graph runs it)")
    if model.kind == "image_hash_net":
        info = TrainingInfo(loss=f"{loss} (image training{', distilled from ' + Path(teacher).name if teacher else ''}; shipped {shipped})", data=data)
        return export_image_model(model, out_path, info, teacher)
    if model.kind == "hash_head" and teacher is not None:
        pre = ImagePreprocessing.from_dict(metrics["preprocess"])
        info = TrainingInfo(loss=f"none (ITQ start over {Path(teacher).name} features; training did not beat it on held-out identities)", data=data)
        with tempfile.TemporaryDirectory() as tmp:
            head = Path(tmp) / "head.onnx"
            export_model(model, head, model.input_spec, info, dynamo=False)
            return fuse_backbone_and_head(teacher, head, out_path, pre)
    raise InputError(f"{model_dir}: not an image model directory ({model.kind}, teacher {teacher})")


__all__ = ["export_image_model", "export_image_model_dir"]
