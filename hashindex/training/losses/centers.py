"""Hash centers for Central Similarity Quantization (Yuan et al., CVPR 2020), as pure functions.

Centers are ``uint8 {0,1} [C, K]`` (bit k of class c's target code; bit 1 means ``h_k > 0``).
Hamming distances are computed as ``(K - s_a . s_b) / 2`` on +-1 float32 matrices, in row blocks,
so BLAS does the work and memory stays bounded (``block * C`` floats).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from hashindex.core.errors import InputError
from hashindex.core.validation import check_positive_int

CenterKind = Literal["auto", "hadamard", "bernoulli"]

# Floats per block of the distance matrix (64 MB of float32).
_BLOCK_FLOATS = 1 << 24
# Up to this many bits, candidate replacement codes are *all* 2^K codes instead of random ones.
_EXHAUSTIVE_BITS = 12
# Multiply-adds the greedy improvement of Bernoulli centers may spend by default (timing: benchmarks/README.md).
_ATTEMPT_BUDGET = 1 << 34


class CenterCollisionWarning(UserWarning):
    """Some classes share a hash center (minimum pairwise Hamming distance 0)."""


@dataclass(frozen=True)
class HashCenters:
    """Centers ``uint8 [C, K]``, how they were made, and their minimum pairwise Hamming distance."""

    centers: np.ndarray
    kind: str
    min_distance: int


def _signs(centers: np.ndarray) -> np.ndarray:
    return 1.0 - 2.0 * np.asarray(centers, dtype=np.float32)


def check_centers(centers: np.ndarray | torch.Tensor, bits: int | None = None, num_classes: int | None = None) -> np.ndarray:
    """Validate centers given as {0,1} or {-1,+1} ``[C, K]``; return ``uint8 {0,1}``."""
    c = centers.detach().cpu().numpy() if isinstance(centers, torch.Tensor) else np.asarray(centers)
    if c.ndim != 2:
        raise InputError(f"centers must be 2-D [num_classes, bits], got shape {c.shape}")
    if num_classes is not None and c.shape[0] != num_classes:
        raise InputError(f"centers have {c.shape[0]} rows, expected num_classes={num_classes}")
    if bits is not None and c.shape[1] != bits:
        raise InputError(f"centers have {c.shape[1]} bits, expected bits={bits}")
    values = np.unique(c)
    if np.isin(values, [0, 1]).all():
        return c.astype(np.uint8)
    if np.isin(values, [-1, 1]).all():
        return (c > 0).astype(np.uint8)
    raise InputError(f"centers must hold only {{0,1}} or {{-1,+1}}, got values {values[:6].tolist()}")


def hadamard_matrix(bits: int) -> np.ndarray:
    """Sylvester's Hadamard matrix ``int8 +-1 [K, K]``, K a power of two; rows are orthogonal."""
    bits = check_positive_int(bits, "bits")
    if bits & (bits - 1):
        raise InputError(f"a Hadamard matrix needs bits to be a power of two, got {bits}")
    h = np.ones((1, 1), dtype=np.int8)
    while h.shape[0] < bits:
        h = np.block([[h, h], [h, -h]])
    return h


def hadamard_centers(bits: int, num_classes: int) -> np.ndarray:
    """Rows of ``[H_K; -H_K]`` as {0,1} centers ``[C, K]`` (CSQ, Sec. 3.2.1).

    Needs K a power of two and ``C <= 2K``. Any two of the first K rows (and any row of ``H`` vs a
    row of ``-H`` other than its negation) are exactly K/2 apart; ``h`` and ``-h`` are K apart.
    """
    num_classes = check_positive_int(num_classes, "num_classes")
    h = hadamard_matrix(bits)
    if num_classes > 2 * bits:
        raise InputError(f"Hadamard centers give at most 2 * bits = {2 * bits} classes, got {num_classes}")
    return (np.concatenate([h, -h])[:num_classes] > 0).astype(np.uint8)


