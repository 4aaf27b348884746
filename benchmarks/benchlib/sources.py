"""Where a benchmark's vectors come from: a synthetic identity gallery or an embeddings file.

A source gives the gallery as unit-norm float32 chunks (never held whole at 10M), a training set
whose identities are disjoint from the gallery's, and probes (fresh images of gallery identities,
or gallery items that never count themselves as a match). :func:`exact_neighbours` is the ground
truth every method is scored against.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import faiss
import numpy as np

from hashindex.core.errors import InputError
from hashindex.evaluation.exact import ExactTopK, unit_rows
from hashindex.training.data import identity_split, load_embeddings
from hashindex.training.data.synthetic import SyntheticGallery

from benchlib.config import BenchConfig


@dataclass
class Probes:
    """Queries: ``features float32 [nq, D]``, identity ``labels int64 [nq]`` and ``self_ids int64 [nq]``,
    the gallery id of the probe itself (excluded from its results), or None when probes are not
    in the gallery."""

    features: np.ndarray
    labels: np.ndarray
    self_ids: np.ndarray | None = None

    def __len__(self) -> int:
        return self.features.shape[0]


class Source(Protocol):
    """Where a benchmark's vectors come from. Gallery ids are positions ``0 .. n_items-1``."""

    n_items: int
    dim: int
    gallery_labels: np.ndarray  # int64 [n_items]
    train: np.ndarray  # float32 [T, D], identities disjoint from the gallery's
    probes: Probes

    def chunks(self, chunk_size: int) -> Iterator[np.ndarray]:
        """The gallery in order, as unit-norm float32 ``[c, D]`` chunks."""
        ...

    def describe(self) -> dict: ...


class SyntheticSource:
    """A synthetic gallery of ``n`` items and a disjoint training set, from one generator.

    One :class:`SyntheticGallery` (one seed, hence one random lift when ``dim > 128``) holds
    both: identities ``0 .. T_ids-1`` are the training set, the following identities the
    gallery (its first ``n`` items). Probes are fresh images of gallery identities only.
    """

    def __init__(self, n: int, dim: int, per_identity: int | str, seed: int, train_items: int, n_probes: int):
        self.n_items, self.dim, self.seed = n, dim, seed
        guess = math.ceil((n + train_items) / 4) + 16
        while True:
            gen = SyntheticGallery(guess, per_identity, dim=dim, seed=seed)
            bounds = np.concatenate([[0], np.cumsum(gen.identity_counts)])
            self.n_train_ids = int(np.searchsorted(bounds, train_items, side="left"))
            self.start = int(bounds[self.n_train_ids])  # first gallery item
            if bounds[-1] >= self.start + n:
                break
            guess *= 2
        # the generator must end with the gallery's last identity, so probes never come from beyond it
        n_ids = int(np.searchsorted(bounds, self.start + n, side="left"))
        self.gen = SyntheticGallery(n_ids, per_identity, dim=dim, seed=seed)
        counts = self.gen.identity_counts
        self.gallery_labels = np.repeat(np.arange(n_ids, dtype=np.int64), counts)[self.start : self.start + n]
        self.train = unit_rows(self._items(0, self.start))
        self.train_labels = np.repeat(np.arange(self.n_train_ids, dtype=np.int64), counts[: self.n_train_ids])
        self.probes = self._probes(n_probes)

    def _items(self, lo: int, hi: int, chunk_size: int = 100_000) -> np.ndarray:
        if hi <= lo:
            return np.empty((0, self.dim), np.float32)
        return np.concatenate(list(self._stream(lo, hi, chunk_size)))

    def _stream(self, lo: int, hi: int, chunk_size: int) -> Iterator[np.ndarray]:
        pos = 0
        for x, _ in self.gen.iter_chunks(chunk_size):
            a, b = max(lo - pos, 0), min(hi - pos, x.shape[0])
            if b > a:
                yield x[a:b]
            pos += x.shape[0]
            if pos >= hi:
                return

    def chunks(self, chunk_size: int) -> Iterator[np.ndarray]:
        for x in self._stream(self.start, self.start + self.n_items, chunk_size):
            yield unit_rows(x)

    def _probes(self, n: int) -> Probes:
        # the generator draws probe identities uniformly over all of its identities: draw
        # extra and keep gallery identities, deterministically in (seed, n)
        n_ids = self.gen.n_identities
        draw = math.ceil(n * n_ids / max(n_ids - self.n_train_ids, 1) * 1.2) + 64
        while True:
            x, y = self.gen.probes(draw, seed=self.seed + 1)
            keep = np.flatnonzero(y >= self.n_train_ids)[:n]
            if keep.size == n:
                return Probes(unit_rows(x[keep]), y[keep], None)
            draw *= 2

    def describe(self) -> dict:
        counts = self.gen.identity_counts
        return {
            "kind": "synthetic",
            "generator": "hashindex.training.data.synthetic.SyntheticGallery (PLDA fitted to LFW MobileFaceNet-128)",
            "n_items": self.n_items,
            "n_identities": int(np.unique(self.gallery_labels).size),
            "per_identity": str(self.gen.images_per_identity),
            "dim": self.dim,
            "seed": self.seed,
            "train_items": int(self.train.shape[0]),
            "train_identities": self.n_train_ids,
            "train_identity_mean_count": float(counts[: self.n_train_ids].mean()) if self.n_train_ids else 0.0,
            "probes": len(self.probes),
        }


