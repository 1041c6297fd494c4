"""Ties whose gather is a view of the free vector (an embedding = its output layer, a decoder =
its encoder transposed, one value along whole dims) are read as views: recognised from the
layout, equal to the gather to the bit in values (and gradients, but for a broadcast's sum),
and untied into independent tensors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tietorch as tt
from tietorch._layout import gather, view_recipe


def _pair(relation=None, sign=1):
    torch.manual_seed(0)
    a, b = nn.Linear(4, 3), nn.Linear(3, 4) if relation else nn.Linear(4, 3)
    tt.tie_tensors([(a, "weight"), (b, "weight")], relation=relation, sign=sign)
    return a, b


def _transpose(i, j):
    return j, i


def _gathered(module: nn.Module) -> torch.Tensor:
    param = module.parametrizations.weight[0]
    owner = param.owner if param.owner is not None else module.parametrizations.weight
    return gather(owner.original, param.index, param.sign, param.shape)


@pytest.mark.parametrize(
    ("relation", "orders"), [(None, [(0, 1), (0, 1)]), (_transpose, [(0, 1), (1, 0)])]
)
def test_a_pair_that_reads_the_free_vector_once_is_a_view(relation, orders):
    a, b = _pair(relation)
    for module, order in zip((a, b), orders):
        view = module.parametrizations.weight[0].view
        assert view is not None and view.order == order
        assert torch.equal(module.weight, _gathered(module))  # the same values, to the bit


@pytest.mark.parametrize("tie", [tt.Symmetric(), tt.Toeplitz(), tt.KernelSymmetry("D4")])
def test_ties_that_share_entries_stay_gathers(tie):
    conv = nn.Conv2d(3, 3, 3)
    tt.register_tie(conv, "weight", tie)
    assert conv.parametrizations.weight[0].view is None


def test_a_signed_pair_stays_a_gather():
    a, b = _pair(sign=-1)
    assert a.parametrizations.weight[0].view is not None  # the owner reads theta as it is
    assert b.parametrizations.weight[0].view is None


@pytest.mark.parametrize("relation", [None, _transpose])
def test_gradients_equal_the_gathered_path(relation):
    a, b = _pair(relation)
    x = torch.randn(5, 4)
    out = b(a(x)) if relation else torch.cat([a(x), b(x)], 1)
    loss = out.square().sum()
    loss.backward()
    view_grad = a.parametrizations.weight.original.grad.clone()
    a.parametrizations.weight.original.grad = None
    wa, wb = _gathered(a), _gathered(b)
    ya = nn.functional.linear(x, wa, a.bias)
    yb = nn.functional.linear(ya, wb, b.bias) if relation else None
    gathered = yb if relation else torch.cat([ya, nn.functional.linear(x, wb, b.bias)], 1)
    gathered.square().sum().backward()
    assert torch.equal(view_grad, a.parametrizations.weight.original.grad)


def test_untied_views_are_independent_contiguous_tensors():
    a, b = _pair(_transpose)
    tt.bake(nn.ModuleList([a, b]))
    assert a.weight.is_contiguous() and b.weight.is_contiguous()
    assert a.weight.untyped_storage().data_ptr() != b.weight.untyped_storage().data_ptr()
    with torch.no_grad():
        a.weight.add_(1)
    assert not torch.equal(b.weight, a.weight.T)


def test_an_in_place_write_through_the_identity_view_reaches_the_free_vector():
    emb, head = nn.Embedding(7, 3), nn.Linear(3, 7, bias=False)
    tt.tie_tensors([(emb, "weight"), (head, "weight")])
    with torch.no_grad():
        nn.init.zeros_(head.weight)  # e.g. an initializer: it writes into theta, both follow
    assert not emb.weight.any() and torch.equal(emb.weight, head.weight)


def _meta_pair(vocab: int, dim: int) -> tuple[nn.Module, nn.Module]:
    with torch.device("meta"):
        emb, head = nn.Embedding(vocab, dim), nn.Linear(dim, vocab, bias=False)
    tt.tie_tensors([(emb, "weight"), (head, "weight")])
    return emb, head


def test_an_llm_sized_pair_holds_no_index():
    emb, head = _meta_pair(128256, 4096)  # Llama 3's vocabulary: 2 x 525M entries
    for module in (emb, head):
        param = module.parametrizations.weight[0]
        assert param.layout._index is None and param._index is None  # described, not built
        assert module.weight.shape == (128256, 4096)  # read as a view, still no index
    assert param.layout._index is None
    assert tt.summary(nn.ModuleList([emb, head])).free == 128256 * 4096


def test_a_described_pair_equals_the_solved_one():
    emb, _ = _meta_pair(5, 3)
    layout = emb.parametrizations.weight[0].layout
    solved = tt.Tie.from_relation(lambda i: (i % 15,)).layout((30,))  # two copies, solved
    assert torch.equal(layout.index, solved.index) and layout.n_free == solved.n_free
    assert torch.equal(layout.class_sizes, solved.class_sizes)


def test_assigning_through_a_view_sets_the_free_vector():
    a, b = _pair(_transpose)
    w = torch.randn(3, 4)
    b.weight = w.T  # the decoder reads theta transposed
    assert torch.equal(a.weight, w) and torch.equal(b.weight, w.T)


def test_a_checkpoint_recorded_from_the_index_still_loads():
    """Before layouts were described, the equal pair's fingerprint was hashed from its index:
    such a checkpoint loads (the index is built to compare only when the record differs)."""
    torch.manual_seed(0)
    src = nn.ModuleDict(dict(emb=nn.Embedding(6, 4), head=nn.Linear(4, 6, bias=False)))
    tt.tie_tensors([(src.emb, "weight"), (src.head, "weight")])
    state = src.state_dict()
    param = src.emb.parametrizations.weight[0]
    record = state._metadata["emb"]["tietorch"]["weight"]
    assert record["layout"] == param.layout.fingerprint(param.offset, param.shape)
    record["layout"] = param.layout.index_fingerprint(param.offset, param.shape)  # the old one
    assert record["layout"] != param.layout.fingerprint(param.offset, param.shape)
    dst = nn.ModuleDict(dict(emb=nn.Embedding(6, 4), head=nn.Linear(4, 6, bias=False)))
    tt.tie_tensors([(dst.emb, "weight"), (dst.head, "weight")])
    dst.load_state_dict(state)
    assert torch.equal(dst.head.weight, src.head.weight)
    record["layout"] = "0" * 32  # any other record is still refused
    with pytest.raises(tt.errors.CheckpointError):
        dst.load_state_dict(state)


class _TiedLM(nn.Module):
    """An embedding = its output layer (identity views) and an encoder/decoder pair tied
    transposed (a permuted view)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(11, 4), nn.Linear(4, 11, bias=False)
        self.enc, self.dec = nn.Linear(4, 3), nn.Linear(3, 4)
        tt.tie_tensors([(self.embed, "weight"), (self.head, "weight")])
        tt.tie_tensors([(self.enc, "weight"), (self.dec, "weight")], relation=_transpose)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.dec(torch.tanh(self.enc(self.embed(ids)))))


