"""Ties at scale: an embedding that is also the output layer, as a view of its free vector;
one filter shared across input channels (``ShareAlong(1)``), as a broadcast view; one filter
bank for every group (``ShareAcrossGroups``), as repeated blocks; a Hankel matrix, as an
unfolded window.

Questions: what does tying an LLM's embedding and output layer cost, to tie (time and peak
memory, each case in a fresh process) and per training step against Hugging Face's shared
Parameter? The tied pair is described (no index) and read as a view; the "gather" row forces
the pre-view path (an index_select over every entry) for comparison. The same for
``ShareAlong(1)`` and ``ShareAcrossGroups(8)``: tying a large Linear (fresh process), and a
conv's training step read as an expanded view against the gather; a ``Hankel`` Linear's
training step read as a window against the gather.

Run: ``python -m benchmarks.bench_views [--quick]``. Prints interleaved medians and ratios.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import torch
from torch import nn

import tietorch

from ._common import interleaved_medians, table, training_step


class _TinyLM(nn.Module):
    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(ids)))


def _models(vocab: int, dim: int) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    shared = _TinyLM(vocab, dim)
    shared.head.weight = shared.embed.weight  # Hugging Face's tie: one Parameter
    view = _TinyLM(vocab, dim)
    tietorch.tie_tensors([(view.embed, "weight"), (view.head, "weight")])
    gathered = _TinyLM(vocab, dim)
    tietorch.tie_tensors([(gathered.embed, "weight"), (gathered.head, "weight")])
    for module in (gathered.embed, gathered.head):
        module.parametrizations.weight[0].view = None  # the path before views
    return {"shared Parameter": shared, "tietorch view": view, "tietorch gather": gathered}


def _step(model: nn.Module, ids: torch.Tensor, targets: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        logits = model(ids)
        nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), targets).backward()
        opt.step()

    return step


_TIE_IN_A_FRESH_PROCESS = """
import resource, sys, time, torch, tietorch
vocab, dim, device = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
with torch.device(device):
    embed, head = torch.nn.Embedding(vocab, dim), torch.nn.Linear(dim, vocab, bias=False)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
tietorch.tie_tensors([(embed, "weight"), (head, "weight")])
seconds = time.perf_counter() - start
print(seconds, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def _in_a_fresh_process(script: str, *args: object) -> tuple[float, float]:
    """Seconds and peak-RSS MiB that ``script`` prints, run in a fresh process (peak RSS only
    grows, so each case needs its own)."""
    done = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        check=True,
        capture_output=True,
        text=True,
    )
    seconds, mib = done.stdout.split()
    return float(seconds), float(mib)


def _tie_cost(vocab: int, dim: int, device: str) -> tuple[float, float]:
    """Seconds and peak-RSS MiB of tying one pair, in a fresh process."""
    return _in_a_fresh_process(_TIE_IN_A_FRESH_PROCESS, vocab, dim, device)


_SHARE_IN_A_FRESH_PROCESS = """
import resource, sys, time, torch, tietorch
n, device, tie = int(sys.argv[1]), sys.argv[2], sys.argv[3]
with torch.device(device):
    linear = torch.nn.Linear(n, n)
tie = eval(tie, vars(tietorch))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
tietorch.register_tie(linear, "weight", tie)
seconds = time.perf_counter() - start
print(seconds, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def _share_cost(n: int, device: str, tie: str) -> tuple[float, float]:
    """Seconds and peak-RSS MiB of ``tie`` (an expression over tietorch's names) on a
    ``Linear(n, n)``, in a fresh process."""
    return _in_a_fresh_process(_SHARE_IN_A_FRESH_PROCESS, n, device, tie)


def _view_and_gather(build: Callable[[], nn.Module], tie: tietorch.Tie) -> dict[str, nn.Module]:
    """The module ``build`` makes with ``tie`` on its weight, read as a view and as a gather."""
    modules = {}
    for name in ("tietorch view", "tietorch gather"):
        torch.manual_seed(0)
        module = build()
        tietorch.register_tie(module, "weight", tie)
        if name == "tietorch gather":
            module.parametrizations.weight[0].view = None  # the path before views
        modules[name] = module
    return modules


def _share_along(quick: bool) -> None:
    rows = []
    for tie in ("ShareAlong(1)", "ShareAcrossGroups(8)"):
        for n, device in [(4096, "meta")] + ([] if quick else [(16384, "meta")]):
            seconds, mib = _share_cost(n, device, tie)
            rows.append((f"{tie}, Linear({n}, {n}) on {device}", seconds * 1e3, mib, n * n / 2**18))
    print("register_tie of a Linear (fresh process each)")
    print(table(("tie, layer", "ms", "peak RSS MiB", "tensor MiB"), rows))
    print()
    channels, batch, size = 64, (8 if quick else 32), (16 if quick else 32)
    x = torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(1))
    _timed(
        f"Conv2d({channels}, {channels}, 3, padding=1) with ShareAlong(1) training step, "
        f"batch {batch} x {channels} x {size} x {size}, SGD (median ms, interleaved)",
        {
            name: training_step(conv, x)
            for name, conv in _view_and_gather(
                lambda: nn.Conv2d(channels, channels, 3, padding=1), tietorch.ShareAlong(1)
            ).items()
        },
        ("tietorch gather", "/ gather"),
        quick,
    )
    print()
    n = 512 if quick else 2048
    x = torch.randn(64, n, generator=torch.Generator().manual_seed(1))
    _timed(
        f"Linear({n}, {n}) with Hankel() training step, batch 64, SGD (median ms, interleaved)",
        {
            name: training_step(linear, x)
            for name, linear in _view_and_gather(lambda: nn.Linear(n, n), tietorch.Hankel()).items()
        },
        ("tietorch gather", "/ gather"),
        quick,
    )


def _timed(
    title: str, steps: dict[str, Callable[[], None]], base: tuple[str, str], quick: bool
) -> None:
    """Interleaved medians of ``steps``, printed under ``title`` with their ratio to the step
    named ``base[0]`` (column ``base[1]``)."""
    times = interleaved_medians(steps, repeats=5 if quick else 15)
    ratios = [(k, v, v / times[base[0]]) for k, v in times.items()]
    print(title)
    print(table(("variant", "ms", base[1]), ratios))


def main(argv: list[str] | None = None) -> None:
    quick = "--quick" in (sys.argv[1:] if argv is None else argv)
    cases = [(50257, 768, "cpu"), (50257, 768, "meta")] + (
        [] if quick else [(128256, 4096, "meta")]
    )
    rows = []
    for vocab, dim, device in cases:
        seconds, mib = _tie_cost(vocab, dim, device)
        rows.append((f"{vocab} x {dim} on {device}", seconds * 1e3, mib, vocab * dim * 4 / 2**20))
    print("tie_tensors of an embedding and its output layer (fresh process each)")
    print(table(("pair", "ms", "peak RSS MiB", "tensor MiB"), rows))
    print()
    vocab, dim, batch, length = (8000, 128, 4, 64) if quick else (32000, 256, 8, 128)
    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(1))
    targets = ids.roll(-1, 1).reshape(-1)
    _timed(
        f"embedding + output layer training step, vocab {vocab} x {dim}, "
        f"batch {batch} x {length}, SGD (median ms, interleaved)",
        {name: _step(model, ids, targets) for name, model in _models(vocab, dim).items()},
        ("shared Parameter", "/ shared"),
        quick,
    )
    print()
    _share_along(quick)


if __name__ == "__main__":
    main()
