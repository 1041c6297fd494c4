"""``fast_forward``: each rule gives the gathered path's outputs and gradients (float64, 1e-10
relative), leaves parameters and checkpoints alone, and survives the toolchain."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize

import tietorch as tt
from tietorch import _fast

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


@pytest.fixture
def small_thresholds(monkeypatch):
    """Let the spectral and diagonal rules fire on small layers, to test them quickly."""
    small = {"circulant": 2, "toeplitz": 2, "hankel": 2}
    monkeypatch.setattr(_fast, "SPECTRAL_MIN_SIZE", small)
    monkeypatch.setattr(_fast, "SPECTRAL_MIN_SIZE_FEW_ROWS", small)
    monkeypatch.setattr(_fast, "DIAGONAL_MIN_SIZE", 2)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def assert_same_as_gathered(model: nn.Module, x: torch.Tensor, rules: set[str] | None = None):
    """fast_forward(model) matches an untouched copy in value and every gradient; returns the
    report."""
    gathered = copy.deepcopy(model)
    report = tt.fast_forward(model)
    if rules is not None:
        assert {row.rule for row in report} == rules, str(report)
    x_fast = x.clone().requires_grad_()
    x_ref = x.clone().requires_grad_()
    y_fast, y_ref = model(x_fast), gathered(x_ref)
    assert y_fast.shape == y_ref.shape and y_fast.dtype == y_ref.dtype
    assert relative(y_fast, y_ref) < 1e-10
    seed = torch.randn_like(y_ref)
    (y_fast * seed).sum().backward()
    (y_ref * seed).sum().backward()
    assert relative(x_fast.grad, x_ref.grad) < 1e-10
    fast_params = dict(model.named_parameters())
    for name, p in gathered.named_parameters():
        assert relative(fast_params[name].grad, p.grad) < 1e-10, name
    return report


# ------------------------------------------------------------------------ segment-sum, fold


def column_classes(kind: str, columns: int, classes: int) -> torch.Tensor:
    if kind == "blocks":
        return torch.arange(columns) // (columns // classes)
    if kind == "strided":
        return torch.arange(columns) % classes
    labels = torch.randperm(columns, generator=torch.Generator().manual_seed(columns))
    return labels % classes  # every class present, in no particular order


def channel_class_tie(ids: torch.Tensor) -> tt.Tie:
    """A user's own tie: input channels ``c`` and ``c'`` equal when ``ids[c] == ids[c']``."""
    return tt.Tie.from_key(lambda o, c, *k: (o, ids[c], *k), name="channel classes")


@settings(max_examples=40, deadline=None)
@given(
    ndim=st.integers(1, 3),
    groups=st.sampled_from([1, 1, 2, 3]),
    per_group=st.integers(2, 5),
    out_per_group=st.integers(1, 3),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 2),
    dilation=st.integers(1, 2),
    padding=st.sampled_from([0, 1, 2, "same"]),
    padding_mode=st.sampled_from(["zeros", "reflect", "circular", "replicate"]),
    kind=st.sampled_from(["all", "blocks", "strided", "general"]),
    bias=st.booleans(),
    unbatched=st.booleans(),
)
def test_segment_sum_matches_the_gathered_conv(
    ndim,
    groups,
    per_group,
    out_per_group,
    kernel,
    stride,
    dilation,
    padding,
    padding_mode,
    kind,
    bias,
    unbatched,
):
    if padding == "same":
        stride = 1
    columns = per_group * 2  # at most half of the columns as classes
    classes = {"all": 1, "blocks": 2, "strided": 2, "general": per_group}[kind]
    ids = column_classes(kind if classes > 1 else "blocks", columns, classes)
    conv = CONV[ndim](
        columns * groups,
        out_per_group * groups,
        kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=bias,
        padding_mode=padding_mode,
    ).double()
    tt.register_tie(conv, "weight", channel_class_tie(ids))
    size = (7, 6)[:ndim] if ndim < 3 else (6, 5, 6)
    shape = (columns * groups, *size) if unbatched else (2, columns * groups, *size)
    report = assert_same_as_gathered(conv, torch.randn(shape, dtype=torch.float64))
    assert [row.rule for row in report] == ["segment-sum"]