IDS = torch.tensor([[1, 5, 7, 2], [3, 3, 10, 0]])


def _views_in_use(model: nn.Module) -> bool:
    return all(
        m.parametrizations.weight[0].view is not None
        for m in (model.embed, model.head, model.enc, model.dec)
    )


def test_views_under_compile_export_functional_call_and_copies(tmp_path):
    import copy

    from torch.func import functional_call, grad, vmap

    torch.manual_seed(0)
    model = _TiedLM()
    assert _views_in_use(model)
    expected = model(IDS)
    compiled = torch.compile(model, fullgraph=True)
    assert torch.allclose(compiled(IDS), expected, atol=1e-6)
    exported = torch.export.export(model, (IDS,))
    assert torch.allclose(exported.module()(IDS), expected, atol=1e-6)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, ids):
        return functional_call(model, p, (ids[None],)).square().mean()

    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, IDS)
    full = grad(loss)(params, IDS[0])
    for key in params:
        assert torch.allclose(per_sample[key][0], full[key], atol=1e-6)
    replica = copy.deepcopy(model)
    assert _views_in_use(replica) and torch.equal(replica(IDS), expected)
    with torch.no_grad():
        replica.embed.parametrizations.weight.original.add_(1)
    assert torch.equal(model(IDS), expected)  # the copy reads its own free vector
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    assert _views_in_use(loaded) and torch.equal(loaded(IDS), expected)
    with torch.device("meta"):
        on_meta = _TiedLM()
    on_meta.to_empty(device="cpu")
    on_meta.load_state_dict(model.state_dict())
    assert torch.equal(on_meta(IDS), expected)


