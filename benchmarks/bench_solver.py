"""Solver benchmark: ``Tie.layout`` against scipy's ``connected_components`` on the same edges.

Run: ``python benchmarks/bench_solver.py [--quick] [--sizes 1e6,1e7]`` (default 10^6 and
10^7; ``--quick``: 10^5) (or
``python -m benchmarks``). Needs scipy for the comparison column (``pip install -e ".[bench]"``
in a checkout, or ``pip install "tietorch[bench]"``); without it the tietorch column is still
measured.

For every case and size, one fresh process builds the case's edges, then times tietorch's solve
(``tie.layout(shape)``, cache cleared) and scipy's (building the CSR matrix from the same edge
arrays, then ``connected_components``) interleaved, several repeats, and reports medians;
scipy's graph code is imported and run once on a tiny graph before any timing, so that no timed
solve includes the import. A second fresh process runs tietorch's solve once and reports its
extra peak resident memory (``VmHWM`` after minus ``VmRSS`` before, over the entries). scipy
gets the edges ready-made, so the time tietorch spends evaluating the tie's relations counts
against tietorch only. scipy has no signs: for a signed case it runs on the doubled graph
(``+x`` and ``-x`` as two nodes), the standard reduction.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import tietorch as tt
from benchmarks._common import table

CASES = [
    "SymmetricFlip",
    "Toeplitz",
    "D4",
    "Antisymmetric",
    "random cycle",
    "random-order chain",
    "random function",
    "random function signed",
    "random permutation signed",
    "cycle + chain signed",
]


class _Edges(tt.Tie):
    """A 1-d tie declared by precomputed relation maps (the adversarial graphs)."""

    def __init__(self, maps: list[torch.Tensor], signs: list[torch.Tensor] | None) -> None:
        self.maps, self.signs = maps, signs

    def relations(self, *idx: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        return [(m,) for m in self.maps]

    def sign(self, *idx: torch.Tensor) -> list[int | torch.Tensor]:
        return [1] * len(self.maps) if self.signs is None else list(self.signs)


def _cycle(n: int, g: torch.Generator) -> torch.Tensor:
    order = torch.randperm(n, generator=g)
    target = torch.empty(n, dtype=torch.long)
    target[order] = order.roll(1)
    return target


def _chain(n: int, g: torch.Generator) -> torch.Tensor:
    order = torch.randperm(n, generator=g)
    target = torch.empty(n, dtype=torch.long)
    target[order] = torch.cat([order[1:], order[-1:]])  # the last one maps onto itself
    return target


def _random_signs(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, (n,), generator=g) * 2 - 1


def build(case: str, n: int) -> tuple[tt.Tie, tuple[int, ...]]:
    """The tie and shape of ``case`` with about ``n`` entries."""
    g = torch.Generator().manual_seed(0)
    if case == "SymmetricFlip":
        nf = max(1, round(math.sqrt(n / 9)))
        return tt.SymmetricFlip(), (nf, nf, 3, 3)
    if case == "Toeplitz":
        m = max(1, round(math.sqrt(n)))
        return tt.Toeplitz(), (m, m)
    if case == "D4":
        return tt.KernelSymmetry("D4"), (max(1, n // 49), 7, 7)
    if case == "Antisymmetric":
        m = max(1, round(math.sqrt(n)))
        return tt.Antisymmetric(), (m, m)
    if case == "random cycle":
        return _Edges([_cycle(n, g)], None), (n,)
    if case == "random-order chain":
        return _Edges([_chain(n, g)], None), (n,)
    if case == "random function":
        return _Edges([torch.randint(0, n, (n,), generator=g)], None), (n,)
    if case == "random function signed":
        return _Edges([torch.randint(0, n, (n,), generator=g)], [_random_signs(n, g)]), (n,)
    if case == "random permutation signed":
        return _Edges([torch.randperm(n, generator=g)], [_random_signs(n, g)]), (n,)
    if case == "cycle + chain signed":
        maps = [_cycle(n, g), _chain(n, g)]
        return _Edges(maps, [_random_signs(n, g), _random_signs(n, g)]), (n,)
    raise ValueError(f"unknown case {case!r}")


def _edges(tie: tt.Tie, shape: tuple[int, ...]) -> tuple[int, list, bool]:
    """The declaration's edges as numpy arrays ``(x, t, negative)``, for scipy."""
    constraints = tie._constraints(shape)
    n = math.prod(shape)
    out = []
    signed = False
    for c in constraints:
        if hasattr(c, "parts"):  # a key: join each entry to the first entry with its key
            from tietorch._solver import _first_occurrence, _key_codes

            code, bound = _key_codes(c.parts, c.size)
            target = _first_occurrence(code, bound).index_select(0, code) + c.offset
            source = torch.arange(c.offset, c.offset + c.size)
            out.append((source.numpy(), target.numpy(), None))
        else:
            source = torch.arange(c.offset, c.offset + len(c.target))
            negative = None if c.sign is None else (c.sign < 0).numpy()
            signed |= negative is not None
            out.append((source.numpy(), c.target.numpy(), negative))
    return n, out, signed