@settings(max_examples=25, deadline=None)
@given(
    ndim=st.integers(1, 3),
    groups=st.integers(2, 4),
    c_in=st.integers(1, 3),
    c_out=st.integers(1, 3),
    stride=st.integers(1, 2),
    padding=st.integers(0, 1),
    padding_mode=st.sampled_from(["zeros", "reflect"]),
    bias_tie=st.sampled_from(["tied", "untied", "none"]),
    share_inputs=st.booleans(),
)
def test_fold_groups_matches_the_gathered_grouped_conv(
    ndim, groups, c_in, c_out, stride, padding, padding_mode, bias_tie, share_inputs
):
    if share_inputs:
        c_in *= 2
    conv = CONV[ndim](
        c_in * groups,
        c_out * groups,
        3,
        stride=stride,
        padding=padding,
        groups=groups,
        bias=bias_tie != "none",
        padding_mode=padding_mode,
    ).double()
    tie = tt.ShareAcrossGroups(groups)
    tt.register_tie(conv, "weight", tie & tt.ShareAlong(1) if share_inputs else tie)
    if bias_tie == "tied":
        tt.register_tie(conv, "bias", tt.ShareAcrossGroups(groups))
    size = (9, 8, 6)[:ndim] if ndim < 3 else (5, 6, 5)
    report = assert_same_as_gathered(conv, torch.randn(2, c_in * groups, *size).double())
    expected = "fold-groups + segment-sum" if share_inputs else "fold-groups"
    assert [row.rule for row in report] == [expected]
    plan = conv.parametrizations.weight[0].fast
    assert plan.bias_in_conv == (bias_tie == "tied")


@settings(max_examples=30, deadline=None)
@given(
    out=st.integers(1, 6),
    columns=st.integers(2, 12),
    kind=st.sampled_from(["all", "blocks", "strided", "general"]),
    lead=st.sampled_from([(3,), (2, 3), ()]),
)
def test_segment_sum_matches_the_gathered_linear(out, columns, kind, lead):
    classes = 1 if kind == "all" else max(1, columns // 2)
    if kind in ("blocks", "strided") and columns % classes:
        columns = classes * 2
    ids = column_classes(kind if classes > 1 else "blocks", columns, classes)
    linear = nn.Linear(columns, out).double()
    tt.register_tie(linear, "weight", tt.Tie.from_key(lambda o, c: (o, ids[c])))
    x = torch.randn(*lead, columns, dtype=torch.float64)
    assert_same_as_gathered(linear, x, {"segment-sum"})


class SignedColumns(tt.Tie):
    """A ``(out, 8, k)`` layout given directly: column 2 equals column 0, column 1 is column 0
    negated, column 3 is forced to zero, columns 4..7 are equal: four classes of columns."""

    def layout(self, shape):
        out, _, k = shape
        entry = torch.arange(out * k).view(out, 1, k)
        index = torch.zeros(shape, dtype=torch.long)
        sign = torch.ones(shape, dtype=torch.long)
        index[:, [0, 1, 2]] = entry
        sign[:, 1] = -1
        sign[:, 3] = 0
        index[:, 4:] = entry + out * k
        return tt.TieLayout(index, 2 * out * k, sign)


def test_signs_and_forced_zeros_are_part_of_a_column_class():
    conv = nn.Conv1d(8, 3, 3).double()
    tt.register_tie(conv, "weight", SignedColumns())
    report = assert_same_as_gathered(conv, torch.randn(2, 8, 9, dtype=torch.float64))
    assert report.changed[0].detail == "8 input columns summed into 4 (general)"


def test_share_along_on_the_seed_conv_uses_one_input_column():
    conv = nn.Conv2d(64, 16, 3, padding=1).double()
    tt.register_tie(conv, "weight", tt.ShareAlong(1))
    report = assert_same_as_gathered(conv, torch.randn(2, 64, 8, 8).double(), {"segment-sum"})
    assert report.changed[0].detail == "64 input columns summed into 1 (all)"


# ------------------------------------------------------------------ spectral and diagonal


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kind=st.sampled_from(["Circulant", "Toeplitz", "Hankel", "negacyclic"]),
    m=st.integers(2, 24),
    n=st.integers(2, 24),
    lead=st.sampled_from([(5,), (2, 3), ()]),
    bias=st.booleans(),
)
def test_spectral_rules_match_the_gathered_linear(small_thresholds, kind, m, n, lead, bias):
    if kind in ("Circulant", "negacyclic"):
        m = n
    if kind == "negacyclic":
        size = n

        def shift(i, j):
            return (i + 1) % size, (j + 1) % size

        tie = tt.Tie.from_relation(
            shift, sign=lambda i, j: torch.where((i + 1 == size) ^ (j + 1 == size), -1, 1)
        )
    else:
        tie = getattr(tt, kind)()
    linear = nn.Linear(n, m, bias=bias).double()
    tt.register_tie(linear, "weight", tie)
    report = assert_same_as_gathered(linear, torch.randn(*lead, n, dtype=torch.float64))
    if min(m, n) > 1:  # a single row or column is no structure: then only exactness counts
        rule = {"Circulant": "circulant", "Hankel": "hankel"}.get(kind, "toeplitz")
        if kind == "Circulant" and n == 2:
            rule = "diagonal-plus-constant"  # [[a, b], [b, a]]: that rule is tried first
        assert [row.rule for row in report] == [rule]