# ---------------------------------------------------------------- broadcasts (ShareAlong)

_SHARE_CASES = [
    ((4, 3, 2, 2), (1,)),
    ((4, 3, 2, 2), (-1, 0)),
    ((1, 3, 1), (0,)),
    ((3, 1, 2), (1, 2)),
    ((2, 5), (0, 1)),
    ((5,), (0,)),
    ((2, 0, 3), (1,)),
]


@pytest.mark.parametrize(("shape", "dims"), _SHARE_CASES)
def test_a_described_broadcast_equals_the_solved_one(shape, dims):
    described = tt.ShareAlong(dims).layout(shape)
    assert described._index is None  # described, not solved
    solved = tt.Tie.from_key(tt.ShareAlong(dims).key).layout(shape)
    assert torch.equal(described.index, solved.index) and described.n_free == solved.n_free
    assert torch.equal(described.class_sizes, solved.class_sizes)
    assert described.index_fingerprint() == solved.fingerprint()  # what checkpoints recorded


def _shared_conv(dims=1):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 3, 3, padding=1)
    tt.register_tie(conv, "weight", tt.ShareAlong(dims))
    return conv


def test_share_along_is_a_broadcast_view_equal_to_the_gather():
    conv = _shared_conv()
    param = conv.parametrizations.weight[0]
    assert param.view is not None and param.view.broadcast == (1,)
    assert param._index is None and param.layout._index is None
    assert conv.weight.stride(1) == 0  # expanded: no copy
    assert torch.equal(conv.weight, _gathered(conv))  # the same values, to the bit


