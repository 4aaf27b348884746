"""Identity-aware search figures (issue 15): what filters and group_by cost, and open-set TAR on LFW.

Part 1 (scale): a synthetic identity gallery, SyntheticGallery(250_000, 4, seed=4242) = 1M items
(``--identities`` scales it down), in a HashIndex (128-bit ITQ, flat backend), one FAISS thread.
Times per query, k=10, default multi-probe search, for: a plain search; label filters allowing
1%, 10%, 50% of the items (labels drawn at random); the same with id filters; group_by="label";
and the asymmetric ranking plain vs a 10% filter.

Part 2 (LFW dev open set): identities split in two halves at random. Half A calibrates the
threshold (all genuine / impostor pairs, hashindex.evaluation.calibration) at FAR 1e-3 and 1e-4
and fits the hasher. Half B is measured: verification TAR / FAR on all its pairs at that
threshold, and open-set identification -- identities with 2+ images are enrolled (all images but
the last), their last images are known probes, the images of single-image identities are unknown
probes. search(k=1, group_by="label", min_score=t): a known probe counts when the returned label
is right (DIR), an unknown probe is a false accept when anything comes back. Exact (radius =
bits: every item reranked) vs the default hashed search.

    python benchmarks/identity.py                       # 1M; about 15 minutes on one core
    python benchmarks/identity.py --identities 25000    # 100k
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import faiss
import numpy as np

from hashindex import HashIndex
from hashindex.evaluation.calibration import calibrate
from hashindex.training.data.embeddings import load_embeddings
from hashindex.training.data.synthetic import SyntheticGallery

LFW = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw" / "lfw_mfn128_dev.npz"


def per_query_ms(fn, nq: int, repeat: int = 3) -> float:
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return 1e3 * best / nq


def scale(n_identities: int, nq: int, seed: int = 4242) -> None:
    gallery = SyntheticGallery(n_identities, 4, seed=seed)
    index = HashIndex(gallery.dim, bits=128, backend="flat")
    t = time.perf_counter()
    for features, labels in gallery.iter_chunks(100_000):
        index.add(features, labels=labels)
    n = len(index)
    print(f"\n== scale: {n:,} items ({n_identities:,} identities x 4), 128-bit ITQ, flat, 1 thread "
          f"(built in {time.perf_counter() - t:.0f} s)")  # fmt: skip
    q, _ = gallery.probes(nq, seed=1)
    rng = np.random.default_rng(0)
    ham = {"ranking": "hamming"}  # the Hamming rows (the default ranking is asymmetric: rows below)
    plain_ms = per_query_ms(lambda: index.search(q, k=10, **ham), nq)
    rows = [("plain search", plain_ms, index.search(q, k=10, **ham).n_candidates.mean())]
    for frac in (0.01, 0.10, 0.50):
        labels = rng.choice(n_identities, size=max(1, int(frac * n_identities)), replace=False)
        ids = rng.choice(n, size=max(1, int(frac * n)), replace=False)
        for name, kw in ((f"filter_labels {frac:.0%} allowed", {"filter_labels": labels, **ham}),
                         (f"filter_ids    {frac:.0%} allowed", {"filter_ids": ids, **ham})):  # fmt: skip
            ms = per_query_ms(lambda: index.search(q, k=10, **kw), nq)
            rows.append((name, ms, index.search(q, k=10, **kw).n_candidates.mean()))
    for g in (1, 3):
        ms = per_query_ms(lambda: index.search(q, k=10, group_by="label", group_size=g, **ham), nq)
        res = index.search(q, k=10, group_by="label", group_size=g, **ham)
        rows.append((f"group_by label, group_size={g}", ms, res.n_candidates.mean()))
    asym_ms = per_query_ms(lambda: index.search(q, k=10, ranking="asymmetric"), nq)
    rows.append(("asymmetric plain", asym_ms, index.search(q, k=10, ranking="asymmetric").n_candidates.mean()))
    labels = rng.choice(n_identities, size=int(0.1 * n_identities), replace=False)
    ms = per_query_ms(lambda: index.search(q, k=10, ranking="asymmetric", filter_labels=labels), nq)
    res = index.search(q, k=10, ranking="asymmetric", filter_labels=labels)
    rows.append(("asymmetric filter_labels 10%", ms, res.n_candidates.mean()))
    print(f"{'search (k=10, ' + str(nq) + ' queries)':36s} {'ms/query':>9s} {'x plain':>8s} {'candidates':>11s}")
    for name, ms, cand in rows:
        base = asym_ms if name.startswith("asymmetric") else plain_ms
        print(f"{name:36s} {ms:9.3f} {ms / base:8.2f} {cand:11.1f}")


def open_set(seed: int = 0) -> None:
    data = load_embeddings(LFW)
    x, labels = data.features, data.labels.astype(np.int64)
    rng = np.random.default_rng(seed)
    ident = np.unique(labels)
    half_a = np.isin(labels, rng.permutation(ident)[: ident.size // 2])
    xa, la, xb, lb = x[half_a], labels[half_a], x[~half_a], labels[~half_a]
    print(f"\n== LFW dev open set: calibrate on {np.unique(la).size:,} identities ({la.size:,} images), "
          f"measure on the other {np.unique(lb).size:,} ({lb.size:,} images)")  # fmt: skip

    # enrolment on half B: identities with 2+ images; the last image of each is its probe
    _, first, counts = np.unique(lb, return_index=True, return_counts=True)
    last = np.array([np.flatnonzero(lb == lab)[-1] for lab in np.unique(lb)[counts > 1]])
    unknown = np.flatnonzero(np.isin(lb, np.unique(lb)[counts == 1]))
    enrolled = np.isin(lb, np.unique(lb)[counts > 1])
    enrolled[last] = False
    index = HashIndex(128, bits=128, backend="flat")
    index.fit(xa)  # the hasher learns on the calibration half
    index.add(xb[enrolled], labels=lb[enrolled])
    print(f"gallery {enrolled.sum():,} images of {np.unique(lb[enrolled]).size:,} identities; "
          f"{last.size:,} known probes, {unknown.size:,} unknown probes")  # fmt: skip

    print(f"{'target FAR':>10s} {'t':>7s} {'TAR(A)':>7s} | {'B pairs: FAR':>12s} {'TAR':>6s} | "
          f"{'search':>7s} {'DIR':>6s} {'open FAR':>8s}")  # fmt: skip
    for far in (1e-3, 1e-4):
        cal = calibrate(xa, la, far=far)
        b_far, b_tar = calibrate(xb, lb, far=far).rates(cal.threshold)
        for name, kw in (("exact", {"radius": index.bits}), ("hashed", {})):
            known = index.search(xb[last], k=1, group_by="label", min_score=cal.threshold, **kw)
            dir_ = float((known.labels[:, 0] == lb[last]).mean())
            unk = index.search(xb[unknown], k=1, group_by="label", min_score=cal.threshold, **kw)
            open_far = float((unk.ids[:, 0] >= 0).mean())
            print(f"{far:10.0e} {cal.threshold:7.4f} {cal.tar:7.4f} | {b_far:12.2e} {b_tar:6.4f} | "
                  f"{name:>7s} {dir_:6.4f} {open_far:8.4f}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--identities", type=int, default=250_000, help="synthetic identities (4 images each)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--skip-lfw", action="store_true")
    args = ap.parse_args()
    faiss.omp_set_num_threads(1)
    if not args.skip_lfw and LFW.exists():
        open_set()
    if not args.skip_scale:
        scale(args.identities, args.queries)


if __name__ == "__main__":
    main()
