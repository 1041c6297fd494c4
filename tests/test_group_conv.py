"""``GroupConv`` p4 / p4m: free-parameter counts against an independent oracle (the dimension
of the space of weights whose convolution commutes with the group, found numerically from the
convolution itself), exact equivariance of layers and stacks for every group element, the
invariant head, compile / export, and ``bake``."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import tietorch as tt
from tietorch import GroupConv
from tietorch.testing import check_equivariance, field_action
from tietorch.ties.group_conv import elements

ORDER = {"p4": 4, "p4m": 8}
PAIRS = [
    ("trivial", "regular"),
    ("regular", "regular"),
    ("regular", "trivial"),
    ("trivial", "trivial"),
]


def _channels(group: str, rep: str, fields: int) -> int:
    return fields * (ORDER[group] if rep == "regular" else 1)


def oracle_count(group: str, in_rep: str, out_rep: str, k: int, cin: int, cout: int) -> int:
    """The dimension of {W : conv(h x; W) = h conv(x; W) for every generator h}, by the rank
    of that linear map of W, evaluated with real convolutions on random images (float64)."""
    shape = (_channels(group, out_rep, cout), _channels(group, in_rep, cin), k, k)
    numel = torch.Size(shape).numel()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, shape[1], k + 4, k + 4, generator=gen, dtype=torch.float64)
    rows = []
    for h in elements(group):
        act_in, act_out = field_action(group, in_rep, h), field_action(group, out_rep, h)
        basis = torch.eye(numel, dtype=torch.float64).view(numel, *shape)
        columns = [
            (
                nn.functional.conv2d(act_in(x), w, padding=k // 2)
                - act_out(nn.functional.conv2d(x, w, padding=k // 2))
            ).reshape(-1)
            for w in basis
        ]
        rows.append(torch.stack(columns, 1))
    matrix = torch.cat(rows)
    return numel - int(torch.linalg.matrix_rank(matrix))


@pytest.mark.parametrize("group", ["p4", "p4m"])
@pytest.mark.parametrize(("in_rep", "out_rep"), PAIRS)
@pytest.mark.parametrize("k", [1, 3, 5])
def test_counts_match_the_oracle_and_the_formulas(group, in_rep, out_rep, k):
    cin, cout = 1, 1
    tie = GroupConv(group, in_rep, out_rep)
    shape = (_channels(group, out_rep, cout), _channels(group, in_rep, cin), k, k)
    free = tie.layout(shape).n_free
    if k <= 3 or group == "p4":  # the oracle's dense rank: up to 1600 columns
        assert free == oracle_count(group, in_rep, out_rep, k, cin, cout)
    expected = {
        ("trivial", "regular"): k * k,
        ("regular", "regular"): ORDER[group] * k * k,
        ("regular", "trivial"): k * k,
    }.get((in_rep, out_rep))
    if expected is None:  # a rotation (and mirror) invariant kernel, as KernelSymmetry
        kernel = tt.KernelSymmetry("C4" if group == "p4" else "D4")
        expected = kernel.layout((1, 1, k, k)).n_free
    assert free == expected


def test_counts_scale_with_the_fields():
    tie = GroupConv("p4", "regular", "regular")
    assert tie.layout((16 * 4, 16 * 4, 3, 3)).n_free == 9216  # 16 * 16 * 4 * 9 of 36,864
    assert GroupConv("p4m", "regular", "trivial").layout((5, 3 * 8, 3, 3)).n_free == 5 * 3 * 9


def test_the_bias_gets_one_value_per_output_field():
    conv = nn.Conv2d(8, 3 * 8, 3)
    tt.register_tie(conv, "bias", GroupConv("p4m", "regular", "regular"))
    assert conv.parametrizations.bias.original.numel() == 3
    assert torch.equal(conv.bias.view(3, 8), conv.bias.view(3, 8)[:, :1].expand(3, 8))


def _p4_cnn(group: str, fields: int = 3, k: int = 3, classes: int = 5) -> nn.Module:
    order = ORDER[group]
    lift = nn.Conv2d(2, fields * order, k, padding=k // 2)
    mid = nn.Conv2d(fields * order, fields * order, k, padding=k // 2)
    project = nn.Conv2d(fields * order, classes, k, padding=k // 2)
    for conv, reps in ((lift, PAIRS[0]), (mid, PAIRS[1]), (project, PAIRS[2])):
        tie = GroupConv(group, *reps)
        tt.register_tie(conv, "weight", tie)
        tt.register_tie(conv, "bias", tie)
    return nn.Sequential(lift, nn.ReLU(), mid, nn.ReLU(), project).double()


@pytest.mark.parametrize("group", ["p4", "p4m"])
def test_layers_and_stacks_are_exactly_equivariant_for_every_element(group):
    torch.manual_seed(0)
    net = _p4_cnn(group)
    x = torch.randn(2, 2, 9, 9, dtype=torch.float64)
    for h in elements(group):
        trivial = field_action(group, "trivial", h)
        regular = field_action(group, "regular", h)
        assert check_equivariance(net[0], trivial, regular, inputs=x, atol=1e-12) < 1e-12
        assert check_equivariance(net, trivial, trivial, inputs=x, atol=1e-12) < 1e-12
        features = net[:2](x)
        assert check_equivariance(net[2], regular, regular, inputs=features, atol=1e-12) < 1e-12


def test_an_untied_conv_is_not_equivariant_and_the_check_says_where():
    conv = nn.Conv2d(2, 4, 3, padding=1).double()
    h = field_action("p4", "trivial", (0, 1))
    with pytest.raises(AssertionError, match="not equivariant"):
        check_equivariance(conv, h, h, input_shape=(1, 2, 5, 5))


def test_group_pooling_gives_an_invariant_head():
    torch.manual_seed(0)
    order = 8
    lift = nn.Conv2d(1, 4 * order, 3, padding=1).double()
    for name in ("weight", "bias"):  # an untied bias differs between a field's channels
        tt.register_tie(lift, name, GroupConv("p4m", "trivial", "regular"))

    def head(x: torch.Tensor) -> torch.Tensor:  # max over the group, then over space
        return lift(x).unflatten(1, (4, order)).amax(2).amax((-2, -1))

    x = torch.randn(3, 1, 7, 7, dtype=torch.float64)
    for h in elements("p4m"):
        assert torch.allclose(head(field_action("p4m", "trivial", h)(x)), head(x), atol=1e-12)


def test_compile_export_and_bake_of_a_p4_cnn():
    torch.manual_seed(0)
    net = _p4_cnn("p4")
    x = torch.randn(2, 2, 9, 9, dtype=torch.float64)
    expected = net(x)
    assert torch.allclose(torch.compile(net, fullgraph=True)(x), expected, atol=1e-10)
    assert torch.allclose(torch.export.export(net, (x,)).module()(x), expected, atol=1e-12)
    tt.bake(net)
    assert all(type(net[i]) is nn.Conv2d for i in (0, 2, 4))  # plain convs again
    assert torch.equal(net(x), expected)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("p6", "regular", "regular"), "'p4' or 'p4m'"),
        (("p4", "vector", "regular"), "'trivial' or 'regular'"),
    ],
)
def test_bad_arguments_are_refused(args, match):
    with pytest.raises(tt.errors.ArgumentError, match=match):
        GroupConv(*args)


def test_shapes_that_do_not_fit_are_refused_and_leave_the_conv_untouched():
    conv = nn.Conv2d(6, 8, 3)
    before = conv.weight.detach().clone()
    with pytest.raises(tt.errors.ShapeError, match="fields of"):
        tt.register_tie(conv, "weight", GroupConv("p4", "regular", "regular"))
    assert torch.equal(conv.weight, before)
    with pytest.raises(tt.errors.ShapeError, match="square kernel"):
        tt.register_tie(nn.Conv2d(4, 4, (3, 5)), "weight", GroupConv("p4", "regular", "regular"))


def test_elements_compose_as_the_transformations_do():
    image = torch.randn(5, 5)

    def apply(e, x):
        return torch.rot90(x.flip(-1) if e[0] else x, e[1], dims=(-2, -1))

    from tietorch.ties.group_conv import compose

    for a, b in itertools.product(elements("p4m"), repeat=2):
        assert torch.equal(apply(compose(a, b), image), apply(a, apply(b, image)))
