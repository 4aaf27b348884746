"""``hashindex build / search / info``: the serving commands (never import torch)."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from hashindex.cli.common import (
    in_rows, is_npy, load_rows, map_rows, non_negative_int, out_dir, out_file, positive_int, read_npy_labels,
)
from hashindex.cli.identity_commands import add_search_options, read_labels, search_options
from hashindex.cli.image_folder import check_image_model, list_images, stream_images, takes_images
from hashindex.core.errors import HashIndexError, InputError
from hashindex.core.io import atomic_write
from hashindex.serving.hashers import HASHER_KINDS
from hashindex.serving.front import default_bits
from hashindex.serving.index import DEFAULT_BITS
from hashindex.serving.index_format import check_save_target
from hashindex.serving.tuning import DEFAULT_RECALL


def recall_target(text: str) -> float:
    """argparse type: a recall@1 target in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"a recall target is in (0, 1] (a fraction, not a percentage), got {text}")
    return value

CHUNK = 65_536


def _chunks(n: int, size: int = CHUNK):
    return [(s, min(s + size, n)) for s in range(0, n, size)]


@dataclass(frozen=True)
class FeatureSource:
    """The rows ``build --features`` adds: an .npz read whole, or a .npy memory map (``mapped``)."""

    path: str
    features: np.ndarray  # float [N, D]; an np.memmap when mapped
    ids: np.ndarray
    labels: np.ndarray | None
    mapped: bool

    @property
    def n(self) -> int:
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    def named(self, e: HashIndexError) -> HashIndexError:
        """``e`` (from fitting or adding the mapped rows) naming the user's file (an .npz's
        errors are left as they were)."""
        if not self.mapped or str(e).startswith(self.path):
            return e
        return in_rows(e, self.path, 0, self.n, self.n)


def feature_source(args: argparse.Namespace) -> FeatureSource:
    """``--features``: a ``.npy`` of float rows ``[N, D]`` is memory-mapped (its header checked,
    its rows left on disk) with labels from ``--labels FILE.npy``; an ``.npz`` is read whole,
    with labels from ``--labels-key``."""
    path = str(args.features)
    if is_npy(path):
        if args.labels_key:
            raise InputError(f"--labels-key names an array of an .npz; {path} is a single .npy array: "
                             "give its labels with --labels FILE.npy")  # fmt: skip
        rows = map_rows(path, "features")
        labels = read_npy_labels(args.labels, rows.shape[0], path) if args.labels else None
        return FeatureSource(path, rows, np.arange(rows.shape[0], dtype=np.int64), labels, mapped=True)
    if args.labels:
        raise InputError(f"--labels FILE.npy goes with a .npy of features; {path} is not one "
                         "(an .npz keeps its labels inside: --labels-key labels)")  # fmt: skip
    data = load_rows(path, "features")
    labels = read_labels(path, args.labels_key, len(data)) if args.labels_key else None
    ids = data.ids if data.ids is not None else np.arange(len(data), dtype=np.int64)
    return FeatureSource(path, data.features, ids, labels, mapped=False)


def cmd_build(args: argparse.Namespace) -> int:
    from hashindex.serving.hashers import make_hasher
    from hashindex.serving.index import HashIndex

    out = out_dir(args.out)
    check_save_target(out)  # a directory save() would refuse is refused before fit, add and tune
    if args.images:
        return build_from_images(args, out)
    source = feature_source(args)
    if args.model:
        from hashindex.serving.encoder import OnnxEncoder

        hasher = OnnxEncoder(args.model)
        if takes_images(hasher):
            raise InputError(f"--model {args.model} takes images: build from an image folder with --images DIR")
        model_dim = getattr(hasher, "dim", None)
        if source.mapped and model_dim is not None and model_dim != source.dim:
            raise InputError(f"{source.path}: rows of dimension {source.dim}, --model {args.model} takes {model_dim}")
    else:
        try:
            hasher = make_hasher(args.hasher, source.dim, args.bits or default_bits(args.hasher, source.dim))
        except HashIndexError as e:
            raise source.named(e) from e
    index = HashIndex(source.dim, hasher, metric=args.metric, backend=args.backend, feature_dtype=args.feature_dtype)
    if not args.model:
        rng = np.random.default_rng(args.seed)
        sample = rng.choice(source.n, size=min(args.fit_sample, source.n), replace=False)
        t = time.perf_counter()
        try:  # a memory map reads only the sampled rows
            index.fit(source.features[np.sort(sample)])
        except HashIndexError as e:
            raise source.named(e) from e
        print(f"fitted {args.hasher} hasher ({index.bits} bits) on {sample.size} vectors in {time.perf_counter() - t:.1f}s")
    labels = source.labels
    if source.mapped:  # add() reads the map a chunk at a time (never the whole file), with a bar
        try:
            index.add(source.features, source.ids, labels, progress=not args.quiet)
        except HashIndexError as e:
            raise source.named(e) from e
    else:
        for lo, hi in tqdm(_chunks(source.n), desc="adding", unit="chunk", disable=args.quiet):
            index.add(source.features[lo:hi], source.ids[lo:hi], None if labels is None else labels[lo:hi])
    if args.tune and index.default_ranking == "asymmetric" and len(index) >= 2:
        t = time.perf_counter()
        point = index.tune(recall=args.recall, k=args.k, progress=not args.quiet)
        where = "flat scan" if point.nprobe is None else f"nprobe {point.nprobe} of {point.nlist} lists"
        print(
            f"tuned for recall@1 >= {args.recall:g} (k={args.k}) in {time.perf_counter() - t:.1f}s: {where}, "
            f"{point.candidates} candidates, measured recall@1 {point.recall:.3f}, {point.seconds_per_query * 1e3:.3f} ms/query"
        )
    index.save(out)
    with_labels = f", {np.unique(labels).size:,} labels" if labels is not None else ""
    print(f"built {out}: {len(index):,} items{with_labels}, {index.bits} bits, metric {index.metric}")
    return 0


