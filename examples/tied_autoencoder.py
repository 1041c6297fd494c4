"""A tied autoencoder: the decoder's weight is the encoder's weight transposed.

``tietorch.tie_tensors`` ties the two weights to one free vector, owned by the encoder: the
decoder holds no parameter and nothing in the state dict, the tie holds exactly through
training, and the state dict contains no two tensors sharing memory, so safetensors saves it
(unlike ``decoder.weight = encoder.weight``-style sharing, which safetensors refuses).

The script trains on synthetic data lying near a low-dimensional subspace, checks the tie, the
parameter count and the checkpoint round trip (safetensors if installed, else ``torch.save``).

Run: ``python examples/tied_autoencoder.py [--quick]``; exits non-zero if a check fails.
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from _checks import check, setup, verdict
from torch import Tensor, nn

import tietorch


def transpose(i: Tensor, j: Tensor) -> tuple[Tensor, Tensor]:
    """Relation from the decoder's entry (i, j) to the encoder's entry (j, i).

    Defined at module level (not a lambda) so that a tied model can also be pickled whole.
    """
    return j, i


def make_autoencoder(features: int, code: int) -> nn.Sequential:
    """Linear encoder and decoder with ``decoder.weight == encoder.weight.T`` (biases free)."""
    model = nn.Sequential(nn.Linear(features, code), nn.Tanh(), nn.Linear(code, features))
    tietorch.tie_tensors([(model[0], "weight"), (model[2], "weight")], relation=transpose)
    return model


def synthetic_data(samples: int, features: int, rank: int) -> Tensor:
    """Points near a random ``rank``-dimensional subspace of R^features."""
    basis = torch.linalg.qr(torch.randn(features, rank)).Q
    return torch.randn(samples, rank) @ basis.T + 0.01 * torch.randn(samples, features)


def main(argv: list[str] | None = None) -> int:
    quick = setup(argv, __doc__)
    features, code, samples = 64, 8, 1024
    steps = 150 if quick else 1500

    model = make_autoencoder(features, code)
    untied = sum(
        p.numel()
        for p in nn.Sequential(nn.Linear(features, code), nn.Linear(code, features)).parameters()
    )
    n = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n:,} tied (one {code}x{features} weight + 2 biases), {untied:,} untied")
    check("one weight's worth of parameters", n == features * code + code + features)
    print(tietorch.summary(model))
    keys = sorted(model.state_dict())
    print(f"state dict keys: {keys}")
    check(
        "the decoder weight is not in the state dict",
        keys == ["0.bias", "0.parametrizations.weight.original", "2.bias"],
    )

    x = synthetic_data(samples, features, rank=code)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.no_grad():
        first = F.mse_loss(model(x), x).item()
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(model(x), x).backward()
        opt.step()
    with torch.no_grad():
        last = F.mse_loss(model(x), x).item()
    print(
        f"reconstruction loss: {first:.4f} -> {last:.4f} after {steps} Adam steps "
        f"(data variance {x.var().item():.4f})"
    )
    check("training lowered the loss", last < first / 2)
    check(
        "decoder.weight == encoder.weight.T exactly after training",
        torch.equal(model[2].weight, model[0].weight.T),
    )

    state = model.state_dict()
    restored = make_autoencoder(features, code)
    try:
        from safetensors.torch import load_file, save_file
    except ImportError:
        print(
            "safetensors is not installed: skipping the safetensors round trip "
            "(pip install safetensors); using torch.save / torch.load(weights_only=True)"
        )
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        restored.load_state_dict(torch.load(buffer, weights_only=True))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "autoencoder.safetensors"
            save_file(state, str(path))
            print(f"safetensors file: {path.stat().st_size:,} bytes")
            restored.load_state_dict(load_file(str(path)))
        check("safetensors round trip", True)
    with torch.no_grad():
        check("the restored model gives the same output", torch.equal(restored(x), model(x)))
    check("and is still tied", torch.equal(restored[2].weight, restored[0].weight.T))

    # For people without tietorch: a plain state dict with both full weights.
    plain = nn.Sequential(nn.Linear(features, code), nn.Tanh(), nn.Linear(code, features))
    plain.load_state_dict(tietorch.dense_state_dict(model))
    with torch.no_grad():
        check("dense_state_dict loads into an untied model", torch.equal(plain(x), model(x)))

    return verdict()


if __name__ == "__main__":
    sys.exit(main())
