"""Quick probes of hash-head objectives that the library does not ship (issue 6 ablation).

``benchmarks/quality.py`` measures the recipes of :mod:`hashindex.training.recipes`; this script tries
variants of the distillation objective in a bare training loop, on the same splits and with the
same figures, to decide whether any of them deserves a place in the library. None did
(benchmarks/QUALITY.md, "Probes"), which is why they live here and not in ``hashindex.training.losses``.

Every variant starts from the ITQ projection (pre-tanh mean |z| = 1 x ``scale``), trains on
groups of a random training row and its 15 float nearest neighbours (24 groups a batch) with
Adam and a cosine schedule, and is described by ``name,key=value,...``:

* ``student``: how the batch's code similarities are formed for the listwise KL against the
  float cosines (hashindex.training.losses.distill): ``tanh`` (cosine of the tanh codes, the library's),
  ``ste`` (the actual {-1, +1} codes, straight-through gradient: the Hamming ranking itself),
  ``asym`` (pre-tanh rows against straight-through bits: the asymmetric ranking);
* ``hidden``: width of a residual ReLU MLP added to the linear map (zero-initialised);
* ``bal`` / ``dec``: weights of a bit-balance term (mean bit activation -> 0) and a
  decorrelation term (off-diagonal bit covariance -> 0);
* ``id``: weight of the softmax (NCA-cosine) identity loss on the batch;
* ``tau``, ``lr``, ``ep`` (epochs), ``scale``.

    python benchmarks/quality_probes.py --seeds 0 2 --bits 32 64 \\
        --variants itq d,student=tanh d,student=ste d,student=asym d,hidden=256 d,bal=1,dec=1 d,id=1 d,tau=0.1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from quality import DEFAULT_DATA, code_figures, make_split  # noqa: E402

from hashindex.evaluation.exact import exact_search  # noqa: E402
from hashindex.training.data import load_embeddings  # noqa: E402
from hashindex.serving.hashers import make_hasher  # noqa: E402
from hashindex.training.losses import make_loss  # noqa: E402

DEFAULTS = {"student": "tanh", "hidden": 0, "bal": 0.0, "dec": 0.0, "id": 0.0, "tau": 0.05, "lr": 1e-3, "ep": 20, "scale": 1.0}


def parse_variant(spec: str) -> tuple[str, dict]:
    name, *pairs = spec.split(",")
    opts = dict(DEFAULTS)
    for pair in pairs:
        key, value = pair.split("=")
        if key not in DEFAULTS:
            raise SystemExit(f"unknown option {key!r} in {spec!r}; known: {sorted(DEFAULTS)}")
        opts[key] = type(DEFAULTS[key])(value) if key != "student" else value
    return name, opts


def straight_through_sign(z: torch.Tensor) -> torch.Tensor:
    """sign(z) forward, tanh's gradient backward."""
    t = torch.tanh(z)
    return t + (torch.where(z > 0, 1.0, -1.0) - t).detach()


class ResidualHead(torch.nn.Module):
    """``z = x W^T + b (+ MLP(x))``, the linear part started from a fitted hasher."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, hidden: int):
        super().__init__()
        self.linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(weight))
            self.linear.bias.copy_(torch.from_numpy(bias))
        self.mlp = None
        if hidden:
            self.mlp = torch.nn.Sequential(torch.nn.Linear(weight.shape[1], hidden), torch.nn.ReLU(),
                                           torch.nn.Linear(hidden, weight.shape[0]))
            torch.nn.init.zeros_(self.mlp[2].weight)
            torch.nn.init.zeros_(self.mlp[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x)
        return z if self.mlp is None else z + self.mlp(x)


def student_similarity(z: torch.Tensor, student: str, bits: int) -> torch.Tensor:
    if student == "tanh":
        c = F.normalize(torch.tanh(z), dim=1)
        return c @ c.T
    if student == "ste":
        b = straight_through_sign(z)
        return b @ b.T / bits
    if student == "asym":
        return F.normalize(z, dim=1) @ straight_through_sign(z).T / bits**0.5
    raise SystemExit(f"unknown student {student!r}")


def listwise_kl(teacher: torch.Tensor, student: torch.Tensor, tau: float) -> torch.Tensor:
    eye = torch.eye(teacher.shape[0], dtype=torch.bool)
    log_p = F.log_softmax((teacher / tau).masked_fill(eye, -1e9), dim=1)
    log_q = F.log_softmax((student / tau).masked_fill(eye, -1e9), dim=1)
    return (log_p.exp() * (log_p - log_q)).masked_fill(eye, 0).sum(1).mean()


def train_probe(opts: dict, x: np.ndarray, y: np.ndarray, bits: int, seed: int) -> ResidualHead:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    hasher = make_hasher("itq", x.shape[1], bits).fit(x)
    scale = opts["scale"] / float(np.abs(hasher.project(x)).mean())
    model = ResidualHead(hasher.weight * scale, hasher.bias * scale, opts["hidden"])
    optim = torch.optim.Adam(model.parameters(), lr=opts["lr"], weight_decay=1e-4)
    neighbours = exact_search(x, x, 16, "ip")
    steps = opts["ep"] * max(1, len(x) // 384)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, steps)
    identity = make_loss("softmax", bits=bits, num_classes=int(y.max()) + 1) if opts["id"] else None
    xt = torch.from_numpy(x)
    for _ in range(steps):
        rows = neighbours[rng.choice(len(x), 24, replace=False)].reshape(-1)
        xb = xt[rows]
        z = model(xb)
        loss = listwise_kl(xb @ xb.T, student_similarity(z, opts["student"], bits), opts["tau"])
        h = torch.tanh(z)
        if identity is not None:
            loss = loss + opts["id"] * identity(h, torch.from_numpy(y[rows].astype(np.int64)))
        if opts["bal"]:
            loss = loss + opts["bal"] * h.mean(0).pow(2).mean()
        if opts["dec"]:
            c = h - h.mean(0)
            cov = c.T @ c / len(rows)
            loss = loss + opts["dec"] * (cov - torch.diag(torch.diag(cov))).pow(2).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        sched.step()
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--bits", type=int, nargs="+", default=[64])
    ap.add_argument("--variants", nargs="+", default=["itq", "d"])
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    data = load_embeddings(a.data)
    x, y = data.features, data.labels
    print("variant: Hamming NN p95 / ID p95 / NN p99 | asymmetric NN p95 / ID p95 | recall@1 after 1%")
    for seed in a.seeds:
        split = make_split(x, y, seed)
        for bits in a.bits:
            for spec in a.variants:
                t0 = time.perf_counter()
                name, opts = parse_variant(spec)
                if name in ("itq", "pca"):
                    z = make_hasher(name, x.shape[1], bits).fit(x[split.train]).project(x)
                else:
                    model = train_probe(opts, x[split.train], y[split.train], bits, seed)
                    with torch.no_grad():
                        z = model(torch.from_numpy(x)).numpy()
                f = code_figures(z, y, split)
                fa = code_figures(z, y, split, z[split.queries])
                print(f"seed {seed} {bits:>3} bits {spec:<32} {f['nn']['p95']:.4f} / {f['identity']['p95']:.4f} / "
                      f"{f['nn']['p99']:.4f} | {fa['nn']['p95']:.4f} / {fa['identity']['p95']:.4f} | "
                      f"{f['recall_at_1']['rerank_0.01']:.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