def test_circulant_is_recognized_as_circulant_and_uses_length_n(small_thresholds):
    linear = nn.Linear(12, 12).double()
    tt.register_tie(linear, "weight", tt.Circulant())
    report = assert_same_as_gathered(linear, torch.randn(4, 12).double(), {"circulant"})
    assert report.changed[0].detail == "FFT of length 12"


def test_toeplitz_length_is_a_fast_fft_size():
    assert [_fast._fast_length(n) for n in (1, 7, 11, 13, 97, 2047)] == [1, 8, 12, 15, 100, 2048]


def test_a_circulant_layer_keeps_the_dense_product_for_few_rows_below_its_crossover():
    """n=256: the FFT wins from 256 rows on, loses at batch 1 (measured): the layer decides by
    the rows of each call, so it is never slower than the gathered product."""
    torch.manual_seed(0)
    lin = nn.Linear(256, 256).double()
    tt.register_tie(lin, "weight", tt.Circulant())
    gathered = copy.deepcopy(lin)
    assert [row.rule for row in tt.fast_forward(lin)] == ["circulant"]
    one = torch.randn(1, 256, dtype=torch.float64)
    assert torch.equal(lin(one), gathered(one))  # the layer's own forward: bitwise
    many = torch.randn(256, 256, dtype=torch.float64)
    assert relative(lin(many), gathered(many)) < 1e-10 and not torch.equal(
        lin(many), gathered(many)
    )


def test_small_structured_layers_keep_the_dense_product_and_say_why():
    linear = nn.Linear(64, 64)
    tt.register_tie(linear, "weight", tt.Circulant())
    report = tt.fast_forward(linear, explain=True)
    assert not report.changed
    assert "circulant, but min(out, in)=64 < 256" in report.left_alone[0].detail


def test_diagonal_plus_constant_is_the_deepsets_layer(small_thresholds):
    linear = nn.Linear(9, 9).double()
    tt.register_tie(linear, "weight", tt.Tie.from_key(lambda i, j: (i == j).long()))
    assert_same_as_gathered(linear, torch.randn(3, 4, 9).double(), {"diagonal-plus-constant"})


