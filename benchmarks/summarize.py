"""Markdown tables from benchmarks/run.py results: the fastest setting of each method that
reaches a recall@1 target, and how the best hashindex configuration compares.

    python benchmarks/summarize.py benchmarks/results/synthetic_1M.json [--targets 0.95 0.99]
"""

from __future__ import annotations

import argparse
import json

HASHINDEX_FAMILIES = ("pca", "itq", "model")


def fastest_at(method: dict, target: float) -> dict | None:
    """The row with the highest queries/s among those with recall@1 >= target."""
    rows = [r for r in method["results"] if r["recall_at_1"] is not None and r["recall_at_1"] >= target]
    return max(rows, key=lambda r: r["qps"], default=None)


def is_hashindex(method: dict) -> bool:
    return any(method["name"].startswith(f) for f in HASHINDEX_FAMILIES)


def summarize(record: dict, targets: list[float]) -> str:
    lines = [f"### {record['name']}: {record['data'].get('n_items', '?'):,} items, k={record['k']}, "
             f"{record['machine']['cpu']} x{record['machine']['threads']} thread(s)", ""]
    for target in targets:
        lines += [f"recall@1 >= {target}:", "",
                  "| method | setting | recall@1 | recall@10 | hit@1 | candidates | q/s | p50 ms | p99 ms | build s | bytes/item |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        best = {}
        for m in record["methods"]:
            row = fastest_at(m, target)
            if row is None:
                lines.append(f"| {m['name']} | not reached | | | | | | | | | |")
                continue
            best[m["name"]] = row["qps"]
            bpi = m["bytes_per_item"]
            lines.append(
                f"| {m['name']} | {row['setting']} | {row['recall_at_1']:.3f} | {row['recall_at_10']:.3f} | "
                f"{row['hit_at_1']:.3f} | {row['candidates_mean']:.0f} | {row['qps']:,.0f} | "
                f"{row['latency_ms_p50']:.2f} | {row['latency_ms_p99']:.2f} | {m['build']['total_s']:.1f} | "
                f"{bpi.get('index', 0):.0f} + {bpi.get('features', 0):.0f} |"
            )
        ours = {name: q for name, q in best.items() if any(name.startswith(f) for f in HASHINDEX_FAMILIES)}
        if ours:
            name, q = max(ours.items(), key=lambda kv: kv[1])
            ratios = []
            ran = [m["name"] for m in record["methods"]]
            for other in ("exact", "hnsw", "sign"):
                hit = [v for n, v in best.items() if n.startswith(other)]
                if hit:
                    ratios.append(f"{q / max(hit):.2f}x {other}")
                else:
                    ratios.append(f"{other}: {'not reached' if any(n.startswith(other) for n in ran) else 'not run'}")
            lines += ["", f"best hashindex configuration: {name} at {q:,.0f} q/s = " + ", ".join(ratios)]
        lines.append("")
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
