"""Synthetic identity galleries from a PLDA-style generative model fitted to real face embeddings.

Model (probabilistic LDA, Ioffe 2006; Prince & Elder 2007), for image ``a`` of identity ``i``::

    x_ia = normalise(m + y_i + tau_ia * e_ia)
    y_i  ~ N(0, s_b * S_b)                         identity offset, one per identity
    e_ia ~ N(0, s_w * S_w)                         within-identity noise, one per image
    tau_ia = exp(sigma * g - sigma**2), g ~ N(0,1) per-image noise scale, E[tau**2] = 1

``m``, ``S_b`` and ``S_w`` are moment estimates from labelled embeddings (:func:`estimate_plda`).
Two things make the plain Gaussian model miss the real cosine statistics, so three scalars
``(s_b, s_w, sigma)`` are calibrated (:func:`calibrate`):

* the final L2 normalisation (real embeddings live on the sphere, the Gaussian does not);
* real within-identity variation is heavy-tailed (pose, age, blur: a few images of a person are
  far from the rest). With Gaussian noise in 128-d the positive-pair cosine concentrates far
  more tightly than the real one. A Gaussian scale mixture on the noise -- the idea of
  heavy-tailed PLDA (Kenny 2010, "Bayesian speaker verification with heavy-tailed priors"),
  here with a log-normal scale so the fit is smooth -- restores the spread.

Calibration: with common random numbers (one fixed draw of ``z``, ``g``), Levenberg-Marquardt on
``(log s_b, log s_w, sigma)`` minimises the squared difference between the four synthetic and real
pair statistics (:class:`PairStats`). Only ``m``, factors ``F`` with ``S = F F^T`` (float32), the
three scalars, and the real and synthetic statistics are shipped (``synthetic_lfw128.npz``), derived
by ``benchmarks/derive_synthetic_params.py`` from the LFW development embeddings (it prints both
sets of statistics; :attr:`SyntheticParams.real_stats` and ``synthetic_stats`` hold them).

Streaming and determinism (:class:`SyntheticGallery`): every random number is keyed on a fixed
block, never on the chunk being produced. Identity offsets come from identity blocks of
``IDENTITY_BLOCK`` identities (seeded by ``(seed, block)``), image noise from item blocks of
``ITEM_BLOCK`` images, and every matrix product has a fixed shape (``COMPOSE_ROWS`` rows,
zero-padded), since BLAS may round differently for another shape. So the same seed gives
bit-identical data for every ``chunk_size`` and every gallery size (a smaller gallery is a prefix
of a larger one), galleries share identities across sizes (identity ``i`` has the same offset in
a 1k and a 10M gallery with the same seed), probes regenerate any identity's offset without holding the
others, and memory is bounded by the chunk plus one block (plus 16 bytes per identity for the
counts and their prefix sums).

numpy only: this module is on the serving path and must never import torch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from hashindex.core.errors import IndexFormatError, InputError
from hashindex.core.validation import check_features, check_int_vector, check_positive_int

PARAMS_FORMAT = 1
DEFAULT_PARAMS_PATH = Path(__file__).resolve().parent / "synthetic_lfw128.npz"

IDENTITY_BLOCK = 256  # identities per offset seed: small, so probes regenerate little
ITEM_BLOCK = 8192  # images per noise seed: large enough for efficient matmuls
COMPOSE_ROWS = 1024  # rows per matrix product: fixed, so results never depend on the gallery size
assert ITEM_BLOCK % COMPOSE_ROWS == 0

# Independent random streams, combined with (seed, block) into a numpy SeedSequence.
_COUNTS_STREAM, _OFFSET_STREAM, _NOISE_STREAM, _LIFT_STREAM, _PROBE_STREAM, _CALIB_STREAM = range(6)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(list(key))


def _check_seed(seed: int, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"{name} must be a non-negative integer, got {seed!r}")
    return int(seed)


# --------------------------------------------------------------------------- pair statistics


@dataclass(frozen=True)
class PairStats:
    """Mean and standard deviation of positive-pair and negative-pair cosine similarity."""

    pos_mean: float
    pos_std: float
    neg_mean: float
    neg_std: float

    def as_array(self) -> np.ndarray:
        return np.array([self.pos_mean, self.pos_std, self.neg_mean, self.neg_std], dtype=np.float64)

    @classmethod
    def from_array(cls, a: np.ndarray) -> "PairStats":
        a = np.asarray(a, dtype=np.float64).reshape(-1)
        if a.shape != (4,):
            raise InputError(f"PairStats needs 4 numbers, got {a.shape[0]}")
        return cls(*(float(v) for v in a))

    def max_abs_diff(self, other: "PairStats") -> float:
        return float(np.max(np.abs(self.as_array() - other.as_array())))


def pair_cosine_stats(features: np.ndarray, labels: np.ndarray) -> PairStats:
    """Identity-balanced cosine statistics of ``features [N, D]`` with identity ``labels [N]``.

    Positive: pick an identity with 2+ images uniformly, then one of its unordered image pairs
    uniformly. Negative: pick an ordered pair of distinct identities uniformly, then one image of
    each uniformly. Balancing by identity keeps one prolific identity (in LFW one person gives
    most of the positive pairs) from defining the statistics, and makes them
    the population figures the exchangeable-identity generator models. Rows are L2-normalised
    first. Exact, in O(N D^2) without forming the N x N similarity matrix:

        sum_{a != b in i} x_a.x_b       = |s_i|^2 - n_i                 (s_i = sum of identity i)
        sum_{a != b in i} (x_a.x_b)^2   = |X_i X_i^T|_F^2 - n_i
        sum_{i != j} mean_{a,b} x_a.x_b = |sum_i mu_i|^2 - sum_i |mu_i|^2 (mu_i = s_i / n_i)
        sum_{i != j} mean (x_a.x_b)^2   = |sum_i C_i|_F^2 - sum_i |C_i|_F^2, C_i = X_i^T X_i / n_i
    """
    x = check_features(features, name="features").astype(np.float64)
    y = check_int_vector(labels, x.shape[0], "labels")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise InputError("features contain an all-zero row: cosine undefined")
    x /= norms
    order = np.argsort(y, kind="stable")
    xs = x[order]
    _, starts, counts = np.unique(y[order], return_index=True, return_counts=True)
    n_ids = counts.size
    if n_ids < 2:
        raise InputError(f"need at least 2 identities for negative pairs, got {n_ids}")
    if not np.any(counts >= 2):
        raise InputError("need at least one identity with 2+ images for positive pairs")

    sums = np.add.reduceat(xs, starts, axis=0)  # [K, D]
    frob = _gram_frobenius_sq(xs, starts, counts)  # [K] |X_i X_i^T|_F^2

    multi = counts >= 2
    n_pairs = counts[multi] * (counts[multi] - 1.0)  # ordered pairs
    pos_mean_i = (np.einsum("kd,kd->k", sums[multi], sums[multi]) - counts[multi]) / n_pairs
    pos_m2_i = (frob[multi] - counts[multi]) / n_pairs
    pos_mean, pos_m2 = pos_mean_i.mean(), pos_m2_i.mean()

    means = sums / counts[:, None]
    n_ordered = n_ids * (n_ids - 1.0)
    total_mean = means.sum(axis=0)
    neg_mean = (total_mean @ total_mean - np.einsum("kd,kd->", means, means)) / n_ordered
    c_sum = xs.T @ (xs / np.repeat(counts, counts)[:, None])  # sum_i C_i, [D, D]
    neg_m2 = (np.sum(c_sum * c_sum) - np.sum(frob / counts.astype(np.float64) ** 2)) / n_ordered
    return PairStats(
        pos_mean=float(pos_mean),
        pos_std=float(math.sqrt(max(pos_m2 - pos_mean**2, 0.0))),
        neg_mean=float(neg_mean),
        neg_std=float(math.sqrt(max(neg_m2 - neg_mean**2, 0.0))),
    )


def _gram_frobenius_sq(xs: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``|X_i X_i^T|_F^2`` per identity of label-sorted rows ``xs [N, D]``; returns ``[K]``.

    Identities of equal size are batched; the smaller of ``X X^T`` and ``X^T X`` (equal Frobenius
    norms) is formed, in batches of bounded memory.
    """
    d = xs.shape[1]
    out = np.empty(counts.size, dtype=np.float64)
    for c in np.unique(counts):
        which = np.flatnonzero(counts == c)
        batch = max(1, 4_000_000 // (int(c) * max(int(c), d)))
        for lo in range(0, which.size, batch):
            sel = which[lo : lo + batch]
            blocks = xs[starts[sel][:, None] + np.arange(c)]  # [k, c, D]
            eq = "kad,kbd->kab" if c <= d else "kad,kae->kde"
            g = np.einsum(eq, blocks, blocks)
            out[sel] = np.einsum("kab,kab->k", g, g)
    return out


# --------------------------------------------------------------------------- identity counts


@dataclass(frozen=True)
class ZipfCounts:
    """Heavy-tailed images-per-identity: truncated Zipf, ``P(k) ∝ k^-exponent`` for ``1 <= k <= max_count``.

    The defaults (exponent 2, at most 1,000 images) give ``mean = H_1000 / H_1000^(2)`` images
    per identity (:attr:`mean`; ``1 / H_1000^(2)`` of the identities seen once) -- the shape of LFW
    (most identities seen once, one seen hundreds of times), at a gallery mean close to the
    fixed default of 4.
    """

    exponent: float = 2.0
    max_count: int = 1000

    def __post_init__(self) -> None:
        if not (isinstance(self.exponent, (int, float)) and math.isfinite(self.exponent) and self.exponent > 0):
            raise InputError(f"Zipf exponent must be a positive finite number, got {self.exponent!r}")
        check_positive_int(self.max_count, "max_count")

    def probabilities(self) -> np.ndarray:
        """``float64 [max_count]``: ``P(k)`` for ``k = 1..max_count``."""
        w = np.arange(1, self.max_count + 1, dtype=np.float64) ** -float(self.exponent)
        return w / w.sum()

    @property
    def mean(self) -> float:
        p = self.probabilities()
        return float(np.arange(1, self.max_count + 1) @ p)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``int64 [n]`` counts by inverse CDF of one uniform each (a prefix of a longer draw is the shorter draw)."""
        cdf = np.cumsum(self.probabilities())
        k = np.searchsorted(cdf, rng.random(n), side="right") + 1
        return np.minimum(k, self.max_count).astype(np.int64)


HEAVY = ZipfCounts()


# --------------------------------------------------------------------------- parameters


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    a.flags.writeable = False
    return a


@dataclass(frozen=True, eq=False)
class SyntheticParams:
    """Fitted generator: ``x = normalise(m + sqrt(s_b) F_b z + sqrt(s_w) tau F_w z')``.

    Attributes:
        mean: ``float32 [D]``, ``m``.
        between_factor: ``float32 [D, R_b]``, ``S_b = F_b F_b^T`` (raw moment estimate).
        within_factor: ``float32 [D, R_w]``, ``S_w = F_w F_w^T`` (raw moment estimate).
        between_scale, within_scale: calibrated multipliers ``s_b``, ``s_w``.
        noise_sigma: log-normal sigma of the per-image noise scale ``tau``.
        real_stats: identity-balanced pair statistics of the source embeddings.
        synthetic_stats: the same statistics of a gallery generated with these parameters.
        source: free-text description of the source data.
        n_source_images, n_source_identities: size of the source data.
    """

    mean: np.ndarray = field(repr=False)
    between_factor: np.ndarray = field(repr=False)
    within_factor: np.ndarray = field(repr=False)
    between_scale: float
    within_scale: float
    noise_sigma: float
    real_stats: PairStats
    synthetic_stats: PairStats
    source: str = ""
    n_source_images: int = 0
    n_source_identities: int = 0

    def __post_init__(self) -> None:
        mean = _readonly(self.mean)
        fb, fw = _readonly(self.between_factor), _readonly(self.within_factor)
        if mean.ndim != 1 or mean.size == 0:
            raise InputError(f"mean must be a non-empty 1-D vector, got shape {mean.shape}")
        for name, f in (("between_factor", fb), ("within_factor", fw)):
            if f.ndim != 2 or f.shape[0] != mean.size:
                raise InputError(f"{name} must be [{mean.size}, R], got shape {f.shape}")
        for name, a in (("mean", mean), ("between_factor", fb), ("within_factor", fw)):
            if not np.isfinite(a).all():
                raise InputError(f"{name} contains NaN or inf")
        for name in ("between_scale", "within_scale"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise InputError(f"{name} must be positive and finite, got {v!r}")
        if not (math.isfinite(self.noise_sigma) and self.noise_sigma >= 0):
            raise InputError(f"noise_sigma must be non-negative and finite, got {self.noise_sigma!r}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "between_factor", fb)
        object.__setattr__(self, "within_factor", fw)

    @property
    def dim(self) -> int:
        return int(self.mean.size)

    def save(self, path: str | Path) -> None:
        """Write an npz readable with ``allow_pickle=False`` (plain arrays and a unicode string)."""
        with open(path, "wb") as f:
            np.savez(
                f,
                format=np.int64(PARAMS_FORMAT),
                mean=self.mean,
                between_factor=self.between_factor,
                within_factor=self.within_factor,
                between_scale=np.float64(self.between_scale),
                within_scale=np.float64(self.within_scale),
                noise_sigma=np.float64(self.noise_sigma),
                real_stats=self.real_stats.as_array(),
                synthetic_stats=self.synthetic_stats.as_array(),
                source=np.str_(self.source),
                n_source_images=np.int64(self.n_source_images),
                n_source_identities=np.int64(self.n_source_identities),
            )


_PARAM_KEYS = (
    "format", "mean", "between_factor", "within_factor", "between_scale", "within_scale",
    "noise_sigma", "real_stats", "synthetic_stats", "source", "n_source_images", "n_source_identities",
)  # fmt: skip


def load_params(path: str | Path | None = None) -> SyntheticParams:
    """Load generator parameters; ``None`` loads the shipped LFW-derived file."""
    if path is None:
        return _default_params()
    return _load_params(Path(path))


@functools.lru_cache(maxsize=1)
def _default_params() -> SyntheticParams:
    return _load_params(DEFAULT_PARAMS_PATH)  # arrays are read-only, so sharing is safe


def _load_params(path: Path) -> SyntheticParams:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _PARAM_KEYS if k not in z.files]
            if missing:
                raise IndexFormatError(f"{path}: not a synthetic-params file, missing {missing}")
            version = int(z["format"])
            if version > PARAMS_FORMAT:
                raise IndexFormatError(f"{path}: params format {version} is newer than supported {PARAMS_FORMAT}")
            return SyntheticParams(
                mean=z["mean"],
                between_factor=z["between_factor"],
                within_factor=z["within_factor"],
                between_scale=float(z["between_scale"]),
                within_scale=float(z["within_scale"]),
                noise_sigma=float(z["noise_sigma"]),
                real_stats=PairStats.from_array(z["real_stats"]),
                synthetic_stats=PairStats.from_array(z["synthetic_stats"]),
                source=str(z["source"]),
                n_source_images=int(z["n_source_images"]),
                n_source_identities=int(z["n_source_identities"]),
            )
    except (OSError, ValueError) as e:
        if isinstance(e, (IndexFormatError, InputError)):
            raise
        raise IndexFormatError(f"{path}: cannot read synthetic params ({e})") from e


# --------------------------------------------------------------------------- fitting


def estimate_plda(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Moment estimates ``(m [D], S_b [D, D], S_w [D, D])``, float64, balanced by identity.

    ``m`` is the mean of identity means ``mu_i``. ``S_w`` averages the unbiased within-identity
    covariances of identities with 2+ images. Since ``Cov(mu_i) = S_b + E[1/n_i] S_w`` for a
    mean of ``n_i`` images, ``S_b = Cov(mu_i) - mean_i(1/n_i) S_w`` (over all identities,
    singletons included); negative eigenvalues from sampling noise are clipped by the caller.
    """
    x = check_features(embeddings, name="embeddings").astype(np.float64)
    y = check_int_vector(labels, x.shape[0], "labels")
    _, inv, counts = np.unique(y, return_inverse=True, return_counts=True)
    multi = counts >= 2
    if counts.size < 3 or multi.sum() < 2:
        raise InputError(
            f"need at least 3 identities and 2 with 2+ images, got {counts.size} identities, {int(multi.sum())} with 2+"
        )
    mu = np.zeros((counts.size, x.shape[1]))
    np.add.at(mu, inv, x)
    mu /= counts[:, None]
    resid = x - mu[inv]
    w = np.where(multi[inv], 1.0 / (np.maximum(counts[inv], 2) - 1.0), 0.0) / multi.sum()
    s_w = resid.T @ (resid * w[:, None])
    s_b = np.cov(mu, rowvar=False) - np.mean(1.0 / counts) * s_w
    return mu.mean(axis=0), s_b, s_w


def psd_factor(s: np.ndarray) -> np.ndarray:
    """``F [D, R]`` with ``F F^T`` = ``s`` with negative eigenvalues clipped to 0; zero columns dropped."""
    evals, evecs = np.linalg.eigh((s + s.T) / 2)
    keep = evals > 0
    return (evecs[:, keep] * np.sqrt(evals[keep]))[:, ::-1]


def _noise_scale(g: np.ndarray, sigma: float) -> np.ndarray:
    """Log-normal per-image noise scale with ``E[tau^2] = 1``, so ``s_w S_w`` stays the noise covariance."""
    return np.exp(sigma * g - sigma * sigma)


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    x /= np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    return x


def calibrate(
    mean: np.ndarray,
    between_factor: np.ndarray,
    within_factor: np.ndarray,
    target: PairStats,
    n_identities: int = 3000,
    images_per_identity: int = 4,
    seed: int = 0,
    max_iter: int = 40,
    tol: float = 1e-4,
) -> tuple[float, float, float, PairStats]:
    """Fit ``(s_b, s_w, sigma)`` so the generator's :func:`pair_cosine_stats` match ``target``.

    Levenberg-Marquardt on ``theta = (log s_b, log s_w, sigma)`` with forward-difference
    Jacobians, on one fixed draw of ``n_identities * images_per_identity`` images (common random
    numbers make the objective a smooth function of theta). Stops when every statistic is within
    ``tol`` or after ``max_iter`` steps. Returns ``(s_b, s_w, sigma, achieved stats)``.
    """
    rng = _rng(seed, _CALIB_STREAM)
    offsets = (rng.standard_normal((n_identities, between_factor.shape[1])) @ between_factor.T)[
        np.repeat(np.arange(n_identities), images_per_identity)
    ]
    noise = rng.standard_normal((offsets.shape[0], within_factor.shape[1])) @ within_factor.T
    g = rng.standard_normal(offsets.shape[0])
    labels = np.repeat(np.arange(n_identities), images_per_identity)
    goal = target.as_array()

    def residual(theta: np.ndarray) -> np.ndarray:
        tau = _noise_scale(g, abs(theta[2]))[:, None]
        x = mean + math.exp(theta[0] / 2) * offsets + math.exp(theta[1] / 2) * tau * noise
        return pair_cosine_stats(_normalise_rows(x), labels).as_array() - goal

    theta, lam, h = np.array([0.0, 0.0, 0.3]), 1e-3, 1e-4
    r = residual(theta)
    for _ in range(max_iter):
        if np.max(np.abs(r)) < tol:
            break
        jac = np.stack([(residual(theta + h * e) - r) / h for e in np.eye(3)], axis=1)
        while True:
            step = np.linalg.solve(jac.T @ jac + lam * np.diag(np.diag(jac.T @ jac) + 1e-12), -jac.T @ r)
            r_new = residual(theta + step)
            if r_new @ r_new < r @ r:
                theta, r, lam = theta + step, r_new, lam / 3
                break
            lam *= 4
            if lam > 1e8:
                break
        if lam > 1e8:
            break
    return math.exp(theta[0]), math.exp(theta[1]), abs(float(theta[2])), PairStats.from_array(r + goal)


def fit_synthetic_params(
    embeddings: np.ndarray,
    labels: np.ndarray,
    calibration_identities: int = 3000,
    check_identities: int = 3000,
    seed: int = 0,
    source: str = "",
) -> SyntheticParams:
    """Fit :class:`SyntheticParams` to labelled embeddings ``[N, D]`` (expected L2-normalised).

    Moment estimates (:func:`estimate_plda`), PSD factors (:func:`psd_factor`), calibration of the
    scalars (:func:`calibrate`), then ``synthetic_stats`` measured on an independent
    :class:`SyntheticGallery` of ``check_identities`` x 4 images -- the float32 serving generator,
    not the calibration sample.
    """
    x = check_features(embeddings, name="embeddings")
    y = check_int_vector(labels, x.shape[0], "labels")
    check_positive_int(calibration_identities, "calibration_identities")
    check_positive_int(check_identities, "check_identities")
    mean, s_b, s_w = estimate_plda(x, y)
    f_b, f_w = psd_factor(s_b), psd_factor(s_w)
    real = pair_cosine_stats(x, y)
    s_b_scale, s_w_scale, sigma, _ = calibrate(mean, f_b, f_w, real, n_identities=calibration_identities, seed=seed)
    provisional = SyntheticParams(
        mean=mean, between_factor=f_b, within_factor=f_w, between_scale=s_b_scale, within_scale=s_w_scale,
        noise_sigma=sigma, real_stats=real, synthetic_stats=real, source=source,
        n_source_images=x.shape[0], n_source_identities=int(np.unique(y).size),
    )  # fmt: skip
    gx, gy = SyntheticGallery(check_identities, 4, seed=seed + 1, params=provisional).materialize()
    return replace(provisional, synthetic_stats=pair_cosine_stats(gx, gy))


# --------------------------------------------------------------------------- galleries


def _random_lift(dim: int, d: int, seed: int) -> np.ndarray:
    """``float32 [d, dim]`` with orthonormal rows (``Q Q^T = I_d``): ``x @ Q`` keeps inner products."""
    q, r = np.linalg.qr(_rng(seed, _LIFT_STREAM).standard_normal((dim, d)))
    q *= np.sign(np.diag(r))  # unique QR: the lift depends on the seed only
    return np.ascontiguousarray(q.T, dtype=np.float32)


@dataclass(frozen=True, eq=False)
class SyntheticGallery:
    """A gallery of ``n_identities`` synthetic identities, generated in a stream.

    Args:
        n_identities: number of identities (labels ``0 .. n_identities-1``).
        images_per_identity: a positive int (every identity has that many images), ``"heavy"``
            (:data:`HEAVY`, truncated Zipf with :attr:`ZipfCounts.mean` images) or a :class:`ZipfCounts`.
        dim: output dimension; ``> params.dim`` maps the native vectors through a seeded random
            orthonormal lift, which keeps every inner product (the vectors span a
            ``params.dim``-dimensional subspace).
        seed: non-negative integer; everything (counts, offsets, noise, lift) derives from it.
        params: generator parameters; ``None`` uses the shipped LFW-derived file.

    Images of an identity are consecutive: the gallery is ordered by label. Memory held by the
    object is 16 bytes per identity (counts and prefix sums); generation holds one chunk and one
    block. Not thread-safe to share a single iterator; separate iterators are independent.
    """

    n_identities: int
    images_per_identity: int | str | ZipfCounts = 4
    dim: int = 128
    seed: int = 0
    params: SyntheticParams | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        set_ = functools.partial(object.__setattr__, self)  # frozen: fields are fixed after validation
        set_("n_identities", check_positive_int(self.n_identities, "n_identities"))
        set_("seed", _check_seed(self.seed))
        if self.params is None:
            set_("params", load_params())
        elif not isinstance(self.params, SyntheticParams):
            raise InputError(f"params must be SyntheticParams or None, got {type(self.params).__name__}")
        p = self.params
        set_("dim", check_positive_int(self.dim, "dim"))
        if self.dim < p.dim:
            raise InputError(f"dim must be at least the native dimension {p.dim}, got {self.dim}")
        per = self.images_per_identity
        if isinstance(per, str):
            if per != "heavy":
                raise InputError(f'images_per_identity must be a positive int, "heavy" or ZipfCounts, got {per!r}')
            per = HEAVY
            set_("images_per_identity", per)
        if isinstance(per, ZipfCounts):
            counts = per.sample(self.n_identities, _rng(self.seed, _COUNTS_STREAM))
        else:
            counts = np.full(self.n_identities, check_positive_int(per, "images_per_identity"), dtype=np.int64)
        counts.flags.writeable = False
        set_("_counts", counts)
        set_("_bounds", np.concatenate([[0], np.cumsum(counts)]))
        set_("_mean", p.mean)
        set_("_between", np.ascontiguousarray((math.sqrt(p.between_scale) * p.between_factor).T, dtype=np.float32))
        set_("_within", np.ascontiguousarray((math.sqrt(p.within_scale) * p.within_factor).T, dtype=np.float32))
        set_("_lift", _random_lift(self.dim, p.dim, self.seed) if self.dim > p.dim else None)

    @property
    def n_items(self) -> int:
        return int(self._bounds[-1])

    @property
    def identity_counts(self) -> np.ndarray:
        """``int64 [n_identities]`` images per identity (read-only)."""
        return self._counts

    # -- functional core: one fixed block at a time ---------------------------------------------

    def _identity_block_offsets(self, block: int) -> np.ndarray:
        """``float32 [IDENTITY_BLOCK, D]`` offsets of identities ``block * IDENTITY_BLOCK ...``."""
        z = _rng(self.seed, _OFFSET_STREAM, block).standard_normal((IDENTITY_BLOCK, self._between.shape[0]), dtype=np.float32)
        return z @ self._between

    def _offsets(self, identities: np.ndarray) -> np.ndarray:
        """``float32 [n, D]`` offsets of arbitrary identities, one block generated per distinct block."""
        out = np.empty((identities.size, self.params.dim), dtype=np.float32)
        blocks = identities // IDENTITY_BLOCK
        order = np.argsort(blocks, kind="stable")
        uniq, starts = np.unique(blocks[order], return_index=True)
        for b, rows in zip(uniq, np.split(order, starts[1:])):
            out[rows] = self._identity_block_offsets(int(b))[identities[rows] - b * IDENTITY_BLOCK]
        return out

    def _compose(self, offsets: np.ndarray, z: np.ndarray, g: np.ndarray) -> np.ndarray:
        """``normalise(m + offset + tau * z W)`` then lift; all ``[n, ...]`` float32.

        In place on the one ``[n, D]`` product: generation is memory-bound after the draws.
        """
        x = z @ self._within
        x *= _noise_scale(g, self.params.noise_sigma).astype(np.float32)[:, None]
        x += offsets
        x += self._mean
        x = _normalise_rows(x)
        return x if self._lift is None else x @ self._lift

    def _labels(self, start: int, stop: int) -> np.ndarray:
        first = int(np.searchsorted(self._bounds, start, side="right")) - 1
        last = int(np.searchsorted(self._bounds, stop - 1, side="right")) - 1
        ids = np.arange(first, last + 1)
        reps = np.minimum(self._bounds[ids + 1], stop) - np.maximum(self._bounds[ids], start)
        return np.repeat(ids, reps)

    def _item_block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """Features ``float32 [B, dim]`` and labels ``int64 [B]`` of item block ``block``."""
        start = block * ITEM_BLOCK
        stop = min(start + ITEM_BLOCK, self.n_items)
        labels = self._labels(start, stop)
        n = stop - start
        rng = _rng(self.seed, _NOISE_STREAM, block)
        # always the full block's draws, so a block's values never depend on the gallery size
        z = rng.standard_normal((ITEM_BLOCK, self._within.shape[0]), dtype=np.float32)
        g = rng.standard_normal(ITEM_BLOCK)
        offsets = self._range_offsets(labels)
        # Matrix products in fixed COMPOSE_ROWS-row pieces (the last one zero-padded): BLAS may
        # sum in a different order for a different shape, so a product over "the rows this
        # gallery has" would change the last bits with the gallery size. Same shape, same bits.
        out = np.empty((n, self.dim), dtype=np.float32)
        for lo in range(0, n, COMPOSE_ROWS):
            hi = min(lo + COMPOSE_ROWS, n)
            piece = np.zeros((COMPOSE_ROWS, offsets.shape[1]), dtype=np.float32)
            piece[: hi - lo] = offsets[lo:hi]
            out[lo:hi] = self._compose(piece, z[lo : lo + COMPOSE_ROWS], g[lo : lo + COMPOSE_ROWS])[: hi - lo]
        return out, labels

    def _range_offsets(self, labels: np.ndarray) -> np.ndarray:
        """Offsets ``[n, D]`` of sorted, contiguous ``labels`` (an item block): blocks generated in order."""
        first, last = int(labels[0]) // IDENTITY_BLOCK, int(labels[-1]) // IDENTITY_BLOCK
        table = np.concatenate([self._identity_block_offsets(b) for b in range(first, last + 1)])
        return table[labels - first * IDENTITY_BLOCK]

    def _rows(self, start: int, stop: int, cache: dict) -> tuple[np.ndarray, np.ndarray]:
        feats = np.empty((stop - start, self.dim), dtype=np.float32)
        labels = np.empty(stop - start, dtype=np.int64)
        for b in range(start // ITEM_BLOCK, (stop - 1) // ITEM_BLOCK + 1):
            if cache.get("block") != b:
                cache["block"], cache["data"] = b, self._item_block(b)
            bx, by = cache["data"]
            lo, hi = max(start, b * ITEM_BLOCK), min(stop, (b + 1) * ITEM_BLOCK)
            feats[lo - start : hi - start] = bx[lo - b * ITEM_BLOCK : hi - b * ITEM_BLOCK]
            labels[lo - start : hi - start] = by[lo - b * ITEM_BLOCK : hi - b * ITEM_BLOCK]
        return feats, labels

    # -- public ---------------------------------------------------------------------------------

    def iter_chunks(self, chunk_size: int = 100_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(features float32 [c, dim], labels int64 [c])`` in gallery order, ``c <= chunk_size``.

        The concatenation is bit-identical for every ``chunk_size`` (randomness is keyed on fixed
        blocks); each block is generated once.
        """
        chunk_size = check_positive_int(chunk_size, "chunk_size")
        cache: dict = {}
        for start in range(0, self.n_items, chunk_size):
            yield self._rows(start, min(start + chunk_size, self.n_items), cache)

    def materialize(self, max_items: int = 2_000_000) -> tuple[np.ndarray, np.ndarray]:
        """The whole gallery ``(features [n_items, dim], labels [n_items])``; refuses more than ``max_items``."""
        if self.n_items > check_positive_int(max_items, "max_items"):
            raise InputError(f"gallery has {self.n_items} items, more than max_items={max_items}: use iter_chunks()")
        return self._rows(0, self.n_items, {})

    def probes(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``n`` fresh images of gallery identities: ``(features float32 [n, dim], labels int64 [n])``.

        Identities are drawn uniformly (with replacement) from the gallery's; each probe has the
        identity's offset (regenerated, identical to the gallery's) and new noise, so it is never a
        copy of a gallery vector. Deterministic in ``(gallery seed, seed)``.
        """
        n = check_positive_int(n, "n")
        rng = _rng(self.seed, _PROBE_STREAM, _check_seed(seed))
        labels = rng.integers(0, self.n_identities, size=n, dtype=np.int64)
        z = rng.standard_normal((n, self._within.shape[0]), dtype=np.float32)
        g = rng.standard_normal(n)
        return self._compose(self._offsets(labels), z, g), labels


def make_identity_gallery(
    n_identities: int, per_identity: int, dim: int = 128, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Small in-memory gallery: ``(features float32 [n_identities * per_identity, dim], labels int64)``."""
    return SyntheticGallery(n_identities, per_identity, dim=dim, seed=seed).materialize()