def nearest_center_distances(centers: np.ndarray) -> np.ndarray:
    """``int64 [C]``: Hamming distance of each center to its nearest *other* center (K if C == 1)."""
    centers = check_centers(centers)
    c, k = centers.shape
    s = _signs(centers)
    out = np.full(c, k, dtype=np.int64)
    block = max(1, _BLOCK_FLOATS // max(c, 1))
    for start in range(0, c, block):
        stop = min(start + block, c)
        d = (k - s[start:stop] @ s.T) * 0.5
        d[np.arange(stop - start), np.arange(start, stop)] = k + 1  # ignore self
        out[start:stop] = np.minimum(np.rint(d.min(axis=1)).astype(np.int64), k)
    return out


def min_pairwise_hamming(centers: np.ndarray) -> int:
    """Minimum Hamming distance over all pairs of distinct rows (K for a single center)."""
    return int(nearest_center_distances(centers).min())


def _candidate_codes(rng: np.random.Generator, bits: int, count: int) -> np.ndarray:
    if bits <= _EXHAUSTIVE_BITS:
        codes = np.arange(1 << bits, dtype=np.int64)
        return ((codes[:, None] >> np.arange(bits)) & 1).astype(np.uint8)
    return rng.integers(0, 2, size=(count, bits), dtype=np.uint8)


def _improve_min_distance(
    centers: np.ndarray, nearest: np.ndarray, rng: np.random.Generator, candidates: int, max_attempts: int
) -> tuple[np.ndarray, int]:
    """Greedily re-draw centers that sit at the current minimum distance; return them and the
    exact minimum pairwise distance.

    ``nearest`` holds a *lower bound* of each row's nearest distance (exact at the start): replacing
    row i can only raise the true value for rows whose nearest was i, so those are re-checked lazily
    when they reach the minimum. A row is replaced by the candidate farthest from all other rows,
    only when that strictly raises its own nearest distance. Stops after ``max_attempts`` candidate
    batches (each costs ``candidates * C * K`` multiply-adds) or a pass over the minimal rows that
    changes nothing.
    """
    centers = centers.copy()
    c, k = centers.shape
    s = _signs(centers)
    nearest = nearest.copy()

    def exact_nearest(i: int) -> int:
        d_i = (k - s @ s[i]) * 0.5
        d_i[i] = k + 1
        return min(int(round(d_i.min())), k)

    attempts = 0
    while attempts < max_attempts:
        low = nearest.min()
        progress = False
        for i in np.flatnonzero(nearest == low):
            if attempts >= max_attempts:
                break
            exact = exact_nearest(i)
            if exact > nearest[i]:  # stale lower bound
                nearest[i] = exact
                progress = True
                continue
            attempts += 1
            cand = _candidate_codes(rng, k, candidates)
            d_c = (k - _signs(cand) @ s.T) * 0.5  # [M, C]
            d_c[:, i] = k + 1
            cand_min = d_c.min(axis=1)
            best = int(np.argmax(cand_min))
            if cand_min[best] > exact:
                centers[i] = cand[best]
                s[i] = _signs(cand[best])
                nearest = np.minimum(nearest, np.rint(d_c[best]).astype(np.int64))
                nearest[i] = min(int(round(cand_min[best])), k)
                progress = True
        if not progress:
            break
    # The true minimum is >= min(nearest); verify rows in increasing lower-bound order until no
    # unverified row can beat the best exact value found.
    best_exact = k
    for i in np.argsort(nearest, kind="stable"):
        if nearest[i] >= best_exact:
            break
        best_exact = min(best_exact, exact_nearest(int(i)))
    return centers, best_exact


def _bernoulli_centers_and_min(
    bits: int, num_classes: int, seed: int, draws: int, candidates: int, max_attempts: int | None
) -> tuple[np.ndarray, int]:
    bits = check_positive_int(bits, "bits")
    num_classes = check_positive_int(num_classes, "num_classes")
    draws = check_positive_int(draws, "draws")
    candidates = check_positive_int(candidates, "candidates")
    if max_attempts is None:
        max_attempts = max(64, min(4 * num_classes, _ATTEMPT_BUDGET // (candidates * num_classes * bits)))
    rng = np.random.default_rng(seed)
    best, best_nn, best_key = None, None, None
    for _ in range(draws):
        cand = rng.integers(0, 2, size=(num_classes, bits), dtype=np.uint8)
        nn = nearest_center_distances(cand)
        key = (int(nn.min()), -int(np.count_nonzero(nn == nn.min())))
        if best_key is None or key > best_key:
            best, best_nn, best_key = cand, nn, key
    return _improve_min_distance(best, best_nn, rng, candidates, max_attempts)


def bernoulli_centers(
    bits: int,
    num_classes: int,
    seed: int = 0,
    draws: int = 3,
    candidates: int = 32,
    max_attempts: int | None = None,
) -> np.ndarray:
    """Random centers, each bit Bernoulli(0.5) (CSQ, Sec. 3.2.1), spread to a large minimum distance.

    Makes ``draws`` independent random draws and keeps the one with the largest minimum pairwise
    Hamming distance (fewest rows at that minimum on ties), then improves it greedily: centers at
    the minimum are replaced by the best of ``candidates`` fresh random codes (all 2^K codes when
    K <= 12, so duplicates disappear whenever ``2^K >= C``). ``max_attempts`` candidate batches
    bound the work (default: about 2^34 multiply-adds in all, at most ``4 C``; timings in
    benchmarks/README.md). Deterministic for a given ``seed``.
    """
    return _bernoulli_centers_and_min(bits, num_classes, seed, draws, candidates, max_attempts)[0]


def can_use_hadamard(bits: int, num_classes: int) -> bool:
    return bits > 0 and not bits & (bits - 1) and num_classes <= 2 * bits


def make_centers(
    bits: int,
    num_classes: int,
    kind: CenterKind = "auto",
    seed: int = 0,
    allow_duplicates: bool = False,
) -> HashCenters:
    """Centers for ``num_classes`` classes at ``bits`` bits, with their minimum distance.

    ``"auto"``: Hadamard when K is a power of two and ``C <= 2K`` (CSQ's rule), else Bernoulli.
    When two classes end up with the same center (always so when ``2^K < C``) this raises
    :class:`InputError`, or with ``allow_duplicates=True`` warns with
    :class:`CenterCollisionWarning`; both messages give the achieved minimum distance.
    """
    bits = check_positive_int(bits, "bits")
    num_classes = check_positive_int(num_classes, "num_classes")
    if kind not in ("auto", "hadamard", "bernoulli"):
        raise InputError(f"center kind must be 'auto', 'hadamard' or 'bernoulli', got {kind!r}")
    if kind == "hadamard" or (kind == "auto" and can_use_hadamard(bits, num_classes)):
        centers = hadamard_centers(bits, num_classes)
        result = HashCenters(centers, "hadamard", min_pairwise_hamming(centers))
    else:
        centers, min_distance = _bernoulli_centers_and_min(bits, num_classes, seed, 3, 32, None)
        result = HashCenters(centers, "bernoulli", min_distance)
    check_distinct(result, allow_duplicates)
    return result


def check_distinct(centers: HashCenters, allow_duplicates: bool) -> None:
    """Raise (or warn, with ``allow_duplicates``) when two classes share a center."""
    if centers.min_distance > 0:
        return
    c, k = centers.centers.shape
    why = f"2^{k} < {c} classes, so " if k < 63 and (1 << k) < c else ""
    msg = (
        f"{why}some of the {c} classes share a {k}-bit hash center "
        f"(achieved minimum pairwise Hamming distance {centers.min_distance}); use more bits"
    )
    if not allow_duplicates:
        raise InputError(msg + " or pass allow_duplicates=True")
    warnings.warn(msg, CenterCollisionWarning, stacklevel=3)


def random_tie_bits(num_classes: int, bits: int, seed: int = 0) -> np.ndarray:
    """Seeded random bits ``uint8 [C, K]`` used by :func:`multilabel_centers` to break ties."""
    rng = np.random.default_rng([seed, 0x7E5])  # a stream separate from the centers' own
    return rng.integers(0, 2, size=(num_classes, bits), dtype=np.uint8)


def multilabel_centers(labels, centers, tie_bits):
    """Per-bit majority vote of the centers of each sample's labels (CSQ, Sec. 3.2.2).

    ``labels`` {0,1} ``[B, C]``, ``centers`` and ``tie_bits`` {0,1} ``[C, K]`` -> {0,1} ``[B, K]``
    (torch tensors or numpy arrays; the result has the type and device of ``labels``).
    Bit k is 1 when more than half of the sample's labels have bit k set. On a tie it is the XOR of
    ``tie_bits[c, k]`` over the sample's labels c: a seeded random bit that depends only on the
    label set, so every occurrence of the same label set gets the same center across batches.
    A sample with no label raises :class:`InputError`.
    """
    as_numpy = not isinstance(labels, torch.Tensor)
    y = torch.as_tensor(labels)
    if y.ndim != 2:
        raise InputError(f"multi-label targets must be 2-D [B, num_classes], got shape {tuple(y.shape)}")
    dev = y.device
    c = torch.as_tensor(centers, device=dev).to(torch.float32)
    t = torch.as_tensor(tie_bits, device=dev).to(torch.float32)
    if c.shape != t.shape or y.shape[1] != c.shape[0]:
        raise InputError(
            f"labels [B, C], centers and tie_bits [C, K] must agree, got {tuple(y.shape)}, "
            f"{tuple(c.shape)}, {tuple(t.shape)}"
        )
    if not ((y == 0) | (y == 1)).all():
        raise InputError("multi-label targets must hold only 0 and 1")
    yf = y.to(torch.float32)
    n = yf.sum(dim=1, keepdim=True)
    if (n == 0).any():
        rows = torch.where(n[:, 0] == 0)[0][:5].tolist()
        raise InputError(f"samples without any label have no center (rows {rows})")
    votes = 2.0 * (yf @ c)  # exact in float32 for < 2^23 labels per sample
    tie = torch.remainder(yf @ t, 2.0)
    out = torch.where(votes == n, tie, (votes > n).to(torch.float32)).to(torch.uint8)
    return out.cpu().numpy() if as_numpy else out
