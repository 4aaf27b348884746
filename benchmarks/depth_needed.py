"""How deep each query must probe the partition lists, and how much a per-query depth could save
(issue 19, item 3): fixed depth, an oracle that knows each query's depth, and the stopping rule
the issue proposes, all judged on the lists alone (no code, no rerank: a list probed counts as
all of its items found).

The lists are the library's (``train_centroids`` spherical k-means, ``nlist_for(n)`` lists, SOAR
spill 2 by ``soar_lists``). For each probe and each depth d of a schedule it records which of the
exact top-k lie in the first d lists (by centroid score), and the k-th best *exact* score among
the items seen so far. Three ways to choose a query's depth:

- fixed: every query probes d lists (what the library and both anchors do);
- oracle: each query gets the depth that maximises ``recall - mu * depth`` (a Lagrangian sweep
  over mu), the best any per-query rule could do for that mean recall: its ceiling;
- seen-so-far: stop at the first depth of the schedule where the next list's centroid score is
  below the best (for recall@1) or k-th best (for recall@k) exact score seen minus ``lam`` (the
  rule of the issue's "best exact score, its gap to the next list's centroid score"). ``lam`` is
  chosen on the first half of the probes (the smallest meeting recall@1 0.99, or recall@k
  ``--target``) and reported on the second half. Exact scores make the rule
  *optimistic*: a real search sees estimated scores.

    OMP_NUM_THREADS=2 python benchmarks/depth_needed.py --n 1000000 --seed 31 --probes 600 --name depth_needed_1M
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from hashindex.serving.candidates.partitions import nlist_for, soar_lists, train_centroids  # noqa: E402

from benchlib.measure import machine_info, write_record  # noqa: E402
from benchlib.sources import add_study_arguments, gallery_in_memory  # noqa: E402

SCHEDULE = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 320, 384, 512, 640, 768, 1024, 1280, 1536, 2048, 2560, 3072,
            4096, 6144, 8192, 12288, 16384)


def seen_by_depth(x, q, truth, order, assign, depths, k):
    """For each probe and depth: recall@1 and recall@k of the items in its first ``d`` lists, and
    the best and the k-th best exact score among them. Returns four ``float32 [nq, len(depths)]``:
    recall@1, recall@k, best score, k-th best score."""
    nq, nlist = order.shape
    r1, rk, first_score, kth = (np.zeros((nq, len(depths)), np.float32) for _ in range(4))
    for i in range(nq):
        rank = np.empty(nlist, np.int32)
        rank[order[i]] = np.arange(nlist)
        first = rank[assign].min(axis=1)  # the earliest probed list holding each item
        by_list = np.argsort(first, kind="stable")  # the items seen by depth d are a prefix of this order
        scores = (x @ q[i])[by_list]
        ends = np.searchsorted(first[by_list], depths)
        best = np.maximum.accumulate(scores)
        truth_first = first[truth[i, :k]]
        for j, end in enumerate(ends):
            kth[i, j] = np.partition(scores[:end], -k)[-k] if end >= k else -np.inf
            first_score[i, j] = best[end - 1] if end else -np.inf
        r1[i], rk[i] = truth_first[0] < depths, (truth_first[:, None] < depths).mean(axis=0)
    return r1, rk, first_score, kth


def oracle(recall, depths, mus):
    """Per mu: each query's depth maximising ``recall - mu * depth``; (mean depth, mean recall)."""
    rows = []
    for mu in mus:
        j = np.argmax(recall - mu * depths[None, :], axis=1)
        rows.append((float(depths[j].mean()), float(recall[np.arange(len(j)), j].mean())))
    return rows


def seen_rule(next_centroid, seen_score, lam, cap_index):
    """Index into the schedule where each query stops (the cap when the rule never fires)."""
    fire = next_centroid[:, :cap_index] < seen_score[:, :cap_index] - lam
    return np.where(fire.any(axis=1), fire.argmax(axis=1), cap_index)


def lists_for(lists, recall, target: float) -> float:
    """The fewest mean lists on a curve (points sorted by lists, recall rising with them) whose
    recall meets ``target``, interpolated linearly between the two points around it."""
    lists, recall = np.asarray(lists, float), np.asarray(recall, float)
    above = np.nonzero(recall >= target)[0]
    if not above.size:
        return float("nan")
    j = above[0]
    if j == 0:
        return float(lists[0])
    lo, hi = recall[j - 1], recall[j]
    return float(lists[j - 1] + (lists[j] - lists[j - 1]) * (target - lo) / (hi - lo))