def _scipy_solve(n: int, edges: list, signed: bool) -> None:
    import numpy as np
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    if not signed:
        rows = np.concatenate([x for x, _, _ in edges])
        cols = np.concatenate([t for _, t, _ in edges])
        nodes = n
    else:  # doubled graph: +x is x, -x is x + n; W[x] = -W[t] joins +x with -t
        rows_l, cols_l = [], []
        for x, t, negative in edges:
            flip = 0 if negative is None else negative.astype(np.int64) * n
            rows_l += [x, x + n]
            cols_l += [t + flip, t + n - flip]
        rows, cols = np.concatenate(rows_l), np.concatenate(cols_l)
        nodes = 2 * n
    graph = csr_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(nodes, nodes))
    connected_components(graph, directed=False)


def _scipy_ready() -> bool:
    """Import scipy's graph code and run it once on a tiny graph, so that no timed solve pays
    for the import (with one repeat, ``--quick``, that was most of scipy's time at 10^5)."""
    try:
        import numpy as np
        import scipy.sparse.csgraph  # noqa: F401
    except ImportError:
        return False
    x, t = np.array([0, 1]), np.array([1, 0])
    _scipy_solve(2, [(x, t, None)], False)
    _scipy_solve(2, [(x, t, np.array([False, True]))], True)
    return True


def _fresh_layout(tie: tt.Tie, shape: tuple[int, ...]) -> float:
    tie.__dict__.pop("_layout_cache", None)
    start = time.perf_counter()
    tie.layout(shape)
    elapsed = time.perf_counter() - start
    tie.__dict__.pop("_layout_cache", None)
    return elapsed


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def time_case(case: str, n: int, repeats: int) -> dict[str, float | None]:
    """In this process: median seconds of tietorch and scipy on ``case``, interleaved."""
    torch.set_num_threads(1)
    tie, shape = build(case, n)
    edges = None
    if _scipy_ready():
        count, edges, signed = _edges(tie, shape)
    ours, theirs = [], []
    for _ in range(repeats):
        ours.append(_fresh_layout(tie, shape))
        if edges is not None:
            start = time.perf_counter()
            _scipy_solve(count, edges, signed)
            theirs.append(time.perf_counter() - start)
    return {
        "entries": math.prod(shape),
        "tietorch": statistics.median(ours),
        "scipy": statistics.median(theirs) if theirs else None,
    }


def memory_case(case: str, n: int) -> dict[str, float]:
    """In this (fresh) process: tietorch's extra peak resident bytes per entry."""
    torch.set_num_threads(1)
    tie, shape = build(case, n)
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    tie.layout(shape)
    peak = _status_kib("VmHWM")
    return {"bytes_per_entry": (peak - before) * 1024 / math.prod(shape)}


