"""Table 1 of the softmax-loss deep hashing paper on LFW, for every loss and the baselines.

Protocol: identities split 70/30 (seeded, hashindex.training.data.identity_split). Hash heads are trained
on the 70% (the trainer holds out part of it for early stopping); every figure is measured on
the 30% of identities never seen in training:
- Table 1: share of positive (same person) and negative pairs among validation images at
  Hamming = 0, <= 1, <= 2;
- mAP@R of Hamming ranking among validation images;
- recall vs candidates (at --curve-bits): queries are validation images of identities with 2+
  images, the gallery is all images, a query never matches itself; for each candidate fraction
  the share of queries whose exact cosine nearest neighbour (and any same-identity image) is
  among that many Hamming-nearest items.

    python benchmarks/losses_table.py --out benchmarks/results/losses_table.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np

from hashindex.training.data import identity_split, load_embeddings
from hashindex.serving.hashers import make_hasher
from hashindex.evaluation.hamming import pair_hamming_table
from hashindex.evaluation.ranking import map_at_r
from hashindex.evaluation.recall import recall_vs_candidates

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw" / "lfw_mfn128_dev.npz"
FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


def learned_codes(loss: str, bits: int, x_train, y_train, x_all, seed: int, epochs: int):
    import torch

    from hashindex.training.config import TrainConfig
    from hashindex.training.loop import predict, train_hasher

    torch.set_num_threads(1)
    # at 8 bits there are fewer distinct CSQ centers than identities; shared centers are the
    # honest result to report, not an error
    params = {"allow_duplicates": True} if loss == "csq" else {}
    config = TrainConfig(bits=bits, loss=loss, loss_params=params, epochs=epochs, seed=seed, device="cpu")
    result = train_hasher((x_train, y_train), config, progress=False)
    return predict(result.model, x_all) > 0


def baseline_codes(kind: str, bits: int, x_train, x_all):
    if kind == "sign" and bits != x_train.shape[1]:
        return None
    hasher = make_hasher(kind, x_train.shape[1], bits).fit(x_train)
    return np.unpackbits(hasher.encode(x_all), axis=1, bitorder="little").astype(bool)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--bits", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--losses", nargs="+", default=["softmax", "csq", "triplet", "contrastive", "lifted", "npair", "facility"])
    ap.add_argument("--baselines", nargs="+", default=["sign", "pca", "itq"])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--curve-bits", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    args = ap.parse_args()
    faiss.omp_set_num_threads(1)  # OpenMP spinning on a shared 2-core machine costs 10x

    data = load_embeddings(args.data)
    x, y = data.features, data.labels
    train_idx, val_idx = identity_split(y, val_fraction=0.3, seed=args.seed)
    counts = np.bincount(y)
    query_idx = val_idx[counts[y[val_idx]] >= 2]
    print(f"{args.data}: {len(x):,} images; train {len(train_idx):,}, validation {len(val_idx):,} "
          f"({len(np.unique(y[val_idx]))} identities), {len(query_idx):,} queries")

    methods = [("baseline", b) for b in args.baselines] + [("loss", name) for name in args.losses]
    rows, curves = [], {}
    head = f"{'method':<12s} {'bits':>4s} " + " ".join(f"{f'P<={r}':>8s} {f'N<={r}':>9s}" for r in (0, 1, 2)) + f" {'mAP@R':>6s} {'sec':>5s}"
    print(head)
    bits_list = sorted(set(args.bits) | ({128} if "sign" in args.baselines else set()))
    for bits in bits_list:
        for kind, name in methods:
            if bits not in args.bits and not (kind == "baseline" and name == "sign"):
                continue
            t = time.perf_counter()
            if kind == "baseline":
                b = baseline_codes(name, bits, x[train_idx], x)
            else:
                b = learned_codes(name, bits, x[train_idx], y[train_idx], x, args.seed, args.epochs)
            if b is None:
                continue
            codes = np.packbits(b, axis=1, bitorder="little")
            seconds = time.perf_counter() - t
            table = pair_hamming_table(codes[val_idx], y[val_idx], radii=(0, 1, 2))
            m = map_at_r(codes[val_idx], y[val_idx])
            row = {"method": name, "kind": kind, "bits": bits, "map_at_r": m, "seconds": seconds,
                   **{f"pos_le_{r}": table.positive_within(r) for r in (0, 1, 2)},
                   **{f"neg_le_{r}": table.negative_within(r) for r in (0, 1, 2)}}
            rows.append(row)
            print(f"{name:<12s} {bits:4d} " + " ".join(f"{row[f'pos_le_{r}']:8.4f} {row[f'neg_le_{r}']:9.2e}" for r in (0, 1, 2))
                  + f" {m:6.3f} {seconds:5.0f}", flush=True)
            if bits == args.curve_bits:
                exclude = query_idx  # the query's own row in the gallery
                curve = recall_vs_candidates(codes[query_idx], codes, x[query_idx], x, y[query_idx], y,
                                             fractions=FRACTIONS, exclude=exclude)
                curves[name] = {"fractions": list(FRACTIONS), "nn_recall": curve.nn_recall.tolist(),
                                "identity_recall": curve.identity_recall.tolist()}

    print(f"\nrecall vs candidates at {args.curve_bits} bits (exact NN / any same-identity image):")
    print(f"{'method':<12s} " + " ".join(f"{f:>11.1%}" for f in FRACTIONS))
    for name, c in curves.items():
        print(f"{name:<12s} " + " ".join(f"{a:5.3f}/{b:5.3f}" for a, b in zip(c["nn_recall"], c["identity_recall"])))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"data": args.data, "seed": args.seed, "epochs": args.epochs, "rows": rows, "curves": curves}, f, indent=2)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
