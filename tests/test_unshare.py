"""``unshare``: sizes from an example input, and what happens to a tied conv's kernel tie
("keep": the same tie at every location, or a refusal that says what to pass; never dropped)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tietorch as tt
from tietorch import unshare


def _d4_conv() -> nn.Conv2d:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    tt.register_tie(conv, "weight", tt.KernelSymmetry("D4"))
    return conv


X = torch.randn(2, 3, 6, 5, dtype=torch.float64)


def test_keep_ties_every_locations_kernel_as_the_conv_is_tied():
    conv = _d4_conv()
    lc = unshare(conv, example_input=X)
    assert lc.input_size == (6, 5)
    assert torch.allclose(lc(X), conv(X), atol=1e-12)
    per_kernel = tt.KernelSymmetry("D4").layout((1, 1, 3, 3)).n_free  # 3 of 9
    assert lc.parametrizations.weight.original.numel() == 6 * 5 * 4 * 3 * per_kernel
    # after training steps every location's kernel is still D4-symmetric (and they differ)
    opt = torch.optim.SGD(lc.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        lc(torch.randn_like(X)).square().sum().backward()
        opt.step()
    w = lc.weight.detach()
    assert torch.equal(w, w.rot90(1, (-2, -1))) and torch.equal(w, w.flip(-1))
    assert not torch.equal(w[0, 0], w[2, 2])


def test_tie_none_gives_an_untied_layer_and_a_tie_is_used_as_given():
    conv = _d4_conv()
    plain = unshare(conv, (6, 5), tie=None)
    assert plain.tie is None and plain.weight.numel() == 6 * 5 * 4 * 3 * 9
    assert torch.allclose(plain(X), conv(X), atol=1e-12)
    tiled = unshare(conv, (6, 5), tie=tt.KernelSymmetry("D4") & tt.TileShare(2))
    assert tiled.parametrizations.weight.original.numel() == 2 * 2 * 4 * 3 * 3
    assert torch.allclose(tiled(X), conv(X), atol=1e-12)


def test_a_group_conv_keeps_its_weight_and_bias_ties():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, padding=1).double()
    tie = tt.GroupConv("p4", "regular", "regular")
    tt.register_tie(conv, "weight", tie)
    tt.register_tie(conv, "bias", tie)
    lc = unshare(conv, (5, 5))
    assert lc.parametrizations.weight.original.numel() == 25 * 2 * 1 * 4 * 9
    assert lc.parametrizations.bias.original.numel() == 25 * 2  # one value per field
    y = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    assert torch.allclose(lc(y), conv(y), atol=1e-12)


def test_what_cannot_be_kept_is_refused_with_the_fix():
    a, b = nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 3)
    tt.tie_tensors([(a, "weight"), (b, "weight")])
    with pytest.raises(tt.errors.ArgumentError, match="tie=None or a Tie"):
        unshare(a, (5, 5))
    assert unshare(a, (5, 5), tie=None).tie is None
    with pytest.raises(tt.errors.ArgumentError, match="input_size= or example_input="):
        unshare(nn.Conv2d(2, 2, 3))
    with pytest.raises(tt.errors.TieTypeError, match="no 3-d transposed"):
        unshare(nn.ConvTranspose3d(2, 2, 3), (4, 4, 4))
    with pytest.raises(tt.errors.TieTypeError, match="'keep', None or a Tie"):
        unshare(nn.Conv2d(2, 2, 3), (5, 5), tie="drop")


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2), nn.ReLU())
        self.head = nn.Linear(4 * 4 * 3, 2)
        self.unused = nn.Conv1d(1, 1, 1)
        tt.register_tie(self.stem, "weight", tt.KernelSymmetry("D4"))

    def forward(self, x):
        return self.head(self.body(self.stem(x)).flatten(1))


def test_unshare_modules_swaps_every_chosen_conv_and_keeps_outputs_and_input_gradients():
    torch.manual_seed(0)
    net = _Net().double()
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    before = net(x)
    (grad_before,) = torch.autograd.grad(before.square().sum(), x)
    with pytest.raises(tt.errors.TargetError, match="did not run"):
        tt.unshare_modules(net, x.detach())
    assert type(net.stem) is not nn.Conv2d  # parametrized, but still the conv
    assert isinstance(net.stem, nn.Conv2d) and isinstance(net.body[1], nn.Conv2d)
    report = tt.unshare_modules(net, x.detach(), where=lambda name, m: name != "unused")
    assert [(name, kind) for name, kind, _, _ in report] == [
        ("stem", "Conv2d"),
        ("body.1", "Conv2d"),
    ]
    assert isinstance(net.stem, tt.LocallyConnected2d) and isinstance(
        net.body[1], tt.LocallyConnected2d
    )
    assert net.stem.tie is not None  # the D4 tie kept at every location
    after = net(x)
    (grad_after,) = torch.autograd.grad(after.square().sum(), x)
    assert torch.allclose(after, before, atol=1e-12)
    assert torch.allclose(grad_after, grad_before, atol=1e-12)
    assert "stem.weight" in str(tt.summary(net))


@pytest.mark.parametrize("impl", ["batched", "chunked", "unfold"])
@pytest.mark.parametrize(
    ("conv", "size"),
    [
        (nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2), (5, 4)),
        (nn.ConvTranspose2d(6, 6, 2, groups=3, dilation=2), (4, 4)),
        (nn.ConvTranspose1d(4, 8, 3, stride=2, groups=4), (7,)),
    ],
)
def test_grouped_transposed_convs_unshare_exactly(conv, size, impl):
    """nn.ConvTranspose (PyTorch's own kernel, an independent reference): outputs and every
    gradient equal in float64."""
    torch.manual_seed(0)
    conv = conv.double()
    lct = unshare(conv, size, implementation=impl)
    assert lct.groups == conv.groups
    y = torch.randn(2, conv.in_channels, *size, dtype=torch.float64, requires_grad=True)
    out, expected = lct(y), conv(y)
    assert torch.allclose(out, expected, atol=1e-12)
    seed = torch.randn_like(out)
    (gy,) = torch.autograd.grad((out * seed).sum(), y)
    (gy_ref,) = torch.autograd.grad((expected * seed).sum(), y)
    assert torch.allclose(gy, gy_ref, atol=1e-12)


@pytest.mark.parametrize("impl", ["batched", "unfold"])
def test_grouped_transposed_layers_are_adjoints(impl):
    torch.manual_seed(0)
    kwargs = dict(
        stride=2, padding=1, groups=2, bias=False, dtype=torch.float64, implementation=impl
    )
    lc = tt.LocallyConnected2d(6, 4, 3, input_size=10, **kwargs)
    lct = tt.LocallyConnectedTranspose2d(
        4, 6, 3, input_size=lc.output_size, output_padding=1, **kwargs
    )
    with torch.no_grad():
        lct.weight.copy_(lc.weight)
    x = torch.randn(2, 6, 10, 10, dtype=torch.float64)
    y = torch.randn(2, 4, *lc.output_size, dtype=torch.float64)
    with torch.no_grad():
        assert abs(float((y * lc(x)).sum() - (lct(y) * x).sum())) < 1e-11


@pytest.mark.parametrize(
    "inner, kernel",
    [
        (tt.KernelSymmetry("D4"), (4, 3, 3, 3)),
        (tt.SymmetricFlip(sign=-1), (3, 3, 3, 3)),
        (tt.Tie.from_key(lambda o, c, a, b: (o, (a + b) % 2)), (2, 3, 3, 3)),
    ],
)
def test_a_kept_kernel_tie_is_laid_out_as_the_whole_weight_solves(inner, kernel):
    """The kernel's tie at every location is its kernel layout repeated: the same layout (and
    checkpoint fingerprint) as solving the whole unshared weight's declaration."""
    from tietorch.layers.unshare import _AtEveryLocation

    tie = _AtEveryLocation(inner, 2)
    shape = (3, 4, *kernel)
    closed, solved = tie.layout(shape), tt.Tie._solved(tie, shape)
    assert closed.n_free == solved.n_free
    assert torch.equal(closed.index, solved.index)
    assert (closed.sign is None) == (solved.sign is None)
    if closed.sign is not None:
        assert torch.equal(closed.sign, solved.sign)
    assert closed.fingerprint() == solved.fingerprint()