def calibrated_rule(next_centroid, seen_score, recall, depths, target, cap_index) -> dict | None:
    """The seen-so-far rule with the smallest ``lam`` meeting ``target`` on the first half of the
    probes, measured on the second half against the fixed depth giving the same recall there."""
    half = len(recall) // 2
    sel, rep = slice(0, half), slice(half, None)
    for lam in np.round(np.arange(0.0, 1.0001, 0.01), 3):
        stop = seen_rule(next_centroid[sel], seen_score[sel], lam, cap_index)
        if recall[sel][np.arange(half), stop].mean() >= target:
            break
    else:
        return None
    stop = seen_rule(next_centroid[rep], seen_score[rep], lam, cap_index)
    lists = depths[stop]
    got = float(recall[rep][np.arange(len(stop)), stop].mean())
    fixed = int(np.argmax(recall[sel].mean(axis=0) >= target))  # the fixed depth chosen the same way
    return {"lam": float(lam), "report_recall": got, "lists_mean": float(lists.mean()),
            "lists_p10_p50_p90": [float(v) for v in np.percentile(lists, [10, 50, 90])],
            "stopped_before_cap": float(np.mean(stop < cap_index)),
            "fixed_lists_for_same_recall": lists_for(depths, recall[rep].mean(axis=0), got),
            "fixed_chosen_on_first_half": {"lists": int(depths[fixed]), "report_recall": float(recall[rep][:, fixed].mean())}}  # fmt: skip


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_study_arguments(ap)
    ap.add_argument("--target", type=float, default=0.95, help="recall@k the seen-so-far rule's lam must meet (recall@1: 0.99)")
    ap.add_argument("--cap", type=int, default=1024, help="seen-so-far: the most lists a query probes")
    ap.add_argument("--nlist", type=int, default=0, help="lists (0: the library's nlist_for(n))")
    argv = list(sys.argv[1:] if argv is None else argv)
    a = ap.parse_args(argv)
    g = gallery_in_memory(a.n, a.seed, a.probes, a.k)
    x, q, truth, k = g.x, np.ascontiguousarray(g.q, dtype=np.float32), g.truth, a.k
    nlist = a.nlist or nlist_for(a.n)
    centroids = train_centroids(x, nlist, spherical=True)
    coarse = faiss.IndexFlatIP(x.shape[1])
    coarse.add(centroids)
    assign = soar_lists(coarse, centroids, x, 2)
    centroid_scores, order = coarse.search(q, nlist)
    depths = np.array([d for d in SCHEDULE if d <= nlist])
    r1, rk, first_score, kth = seen_by_depth(x, q, truth, order, assign, depths, k)
    next_centroid = centroid_scores[:, np.minimum(depths, nlist - 1)]

    fixed = [{"lists": int(d), "recall@1": float(r1[:, j].mean()), f"recall@{k}": float(rk[:, j].mean())}
             for j, d in enumerate(depths)]  # fmt: skip
    record: dict = {"command": shlex.join(["python", "benchmarks/depth_needed.py", *argv]),
                    "machine": machine_info((1,)), "n": a.n, "seed": a.seed, "nlist": nlist, "probes": len(q),
                    "k": k, "fixed": fixed, "cap": a.cap}  # fmt: skip
    print(f"{a.n} items, {nlist} lists, spill 2, {len(q)} probes; share of the true top-1 / top-{k} in the probed lists")
    print(f"| lists | recall@1 | recall@{k} |\n|---|---|---|")
    for f in fixed:
        print(f"| {f['lists']} | {f['recall@1']:.3f} | {f[f'recall@{k}']:.3f} |")

    cap_index = int(np.searchsorted(depths, a.cap))
    for name, recall, seen_score, target in (("recall@1", r1, first_score, 0.99), (f"recall@{k}", rk, kth, a.target)):
        curve = oracle(recall, depths, np.geomspace(1e-5, 1e-1, 41))
        fixed_lists, oracle_lists = lists_for(depths, recall.mean(axis=0), target), lists_for(*zip(*sorted(curve)), target)
        rule = calibrated_rule(next_centroid, seen_score, recall, depths, target, cap_index)
        record[f"oracle_{name}"] = [{"lists_mean": d, name: r} for d, r in curve]
        record[f"lists_for_oracle_{name}_{target}"] = {"fixed": fixed_lists, "oracle": oracle_lists}
        record[f"seen_so_far_{name}"] = rule
        print(f"{name} >= {target}: fixed depth {fixed_lists:.0f} lists, oracle {oracle_lists:.0f} on average "
              f"({fixed_lists / oracle_lists:.1f}x fewer)")
        print(f"seen_so_far_{name}: " + ("no lam <= 1 met the target on the first half" if rule is None else
              f"lam {rule['lam']:.2f}, recall {rule['report_recall']:.3f} with {rule['lists_mean']:.0f} lists on average "
              f"(p10/p50/p90 {'/'.join(f'{v:.0f}' for v in rule['lists_p10_p50_p90'])}, "
              f"{rule['stopped_before_cap']:.0%} before the cap); fixed depth for that recall: "
              f"{rule['fixed_lists_for_same_recall']:.0f}; fixed depth chosen on the first half: "
              f"{rule['fixed_chosen_on_first_half']['lists']} lists, recall {rule['fixed_chosen_on_first_half']['report_recall']:.3f}"))
    write_record(record, a.out_dir, a.name or f"depth_needed_{a.n // 1000}k")
    return record


if __name__ == "__main__":
    main()
