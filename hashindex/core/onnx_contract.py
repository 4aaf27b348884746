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
import math
from collections.abc import Mapping
import dataclasses
from dataclasses import dataclass, field
from hashindex.core.bits import check_bits
from hashindex.core.errors import IndexFormatError, InputError
from hashindex.core.preprocess import ImagePreprocessing

FORMAT_VERSION = 2
"""Version of the metadata/I-O contract written into ``hashindex.format``: 2 for a model whose
codes are residual (``hashindex.stages``), 1 for every other (so older readers still take them)."""

KEY_FORMAT = "hashindex.format"
KEY_BITS = "hashindex.bits"
KEY_INPUT = "hashindex.input"
KEY_TRAINING = "hashindex.training"
KEY_BACKBONE = "hashindex.backbone"
KEY_STAGES = "hashindex.stages"

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


class _FlatRecord:
    """A metadata record of ``str`` / ``int`` fields that reads and writes one JSON object."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping):
        """Every field present, each cast to its annotated type, so a value of the wrong kind
        fails here (KeyError / ValueError, which the caller turns into IndexFormatError)."""
        casts = {"str": str, "int": int}
        return cls(**{f.name: casts[f.type](d[f.name]) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class TrainingInfo(_FlatRecord):
    """Where the hash function came from: loss (or fitting recipe), data, date (ISO 8601)."""

    loss: str
    data: str
    date: str = field(default_factory=_today)


@dataclass(frozen=True)
class BackboneInfo(_FlatRecord):
    """The feature extractor fused in front of the head (fused models only)."""

    name: str
    sha256: str
    output_dim: int


@dataclass(frozen=True)
class ModelMetadata:
    """Everything a consumer reads from ``metadata_props`` instead of guessing."""

    bits: int
    input: InputSpec
    training: TrainingInfo
    backbone: BackboneInfo | None = None
    format: int | None = None  # None: the lowest version that can say what this model is
    stages: tuple[int, ...] = ()  # a residual hasher's bits per stage: codes are not sign(embedding)

    def __post_init__(self) -> None:
        check_bits(self.bits)
        object.__setattr__(self, "stages", tuple(self.stages))
        if self.stages and (sum(self.stages) != self.bits or any(b <= 0 or b % 8 for b in self.stages)):
            raise InputError(f"stages {list(self.stages)} must be positive multiples of 8 summing to bits={self.bits}")
        if self.format is None:
            object.__setattr__(self, "format", 2 if self.stages else 1)
        if self.stages and self.format < 2:
            raise InputError(f"a residual model (stages {list(self.stages)}) needs format 2, got {self.format}")

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
        if self.stages:
            props[KEY_STAGES] = json.dumps(list(self.stages))
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> "ModelMetadata":
        """Parse ``metadata_props``; IndexFormatError when missing, malformed or from the future.

        Any malformed value (wrong JSON type, deep nesting, non-finite or out-of-range numbers,
        oversized strings) is an IndexFormatError naming the key, never another exception.
        """
        if not isinstance(props, Mapping):
            raise IndexFormatError(f"{source}: metadata_props is not a mapping")
        missing = [k for k in (KEY_FORMAT, KEY_BITS, KEY_INPUT, KEY_TRAINING) if k not in props]
        if missing:
            raise IndexFormatError(
                f"{source}: not a hashindex model (metadata_props lack {', '.join(missing)}); "
                "export it with hashindex.export.onnx"
            )
        for key in (KEY_FORMAT, KEY_BITS, KEY_INPUT, KEY_TRAINING, KEY_BACKBONE, KEY_STAGES):
            value = props.get(key)
            if value is not None and (not isinstance(value, str) or len(value) > MAX_PROP_CHARS):
                raise IndexFormatError(f"{source}: {key} must be a string of at most {MAX_PROP_CHARS} characters")
        version = _small_int(props[KEY_FORMAT], KEY_FORMAT, source)
        if version > FORMAT_VERSION:
            raise IndexFormatError(
                f"{source}: model format {version} is newer than this hashindex understands "
                f"({FORMAT_VERSION}); upgrade hashindex"
            )
        if version < 1:
            raise IndexFormatError(f"{source}: invalid model format version {version}")
        bits = _small_int(props[KEY_BITS], KEY_BITS, source)
        if not 0 < bits <= MAX_BITS:
            raise IndexFormatError(f"{source}: {KEY_BITS} must be in [8, {MAX_BITS}], got {bits}")
        key = KEY_INPUT
        try:
            input_d = _json_object(props[KEY_INPUT], KEY_INPUT, source)
            prep = input_d.get("preprocessing")
            if prep is not None and not isinstance(prep, (str, Mapping)):
                raise IndexFormatError(f"{source}: {KEY_INPUT} preprocessing must be an object, a string or null")
            shape = input_d.get("shape")
            if not isinstance(shape, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape[1:]):
                raise IndexFormatError(f"{source}: {KEY_INPUT} shape must be a list [\"N\", int, ...], got {shape!r:.80}")
            spec = InputSpec.from_dict(input_d)
            key = KEY_TRAINING
            training = TrainingInfo.from_dict(_json_object(props[KEY_TRAINING], KEY_TRAINING, source))
            key = KEY_BACKBONE
            backbone = props.get(KEY_BACKBONE)
            backbone = BackboneInfo.from_dict(_json_object(backbone, KEY_BACKBONE, source)) if backbone else None
            key = KEY_STAGES
            stages = _json_int_list(props[KEY_STAGES], KEY_STAGES, source) if KEY_STAGES in props else ()
            return cls(bits=bits, input=spec, training=training, backbone=backbone, format=version, stages=stages)
        except IndexFormatError:
            raise
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, OverflowError, RecursionError) as e:
            # InputError is a ValueError
            raise IndexFormatError(f"{source}: malformed hashindex metadata in {key}: {type(e).__name__}: {e}") from None


MAX_PROP_CHARS = 1 << 16
"""Longest metadata value parsed (real ones are a few hundred characters)."""
MAX_BITS = 1 << 16


def _small_int(value: str, key: str, source: str) -> int:
    """A decimal integer of at most 9 digits (no huge-int parsing, no floats, no bools)."""
    text = value.strip()
    if not (text.isascii() and text.lstrip("-").isdigit() and len(text.lstrip("-")) <= 9):
        raise IndexFormatError(f"{source}: {key} is not an integer: {value[:40]!r}")
    return int(text)


def _json_object(text: str, key: str, source: str) -> dict:
    """``json.loads`` of a metadata value that must be an object with finite numbers."""
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise IndexFormatError(f"{source}: {key} is nested too deeply") from None
    except ValueError as e:
        raise IndexFormatError(f"{source}: malformed hashindex metadata: {key} is not JSON ({e})") from None
    if not isinstance(value, dict):
        raise IndexFormatError(f"{source}: {key} must be a JSON object, got {type(value).__name__}")
    return value


def _json_int_list(text: str, key: str, source: str) -> tuple[int, ...]:
    """``json.loads`` of a metadata value that must be a short list of integers."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise IndexFormatError(f"{source}: malformed hashindex metadata: {key} is not JSON ({e})") from None
    if not (isinstance(value, list) and len(value) <= 64 and all(type(v) is int for v in value)):
        raise IndexFormatError(f"{source}: {key} must be a list of integers, got {text[:80]!r}")
    return tuple(value)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is not a finite float32-range number")
    return value
