"""Embedding/output tying in a tiny character language model, declared with ``tie_model``.

The output layer's weight (vocabulary x width) is tied to the embedding's (vocabulary x width):
one free matrix, owned by the embedding. ``tie_model`` declares every tie of a model by
qualified names, checks them all, then applies them; here it also makes a square mixing layer
symmetric, to show a within-tensor tie next to a group.

The script trains a GRU on a short embedded text for a few hundred steps, checks that the tie
holds exactly, that the loss went down, and prints a sample.

Run: ``python examples/tiny_lm.py [--quick]``; exits non-zero if a check fails.
"""

from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F
from _checks import check, setup, verdict
from torch import Tensor, nn

import tietorch

TEXT = (
    "Declare which entries of a weight are equal, and train only the free parameters. "
    "A tie is an index map: entries with equal keys share one value, or a relation says "
    "that one entry equals another, up to a sign. The library finds the classes of tied "
    "entries and keeps one number per class. The weight is a gather of those numbers, so the "
    "constraint holds exactly, before and after every step of the optimizer. "
)


class CharLM(nn.Module):
    """Embedding -> GRU -> square mixing layer -> linear head back to the vocabulary."""

    def __init__(self, vocab: int, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.rnn = nn.GRU(width, width, batch_first=True)
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        hidden, _ = self.rnn(self.embed(tokens))
        return self.head(torch.tanh(self.mix(hidden)))


def batches(data: Tensor, context: int, batch: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random windows of ``context`` tokens and the tokens that follow them."""
    starts = torch.randint(0, len(data) - context - 1, (batch,), generator=gen)
    windows = torch.stack([data[s : s + context + 1] for s in starts.tolist()])
    return windows[:, :-1], windows[:, 1:]


@torch.no_grad()
def sample(model: CharLM, prompt: Tensor, length: int) -> list[int]:
    """Greedy continuation of ``prompt``."""
    tokens = prompt.tolist()
    for _ in range(length):
        logits = model(torch.tensor([tokens]))[0, -1]
        tokens.append(int(logits.argmax()))
    return tokens


def main(argv: list[str] | None = None) -> int:
    quick = setup(argv, __doc__)
    steps = 60 if quick else 600
    width, context, batch = 48, 32, 32

    chars = sorted(set(TEXT))
    stoi = {c: k for k, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in TEXT])
    model = CharLM(len(chars), width)
    before = sum(p.numel() for p in model.parameters())
    errors = tietorch.tie_model(
        model,
        {
            ("embed.weight", "head.weight"): None,  # equal shapes: None is the identity relation
            "mix.weight": tietorch.Symmetric(),
        },
    )
    after = sum(p.numel() for p in model.parameters())
    saved = len(chars) * width + width * (width - 1) // 2
    print(f"vocabulary {len(chars)}, width {width}: {before:,} -> {after:,} parameters")
    print(
        "relative projection error of each tie at registration: "
        + ", ".join(f"{name} {error:.2f}" for name, error in errors.items())
    )
    check("saved one vocabulary x width matrix and half of mix.weight", before - after == saved)
    print(tietorch.summary(model))

    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        x, y = batches(data, context, batch, gen)
        opt.zero_grad()
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        losses.append(loss.item())
    print(
        f"cross-entropy: {losses[0]:.3f} (uniform would be {math.log(len(chars)):.3f}) -> "
        f"{sum(losses[-10:]) / 10:.3f} (mean of the last 10 of {steps} steps)"
    )
    check("training lowered the loss", sum(losses[-10:]) / 10 < losses[0] * 0.7)
    check(
        "head.weight == embed.weight exactly after training",
        torch.equal(model.head.weight, model.embed.weight),
    )
    check(
        "mix.weight is still exactly symmetric", torch.equal(model.mix.weight, model.mix.weight.T)
    )
    prompt = data[:20]
    text = "".join(chars[t] for t in sample(model, prompt, 60))
    print(f"sample: {text!r}")

    return verdict()


if __name__ == "__main__":
    sys.exit(main())
