"""Hashers that need no training: sign of centred features, PCA-sign, ITQ and residual ITQ.

All are *linear hashers*: a projection ``h = x @ W.T + b``. For sign, PCA and ITQ bit i is
``h_i > 0``; they differ only in how ``fit`` chooses ``W`` and ``b``, so one class carries the
projection and the public names are thin fitting recipes on top of it. Keeping them linear is
what lets them export to the same ONNX contract as a learned head (a MatMul + Add in the graph).

The residual hasher stacks ITQ codes (``stages``, e.g. 128 + 64 bits): stage i codes what the
stages before it left of ``x - mean`` (Jegou et al.'s residual quantization with ITQ stages).
Its bits are no longer one sign per projection, but its *projection* still is linear: with
``W`` the stages' rotations scaled by their reconstruction scales, the asymmetric score
``<h(q), 2b - 1>`` of a query against an item's bits is ``<q - mean, x_hat - mean>``, the query
against the item's reconstruction, so the asymmetric scan scores it unchanged (how many fewer
candidates the refinement bits need for a recall@10 target: benchmarks/README.md, "More bits").

Fitting uses FAISS's ``PCAMatrix`` and ``ITQTransform``; we only read back their matrices.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import BinaryIO, Protocol, runtime_checkable

import faiss
import numpy as np

from hashindex.core.bits import check_bits
from hashindex.core.codes import binarize, check_codes
from hashindex.core.errors import IndexFormatError, InputError, NotFittedError
from hashindex.core.validation import check_features

HASHER_FORMAT = 2  # 2: residual hashers (``stages``); a one-stage hasher is still written as 1
RESIDUAL_ROUNDS = 2  # joint re-encoding passes after the greedy one (as benchmarks/more_bits.py measured them)


@runtime_checkable
class Hasher(Protocol):
    """What HashIndex needs from anything that turns features into codes."""

    bits: int

    def encode(self, features: np.ndarray) -> np.ndarray:
        """``float32 [N, D]`` -> packed codes ``uint8 [N, bits/8]``."""
        ...


@dataclass
class LinearHasher:
    """``h = x @ W.T + b``; code bit i = ``h_i > 0``, or with ``stages`` the residual signs of ``h``
    (:func:`residual_signs`).

    Attributes:
        kind: the recipe that produced the projection ("sign", "pca", "itq", "residual", "linear").
        bits: code length K (a multiple of 8).
        dim: input feature dimension D.
        weight: ``float32 [K, D]`` (None until fitted).
        bias: ``float32 [K]`` (None until fitted).
        stages: bits per residual stage (summing to K), or ``()``: one stage, bit i = ``h_i > 0``.
    """

    kind: str
    bits: int
    dim: int
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    stages: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.bits = check_bits(self.bits)
        if self.dim <= 0:
            raise InputError(f"dim must be positive, got {self.dim}")
        if self.kind == "residual" and not self.stages:
            self.stages = residual_stages(self.bits, self.dim)
        self.stages = tuple(int(b) for b in self.stages)
        if len(self.stages) == 1:
            self.stages = ()
        if self.stages and (sum(self.stages) != self.bits or min(self.stages) <= 0 or any(b % 8 for b in self.stages)):
            raise InputError(f"residual stages {list(self.stages)} must be positive multiples of 8 summing to bits={self.bits}")

    @property
    def is_fitted(self) -> bool:
        return self.weight is not None

    def fit(self, features: np.ndarray) -> "LinearHasher":
        """Learn ``W`` and ``b`` from ``features float [N, D]``; returns self."""
        x = check_features(features, self.dim, name="training features")
        least = least_fit_rows(self)
        if x.shape[0] < least:
            raise InputError(
                f"fitting the {self.kind} hasher ({self.bits} bits) needs at least {least} rows, got {x.shape[0]} "
                f"(an index asks for 2 * bits = {min_fit_rows(self)})"
            )
        # Fit on the rows divided by a power of two (exact in floating point) that brings their
        # largest magnitude near 1: FAISS accumulates the covariance in float32, which overflows
        # (a failed SVD, or a silently wrong PCA) on rows with large norms and underflows on tiny
        # ones. Directions do not depend on the scale; the bias scales back by the same factor.
        exp = _fit_exponent(x)
        scaled = np.ldexp(x, -exp) if exp else x
        if self.kind == "residual":
            weight, bias = _fit_residual(scaled, self.stages or (self.bits,))
        else:
            weight, bias = _FITTERS[self.kind](scaled, self.bits)
        with np.errstate(over="ignore"):
            if exp and self.kind == "residual":  # its rows carry the reconstruction scale, in x's units
                weight, bias = np.ldexp(weight, exp), np.ldexp(bias, 2 * exp)
            elif exp:
                bias = np.ldexp(np.asarray(bias, np.float32), exp)
        if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
            raise InputError(
                f"fitting the {self.kind} hasher gave non-finite weights: the training features are too "
                "large for float32 (scale them down)"
            )
        self.weight, self.bias = weight, bias
        return self

    def project(self, features: np.ndarray) -> np.ndarray:
        """Continuous code ``float32 [N, K]`` (before the sign)."""
        if not self.is_fitted:
            raise NotFittedError(f"{self.kind} hasher is not fitted: call fit(features) first")
        x = check_features(features, self.dim)
        return x @ self.weight.T + self.bias

    def encode(self, features: np.ndarray) -> np.ndarray:
        """Packed codes ``uint8 [N, K/8]`` in FAISS bit order."""
        h = self.project(features)
        if not self.stages:
            return binarize(h)
        return binarize(residual_signs(h, self.weight @ self.weight.T, self.stages))

    # -- persistence (npz without pickle) ---------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        if not self.is_fitted:
            raise NotFittedError("cannot save an unfitted hasher")
        meta = {"format": 1, "kind": self.kind, "bits": self.bits, "dim": self.dim}
        if self.stages:  # readers before format 2 would encode it as one stage: they must refuse it
            meta.update(format=2, stages=list(self.stages))
        with open(path, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), weight=self.weight, bias=self.bias)

    @classmethod
    def load(cls, source: str | os.PathLike | BinaryIO, where: str | os.PathLike | None = None) -> "LinearHasher":
        """Read a hasher written by :meth:`save` from a path or an open binary file (``where``
        names it in messages). Anything malformed raises IndexFormatError."""
        where = where if where is not None else getattr(source, "name", source)
        try:
            with np.load(source, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                weight = np.asarray(z["weight"], dtype=np.float32)
                bias = np.asarray(z["bias"], dtype=np.float32)
        except (OSError, ValueError, KeyError, TypeError, RecursionError, EOFError) as e:
            raise IndexFormatError(f"{where}: not a readable hasher file ({type(e).__name__}: {e})") from None
        if not isinstance(meta, dict):
            raise IndexFormatError(f"{where}: hasher metadata is not an object")
        version, kind, bits, dim = meta.get("format", 0), meta.get("kind"), meta.get("bits"), meta.get("dim")
        stages = meta.get("stages", [])
        ints = (version, bits, dim, *(stages if isinstance(stages, list) else [None]))
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints) or not isinstance(kind, str):
            raise IndexFormatError(f"{where}: malformed hasher metadata {json.dumps(meta)[:200]}")
        if version > HASHER_FORMAT:
            raise IndexFormatError(
                f"{where}: hasher format {version} is newer than this hashindex "
                f"understands ({HASHER_FORMAT}); upgrade hashindex"
            )
        if weight.shape != (bits, dim) or bias.shape != (bits,):
            raise IndexFormatError(f"{where}: hasher arrays do not match bits/dim in its metadata")
        if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
            raise IndexFormatError(f"{where}: hasher weights contain NaN or inf")
        try:
            return cls(kind, bits, dim, weight, bias, tuple(stages))
        except InputError as e:
            raise IndexFormatError(f"{where}: invalid hasher ({e})") from None

    def to_dict(self) -> dict:
        return {"kind": self.kind, "bits": self.bits, "dim": self.dim, **({"stages": list(self.stages)} if self.stages else {})}


def min_fit_rows(hasher: "LinearHasher") -> int:
    """Rows an index needs to fit its untrained hasher: ``2 * bits``, for every kind.

    PCA and ITQ estimate ``bits`` principal directions (FAISS refuses fewer rows than
    directions, and barely more still leaves the last ones noise); the sign hasher's mean gets
    the same rule, so ``index.fit()``, an index's first ``add`` and ``hashindex build`` accept
    the same inputs (:func:`check_fit_rows`).
    """
    return 2 * int(hasher.bits)


def least_fit_rows(hasher: "LinearHasher") -> int:
    """The fewest rows ``LinearHasher.fit`` itself takes: ``bits`` for PCA / ITQ (FAISS's PCA
    needs a row per direction), 2 for the sign hasher (a mean). Indexes ask for
    :func:`min_fit_rows`; training fits its ITQ starts with its own rule, at or above this floor."""
    return 2 if hasher.kind == "sign" else max(2, int(hasher.bits))


def check_fit_rows(hasher: "LinearHasher", n: int, error: type[Exception] = InputError, hint: str = "") -> None:
    """Raise ``error`` (InputError by default) unless ``n`` rows are enough for an index to fit
    ``hasher``: the one rule (:func:`min_fit_rows`) and message used by ``index.fit``, an index's
    first ``add`` and ``hashindex build`` (which calls ``index.fit``)."""
    need = min_fit_rows(hasher)
    if n < need:
        raise error(
            f"fitting the {hasher.kind} hasher ({hasher.bits} bits) needs at least 2 * bits = {need} rows, "
            f"got {n}{hint}"
        )


def _fit_exponent(x: np.ndarray) -> int:
    """``e`` with ``2**-e * x`` largest magnitude in [0.5, 1) (0 for an all-zero array)."""
    top = max(float(x.max()), -float(x.min())) if x.size else 0.0
    return int(np.frexp(top)[1]) if top > 0.0 else 0


# -- fitting recipes: (x [N, D]) -> (W [K, D], b [K]) --------------------------------------
def _fit_sign(x: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Sign of centred features: one bit per dimension, threshold at the training mean."""
    if bits != x.shape[1]:
        raise InputError(
            f"the sign hasher gives one bit per dimension: bits must equal dim ({x.shape[1]}), "
            f"got {bits}; use 'pca' or 'itq' for other code lengths"
        )
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    return np.eye(bits, dtype=np.float32), -mean