def _in_subprocess(mode: str, case: str, n: int, repeats: int) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--worker", mode, case, str(n), str(repeats)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(sizes: list[int], repeats: int, cases: list[str]) -> str:
    rows = []
    records: dict[tuple[str, int], dict[str, float | None]] = {}
    for n in sizes:
        for case in cases:
            timing = _in_subprocess("time", case, n, repeats)
            memory = _in_subprocess("memory", case, n, 1)
            ours, theirs = timing["tietorch"], timing["scipy"]
            records[(case, n)] = {
                "seconds": ours,
                "ratio": None if theirs is None else ours / theirs,
                "bytes": memory["bytes_per_entry"],
                "ns": ours / timing["entries"] * 1e9,
            }
            rows.append(
                [
                    case,
                    f"{timing['entries']:.0e}",
                    ours,
                    "-" if theirs is None else theirs,
                    "-" if theirs is None else ours / theirs,
                    memory["bytes_per_entry"],
                    ours / timing["entries"] * 1e9,
                ]
            )
    header = [
        "case",
        "entries",
        "tietorch s",
        "scipy s",
        "tietorch/scipy",
        "peak B/entry",
        "ns/entry",
    ]
    return table(header, rows) + "\n\n" + summary(records, sizes)


def summary(records: dict[tuple[str, int], dict[str, float | None]], sizes: list[int]) -> str:
    """The issue's table: the worst case against scipy (and the built-in ties' worst), signed
    against unsigned, the slowest case, the extra peak memory, growth per entry between the two
    largest sizes."""
    lines = []
    for n in sizes:
        at = {case: r for (case, m), r in records.items() if m == n}
        ratios = {c: r["ratio"] for c, r in at.items() if r["ratio"] is not None}
        if ratios:
            worst = max(ratios, key=lambda c: ratios[c])
            builtin = {c: v for c, v in ratios.items() if c in BUILTIN}
            line = f"{n:.0e}: worst vs scipy {ratios[worst]:.2f}x ({worst})"
            if builtin:
                b = max(builtin, key=lambda c: builtin[c])
                line += f"; built-in ties' worst {builtin[b]:.2f}x ({b})"
            lines.append(line)
        plain, signed = at.get("random function"), at.get("random function signed")
        if plain and signed:
            lines.append(
                f"{n:.0e}: signed / unsigned, random function: "
                f"{signed['seconds'] / plain['seconds']:.2f}"
            )
        if at:
            slow = max(at, key=lambda c: at[c]["seconds"])
            heavy = max(at, key=lambda c: at[c]["bytes"])
            lines.append(
                f"{n:.0e}: slowest {slow} {at[slow]['seconds']:.2f} s; most extra memory "
                f"{heavy} {at[heavy]['bytes']:.0f} B/entry"
            )
    if len(sizes) >= 2:
        small, large = sizes[-2], sizes[-1]
        growth = []
        for case in CASES:
            a, b = records.get((case, small)), records.get((case, large))
            if a and b:
                growth.append(f"{case} {a['ns']:.0f}->{b['ns']:.0f}")
        if growth:
            lines.append(f"ns/entry {small:.0e} -> {large:.0e}: " + ", ".join(growth))
    return "\n".join(lines)


#: the cases that are the library's own ties (the issue bounds them tighter)
BUILTIN = ("SymmetricFlip", "Toeplitz", "D4", "Antisymmetric")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^5 entries, 1 repeat")
    parser.add_argument("--sizes", default=None, help="comma-separated entry counts, e.g. 1e7")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default=None, help="comma-separated case names")
    parser.add_argument(
        "--worker", nargs=4, metavar=("MODE", "CASE", "N", "R"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.worker:
        mode, case, n, r = args.worker
        result = time_case(case, int(n), int(r)) if mode == "time" else memory_case(case, int(n))
        print(json.dumps(result))
        return
    try:
        import scipy  # noqa: F401
    except ImportError:
        print('scipy is not installed: no scipy column (pip install "tietorch[bench]")')
    if args.sizes:
        sizes = [int(float(s)) for s in args.sizes.split(",")]
    else:
        sizes = [10**5] if args.quick else [10**6, 10**7]
    repeats = 1 if args.quick else args.repeats
    cases = args.cases.split(",") if args.cases else CASES
    print(run(sizes, repeats, cases))


if __name__ == "__main__":
    main()