class NpzSource:
    """An embeddings file split by identity: hashers train on one side, gallery + probes on the other.

    Probes are gallery items whose identity has another gallery image; a probe never matches
    itself (``self_ids``).
    """

    def __init__(self, path: str, val_fraction: float, seed: int, n_probes: int):
        data = load_embeddings(path)
        if data.labels is None:
            raise InputError(f"{path}: has no labels; identity-disjoint evaluation needs them")
        self.path, self.seed, self.val_fraction = path, seed, val_fraction
        train_idx, val_idx = identity_split(data.labels, val_fraction=val_fraction, seed=seed)
        self.train = unit_rows(data.features[train_idx])
        self.train_labels = data.labels[train_idx]
        self._gallery = unit_rows(data.features[val_idx])
        self.gallery_labels = data.labels[val_idx]
        self.n_items, self.dim = self._gallery.shape
        _, inverse, counts = np.unique(self.gallery_labels, return_inverse=True, return_counts=True)
        eligible = np.flatnonzero(counts[inverse] >= 2)
        chosen = np.sort(np.random.default_rng(seed).permutation(eligible)[:n_probes])
        self.probes = Probes(self._gallery[chosen], self.gallery_labels[chosen], chosen.astype(np.int64))
        self.n_train_ids = int(np.unique(data.labels[train_idx]).size)

    def chunks(self, chunk_size: int) -> Iterator[np.ndarray]:
        for s in range(0, self.n_items, chunk_size):
            yield self._gallery[s : s + chunk_size]

    def describe(self) -> dict:
        return {
            "kind": "npz",
            "path": str(self.path),
            "split": f"hashindex.training.data.identity_split(val_fraction={self.val_fraction}, seed={self.seed})",
            "n_items": self.n_items,
            "n_identities": int(np.unique(self.gallery_labels).size),
            "dim": self.dim,
            "train_items": int(self.train.shape[0]),
            "train_identities": self.n_train_ids,
            "probes": len(self.probes),
            "probes_exclude_self": True,
        }


def make_source(cfg: BenchConfig) -> SyntheticSource | NpzSource:
    if cfg.data:
        return NpzSource(cfg.data, cfg.val_fraction, cfg.seed, cfg.probes)
    train_items = cfg.train_items or max(20_000, 40 * cfg.ivf_nlist(cfg.n))
    return SyntheticSource(cfg.n, cfg.dim, cfg.per_identity, cfg.seed, train_items, cfg.probes)


def exact_neighbours(chunks: Iterator[np.ndarray], probes: Probes, k: int) -> np.ndarray:
    """Exact inner-product top-k ``int64 [nq, k]`` over a streamed gallery (never held whole)."""
    top = ExactTopK(probes.features, k + (probes.self_ids is not None), metric="ip")
    for x in chunks:
        top.add(x)
    return top.ids(k, probes.self_ids)


@dataclass
class InMemoryGallery:
    """A synthetic gallery held whole (the 200k-1M studies): ``source``, ``x float32 [n, D]``,
    probes ``q float32 [nq, D]``, their exact inner-product top-k ``truth int64 [nq, k]`` and the
    exact index that found it (the baseline a study times)."""

    source: SyntheticSource | NpzSource
    x: np.ndarray
    q: np.ndarray
    truth: np.ndarray
    exact: faiss.Index


def gallery_in_memory(n: int, seed: int, probes: int, k: int) -> InMemoryGallery:
    source = make_source(BenchConfig(n=n, seed=seed, probes=probes))
    x = np.concatenate(list(source.chunks(100_000)))
    q = source.probes.features
    exact = faiss.IndexFlatIP(x.shape[1])
    exact.add(x)
    return InMemoryGallery(source, x, q, exact.search(q, k)[1], exact)


def add_study_arguments(ap) -> None:
    """The flags every in-memory study shares (gallery size, seed, probes, k, where results go)."""
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=21, help="gallery seed (not one the other benchmarks use)")
    ap.add_argument("--probes", type=int, default=500)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--name", default="", help="results file name (default: the study and the gallery size)")
    ap.add_argument("--out-dir", default="benchmarks/results")