def test_antisymmetric_square_linear_is_left_alone_with_a_reason():
    linear = nn.Linear(16, 16)
    tt.register_tie(linear, "weight", tt.Antisymmetric())
    report = tt.fast_forward(linear, explain=True)
    assert not report.changed
    assert "classes of identical input columns" in report.left_alone[0].detail


# ----------------------------------------------------------- detection is from the layout


def test_a_users_tie_with_the_same_layout_gets_the_same_rule():
    builtin = nn.Conv2d(8, 4, 3)
    tt.register_tie(builtin, "weight", tt.ShareAlong(1))
    mine = nn.Conv2d(8, 4, 3)
    tt.register_tie(mine, "weight", tt.Tie.from_key(lambda o, i, a, b: (o, a, b)))
    rows = [tt.fast_forward(m).changed[0] for m in (builtin, mine)]
    assert rows[0].rule == rows[1].rule == "segment-sum"
    assert rows[0].detail == rows[1].detail


def test_explain_lists_every_other_tied_layer_with_its_reason():
    class Custom(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    net = nn.Sequential(nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4, 4), Custom(4, 4))
    tt.register_tie(net[0], "weight", tt.KernelSymmetry("D4"))
    tt.register_tie(net[2], "bias", tt.ShareAlong(0))
    tt.register_tie(net[3], "weight", tt.ShareAlong(1))
    report = tt.fast_forward(net, explain=True)
    assert not report.changed
    reasons = {row.module: row.detail for row in report.left_alone}
    assert "classes of identical input columns" in reasons["0"]
    assert reasons["2"] == "its weight is not tied"
    assert reasons["3"] == "Custom overrides forward(); only the stock forward is rewritten"
    assert "left alone: 3 tied layer(s)" in str(report)
    assert tt.fast_forward(net).left_alone == ()  # only on request


def test_other_parametrizations_on_the_weight_are_left_alone():
    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    conv = nn.Conv2d(4, 2, 3)
    tt.register_tie(conv, "weight", tt.ShareAlong(1))
    parametrize.register_parametrization(conv, "weight", Double())
    report = tt.fast_forward(conv, explain=True)
    assert not report.changed
    assert "other parametrizations" in report.left_alone[0].detail


def test_not_a_module_is_a_type_error():
    with pytest.raises(tt.errors.TieTypeError, match=r"fast_forward: expected an nn\.Module"):
        tt.fast_forward("model")  # type: ignore[arg-type]


# --------------------------------------------------------- nothing else changes; undoing it


def seed_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(16, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8 * 4, 3, padding=1, groups=8),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )
    tt.register_tie(net[0], "weight", tt.ShareAlong(1))
    tt.register_tie(net[2], "weight", tt.ShareAcrossGroups(8))
    tt.register_tie(net[2], "bias", tt.ShareAcrossGroups(8))
    tt.register_tie(net[4], "weight", tt.ShareAlong(1))
    return net


X = torch.randn(3, 16, 4, 4)


def test_parameters_weights_and_state_dicts_are_unchanged():
    net = seed_net()
    params = dict(net.named_parameters())
    weights = [net[i].weight.detach().clone() for i in (0, 2, 4)]
    state = net.state_dict()
    classes = [type(m) for m in net]
    report = tt.fast_forward(net)
    assert [row.module for row in report] == ["0", "2", "4"]
    assert {k: id(v) for k, v in net.named_parameters()} == {k: id(v) for k, v in params.items()}
    for i, w in zip((0, 2, 4), weights):
        assert torch.equal(net[i].weight, w)
    after = net.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[k], state[k]) for k in state)
    assert after._metadata == state._metadata
    assert [type(m) for m in net] == classes  # the generated classes, not new ones
    copy.deepcopy(net).load_state_dict(state)


