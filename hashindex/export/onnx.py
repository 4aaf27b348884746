"""Export hash functions to ONNX files that follow the contract of ARCHITECTURE.md §3.

* :func:`export_model`: a torch module mapping ``features [N, D]`` or ``images [N, 3, H, W]`` to
  the continuous code ``h [N, K]``. Traced with ``torch.onnx.export(dynamo=True)`` (the
  torch.export-based exporter, the default since torch 2.9; it works offline and, with its
  optimizer pass, gives a clean graph: Gemm/Tanh for an MLP head, BatchNorm folded into Conv).
  ``dynamo=False`` selects the deprecated TorchScript exporter, which gives the same graph.
* :func:`export_linear_hasher`: the training-free hashers (``h = x @ W.T + b``), built directly
  with ``onnx.helper``; needs no torch.
* :func:`fuse_backbone_and_head`: one graph ``images -> backbone -> L2 norm -> features ->
  head -> codes, embedding`` with ``onnx.compose``.

All three append the same in-graph packing tail (:func:`hashindex.export.graph.code_packing_nodes`)
so ``codes`` come out as FAISS-ordered uint8 bytes, write the ``hashindex.*`` metadata, run
``onnx.checker`` (full check, with shape inference) and write the file atomically.
torch is imported only inside :func:`export_model`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hashindex.core.codes import binarize
from hashindex.core.errors import InputError, NotFittedError
from hashindex.core.io import atomic_write_bytes
from hashindex.serving.hashers import RESIDUAL_ROUNDS, LinearHasher
from hashindex.core.onnx_contract import EMBEDDING, BackboneInfo, InputSpec, ModelMetadata, TrainingInfo
from hashindex.export.graph import (
    OPSET,
    add_code_outputs,
    data_inputs,
    finalize_model,
    fuse_models,
    make_linear_hasher_model,
    require_onnx,
)
from hashindex.core.preprocess import FACE_PREPROCESSING, ImagePreprocessing

if TYPE_CHECKING:
    import onnx
    import torch

__all__ = [
    "InputSpec",
    "TrainingInfo",
    "ModelMetadata",
    "export_model",
    "export_linear_hasher",
    "fuse_backbone_and_head",
    "save_model",
    "fragile_rows",
    "read_metadata",
]


def fragile_rows(h: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """Indices of rows of ``h [N, K]`` with some ``|h_i| < tol``.

    Their bits can legitimately differ between runtimes (float rounding near the threshold),
    so byte-exact comparisons between implementations must exclude (and report) them.
    """
    return np.flatnonzero((np.abs(np.asarray(h)) < tol).any(axis=1))


def save_model(model: "onnx.ModelProto", path: str | os.PathLike) -> None:
    """``onnx.checker`` (full check) then write to a temporary sibling and rename into place."""
    onnx = require_onnx()
    onnx.checker.check_model(model, full_check=True)
    atomic_write_bytes(path, model.SerializeToString())


def read_metadata(path: str | os.PathLike) -> ModelMetadata:
    """The ``hashindex.*`` metadata of an ONNX file (IndexFormatError when absent or foreign)."""
    model = require_onnx().load(os.fspath(path), load_external_data=False)
    return ModelMetadata.from_props({p.key: p.value for p in model.metadata_props}, source=str(path))


def _torch_to_onnx(model: "torch.nn.Module", example: "torch.Tensor", input_name: str, dynamo: bool) -> "onnx.ModelProto":
    """Trace ``model`` into an ONNX graph ``input_name [N, ...] -> embedding [N, K]``, N dynamic."""
    import torch

    if dynamo:
        # the exporter logs one line per torchvision op it cannot register; torchvision is
        # optional here, and the messages only alarm users
        logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            program = torch.onnx.export(
                model, (example,), None, dynamo=True, opset_version=OPSET, input_names=[input_name],
                output_names=[EMBEDDING], dynamic_shapes=({0: torch.export.Dim.DYNAMIC},), verbose=False,
            )
        return program.model_proto
    buf = io.BytesIO()
    torch.onnx.export(
        model, (example,), buf, dynamo=False, opset_version=OPSET, input_names=[input_name],
        output_names=[EMBEDDING], dynamic_axes={input_name: {0: "N"}, EMBEDDING: {0: "N"}},
    )
    return require_onnx().load_from_string(buf.getvalue())


def _run_onnx(model: "onnx.ModelProto", x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    codes, embedding = session.run(["codes", EMBEDDING], {session.get_inputs()[0].name: x})
    return codes, embedding


def export_model(
    model: "torch.nn.Module",
    path: str | os.PathLike,
    input_spec: InputSpec,
    training: TrainingInfo,
    *,
    dynamo: bool = True,
    verify: bool = True,
    atol: float = 1e-4,
) -> ModelMetadata:
    """Export a torch module ``x -> h [N, K]`` with ``codes`` and ``embedding`` outputs.

    Args:
        model: returns the continuous code h (e.g. tanh outputs); bit i = ``h_i > 0``.
        path: output ``.onnx`` file.
        input_spec: ``InputSpec.features(D)`` or ``InputSpec.images(preprocessing)``.
        training: loss, data and date recorded in the metadata.
        dynamo: use the torch.export-based exporter (default) or the legacy TorchScript one.
        verify: run the exported graph with onnxruntime on a random batch and compare with
            torch (``embedding`` within ``atol``; ``codes`` equal to packing that embedding).

    Returns the metadata written. The module is put in eval mode for tracing and restored.
    """
    import torch

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, *input_spec.sample_shape, generator=generator).to(device)
    was_training = model.training
    model.eval()
    try:
        try:
            with torch.no_grad():
                h = model(example)
        except RuntimeError as e:
            raise InputError(f"model fails on an input of shape {tuple(example.shape)} from {input_spec}: {e}") from e
        if not isinstance(h, torch.Tensor) or h.ndim != 2 or h.shape[0] != 2:
            raise InputError(f"model must return the continuous code h [N, K]; got {type(h).__name__} "
                             f"{tuple(h.shape) if isinstance(h, torch.Tensor) else ''}")
        metadata = ModelMetadata(bits=int(h.shape[1]), input=input_spec, training=training)
        proto = _torch_to_onnx(model, example, input_spec.name, dynamo)
    finally:
        model.train(was_training)
    proto = finalize_model(add_code_outputs(proto, metadata.bits), metadata)
    if verify:
        codes, embedding = _run_onnx(proto, example.cpu().numpy())
        reference = h.cpu().numpy()
        err = float(np.abs(embedding - reference).max())
        if err > atol:
            raise RuntimeError(f"exported graph differs from the torch model: max |dh| = {err:.3g} > {atol}")
        if not np.array_equal(codes, binarize(embedding)):
            raise RuntimeError("exported graph packs codes differently from hashindex.core.codes.binarize")
    save_model(proto, path)
    return metadata


def export_linear_hasher(
    hasher: LinearHasher,
    path: str | os.PathLike,
    training: TrainingInfo | None = None,
    note: str | None = None,
) -> ModelMetadata:
    """Export a fitted :class:`~hashindex.serving.hashers.LinearHasher` (sign / pca / itq /
    residual: its stages run in the graph, and ``hashindex.stages`` says so); no torch.

    ``note`` describes the expected features (recorded as the input's preprocessing).
    """
    if not hasher.is_fitted:
        raise NotFittedError(f"{hasher.kind} hasher is not fitted: call fit(features) before exporting")
    if training is None:
        training = TrainingInfo(loss=f"none ({hasher.kind} projection fitted without a loss)", data="unspecified")
    metadata = ModelMetadata(bits=hasher.bits, input=InputSpec.features(hasher.dim, note), training=training,
                             stages=hasher.stages)  # fmt: skip
    save_model(make_linear_hasher_model(hasher.weight, hasher.bias, metadata, hasher.stages, RESIDUAL_ROUNDS), path)
    return metadata


def fuse_backbone_and_head(
    backbone_onnx: str | os.PathLike,
    head_onnx: str | os.PathLike,
    out_path: str | os.PathLike,
    preprocessing: ImagePreprocessing = FACE_PREPROCESSING,
    backbone_name: str | None = None,
) -> ModelMetadata:
    """One model ``images [N,3,H,W] -> codes, embedding, features`` (see ARCHITECTURE.md §3).

    Args:
        backbone_onnx: feature extractor, one image input ``[N, 3, H, W]`` and one ``[N, D]``
            output (e.g. MobileFaceNet.onnx, opset 9: converted to the common opset).
        head_onnx: a hashindex model over ``features [N, D]`` (from :func:`export_model` or
            :func:`export_linear_hasher`); its bits and training info carry over.
        out_path: the fused ``.onnx`` file.
        preprocessing: what the images must go through; recorded in ``hashindex.input``.
        backbone_name: recorded in ``hashindex.backbone`` (default: the file name).

    The backbone output is L2-normalised in the graph and returned as ``features``, the
    full-precision vector for reranking.
    """
    onnx = require_onnx()
    raw = Path(backbone_onnx).read_bytes()
    backbone = onnx.load_from_string(raw)
    head = onnx.load(os.fspath(head_onnx))
    head_meta = ModelMetadata.from_props({p.key: p.value for p in head.metadata_props}, source=str(head_onnx))
    if head_meta.input.name != "features":
        raise InputError(f"{head_onnx}: the head must take 'features', it takes '{head_meta.input.name}'")
    dims = [[d.dim_value for d in v.type.tensor_type.shape.dim] for v in (data_inputs(backbone.graph)[0], backbone.graph.output[0])]
    image_dims, feature_dims = dims
    if len(image_dims) != 4 or tuple(image_dims[1:]) != (3, *preprocessing.size):
        raise InputError(f"backbone input {image_dims[1:]} does not match preprocessing (3, {preprocessing.size})")
    if len(feature_dims) != 2 or feature_dims[1] != head_meta.input.sample_shape[0]:
        raise InputError(f"backbone output dim {feature_dims[1:]} != head input dim {head_meta.input.sample_shape[0]}")
    metadata = ModelMetadata(
        bits=head_meta.bits,
        input=InputSpec.images(preprocessing),
        training=head_meta.training,
        backbone=BackboneInfo(backbone_name or Path(backbone_onnx).name, hashlib.sha256(raw).hexdigest(), feature_dims[1]),
    )
    save_model(fuse_models(backbone, head, metadata), out_path)
    return metadata


def export_model_dir(model_dir: str | os.PathLike, out_path: str | os.PathLike, data: str | None = None) -> ModelMetadata:
    """Export a trained model directory (``hashindex train --out DIR``) to ONNX.

    The training loss and date go into ``hashindex.training``; ``data`` names the training set
    when the directory does not record it.
    """
    from hashindex.training.checkpoints import load_checkpoint

    model, config, _ = load_checkpoint(model_dir)
    loss = config.loss if config is not None else "unknown"
    return export_model(model, out_path, model.input_spec, TrainingInfo(loss=loss, data=str(data or model_dir)))
