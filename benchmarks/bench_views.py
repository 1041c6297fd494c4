"""Ties at scale: an embedding that is also the output layer, as a view of its free vector.

Questions: what does tying an LLM's embedding and output layer cost, to tie (time and peak
memory, each case in a fresh process) and per training step against Hugging Face's shared
Parameter? The tied pair is described (no index) and read as a view; the "gather" row forces
the pre-view path (an index_select over every entry) for comparison.

Run: ``python -m benchmarks.bench_views [--quick]``. Prints interleaved medians and ratios.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import torch
from torch import nn

import tietorch

from ._common import interleaved_medians, table


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


def _tie_cost(vocab: int, dim: int, device: str) -> tuple[float, float]:
    """Seconds and peak-RSS MiB of tying one pair, in a fresh process (peak RSS only grows)."""
    done = subprocess.run(
        [sys.executable, "-c", _TIE_IN_A_FRESH_PROCESS, str(vocab), str(dim), device],
        check=True,
        capture_output=True,
        text=True,
    )
    seconds, mib = done.stdout.split()
    return float(seconds), float(mib)


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
    models = _models(vocab, dim)
    times = interleaved_medians(
        {name: _step(model, ids, targets) for name, model in models.items()},
        repeats=5 if quick else 15,
    )
    base = times["shared Parameter"]
    print(
        f"embedding + output layer training step, vocab {vocab} x {dim}, "
        f"batch {batch} x {length}, SGD (median ms, interleaved)"
    )
    print(table(("variant", "ms", "/ shared"), [(k, v, v / base) for k, v in times.items()]))


if __name__ == "__main__":
    main()
