"""``tietorch demo``: tie a small CNN, train it for a few seconds, check the ties, save, reload.

Everything is embedded: the data is a synthetic image task generated here (no download), the
model is built here, and the run takes the requested number of seconds of training plus a
second or two of setup. :func:`run_demo` returns the exit code (0 when every check passes).

The task: 3 input *streams* (channels) of 16×16 noise; one stream, chosen at random, also holds
a shape at a random place; the label is the shape (horizontal bar, vertical bar, plus, square
outline). The model ties four ways:

* ``streams``: a grouped conv with ``ShareAcrossGroups`` on weight and bias, so each stream goes
  through the same filter bank (one 1→4 conv, applied 3 times);
* ``mix``: a same-padded conv with ``SymmetricFlip`` (a self-adjoint operator);
* ``iso``: a conv with ``KernelSymmetry("D4")`` (every kernel invariant under rotations/flips);
* ``local``: a ``LocallyConnected2d`` with ``TileShare(2)`` (a tiled convolution: 2×2 different
  kernels repeating over the image), weight and bias.
"""

from __future__ import annotations

import io
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import tietorch

from ._torch_compat import parametrization_list

__all__ = ["build_model", "make_data", "run_demo"]

STREAMS = 3  # input streams sharing one filter bank
BANK = 4  # filters in the shared bank (per stream)
SIDE = 16  # image side
CLASSES = ("horizontal bar", "vertical bar", "plus", "square")
N_TRAIN, N_TEST, BATCH = 2048, 512, 64
LEARNING_RATE = 3e-3
NOISE = 0.2  # std of the background noise; the shapes have amplitude 0.7 to 1.3


# ----------------------------------------------------------------------------------- data


def _templates() -> Tensor:
    """One 7×7 binary template per class."""
    t = torch.zeros(len(CLASSES), 7, 7)
    t[0, 3, :] = 1  # horizontal bar
    t[1, :, 3] = 1  # vertical bar
    t[2, 3, 1:6] = 1  # plus
    t[2, 1:6, 3] = 1
    t[3, 1, 1:6] = t[3, 5, 1:6] = 1  # square outline
    t[3, 1:6, 1] = t[3, 1:6, 5] = 1
    return t


