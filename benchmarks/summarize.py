"""Markdown tables from benchmarks/run.py results: per recall@1 target (and thread count), the
fastest setting of each method that reaches it, and the best hashindex setting as a ratio to
each other method (exact, HNSW, IVF, the FAISS anchors, sign).

    python benchmarks/summarize.py benchmarks/results/synthetic_1M.json [--targets 0.95 0.99]
"""

from __future__ import annotations

import argparse
import json

HASHINDEX_FAMILIES = ("pca", "itq", "model")


def thread_counts(record: dict) -> list[int]:
    """The thread counts the run measured at (rows without ``threads``: the machine's)."""
    default = record["machine"]["threads"]
    counts = {r.get("threads", default) for m in record["methods"] for r in m["results"]}
    return sorted(c for c in counts if isinstance(c, int))


def fastest_at(method: dict, target: float, threads: int | None = None) -> dict | None:
    """The row with the highest queries/s among those with recall@1 >= target (at ``threads``)."""
    rows = [r for r in method["results"] if r["recall_at_1"] is not None and r["recall_at_1"] >= target
            and (threads is None or r.get("threads", threads) == threads)]  # fmt: skip
    return max(rows, key=lambda r: r["qps"], default=None)


def is_hashindex(method: dict) -> bool:
    return any(method["name"].startswith(f) for f in HASHINDEX_FAMILIES)


def best_at(record: dict, target: float, threads: int | None = None) -> dict[str, dict]:
    """``{method name: fastest row reaching target}`` for the methods that reach it."""
    out = {}
    for m in record["methods"]:
        row = fastest_at(m, target, threads)
        if row is not None:
            out[m["name"]] = row
    return out


def ratios(record: dict, best: dict[str, dict]) -> str:
    """The best hashindex row against every other method: ``"<name> at N q/s = 2.1x exact, ..."``."""
    ours = {n: r for n, r in best.items() if any(n.startswith(f) for f in HASHINDEX_FAMILIES)}
    if not ours:
        return "best hashindex configuration: none reaches the target"
    name, row = max(ours.items(), key=lambda kv: kv[1]["qps"])
    parts = []
    for m in record["methods"]:
        if is_hashindex(m):
            continue
        other = best.get(m["name"])
        parts.append(f"{row['qps'] / other['qps']:.2f}x {m['name']}" if other else f"{m['name']}: not reached")
    return (f"best hashindex configuration: {name} {row['setting']} at {row['qps']:,.0f} q/s = "
            + (", ".join(parts) or "no other method run"))  # fmt: skip


def _scanned(row: dict, n_items: int) -> str:
    s = row.get("scanned_mean")
    return f"{s / n_items:.1%}" if s is not None and n_items else ""


def summarize(record: dict, targets: list[float]) -> str:
    n_items = record["data"].get("n_items", 0)
    lines = []
    for threads in thread_counts(record) or [None]:
        lines += [f"### {record['name']}: {n_items:,} items, k={record['k']}, "
                  f"{record['machine']['cpu']} x{threads if threads is not None else record['machine']['threads']} thread(s)",
                  ""]  # fmt: skip
        for target in targets:
            lines += [f"recall@1 >= {target}:", "",
                      "| method | setting | recall@1 | recall@10 | hit@1 | scanned | reranked | q/s | p50 ms | p99 ms | build s | bytes/item |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
            best = best_at(record, target, threads)
            for m in record["methods"]:
                row = best.get(m["name"])
                if row is None:
                    lines.append(f"| {m['name']} | not reached | | | | | | | | | | |")
                    continue
                bpi = m["bytes_per_item"]
                lines.append(
                    f"| {m['name']} | {row['setting']} | {row['recall_at_1']:.3f} | {row['recall_at_10']:.3f} | "
                    f"{row['hit_at_1']:.3f} | {_scanned(row, n_items)} | {row['candidates_mean']:.0f} | {row['qps']:,.0f} | "
                    f"{row['latency_ms_p50']:.2f} | {row['latency_ms_p99']:.2f} | {m['build']['total_s']:.1f} | "
                    f"{bpi.get('index', 0):.0f} + {bpi.get('features', 0):.0f} |"
                )
            lines += ["", ratios(record, best), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.95, 0.99])
    args = ap.parse_args()
    for path in args.results:
        with open(path) as f:
            print(summarize(json.load(f), args.targets))


if __name__ == "__main__":
    main()