def test_enable_false_and_remove_tie_restore_the_gathered_and_the_plain_forward():
    net = seed_net()
    reference = net(X)
    tt.fast_forward(net)
    assert "forward" in type(net[0]).__dict__
    off = tt.fast_forward(net, enable=False)
    assert [row.module for row in off] == ["0", "2", "4"] and not off.enabled
    assert all("forward" not in type(net[i]).__dict__ for i in (0, 2, 4))
    assert all(net[i].parametrizations.weight[0].fast is None for i in (0, 2, 4))
    assert torch.equal(net(X), reference)
    tt.fast_forward(net)
    tt.remove_tie(net[0], "weight")
    assert type(net[0]) is nn.Conv2d
    tt.remove_tie(net[2], "weight")  # the bias stays tied: the layer falls back by itself
    assert torch.allclose(net(X), reference, atol=1e-5)
    tt.bake(net)
    assert [type(m) for m in net] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.Flatten, nn.Linear]
    assert torch.allclose(net(X), reference, atol=1e-5)


def test_assigning_the_weight_and_training_keep_the_fast_path_exact():
    net = seed_net().double()
    tt.fast_forward(net)
    gathered = copy.deepcopy(net)
    tt.fast_forward(gathered, enable=False)
    for model in (net, gathered):
        torch.manual_seed(1)
        model[0].weight = torch.randn(8, 16, 3, 3, dtype=torch.float64)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            model(X.double()).square().mean().backward()
            opt.step()
    for a, b in zip(net.parameters(), gathered.parameters()):
        assert relative(a, b) < 1e-10


def test_summary_shows_the_fast_path():
    net = seed_net()
    assert "fast path" not in str(tt.summary(net))
    tt.fast_forward(net)
    text = str(tt.summary(net))
    assert "fast path" in text and "fold-groups" in text and "segment-sum" in text
    rows = {row.tensor: row.fast for row in tt.summary(net).rows}
    assert rows["2.weight"] == "fold-groups" and rows["2.bias"] is None


# ------------------------------------------------------------------------------- toolchain


def test_deepcopy_keeps_the_fast_path_and_is_independent():
    net = seed_net()
    tt.fast_forward(net)
    replica = copy.deepcopy(net)
    assert type(replica[0]) is not type(net[0]) and "forward" in type(replica[0]).__dict__
    assert torch.equal(replica(X), net(X))
    tt.fast_forward(replica, enable=False)
    assert "forward" in type(net[0]).__dict__ and net[0].parametrizations.weight[0].fast


def test_whole_model_pickle_keeps_the_fast_path():
    net = seed_net()
    tt.fast_forward(net)
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert "forward" in type(loaded[2]).__dict__ and loaded[2].parametrizations.weight[0].fast
    assert torch.equal(loaded(X), net(X))
    again = pickle.loads(pickle.dumps(loaded))
    assert tt.summary(again).rows[0].fast == "segment-sum"


def test_dtype_and_device_moves_carry_the_plan():
    net = seed_net()
    tt.fast_forward(net)
    net.double()
    plan = net[0].parametrizations.weight[0].fast
    assert plan.maps.index.device.type == "cpu"
    y = net(X.double())
    assert y.dtype == torch.float64
    gathered = copy.deepcopy(net)
    tt.fast_forward(gathered, enable=False)
    assert relative(y, gathered(X.double())) < 1e-10


def test_meta_init_then_to_empty_and_load():
    source = seed_net()
    with torch.device("meta"):
        net = seed_net()
    tt.fast_forward(net)
    net.to_empty(device="cpu")
    net.load_state_dict(source.state_dict())
    assert torch.allclose(net(X), source(X), atol=1e-5)


def test_compile_fullgraph_matches_eager():
    net = seed_net()
    tt.fast_forward(net)
    compiled = torch.compile(net, fullgraph=True)
    assert torch.allclose(compiled(X), net(X), atol=1e-5)
    grads = torch.autograd.grad(compiled(X).square().sum(), list(net.parameters()))
    eager = torch.autograd.grad(net(X).square().sum(), list(net.parameters()))
    for a, b in zip(grads, eager, strict=True):
        assert torch.allclose(a, b, atol=1e-4)


