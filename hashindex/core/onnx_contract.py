"""The ONNX model contract (ARCHITECTURE.md §3): graph I/O names and the metadata schema.

Every hashindex model names its tensors ``features`` / ``images`` -> ``codes``, ``embedding``
(and ``features`` for fused models) and carries :class:`ModelMetadata` in ``metadata_props``,
written by :mod:`hashindex.export.onnx` and read back by
:class:`hashindex.serving.encoder.OnnxEncoder`. Plain Python, no onnx: importable on the serving
path. The graph builders that produce such models are in :mod:`hashindex.export.graph`.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from hashindex.core.bits import check_bits
from hashindex.core.errors import IndexFormatError, InputError
from hashindex.core.preprocess import ImagePreprocessing

FORMAT_VERSION = 1
"""Version of the metadata/I-O contract written into ``hashindex.format``."""

KEY_FORMAT = "hashindex.format"
KEY_BITS = "hashindex.bits"
KEY_INPUT = "hashindex.input"
KEY_TRAINING = "hashindex.training"
KEY_BACKBONE = "hashindex.backbone"

INPUT_KINDS = ("features", "images")
BATCH_DIM = "N"
CODES, EMBEDDING, FEATURES = "codes", "embedding", "features"


# -- metadata --------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputSpec:
    """The model input: ``name`` "features" ``[N, D]`` or "images" ``[N, 3, H, W]``.

    Attributes:
        name: graph input name, which is also the model kind.
        sample_shape: per-sample shape, ``(D,)`` or ``(3, H, W)``; the batch axis is dynamic.
        dtype: element type; always "float32".
        preprocessing: what the input must have gone through: an
            :class:`~hashindex.core.preprocess.ImagePreprocessing` for images, a free-text note
            (e.g. "L2-normalised MobileFaceNet embeddings") or None.
    """

    name: str
    sample_shape: tuple[int, ...]
    dtype: str = "float32"
    preprocessing: ImagePreprocessing | str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "sample_shape", tuple(int(s) for s in self.sample_shape))
        if self.name not in INPUT_KINDS:
            raise InputError(f"input name must be one of {INPUT_KINDS}, got {self.name!r}")
        if self.dtype != "float32":
            raise InputError(f"input dtype must be float32, got {self.dtype!r}")
        want = 1 if self.name == "features" else 3
        if len(self.sample_shape) != want or min(self.sample_shape) <= 0:
            raise InputError(f"{self.name} input needs a {want}-D positive per-sample shape, got {self.sample_shape}")
        if self.name == "images":
            if self.sample_shape[0] != 3:
                raise InputError(f"images must have 3 channels (NCHW), got shape {self.sample_shape}")
            if isinstance(self.preprocessing, ImagePreprocessing) and tuple(self.preprocessing.size) != self.sample_shape[1:]:
                raise InputError(f"preprocessing size {self.preprocessing.size} != input H, W {self.sample_shape[1:]}")

    @classmethod
    def features(cls, dim: int, note: str | None = None) -> "InputSpec":
        return cls("features", (dim,), preprocessing=note)

    @classmethod
    def images(cls, prep: ImagePreprocessing) -> "InputSpec":
        return cls("images", (3, *prep.size), preprocessing=prep)

    @property
    def shape(self) -> tuple[str | int, ...]:
        """Full shape with the symbolic batch axis, e.g. ``("N", 128)``."""
        return (BATCH_DIM, *self.sample_shape)

    def to_dict(self) -> dict:
        prep = self.preprocessing.to_dict() if isinstance(self.preprocessing, ImagePreprocessing) else self.preprocessing
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "preprocessing": prep}

    @classmethod
    def from_dict(cls, d: Mapping) -> "InputSpec":
        prep = d.get("preprocessing")
        if isinstance(prep, Mapping):
            prep = ImagePreprocessing.from_dict(dict(prep))
        return cls(str(d["name"]), tuple(d["shape"][1:]), str(d.get("dtype", "float32")), prep)


def _today() -> str:
    return _dt.date.today().isoformat()


@dataclass(frozen=True)
class TrainingInfo:
    """Where the hash function came from: loss (or fitting recipe), data, date (ISO 8601)."""

    loss: str
    data: str
    date: str = field(default_factory=_today)

    def to_dict(self) -> dict:
        return {"loss": self.loss, "data": self.data, "date": self.date}

    @classmethod
    def from_dict(cls, d: Mapping) -> "TrainingInfo":
        return cls(str(d["loss"]), str(d["data"]), str(d["date"]))


@dataclass(frozen=True)
class BackboneInfo:
    """The feature extractor fused in front of the head (fused models only)."""

    name: str
    sha256: str
    output_dim: int

    def to_dict(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "output_dim": self.output_dim}

    @classmethod
    def from_dict(cls, d: Mapping) -> "BackboneInfo":
        return cls(str(d["name"]), str(d["sha256"]), int(d["output_dim"]))


@dataclass(frozen=True)
class ModelMetadata:
    """Everything a consumer reads from ``metadata_props`` instead of guessing."""

    bits: int
    input: InputSpec
    training: TrainingInfo
    backbone: BackboneInfo | None = None
    format: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        check_bits(self.bits)

    def to_props(self) -> dict[str, str]:
        """String key/values for ``ModelProto.metadata_props``."""
        props = {
            KEY_FORMAT: str(self.format),
            KEY_BITS: str(self.bits),
            KEY_INPUT: json.dumps(self.input.to_dict()),
            KEY_TRAINING: json.dumps(self.training.to_dict()),
        }
        if self.backbone is not None:
            props[KEY_BACKBONE] = json.dumps(self.backbone.to_dict())
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> "ModelMetadata":
        """Parse ``metadata_props``; IndexFormatError when missing, malformed or from the future."""
        missing = [k for k in (KEY_FORMAT, KEY_BITS, KEY_INPUT, KEY_TRAINING) if k not in props]
        if missing:
            raise IndexFormatError(
                f"{source}: not a hashindex model (metadata_props lack {', '.join(missing)}); "
                "export it with hashindex.export.onnx"
            )
        try:
            version = int(props[KEY_FORMAT])
        except ValueError as e:
            raise IndexFormatError(f"{source}: {KEY_FORMAT} is not an integer: {props[KEY_FORMAT]!r}") from e
        if version > FORMAT_VERSION:
            raise IndexFormatError(
                f"{source}: model format {version} is newer than this hashindex understands "
                f"({FORMAT_VERSION}); upgrade hashindex"
            )
        if version < 1:
            raise IndexFormatError(f"{source}: invalid model format version {version}")
        try:
            backbone = props.get(KEY_BACKBONE)
            return cls(
                bits=int(props[KEY_BITS]),
                input=InputSpec.from_dict(json.loads(props[KEY_INPUT])),
                training=TrainingInfo.from_dict(json.loads(props[KEY_TRAINING])),
                backbone=BackboneInfo.from_dict(json.loads(backbone)) if backbone else None,
                format=version,
            )
        except (ValueError, KeyError, TypeError, IndexError) as e:  # InputError is a ValueError
            raise IndexFormatError(f"{source}: malformed hashindex metadata: {e}") from e