def build_from_images(args: argparse.Namespace, out) -> int:
    """``build --images DIR --model fused.onnx``: the folder encoded a chunk at a time."""
    from hashindex.serving.encoder import OnnxEncoder
    from hashindex.serving.index import HashIndex

    if not args.model:
        raise InputError("--images needs --model: a fused image model (hashindex export --backbone ... --head ...)")
    if args.labels_key or args.labels:
        flag = "--labels-key" if args.labels_key else "--labels"
        raise InputError(f"{flag} gives labels for --features; with --images the labels are the sub-folders")
    encoder = OnnxEncoder(args.model)
    check_image_model(encoder, "--model")
    folder = list_images(args.images)
    index = HashIndex(encoder.dim, encoder, metric=args.metric, backend=args.backend, feature_dtype=args.feature_dtype)
    labels = folder.labels

    def add(images, lo, hi):
        index.add_images(images, np.arange(lo, hi, dtype=np.int64), None if labels is None else labels[lo:hi])

    t = time.perf_counter()
    stream_images(encoder, folder, add, quiet=args.quiet, desc="adding images")
    print(f"encoded {len(folder):,} images of {folder.root} in {time.perf_counter() - t:.1f}s "
          f"(ids 0..{len(folder) - 1:,} in sorted path order)")  # fmt: skip
    if args.tune and not args.quiet:
        print("not tuned: an image model's queries are images, so searches use the untuned default")
    index.save(out)
    with_labels = f", {len(folder.names):,} labels (one per sub-folder)" if labels is not None else ""
    print(f"built {out}: {len(index):,} items{with_labels}, {index.bits} bits, metric {index.metric}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from hashindex.serving.index import HashIndex

    out = out_file(args.out) if args.out else None
    index = HashIndex.load(args.index, mmap=True)
    by_images = takes_images(index.hasher)
    if by_images and not args.images:
        raise InputError(f"{args.index} was built with an image model: search it with --images DIR (not --queries)")
    if args.images and not by_images:
        raise InputError(f"{args.index} hashes feature rows, not images: search it with --queries FILE")
    if by_images and args.recall is not None:
        raise InputError("--recall tunes on the index's own items, which an image model cannot encode again "
                         "(its queries are images): set --candidates instead")  # fmt: skip
    identity = search_options(args, index.has_labels)
    kw = dict(k=args.k, radius=args.radius, candidates=args.candidates, ranking=args.ranking, nprobe=args.nprobe,
              recall=args.recall, **identity)  # fmt: skip
    parts = []
    t = time.perf_counter()
    if by_images:
        folder = list_images(args.images)
        names = [str(p) for p in folder.paths]
        stream_images(index.hasher, folder, lambda x, lo, hi: parts.append(index.search_images(x, **kw)),
                      quiet=args.quiet, desc="searching images")  # fmt: skip
    else:
        queries = load_rows(args.queries, "queries").features
        names = None
        for lo, hi in tqdm(_chunks(len(queries), 4096), desc="searching", unit="chunk", disable=args.quiet):
            try:
                parts.append(index.search(queries[lo:hi], **kw))
            except HashIndexError as e:
                raise in_rows(e, str(args.queries), lo, hi, len(queries)) from e
    n_queries = sum(len(p.ids) for p in parts)
    elapsed = time.perf_counter() - t
    fields = ("ids", "scores", "hamming", "n_candidates") + (("labels",) if index.has_labels else ())
    result = {f: np.concatenate([getattr(p, f) for p in parts]) for f in fields}
    if names is not None:
        result["paths"] = np.array(names, dtype=str)
    print(
        f"{n_queries:,} queries in {elapsed:.2f}s ({n_queries / max(elapsed, 1e-9):,.0f} q/s), "
        f"candidates per query: median {np.median(result['n_candidates']):.0f}, "
        f"mean {result['n_candidates'].mean():.1f} of {len(index):,}"
    )
    if out is not None:
        atomic_write(out, lambda f: np.savez(f, **result))
        print(f"wrote {out}")
    else:
        for q in range(min(n_queries, args.show)):
            labels = result["labels"][q] if "labels" in result else [None] * len(result["ids"][q])
            hits = ", ".join(
                f"{i}({s:.3f}, h={h}{'' if lab is None else f', label={lab}'})"
                for i, s, h, lab in zip(result["ids"][q], result["scores"][q], result["hamming"][q], labels) if i >= 0
            ) or ("unknown (nothing above --min-score)" if args.min_score is not None else "")
            print(f"query {q if names is None else names[q]}: {hits}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from hashindex.serving.index import describe

    print(describe(args.index))
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("build", help="build an index directory from an embeddings .npz or .npy (or an image folder)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--features", help=".npz with 'embeddings' (and optional 'ids', 'labels'), or a .npy of "
                        "float rows [N, D], memory-mapped and added a chunk at a time (never read whole)")  # fmt: skip
    source.add_argument("--images", metavar="DIR", help="a folder of images, or one sub-folder per person (labels): "
                        "encoded in chunks with --model, a fused image model")  # fmt: skip
    p.add_argument("--hasher", choices=HASHER_KINDS, default="residual", help="untrained hasher (default: residual ITQ, as HashIndex(dim) builds)")
    p.add_argument("--bits", type=positive_int, help=f"code length (default {DEFAULT_BITS}, at most the feature dim; "
                   "residual: 1.5x that, 192 at 128-d)")  # fmt: skip
    p.add_argument("--model", help="an exported ONNX hash model to use instead of an untrained hasher")
    p.add_argument("--metric", choices=("cosine", "ip", "l2"), default="cosine")
    p.add_argument("--backend", choices=("auto", "flat", "hash", "multihash"), default="auto")
    p.add_argument("--feature-dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--fit-sample", type=positive_int, default=100_000, help="vectors used to fit the hasher")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--labels-key", metavar="KEY", help="store each item's label (identity) from this array of "
                   "--features (e.g. labels): enables --group-by / --filter-labels at search time")  # fmt: skip
    p.add_argument("--labels", metavar="FILE.npy", help="with a .npy of --features: one label (integer or string) "
                   "per row, stored as with --labels-key")  # fmt: skip
    p.add_argument("--out", required=True, help="index directory to write")
    p.add_argument("--recall", type=recall_target, default=DEFAULT_RECALL,
                   help="tune the default search for this recall@1 on the index's own items (saved with it)")
    p.add_argument("-k", type=positive_int, default=10, help="results per query the tuning is for")
    p.add_argument("--no-tune", dest="tune", action="store_false", help="skip tuning (search uses untuned defaults)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("search", help="search an index with query embeddings")
    p.add_argument("--index", required=True)
    queries = p.add_mutually_exclusive_group(required=True)
    queries.add_argument("--queries", help=".npz with 'embeddings'")
    queries.add_argument("--images", metavar="DIR", help="query images (a folder, or sub-folders), for an index "
                         "built with an image model; results name each image")  # fmt: skip
    p.add_argument("-k", type=positive_int, default=10)
    p.add_argument("--radius", type=non_negative_int, help="Hamming radius (inclusive) for candidates")
    p.add_argument("--candidates", type=positive_int, help="rerank this many best-ranked items")
    p.add_argument("--ranking", choices=["hamming", "asymmetric"], default=None,
                   help="order candidates by Hamming distance, or by the query's continuous projection "
                   "against the items' bits (fewer candidates for the same recall; no --radius); default: "
                   "asymmetric when the hasher allows it, Hamming with --radius")
    p.add_argument("--nprobe", type=positive_int, help="scan only this many partition lists (asymmetric)")
    p.add_argument("--recall", type=recall_target,
                   help="use (or tune) the index's operating point for this recall@1 (default: the saved 0.99 one)")
    add_search_options(p)
    p.add_argument("--out", help="write ids / scores / hamming / n_candidates (/ labels, / paths) to this .npz")
    p.add_argument("--show", type=non_negative_int, default=5, help="queries to print when --out is not given")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("info", help="describe an index directory and verify its checksums")
    p.add_argument("index")
    p.set_defaults(func=cmd_info)