@pytest.mark.parametrize("channels", [4, 64])
def test_share_along_gradients_equal_the_gathered_path(channels):
    """The view's backward sums the gradient over the broadcast dim (expand's reduction), the
    gather's adds it by index_add: another order of summation, so equal up to rounding only.
    Measured (float32, torch 2.x CPU): bitwise equal with 4 input channels; with 64 (256) the
    max difference is 2.1e-7 (2.9e-7) of the largest gradient entry, 2.9e-6 (5.7e-5) entry by
    entry relative (small entries, after cancellation)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, 16, 3, padding=1)
    tt.register_tie(conv, "weight", tt.ShareAlong(1))
    x = torch.randn(4, channels, 8, 8)
    conv(x).square().sum().backward()
    theta = conv.parametrizations.weight.original
    view_grad, theta.grad = theta.grad.clone(), None
    nn.functional.conv2d(x, _gathered(conv), conv.bias, padding=1).square().sum().backward()
    gathered = theta.grad
    assert (view_grad - gathered).abs().max() <= 1e-6 * gathered.abs().max()
    if channels == 4:
        assert torch.equal(view_grad, gathered)


def test_assigning_a_broadcast_takes_the_mean_and_keeps_a_tied_tensor_bitwise():
    conv = _shared_conv()
    w = torch.randn(3, 4, 3, 3)
    conv.weight = w
    expected = w.double().mean(1, keepdim=True).float().expand_as(w)
    assert torch.equal(conv.weight, expected)
    tied = torch.randn(3, 1, 3, 3).expand(3, 4, 3, 3)
    conv.weight = tied
    assert torch.equal(conv.weight, tied)


def test_the_broadcast_projection_error_equals_the_gathered_one():
    torch.manual_seed(1)
    w = torch.randn(5, 4, 3, 3)
    a, b = nn.Conv2d(4, 5, 3), nn.Conv2d(4, 5, 3)
    with torch.no_grad():
        a.weight.copy_(w)
        b.weight.copy_(w)
    error = tt.register_tie(a, "weight", tt.ShareAlong((1, -1)))
    solved = tt.Tie.from_key(tt.ShareAlong((1, -1)).key)
    assert error == tt.register_tie(b, "weight", solved)
    assert torch.equal(a.weight, b.weight)
    layout = a.parametrizations.weight[0].layout
    std, _ = layout.initial_theta(w, "preserve_std")
    assert torch.allclose(std, solved.layout(w.shape).initial_theta(w, "preserve_std")[0])


def test_an_in_place_write_into_a_broadcast_fails_loudly():
    conv = _shared_conv()
    with torch.no_grad(), pytest.raises(RuntimeError, match="single memory location"):
        conv.weight.add_(1)


def test_an_untied_broadcast_is_an_independent_contiguous_tensor():
    conv = _shared_conv()
    before = conv.weight.detach().clone()
    tt.remove_tie(conv, "weight")
    assert conv.weight.is_contiguous() and torch.equal(conv.weight, before)
    with torch.no_grad():
        conv.weight[:, 0].add_(1)  # one input channel only: the others keep their values
    assert torch.equal(conv.weight[:, 1], before[:, 1])


def test_an_llm_sized_broadcast_holds_no_index():
    with torch.device("meta"):
        lin = nn.Linear(16384, 16384)
    tt.register_tie(lin, "weight", tt.ShareAlong(1))  # 268M entries, 16384 free
    param = lin.parametrizations.weight[0]
    assert param.layout._index is None and param._index is None
    assert lin.weight.shape == (16384, 16384) and param.n_free == 16384
    assert param.layout._index is None


def test_a_broadcast_checkpoint_recorded_from_the_index_still_loads():
    """Before ShareAlong was described, its fingerprint was hashed from its index: such a
    checkpoint loads (the index is built to compare only when the record differs)."""
    src = _shared_conv((1, -1))
    state = src.state_dict()
    param = src.parametrizations.weight[0]
    record = state._metadata[""]["tietorch"]["weight"]
    assert record["layout"] == param.layout.fingerprint()
    record["layout"] = param.layout.index_fingerprint()  # the old one
    assert record["layout"] != param.layout.fingerprint()
    dst = nn.Conv2d(4, 3, 3, padding=1)
    tt.register_tie(dst, "weight", tt.ShareAlong((1, -1)))
    dst.load_state_dict(state)
    assert torch.equal(dst.weight, src.weight)
    record["layout"] = "0" * 32  # any other record is still refused
    with pytest.raises(tt.errors.CheckpointError):
        dst.load_state_dict(state)


# ------------------------------------------------ repeated blocks (ShareAcrossGroups)

_GROUP_CASES = [
    ((8, 3), 2, 0),
    ((8, 1, 3, 3), 4, 0),
    ((2, 6, 5), 3, 1),
    ((6,), 6, 0),
    ((3, 4), 2, -1),
]


@pytest.mark.parametrize(("shape", "groups", "dim"), _GROUP_CASES)
def test_described_groups_equal_the_solved_ones(shape, groups, dim):
    tie = tt.ShareAcrossGroups(groups, dim)
    described = tie.layout(shape)
    assert described._index is None
    solved = tt.Tie.from_key(tie.key).layout(shape)
    assert described.shape == solved.shape and described.n_free == solved.n_free
    assert torch.equal(described.index, solved.index)
    assert torch.equal(described.class_sizes, solved.class_sizes)
    assert described.index_fingerprint() == solved.fingerprint()
    assert described.fingerprint() != tt.ShareAlong(dim).layout(shape).fingerprint()


def _streams(groups=4, bank=8):
    """The stream-sharing user's layer: ``groups`` one-channel streams through one bank."""
    torch.manual_seed(0)
    conv = nn.Conv2d(groups, groups * bank, 3, groups=groups, padding=1)
    tt.register_tie(conv, "weight", tt.ShareAcrossGroups(groups))
    tt.register_tie(conv, "bias", tt.ShareAcrossGroups(groups))
    return conv


def test_repeated_blocks_read_no_index_and_equal_the_gather():
    conv = _streams()
    for name in ("weight", "bias"):
        param = getattr(conv.parametrizations, name)[0]
        assert param.view is not None and param._index is None and param.layout._index is None
    assert torch.equal(conv.weight, _gathered(conv))
    assert torch.equal(conv.weight[:8], conv.weight[8:16])