def _check_reduction(x: np.ndarray, bits: int, kind: str) -> None:
    if bits > x.shape[1]:
        raise InputError(f"{kind} hasher: bits ({bits}) cannot exceed the feature dim ({x.shape[1]})")


def _fit_pca(x: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``bits`` principal directions of the centred data (FAISS PCAMatrix)."""
    _check_reduction(x, bits, "pca")
    pca = faiss.PCAMatrix(x.shape[1], bits)
    pca.train(x)
    a = faiss.vector_to_array(pca.A).reshape(bits, x.shape[1])
    b = faiss.vector_to_array(pca.b)
    return a.astype(np.float32), b.astype(np.float32)


def _fit_itq(x: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """PCA then the ITQ rotation (Gong & Lazebnik 2011) via FAISS ITQTransform.

    FAISS L2-normalises the centred vector before rotating; a positive scale never changes a
    sign, so ``W (x - mean)`` gives the same bits and is the form we keep.
    """
    _check_reduction(x, bits, "itq")
    itq = faiss.ITQTransform(x.shape[1], bits, True)
    itq.train(x)
    a = faiss.vector_to_array(itq.pca_then_itq.A).reshape(bits, x.shape[1]).astype(np.float32)
    mean = faiss.vector_to_array(itq.mean).astype(np.float32)
    return a, -(a @ mean)


def residual_stages(bits: int, dim: int) -> tuple[int, ...]:
    """Bits per residual stage: stages of at most ``dim`` bits (rounded down to bytes), the first
    the largest (``bits=192, dim=128`` -> ``(128, 64)``)."""
    width = max(8, dim - dim % 8)
    return tuple(min(width, bits - start) for start in range(0, bits, width))


def residual_signs(h: np.ndarray, gram: np.ndarray, stages: tuple[int, ...], rounds: int = RESIDUAL_ROUNDS) -> np.ndarray:
    """Residual codes ``float32 {-1, +1} [N, K]`` from projections ``h [N, K]``.

    With ``W`` the hasher's weight (stage i's rows ``W_i = a_i R_i``: orthonormal ``R_i`` times
    the stage's scale) and ``h = W (x - mean)``, stage i takes the sign of ``W_i r_i``, ``r_i``
    what the other stages leave of ``x - mean`` (``r_i = x - mean - sum_j W_j^T s_j``); in terms
    of ``h`` and ``gram = W W^T`` that is ``h_i - sum_j gram_ij s_j`` (j != i): first greedily
    (only the earlier stages), then ``rounds`` passes re-encoding each stage against all others.
    """
    bounds = np.cumsum((0, *stages))
    cut = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    blocks = {(j, i): np.ascontiguousarray(gram[cj, ci], dtype=np.float32)
              for j, cj in enumerate(cut) for i, ci in enumerate(cut) if j != i}  # fmt: skip
    s: list[np.ndarray | None] = [None] * len(cut)  # per stage, contiguous: only the other stages' blocks multiply
    for _ in range(rounds + 1):  # the first pass: the stages not yet coded are left out
        for i, ci in enumerate(cut):
            v = np.array(h[:, ci], dtype=np.float32)
            for j, sj in enumerate(s):
                if j != i and sj is not None:
                    v -= sj @ blocks[(j, i)]
            s[i] = np.where(v > 0, np.float32(1.0), np.float32(-1.0))
    return np.hstack(s)


def _fit_residual(x: np.ndarray, stages: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Stacked ITQ codes of ``stages`` bits each: each stage's rotation is ITQ on what the
    stages before it leave; its scale ``a`` the mean ``|R r|`` (the least-squares scale of a sign
    code), then refitted by least squares to the jointly re-encoded codes. ``W = [a_i R_i]``,
    ``b = -W mean``."""
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    r, rows, scales = x - mean, [], []
    for b in stages:
        rot = _fit_itq(r, b)[0]
        p = r @ rot.T
        rows.append(rot)
        scales.append(float(np.abs(p).mean()))
        r = r - scales[-1] * np.where(p > 0, 1.0, -1.0).astype(np.float32) @ rot
    bounds = np.cumsum((0, *stages))
    for _ in range(RESIDUAL_ROUNDS):
        weight = np.vstack([a * rot for a, rot in zip(scales, rows)]).astype(np.float32)
        s = residual_signs((x - mean) @ weight.T, weight @ weight.T, stages)
        rest = x - mean - s @ weight
        scales = [
            float((((rest + s[:, lo:hi] @ weight[lo:hi]) @ rot.T) * s[:, lo:hi]).mean())
            for rot, lo, hi in zip(rows, bounds[:-1], bounds[1:])
        ]  # fmt: skip
    weight = np.vstack([a * rot for a, rot in zip(scales, rows)]).astype(np.float32)
    return weight, -(weight @ mean)


_FITTERS = {"sign": _fit_sign, "pca": _fit_pca, "itq": _fit_itq}  # (x, bits) -> (W, b); residual takes stages
HASHER_KINDS = (*_FITTERS, "residual")


def SignHasher(dim: int, bits: int | None = None) -> LinearHasher:
    """Binary quantization as vector databases do it: one bit per centred dimension."""
    return LinearHasher("sign", bits if bits is not None else dim, dim)


def PCASignHasher(dim: int, bits: int) -> LinearHasher:
    """Sign of the top-``bits`` PCA projections."""
    return LinearHasher("pca", bits, dim)


def ITQHasher(dim: int, bits: int) -> LinearHasher:
    """Iterative quantization: PCA + the rotation that minimises quantization error."""
    return LinearHasher("itq", bits, dim)


def ResidualHasher(dim: int, bits: int) -> LinearHasher:
    """Stacked residual ITQ codes: more bits than ``dim`` (e.g. 192 at 128-d, 128 + 64)."""
    return LinearHasher("residual", bits, dim)


def check_index_hasher_fitted(hasher: Hasher) -> None:
    """An index's untrained linear hasher must be fitted before it encodes or projects."""
    if isinstance(hasher, LinearHasher) and not hasher.is_fitted:
        raise NotFittedError(
            f"the index's {hasher.kind} hasher is not fitted: call index.fit(sample) first, "
            "or add a first batch of at least 2 * bits vectors"
        )


def encode_checked(hasher: Hasher, features: np.ndarray, nbytes: int) -> np.ndarray:
    """``hasher.encode`` with the checks every index needs: fitted, and codes ``nbytes`` wide."""
    check_index_hasher_fitted(hasher)
    return check_codes(hasher.encode(features), nbytes)


def fit_untrained(hasher: Hasher, features: np.ndarray) -> None:
    """Fit an index's untrained linear hasher; a trained model (ONNX) is refused."""
    if not isinstance(hasher, LinearHasher):
        raise InputError("only the untrained linear hashers are fitted; this index uses a trained model")
    hasher.fit(features)


def make_hasher(kind: str, dim: int, bits: int | None = None) -> LinearHasher:
    """Build an unfitted hasher by name: "sign", "pca", "itq" or "residual"."""
    if kind not in HASHER_KINDS:
        raise InputError(f"unknown hasher {kind!r}; choose one of {', '.join(HASHER_KINDS)}")
    if kind != "sign" and bits is None:
        raise InputError(f"{kind} hasher needs bits")
    return LinearHasher(kind, bits if bits is not None else dim, dim)
