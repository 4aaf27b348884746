"""OnnxEncoder: run an exported hashindex model with onnxruntime (serving path: no torch, no onnx).

The model file is read once; its SHA-256 is taken from exactly the bytes handed to
onnxruntime, so an index can pin the model it was built with (ARCHITECTURE.md §4). Bits and
the input description come from the ``hashindex.*`` metadata (§3), never from guesses.

Every run is checked against the contract (§3) before its output is used: each output has one
row per input, ``embedding`` is finite (no NaN), and ``codes == packbits(embedding > 0)`` in
FAISS bit order (a few cheap integer operations per row). A model that breaks any of these
raises :class:`~hashindex.core.errors.ModelMismatchError`, so it can never put wrong or
misaligned codes into an index.

One ``InferenceSession`` serves every call: onnxruntime documents ``run`` as safe to call
concurrently, and the encoder keeps no other mutable state, so one encoder can be shared by
threads.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from hashindex.core.codes import pack_bits, pre_tanh
from hashindex.core.errors import IndexFormatError, InputError, ModelMismatchError
from hashindex.core.onnx_contract import CODES, EMBEDDING, FEATURES, ModelMetadata
from hashindex.core.preprocess import ImagePreprocessing, load_images
from hashindex.core.validation import check_features, check_positive_int


FEATURE_BATCH = 4096
"""Default rows per ``session.run`` for a model over features."""
IMAGE_BATCH = 32
"""Default images per ``session.run`` (bounded memory, and a progress bar that moves)."""


@dataclass(frozen=True)
class EncoderOutput:
    """One run of the model on ``N`` inputs.

    Attributes:
        codes: ``uint8 [N, bits/8]`` packed codes, FAISS bit order.
        embedding: ``float32 [N, bits]`` continuous code (bit i = ``embedding[:, i] > 0``).
        features: ``float32 [N, D]`` L2-normalised backbone features (fused models), else None.
    """

    codes: np.ndarray
    embedding: np.ndarray
    features: np.ndarray | None = None


def resolve_providers(providers: str | Sequence[str] = "auto") -> list[str]:
    """Execution providers for a session.

    "auto": CUDA first when this onnxruntime build offers it, then CPU; "cpu": CPU only;
    an explicit list is passed through (each must be available).
    """
    available = ort.get_available_providers()
    if isinstance(providers, str):
        if providers == "auto":
            return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        if providers == "cpu":
            return ["CPUExecutionProvider"]
        providers = [providers]
    missing = [p for p in providers if p not in available]
    if missing:
        raise InputError(f"execution providers {missing} are not available (available: {available})")
    return list(providers)


def check_images(x: np.ndarray, sample_shape: tuple[int, ...], name: str = "images") -> np.ndarray:
    """Validate an image batch ``float [N, 3, H, W]``; return contiguous float32."""
    x = np.asarray(x)
    if x.ndim != 1 + len(sample_shape):
        hint = " (pass a single image as x[None])" if x.ndim == len(sample_shape) else ""
        raise InputError(f"{name} must be {1 + len(sample_shape)}-D [N, {', '.join(map(str, sample_shape))}], got shape {x.shape}{hint}")
    if tuple(x.shape[1:]) != tuple(sample_shape):
        raise InputError(f"{name} have per-sample shape {tuple(x.shape[1:])}, the model expects {tuple(sample_shape)} (NCHW)")
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"{name} must be floating point (preprocessed), got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    finite = np.isfinite(x).all(axis=tuple(range(1, x.ndim)))
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise InputError(f"{name} contain NaN or inf (rows {bad[:5].tolist()}{'...' if bad.size > 5 else ''})")
    return x


class OnnxEncoder:
    """Encode features or images with an exported hashindex model.

    Args:
        path: ``.onnx`` file written by :mod:`hashindex.export.onnx`.
        providers: "auto" (CUDA when available, else CPU), "cpu", or a list of provider names.
        batch_size: inputs per ``session.run``; larger inputs are split (bounded memory).
            None: 4,096 feature rows, or 32 images (a batch of 4,096 face crops is 0.6 GB).
        threads: onnxruntime intra-op threads (None: onnxruntime's default).
        progress: show a tqdm bar counting inputs (it moves once per batch).
        model_bytes: the model file's content, already read (e.g. from an index directory
            opened once); ``path`` then only names it.

    Satisfies the :class:`hashindex.serving.hashers.Hasher` protocol (``bits`` and ``encode``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        providers: str | Sequence[str] = "auto",
        batch_size: int | None = None,
        threads: int | None = None,
        progress: bool = False,
        *,
        model_bytes: bytes | None = None,
    ) -> None:
        self.path = Path(path)
        if batch_size is not None:
            check_positive_int(batch_size, "batch_size")
        self.progress = progress
        if model_bytes is not None:
            raw = bytes(model_bytes)
        else:
            try:
                raw = self.path.read_bytes()
            except OSError as e:
                raise IndexFormatError(f"{self.path}: cannot read model file ({e})") from e
        self.sha256 = hashlib.sha256(raw).hexdigest()
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = check_positive_int(threads, "threads")
        try:
            self._session = ort.InferenceSession(raw, sess_options=options, providers=resolve_providers(providers))
        except InputError:
            raise
        except Exception as e:  # onnxruntime raises its own untyped errors for foreign bytes
            raise IndexFormatError(f"{self.path}: not a loadable ONNX model ({type(e).__name__}: {e})") from e
        self.metadata_props = dict(self._session.get_modelmeta().custom_metadata_map)
        self.metadata = ModelMetadata.from_props(self.metadata_props, source=str(self.path))
        self._check_graph()
        self.batch_size = batch_size or (FEATURE_BATCH if self.kind == "features" else IMAGE_BATCH)

    # -- description -----------------------------------------------------------------------
    @property
    def bits(self) -> int:
        return self.metadata.bits

    @property
    def input_name(self) -> str:
        return self.metadata.input.name

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-sample input shape: ``(D,)`` or ``(3, H, W)``."""
        return self.metadata.input.sample_shape

    @property
    def kind(self) -> str:
        """"features" (a head over embeddings) or "images"."""
        return self.metadata.input.name

    @property
    def has_features(self) -> bool:
        """Whether the model also outputs L2-normalised ``features`` (a fused model)."""
        return FEATURES in self._outputs

    @property
    def dim(self) -> int | None:
        """Feature dimension: the input's for a features model, the ``features`` output's for a
        fused model, else None."""
        if self.kind == "features":
            return self.input_shape[0]
        return self._feature_dim

    @property
    def preprocessing(self) -> ImagePreprocessing | str | None:
        return self.metadata.input.preprocessing

    @property
    def providers(self) -> list[str]:
        return self._session.get_providers()

    def __repr__(self) -> str:
        return f"OnnxEncoder({str(self.path)!r}, kind={self.kind!r}, bits={self.bits}, input_shape={self.input_shape})"

    def _check_graph(self) -> None:
        """The graph must agree with its metadata: one input, codes/embedding outputs, widths."""
        src = self.path
        inputs = self._session.get_inputs()
        if [i.name for i in inputs] != [self.input_name]:
            raise IndexFormatError(f"{src}: graph inputs {[i.name for i in inputs]} != metadata input '{self.input_name}'")
        if tuple(inputs[0].shape[1:]) != self.input_shape:
            raise IndexFormatError(f"{src}: graph input shape {inputs[0].shape} != metadata {list(self.input_shape)}")
        self._outputs = {o.name: o for o in self._session.get_outputs()}
        expected = {CODES: ("tensor(uint8)", self.bits // 8), EMBEDDING: ("tensor(float)", self.bits)}
        for name, (dtype, width) in expected.items():
            out = self._outputs.get(name)
            if out is None or out.type != dtype or out.shape[-1] != width:
                got = f"{out.type} {out.shape}" if out is not None else "missing"
                raise IndexFormatError(f"{src}: output '{name}' should be {dtype} [N, {width}], got {got}")
        self._feature_dim = None
        if FEATURES in self._outputs:
            width = self._outputs[FEATURES].shape[-1]
            if not isinstance(width, int):
                raise IndexFormatError(f"{src}: output 'features' has no static width ({width})")
            self._feature_dim = width

    # -- encoding --------------------------------------------------------------------------
    def check_input(self, x: np.ndarray) -> np.ndarray:
        """Validate a batch for this model; return contiguous float32 (InputError otherwise)."""
        if self.kind == "features":
            return check_features(x, self.input_shape[0], name="features")
        return check_images(x, self.input_shape, name="images")

    def run(self, x: np.ndarray) -> EncoderOutput:
        """All outputs for ``x`` (``[N, D]`` features or ``[N, 3, H, W]`` images)."""
        x = self.check_input(x)
        names = [CODES, EMBEDDING] + ([FEATURES] if self.has_features else [])
        n = x.shape[0]
        if n == 0:
            return EncoderOutput(
                np.empty((0, self.bits // 8), np.uint8),
                np.empty((0, self.bits), np.float32),
                np.empty((0, self._feature_dim), np.float32) if self.has_features else None,
            )
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            unit = "image" if self.kind == "images" else "row"
            bar = tqdm(total=n, desc=f"encoding {self.kind}", unit=unit)
        parts = []
        try:
            for s in range(0, n, self.batch_size):
                batch = x[s : s + self.batch_size]
                parts.append(self._check_outputs(self._run_session(names, batch, s, n), batch.shape[0]))
                if bar is not None:
                    bar.update(batch.shape[0])
        finally:
            if bar is not None:
                bar.close()
        merged = [np.concatenate(p) if len(parts) > 1 else p[0] for p in zip(*parts)]
        return EncoderOutput(*merged)

    def _run_session(self, names: list[str], batch: np.ndarray, start: int, n: int) -> list:
        """``session.run`` on one checked batch; a failure inside onnxruntime (the graph cannot
        run on valid input: a bad Reshape, an operator error) is the model's fault, so it is a
        ModelMismatchError naming the model, not onnxruntime's own exception type."""
        try:
            return self._session.run(names, {self.input_name: batch})
        except Exception as e:  # onnxruntime's Fail / RuntimeException / InvalidArgument are untyped here
            detail = " ".join(str(e).split())
            if len(detail) > 300:
                detail = detail[:300] + "..."
            rows = f"inputs {start}..{start + batch.shape[0] - 1} of {n}" if n > batch.shape[0] else f"{n} inputs"
            raise ModelMismatchError(
                f"{self.path}: the model failed inside onnxruntime on {rows} of valid shape "
                f"{list(batch.shape[1:])} ({type(e).__name__}: {detail})"
            ) from e

    def _check_outputs(self, outputs: list, n: int) -> list:
        """One run's outputs against the contract: rows, widths, dtypes, finite embedding, and
        codes that are exactly the packed signs of the embedding, unless the model says its codes
        are residual (``hashindex.stages``) (ModelMismatchError otherwise)."""
        codes, embedding = outputs[0], outputs[1]
        widths = [(CODES, np.uint8, self.bits // 8), (EMBEDDING, np.float32, self.bits)]
        if self.has_features:
            widths.append((FEATURES, np.float32, self._feature_dim))
        for (name, dtype, width), out in zip(widths, outputs):
            out = np.asarray(out)
            if out.shape != (n, width) or out.dtype != dtype:
                raise ModelMismatchError(
                    f"{self.path}: output '{name}' is {out.dtype} {out.shape} for {n} inputs, "
                    f"the contract is {np.dtype(dtype)} {(n, width)} (one row per input)"
                )
        if np.isnan(embedding).any():
            rows = np.flatnonzero(np.isnan(embedding).any(axis=1))
            raise ModelMismatchError(f"{self.path}: output '{EMBEDDING}' holds NaN (rows {rows[:5].tolist()} of the batch)")
        if self.has_features and not np.isfinite(outputs[2]).all():
            rows = np.flatnonzero(~np.isfinite(outputs[2]).all(axis=1))
            raise ModelMismatchError(f"{self.path}: output '{FEATURES}' holds NaN or inf (rows {rows[:5].tolist()} of the batch)")
        if self.metadata.stages:  # residual codes are not the embedding's signs: widths checked above
            return outputs
        wrong = (codes != pack_bits(embedding > 0)).any(axis=1)
        if wrong.any():
            raise ModelMismatchError(
                f"{self.path}: output '{CODES}' is not packbits(embedding > 0) in FAISS bit order "
                f"(rows {np.flatnonzero(wrong)[:5].tolist()} of the batch): the model breaks the code contract"
            )
        return outputs

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Packed codes ``uint8 [N, bits/8]`` (the Hasher protocol)."""
        return self.run(x).codes

    def project(self, x: np.ndarray) -> np.ndarray:
        """Continuous projection ``float32 [N, K]`` whose sign is the code (asymmetric ranking)."""
        return pre_tanh(self.run(x).embedding)

    def load_images(self, paths: Sequence[str | os.PathLike], progress: bool = False) -> np.ndarray:
        """Decode and preprocess image files as this (image) model's metadata prescribes
        (``progress``: a bar counting the images decoded)."""
        if not isinstance(self.preprocessing, ImagePreprocessing):
            raise InputError(f"{self.path} takes {self.kind}, not images with a known preprocessing")
        return load_images(paths, self.preprocessing, progress)