def test_repeated_blocks_gradients_and_assignment():
    """The backward sums the gradient over the groups (expand's reduction): equal to the
    gather's index_add up to summation order (bitwise with 4 groups here)."""
    conv, x = _streams(), torch.randn(2, 4, 6, 6)
    conv(x).square().sum().backward()
    theta = conv.parametrizations.weight.original
    view_grad, theta.grad = theta.grad.clone(), None
    nn.functional.conv2d(
        x, _gathered(conv), conv.bias, padding=1, groups=4
    ).square().sum().backward()
    assert torch.allclose(view_grad, theta.grad, rtol=0, atol=1e-6 * theta.grad.abs().max())
    w = torch.randn(32, 1, 3, 3)
    conv.weight = w
    assert torch.equal(conv.weight[:8], w.double().view(4, 8, 1, 3, 3).mean(0).float())
    tied = torch.randn(8, 1, 3, 3).repeat(4, 1, 1, 1)
    conv.weight = tied
    assert torch.equal(conv.weight, tied)


def test_untied_repeated_blocks_are_independent():
    conv = _streams()
    before = conv.weight.detach().clone()
    tt.remove_tie(conv, "weight")
    with torch.no_grad():
        conv.weight[:8].add_(1)
    assert torch.equal(conv.weight[8:], before[8:])


# ---------------------------------------------------------------- overlapping windows (Hankel)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_strided_read_found_as_a_view_equals_the_gather(data):
    """Random non-negative strides over a random shape: where a view is found, it reads what
    the gather reads and assigning takes the class means (an independent computation)."""
    ndim = data.draw(st.integers(1, 4))
    shape = tuple(data.draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
    strides = data.draw(st.lists(st.integers(0, 13), min_size=ndim, max_size=ndim))
    grid = torch.zeros(shape, dtype=torch.long)
    for d, size in enumerate(shape):
        grid = (
            grid
            + torch.arange(size).view([size if k == d else 1 for k in range(ndim)]) * strides[d]
        )
    values, index = torch.unique(grid, return_inverse=True)  # renumbered: every one read
    recipe = view_recipe(index.reshape(-1), None, shape, len(values))
    if recipe is None:
        return
    theta = torch.randn(len(values), dtype=torch.float64)
    assert torch.equal(recipe.apply(theta), theta[index])
    w = torch.randn(shape, dtype=torch.float64)
    means = torch.zeros(len(values), dtype=torch.float64).index_add_(
        0, index.reshape(-1), w.reshape(-1)
    )
    means /= torch.bincount(index.reshape(-1), minlength=len(values))
    assert torch.allclose(recipe.invert(w), means)


@pytest.mark.parametrize(
    ("shape", "dims"), [((5, 7), (-2, -1)), ((3, 5, 7), (-2, -1)), ((5, 7, 3), (0, 1))]
)
def test_hankel_is_an_unfolded_window(shape, dims):
    layout = tt.Hankel(dims).layout(shape)
    recipe = layout.view_of(0, shape)
    assert recipe is not None and recipe.window
    theta = torch.randn(layout.n_free)
    assert torch.equal(recipe.apply(theta), layout.materialize(theta))


def test_a_hankel_layer_reads_no_index_under_compile_and_vmap():
    from torch.func import functional_call, grad, vmap

    torch.manual_seed(0)
    lin = nn.Linear(16, 12)
    tt.register_tie(lin, "weight", tt.Hankel())
    param = lin.parametrizations.weight[0]
    assert param.view is not None and param._index is None
    x = torch.randn(5, 16)
    assert torch.equal(lin.weight, _gathered(lin))
    expected = lin(x)
    assert torch.equal(torch.compile(lin, fullgraph=True)(x), expected)
    lin(x).square().sum().backward()
    theta = lin.parametrizations.weight.original
    view_grad, theta.grad = theta.grad.clone(), None
    nn.functional.linear(x, _gathered(lin), lin.bias).square().sum().backward()
    assert torch.allclose(view_grad, theta.grad, rtol=0, atol=1e-6 * theta.grad.abs().max())
    params = {k: v.detach() for k, v in lin.named_parameters()}

    def loss(p, row):
        return functional_call(lin, p, (row[None],)).square().mean()

    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, x)
    for key, value in grad(loss)(params, x[0]).items():
        assert torch.allclose(per_sample[key][0], value, atol=1e-6)
    w = torch.randn(12, 16)
    lin.weight = w
    assert torch.allclose(lin.weight, _gathered(lin))