def make_data(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` images ``(n, STREAMS, SIDE, SIDE)`` and their labels ``(n,)``."""
    templates = _templates()
    labels = torch.randint(len(CLASSES), (n,), generator=generator)
    streams = torch.randint(STREAMS, (n,), generator=generator)
    rows = torch.randint(SIDE - 6, (n,), generator=generator)
    cols = torch.randint(SIDE - 6, (n,), generator=generator)
    gains = 0.7 + 0.6 * torch.rand(n, generator=generator)
    x = NOISE * torch.randn(n, STREAMS, SIDE, SIDE, generator=generator)
    for k in range(n):
        r, c = int(rows[k]), int(cols[k])
        x[k, streams[k], r : r + 7, c : c + 7] += gains[k] * templates[labels[k]]
    return x, labels


# ---------------------------------------------------------------------------------- model


class DemoNet(nn.Module):
    """3 streams → shared bank → self-adjoint mix → D4 conv → pool → tiled local conv → head."""

    def __init__(self) -> None:
        super().__init__()
        width = STREAMS * BANK
        self.streams = nn.Conv2d(STREAMS, width, 3, padding=1, groups=STREAMS)
        self.mix = nn.Conv2d(width, width, 3, padding=1)
        self.iso = nn.Conv2d(width, width, 3, padding=1)
        self.local = tietorch.LocallyConnected2d(
            width, 8, 3, input_size=SIDE // 2, padding=1, tie=tietorch.TileShare(2)
        )
        self.head = nn.Linear(8, len(CLASSES))

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.streams(x))
        x = F.relu(self.mix(x))
        x = F.relu(self.iso(x))
        x = F.max_pool2d(x, 2)
        x = F.relu(self.local(x))
        return self.head(x.amax(dim=(2, 3)))


def build_model(seed: int) -> DemoNet:
    """The tied demo model, initialized from ``seed``.

    Every tied weight gets He initialization through its free vector: each entry of a tied
    tensor *is* a free parameter (times a sign), so drawing the free vector from
    ``N(0, 2 / fan_in)`` gives every entry that law.
    """
    torch.manual_seed(seed)
    model = DemoNet()
    share = tietorch.ShareAcrossGroups(STREAMS)
    tietorch.register_tie(model.streams, "weight", share)
    tietorch.register_tie(model.streams, "bias", share)
    tietorch.register_tie(model.mix, "weight", tietorch.SymmetricFlip())
    tietorch.register_tie(model.iso, "weight", tietorch.KernelSymmetry("D4"))
    with torch.no_grad():
        layers: tuple[nn.Module, ...] = (model.streams, model.mix, model.iso, model.local)
        for layer in layers:
            free = parametrization_list(layer, "weight").original
            weight = layer.weight
            assert isinstance(weight, Tensor)
            fan_in = math.prod(weight.shape[-3:])  # in_channels * kh * kw
            free.normal_(0.0, math.sqrt(2.0 / fan_in))
    return model


# --------------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class Check:
    """One exact (bitwise) constraint check on a tied tensor of the demo model."""

    tensor: str
    tie: str
    expression: str
    holds: Callable[[DemoNet], bool]


def _tensor(t: Tensor | None) -> Tensor:
    assert t is not None
    return t


def _blocks_equal(t: Tensor, groups: int) -> bool:
    blocks = t.detach().chunk(groups, dim=0)
    return all(torch.equal(blocks[0], b) for b in blocks[1:])


def _tiled(t: Tensor, tile: int) -> bool:
    t = t.detach()
    h, w = t.shape[:2]
    base = t[:tile, :tile]
    reps = (math.ceil(h / tile), math.ceil(w / tile)) + (1,) * (t.dim() - 2)
    return torch.equal(t, base.repeat(*reps)[:h, :w])


def constraint_checks() -> list[Check]:
    """What the demo verifies after training (and after reloading), one row per tied tensor."""

    def weight(m: DemoNet, name: str) -> Tensor:
        return getattr(m, name).weight.detach()

    blocks = " == ".join(f"{{0}}[{k * BANK}:{(k + 1) * BANK}]" for k in range(STREAMS))
    return [
        Check(
            "streams.weight",
            f"ShareAcrossGroups({STREAMS})",
            blocks.format("W"),
            lambda m: _blocks_equal(weight(m, "streams"), STREAMS),
        ),
        Check(
            "streams.bias",
            f"ShareAcrossGroups({STREAMS})",
            blocks.format("b"),
            lambda m: _blocks_equal(_tensor(m.streams.bias), STREAMS),
        ),
        Check(
            "mix.weight",
            "SymmetricFlip()",
            "W == W.transpose(0, 1).flip(2, 3)",
            lambda m: torch.equal(weight(m, "mix"), weight(m, "mix").transpose(0, 1).flip(2, 3)),
        ),
        Check(
            "iso.weight",
            "KernelSymmetry('D4')",
            "W == W.rot90(1, (2, 3)) == W.flip(3)",
            lambda m: (
                torch.equal(weight(m, "iso"), weight(m, "iso").rot90(1, (2, 3)))
                and torch.equal(weight(m, "iso"), weight(m, "iso").flip(3))
            ),
        ),
        Check(
            "local.weight",
            "TileShare(2)",
            "W[i, j] == W[i % 2, j % 2]",
            lambda m: _tiled(m.local.weight, 2),
        ),
        Check(
            "local.bias",
            "TileShare(2)",
            "b[i, j] == b[i % 2, j % 2]",
            lambda m: _tiled(_tensor(m.local.bias), 2),
        ),
    ]


# ------------------------------------------------------------------------------- training


def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on ``(x, y)``."""
    model.eval()
    with torch.no_grad():
        logits = model(x)
    model.train()
    return float((logits.argmax(1) == y).float().mean()), float(F.cross_entropy(logits, y))


class Progress:
    """A ``\\r`` progress bar on a terminal; one line per epoch otherwise."""

    WIDTH = 30

    def __init__(self, total_s: float, stream: TextIO) -> None:
        self.total_s = total_s
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last_draw = 0.0

    def step(self, elapsed: float, epoch: int, loss: float) -> None:
        """Redraw the bar (at most 10 times a second, terminal only)."""
        if not self.tty or elapsed - self._last_draw < 0.1:
            return
        self._last_draw = elapsed
        done = min(elapsed / self.total_s, 1.0) if self.total_s > 0 else 1.0
        filled = round(done * self.WIDTH)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        self.stream.write(
            f"\r  [{bar}] {elapsed:4.1f}/{self.total_s:.1f} s  epoch {epoch:3d}  loss {loss:.3f}"
        )
        self.stream.flush()

    def epoch(self, elapsed: float, epoch: int, loss: float, accuracy: float) -> None:
        """Report a finished epoch (a line when not on a terminal)."""
        if not self.tty:
            self.stream.write(
                f"  epoch {epoch:3d}  {elapsed:5.1f} s  loss {loss:.3f}  train acc {accuracy:.3f}\n"
            )
            self.stream.flush()

    def close(self, elapsed: float, epochs: int, loss: float) -> None:
        if self.tty:
            self._last_draw = -1.0
            self.step(elapsed, epochs, loss)
            self.stream.write("\n")
            self.stream.flush()


def train(
    model: nn.Module, x: Tensor, y: Tensor, seconds: float, seed: int, progress: Progress
) -> tuple[int, int, float]:
    """Adam on shuffled mini-batches until ``seconds`` have passed.

    Returns (epochs, steps, seconds spent); the optimizer is built before the clock starts
    (its first construction imports ``torch._dynamo``, about a second).
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    generator = torch.Generator().manual_seed(seed + 1)
    start = time.perf_counter()
    epochs = steps = 0
    loss_value = float("nan")
    while time.perf_counter() - start < seconds:
        order = torch.randperm(len(x), generator=generator)
        correct = total_loss = 0.0
        for first in range(0, len(x), BATCH):
            batch = order[first : first + BATCH]
            logits = model(x[batch])
            loss = F.cross_entropy(logits, y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            loss_value = float(loss.detach())
            total_loss += loss_value * len(batch)
            correct += float((logits.argmax(1) == y[batch]).sum())
            elapsed = time.perf_counter() - start
            progress.step(elapsed, epochs + 1, loss_value)
            if elapsed >= seconds:
                break
        epochs += 1
        seen = min(len(x), first + BATCH)
        progress.epoch(time.perf_counter() - start, epochs, total_loss / seen, correct / seen)
    elapsed = time.perf_counter() - start
    progress.close(elapsed, epochs, loss_value)
    return epochs, steps, elapsed


# ----------------------------------------------------------------------------------- report


def _mark(ok: bool, stream: TextIO) -> str:
    """✓/✗ where the stream can encode them, else yes/no."""
    symbol = "✓" if ok else "✗"
    try:
        symbol.encode(getattr(stream, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "yes" if ok else "NO"
    return symbol


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[k]) for r in (header, *rows)) for k in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in (header, *rows)]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join("  " + line for line in lines)


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1024:.1f} kB" if n_bytes < 1024**2 else f"{n_bytes / 1024**2:.1f} MB"


def _serialized_size(state: dict[str, Tensor]) -> int:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getbuffer().nbytes


def run_demo(
    seconds: float = 5.0,
    seed: int = 0,
    out: str | Path | None = None,
    threads: int = 1,
    stream: TextIO | None = None,
) -> int:
    """Run the demo, printing to ``stream`` (default stdout); 0 if every check passes, else 1.

    Args:
        seconds: training time (0: no training).
        seed: seeds the data, the model and the batch order.
        out: a directory to keep the checkpoint in (default: a temporary one, removed).
        threads: torch's intra-op threads during the run (restored afterwards). The model is
            tiny: one thread is fastest, and much faster than several on a busy machine.
    """
    stream = sys.stdout if stream is None else stream
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):  # seeding leaves the caller's RNG alone
            return _run(seconds, seed, out, stream)
    finally:
        torch.set_num_threads(previous_threads)


def _run(seconds: float, seed: int, out: str | Path | None, stream: TextIO) -> int:
    """The demo's steps, in order; see :func:`run_demo`."""

    def say(text: str = "") -> None:
        stream.write(text + "\n")
        stream.flush()

    generator = torch.Generator().manual_seed(seed)
    x_train, y_train = make_data(N_TRAIN, generator)
    x_test, y_test = make_data(N_TEST, generator)
    model = build_model(seed)

    say("tietorch demo: tie a small CNN, train it, check the ties, save and reload")
    say(f"  task:  name the shape ({', '.join(CLASSES[:-1])} or {CLASSES[-1]}) hidden in one of")
    say(
        f"         {STREAMS} input streams of {SIDE}x{SIDE} noise; {N_TRAIN:,} training and "
        f"{N_TEST:,} test images, made in code"
    )
    say(
        f"  model: streams (grouped conv: one filter bank shared by the {STREAMS} streams)"
        " -> mix (self-adjoint conv)"
    )
    say(
        "         -> iso (D4-symmetric conv) -> max pool -> local (locally connected, 2x2 tiles)"
        " -> linear"
    )
    say()
    say(str(tietorch.summary(model)))
    say()

    acc_before, loss_before = evaluate(model, x_test, y_test)
    say(f"training for {seconds:g} s (Adam, lr {LEARNING_RATE:g}, batch {BATCH}, seed {seed})")
    epochs, steps, train_s = train(
        model, x_train, y_train, seconds, seed, Progress(seconds, stream)
    )
    acc_after, loss_after = evaluate(model, x_test, y_test)
    say()

    checks = constraint_checks()
    results = [c.holds(model) for c in checks]
    say("constraints after training, checked bitwise (torch.equal):")
    say(
        _table(
            ("tensor", "tie", "check", "holds"),
            [(c.tensor, c.tie, c.expression, _mark(ok, stream)) for c, ok in zip(checks, results)],
        )
    )
    say(f"  -> constraints hold exactly: {_mark(all(results), stream)}")
    say()

    with tempfile.TemporaryDirectory(prefix="tietorch-demo-") as tmp:
        folder = Path(out) if out is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "tietorch_demo.pt"
        torch.save(model.state_dict(), path)
        file_size = path.stat().st_size
        fresh = build_model(seed + 1)  # a different initialization, overwritten by the load
        fresh.load_state_dict(torch.load(path, weights_only=True))
        model.eval()
        fresh.eval()
        with torch.no_grad():
            identical = torch.equal(model(x_test), fresh(x_test))
        reloaded_exact = all(c.holds(fresh) for c in checks)
        where = str(path) if out is not None else "a temporary directory"
    dense_size = _serialized_size(tietorch.dense_state_dict(model))
    say(
        f"saved state_dict to {where} ({_size(file_size)}; a dense checkpoint: {_size(dense_size)})"
    )
    say("reloaded with torch.load(weights_only=True) into a freshly built tied model:")
    say(
        f"  -> outputs identical: {_mark(identical, stream)}, constraints hold exactly: "
        f"{_mark(reloaded_exact, stream)}"
    )
    say()

    info = tietorch.summary(model)
    dense = info.model_parameters - info.free + info.entries
    say("results:")
    say(
        _table(
            ("", "before", "after"),
            [
                ("test accuracy", f"{acc_before:.3f}", f"{acc_after:.3f}"),
                ("test loss", f"{loss_before:.3f}", f"{loss_after:.3f}"),
            ],
        )
    )
    say(
        f"  trained {train_s:.1f} s: {_plural(epochs, 'epoch')}, {_plural(steps, 'step')} "
        f"(chance accuracy {1 / len(CLASSES):.2f})"
    )
    say(
        f"  parameters: {dense:,} dense -> {info.model_parameters:,} free "
        f"({dense / info.model_parameters:.1f}x fewer)"
    )
    say(f"  checkpoint: {_size(file_size)} (dense: {_size(dense_size)})")
    ok = all(results) and identical and reloaded_exact
    say()
    say("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1
