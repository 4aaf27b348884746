"""An ONNX face model as the teacher of an image hashing network (onnxruntime; no torch).

Distillation (:mod:`hashindex.training.losses.distill`) needs, for every training image, the
float feature a strong model gives it: the student's code similarities are trained to rank
neighbours as the teacher's cosine similarities do. The teacher here is any ONNX model with
one image input ``[N, 3, H, W]`` and one output ``[N, D]`` (e.g. the LFW split's
``MobileFaceNet.onnx``: input ``x`` ``[N, 3, 112, 112]``, BGR, ``(x - 127.5) / 127.5``, i.e.
:data:`~hashindex.core.preprocess.FACE_PREPROCESSING`). Its features are computed once per
image, on the un-augmented image with the teacher's own preprocessing (the student may run at
another resolution), and L2-normalised, as the reranking features of a fused model are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from hashindex.core.errors import InputError
from hashindex.core.preprocess import FACE_PREPROCESSING, ImagePreprocessing, load_images


class OnnxTeacher:
    """Float features ``[N, D]`` of images from an ONNX model.

    Args:
        path: the ``.onnx`` file.
        preprocess: how images become the teacher's input (its size must match the model's
            input when the model fixes it).
        batch_size: images per ``session.run``.
        threads: onnxruntime intra-op threads (None: its default).

    Raises :class:`~hashindex.core.errors.InputError` naming the file when it is missing, not
    ONNX, or not an image -> ``[N, D]`` model.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        preprocess: ImagePreprocessing = FACE_PREPROCESSING,
        batch_size: int = 64,
        threads: int | None = 1,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.preprocess = preprocess
        self.batch_size = int(batch_size)
        if not self.path.is_file():
            raise InputError(f"teacher model {self.path}: no such file")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's errors are untyped
            raise InputError(f"teacher model {self.path}: not a loadable ONNX model ({type(e).__name__}: {e})") from e
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1:
            raise InputError(f"teacher model {self.path}: needs exactly one image input, has {[i.name for i in inputs]}")
        shape = inputs[0].shape
        if len(shape) != 4 or shape[1] not in (3, "3") and isinstance(shape[1], int):
            raise InputError(f"teacher model {self.path}: input {inputs[0].name} is {shape}, expected [N, 3, H, W]")
        hw = tuple(shape[2:])
        if all(isinstance(d, int) for d in hw) and hw != tuple(preprocess.size):
            raise InputError(f"teacher model {self.path}: takes {hw[0]}x{hw[1]} images, preprocessing gives {preprocess.size}")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        # declared output rank, then a probe: some exporters leave shapes unset
        if len(outputs[0].shape) not in (0, 2):
            raise InputError(f"teacher model {self.path}: output {self.output_name} is {outputs[0].shape}, expected [N, D]")
        probe = self._run(np.zeros((2, 3, *preprocess.size), np.float32))
        self.dim = int(probe.shape[1])

    def _run(self, x: np.ndarray) -> np.ndarray:
        try:
            out = self._session.run([self.output_name], {self.input_name: x})[0]
        except Exception as e:
            raise InputError(f"teacher model {self.path}: fails on a {tuple(x.shape)} batch ({type(e).__name__}: {e})") from e
        out = np.asarray(out)
        if out.ndim != 2 or out.shape[0] != x.shape[0] or out.shape[1] < 1:
            raise InputError(
                f"teacher model {self.path}: output {self.output_name} is {list(out.shape)} for {x.shape[0]} images, expected [N, D]"
            )
        return out.astype(np.float32, copy=False)

    def features(self, paths: Sequence[str | os.PathLike], progress: bool = False) -> np.ndarray:
        """L2-normalised teacher features ``float32 [len(paths), D]``."""
        from tqdm.auto import tqdm

        out = np.empty((len(paths), self.dim), np.float32)
        starts = range(0, len(paths), self.batch_size)
        for s in tqdm(starts, desc="teacher features", disable=not progress, leave=False):
            out[s : s + self.batch_size] = self._run(load_images(paths[s : s + self.batch_size], self.preprocess))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)