def test_compile_with_dynamic_shapes_matches_eager():
    """Input sizes that change between calls (dynamic shapes): the folded one-channel input
    and the summed input columns compile (Inductor failed on both before they were laid out
    for it) and give eager's outputs and gradients."""
    net = seed_net()
    tt.fast_forward(net)
    compiled = torch.compile(net, fullgraph=True, dynamic=True)
    for x in (X, torch.randn(5, 16, 4, 4)):
        assert torch.allclose(compiled(x), net(x), atol=1e-5)
        grads = torch.autograd.grad(compiled(x).square().sum(), list(net.parameters()))
        eager = torch.autograd.grad(net(x).square().sum(), list(net.parameters()))
        for a, b in zip(grads, eager, strict=True):
            assert torch.allclose(a, b, atol=1e-4)


def test_compile_of_the_spectral_path(small_thresholds):
    linear = nn.Linear(20, 20)
    tt.register_tie(linear, "weight", tt.Toeplitz())
    tt.fast_forward(linear)
    x = torch.randn(4, 20)
    compiled = torch.compile(linear, fullgraph=True)
    assert torch.allclose(compiled(x), linear(x), atol=1e-5)


def test_functional_call_and_per_sample_gradients(small_thresholds):
    from torch.func import functional_call, grad, vmap

    net = nn.Sequential(nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 6))
    tt.register_tie(net[0], "weight", tt.Circulant())
    tt.register_tie(net[2], "weight", tt.ShareAlong(1))
    gathered = copy.deepcopy(net)
    report = tt.fast_forward(net)
    assert [row.rule for row in report] == ["circulant", "segment-sum"]
    params = {k: v.detach() + 0.5 for k, v in net.named_parameters()}
    x = torch.randn(5, 12)
    assert torch.allclose(
        functional_call(net, params, (x,)), functional_call(gathered, params, (x,)), atol=1e-5
    )

    def loss(model):
        return lambda p, xi: functional_call(model, p, (xi[None],)).square().mean()

    fast = vmap(grad(loss(net)), in_dims=(None, 0))(params, x)
    slow = vmap(grad(loss(gathered)), in_dims=(None, 0))(params, x)
    for key in params:
        assert torch.allclose(fast[key], slow[key], atol=1e-5), key


