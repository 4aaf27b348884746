"""Plots of a benchmarks/run.py result: recall@1 vs queries per second, recall@1 vs candidates.

    python benchmarks/plot.py benchmarks/results/synthetic_100k.json [--out-dir DIR]

One line per curve of the run (a method in one search mode: HNSW over efSearch, ITQ over its
candidate budget, ITQ over the Hamming radius on one backend, ...); single settings (exact search,
multi-probe) are single markers. Both x axes are logarithmic.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Mapping
from pathlib import Path

X_AXES = {
    "qps": "queries per second (batch of {batch}, {threads} thread(s))",
    "candidates_mean": "candidates per query (items reranked; distance computations for FAISS float indexes)",
}


def curves(record: Mapping, x_key: str, y_key: str = "recall_at_1") -> dict[str, dict[str, tuple[list, list]]]:
    """``{method: {curve: (x, y)}}`` in the run's order; points with ``x <= 0`` left out (log axis).
    A run measured at several thread counts gets a curve per count for queries/s, and its first
    count only for other x axes (they do not depend on threads)."""
    default = record["machine"]["threads"]
    counts = sorted({row.get("threads", default) for m in record["methods"] for row in m["results"]}, key=str)
    out: dict[str, dict[str, tuple[list, list]]] = {}
    for method in record["methods"]:
        for row in method["results"]:
            threads = row.get("threads", default)
            if len(counts) > 1 and x_key != "qps" and threads != counts[0]:
                continue
            curve = f"{row['curve']} ({threads} thr)" if len(counts) > 1 and x_key == "qps" else row["curve"]
            if row[x_key] > 0:
                xs, ys = out.setdefault(method["name"], {}).setdefault(curve, ([], []))
                xs.append(float(row[x_key]))
                ys.append(float(row[y_key]))
    return out


def plot_curves(record: Mapping, x_key: str, path: str | Path, y_key: str = "recall_at_1") -> Path:
    """One figure: ``y_key`` against ``x_key`` (log x); a colour per method, a line style per mode."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # Agg canvas of a bare Figure: no pyplot state

    fig = Figure(figsize=(8.5, 5.2), layout="constrained")
    ax = fig.add_subplot()
    colours = colormaps["tab10"].colors
    styles = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (1, 3)), "v")]
    for i, by_curve in enumerate(curves(record, x_key, y_key).values()):
        for (label, (x, y)), (line, marker) in zip(by_curve.items(), itertools.cycle(styles)):
            ax.plot(x, y, color=colours[i % len(colours)], linestyle=line if len(x) > 1 else "none",
                    marker=marker, ms=4, label=label)  # fmt: skip
    ax.set_xscale("log")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    m = record["machine"]
    ax.set_xlabel(X_AXES.get(x_key, x_key).format(batch=record["config"]["batch"], threads=m["threads"]))
    ax.set_ylabel(f"{y_key.replace('_at_', '@')} vs exact float top-{record['k']}")
    d = record["data"]
    ax.set_title(f"{record['name']}: {d['n_items']:,} items, {d['probes']:,} probes ({m['cpu']})", fontsize="medium")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="x-small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    return path


def plot_results(record: Mapping, out_dir: str | Path) -> list[Path]:
    """Both figures of a run, as ``<out_dir>/<name>_recall_qps.png`` and ``_recall_candidates.png``."""
    out_dir = Path(out_dir)
    return [
        plot_curves(record, "qps", out_dir / f"{record['name']}_recall_qps.png"),
        plot_curves(record, "candidates_mean", out_dir / f"{record['name']}_recall_candidates.png"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("result", help="JSON written by benchmarks/run.py")
    ap.add_argument("--out-dir", default=None, help="default: the JSON's folder")
    a = ap.parse_args()
    record = json.loads(Path(a.result).read_text())
    for p in plot_results(record, a.out_dir or Path(a.result).parent):
        print(f"wrote {p}")


if __name__ == "__main__":
    main()