def test_autocast_bf16_gives_the_gathered_dtype_and_values(small_thresholds):
    """Under autocast the spectral rule declines (the layer's own forward runs: bitwise the
    gathered one); the others compute as autocast would."""
    net = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 8))
    tt.register_tie(net[0], "weight", tt.Circulant())
    tt.register_tie(net[1], "weight", tt.Tie.from_key(lambda i, j: (i == j).long()))
    tt.register_tie(net[2], "weight", tt.ShareAlong(1))
    gathered = copy.deepcopy(net)
    assert len(tt.fast_forward(net)) == 3
    x = torch.randn(6, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for layer, reference in zip(net, gathered):
            y, y_ref = layer(x), reference(x)
            assert y.dtype == y_ref.dtype == torch.bfloat16
            assert torch.allclose(y.float(), y_ref.float(), rtol=0.05, atol=0.05)
        assert torch.equal(net[0](x), gathered[0](x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_sums_are_accumulated_in_float32(dtype):
    # 4096 equal inputs of 1.0 summed in fp16/bf16 would stall far below 4096 (bf16 at 256).
    linear = nn.Linear(4096, 1, bias=False)
    tt.register_tie(linear, "weight", tt.ShareAlong(1))
    linear.weight = torch.full((1, 4096), 1.0)
    linear.to(dtype)
    tt.fast_forward(linear)
    assert linear(torch.ones(1, 4096, dtype=dtype)).item() == 4096


def test_torch_export_of_the_fast_path():
    net = seed_net()
    tt.fast_forward(net)
    program = torch.export.export(net, (X,))
    assert torch.allclose(program.module()(X), net(X), atol=1e-5)


def test_group_member_reads_the_owners_free_vector():
    a, b = nn.Conv2d(6, 2, 3), nn.Conv2d(6, 2, 3)
    # b's weight equals a's; both constant along input channels; one free vector, a's.
    tt.tie_tensors([(a, "weight"), (b, "weight")], ties=[tt.ShareAlong(1), None])
    net = nn.Sequential(a, b)
    before = (a(X[:, :6]), b(X[:, :6]))
    report = tt.fast_forward(net)
    assert [row.rule for row in report] == ["segment-sum", "segment-sum"]
    assert torch.allclose(a(X[:, :6]), before[0], atol=1e-5)
    assert torch.allclose(b(X[:, :6]), before[1], atol=1e-5)


# ------------------------------------------------------------------------------ distributed


def test_ddp_with_fast_paths_matches_one_gathered_process(tmp_path):
    from _distributed_worker import run_ranks

    reference = run_ranks("single-fastnet", tmp_path, world=1)[0]
    ranks = run_ranks("ddp-fastnet+fast", tmp_path)
    for result in ranks:
        assert result["holds"]
        assert result["state"].keys() == reference["state"].keys()
        for key, value in reference["state"].items():
            assert torch.allclose(result["state"][key], value, atol=1e-6), key
        assert result["synced_buffers"] == 0  # the plans' maps are not buffers either


@pytest.mark.parametrize(
    ("build", "tie", "rule"),
    [
        (lambda: nn.Conv2d(6, 4, 3, padding=1), tt.ShareAlong(1), "segment-sum"),
        (lambda: nn.Conv2d(6, 4, 3, groups=2), tt.ShareAlong(1), "segment-sum"),
        (lambda: nn.Conv1d(6, 4, 3), tt.ShareAlong((1, -1)), "segment-sum"),
        (lambda: nn.Linear(6, 4), tt.ShareAlong(1), "segment-sum"),
        (lambda: nn.Conv2d(6, 8, 3, groups=2), tt.ShareAcrossGroups(2), "fold-groups"),
    ],
)
def test_described_layouts_are_planned_without_their_index(build, tie, rule):
    torch.manual_seed(0)
    module = build().double()
    tt.register_tie(module, "weight", tie)
    if isinstance(tie, tt.ShareAcrossGroups):
        tt.register_tie(module, "bias", tt.ShareAcrossGroups(2))
    x = torch.randn(2, 6, 7, 7) if isinstance(module, nn.Conv2d) else torch.randn(2, 6, 7)
    if isinstance(module, nn.Linear):
        x = torch.randn(3, 6)
    report = assert_same_as_gathered(module, x.double(), {rule})
    assert module.parametrizations.weight[0].layout._index is None, report  # never built


def test_an_llm_sized_share_along_is_planned_without_its_index():
    with torch.device("meta"):
        lin = nn.Linear(16384, 16384)
    tt.register_tie(lin, "weight", tt.ShareAlong(1))
    assert [row.rule for row in tt.fast_forward(lin)] == ["segment-sum"]
    assert lin.parametrizations.weight[0].layout._index is None


@pytest.mark.parametrize(
    "make",
    [
        lambda: (nn.Linear(256, 256), tt.Circulant()),
        lambda: (nn.Linear(32, 32), tt.Tie.from_key(lambda i, j: (i == j).long())),
        lambda: (nn.Conv2d(8, 4, 3), tt.ShareAlong(1)),
    ],
)
def test_an_input_of_the_wrong_size_raises_as_the_plain_layer_does(make):
    """A plan would not always notice a wrong feature size (an FFT pads its input, a * x +
    b * sum(x) takes any size): such an input gets the plain layer's own error."""
    layer, tie = make()
    tt.register_tie(layer, "weight", tie)
    assert len(tt.fast_forward(layer)) == 1
    wrong = torch.randn(300, 255) if isinstance(layer, nn.Linear) else torch.randn(2, 7, 9, 9)
    if isinstance(layer, nn.Linear) and layer.in_features == 32:
        wrong = torch.randn(4, 31)
    with pytest.raises(RuntimeError):
        layer(wrong)
