"""Built-in ties: constraints, minimal counts (dense rank), closed forms, projection."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tietorch as tt
from tietorch._rank import constraint_matrix, gather_matrix, solution_dimension

small = st.integers(1, 4)


@st.composite
def tie_and_shape(draw):
    """A built-in tie with random arguments and a random shape it accepts."""
    kind = draw(
        st.sampled_from(
            [
                "symflip",
                "sym",
                "antisym",
                "share",
                "groups",
                "toeplitz",
                "hankel",
                "circulant",
                "kernel",
            ]
        )
    )
    if kind in ("symflip", "sym", "antisym"):
        n, k1, k2 = draw(small), draw(small), draw(small)
        if kind == "symflip":
            sign = draw(st.sampled_from([1, -1]))
            return tt.SymmetricFlip(sign=sign), (n, n, k1, k2)
        tie = tt.Symmetric if kind == "sym" else tt.Antisymmetric
        batch = draw(st.integers(0, 1))
        return (tie(dims=(1, 2)), (k1, n, n)) if batch else (tie(), (n, n))
    if kind == "share":
        shape = tuple(draw(st.lists(small, min_size=1, max_size=4)))
        dims = draw(
            st.lists(
                st.integers(-len(shape), len(shape) - 1),
                min_size=1,
                max_size=2,
                unique_by=lambda d: d % len(shape),
            )
        )
        return tt.ShareAlong(dims), shape
    if kind == "groups":
        groups, block, other = draw(small), draw(small), draw(small)
        return tt.ShareAcrossGroups(groups), (groups * block, other)
    if kind in ("toeplitz", "hankel"):
        tie = tt.Toeplitz() if kind == "toeplitz" else tt.Hankel()
        return tie, (draw(small), draw(small), draw(small))[: draw(st.integers(2, 3))]
    if kind == "circulant":
        n = draw(st.integers(1, 6))
        return tt.Circulant(), (draw(small), n, n)
    group = draw(st.sampled_from(["D4", "C4", "C2", "flip_h", "flip_v"]))
    k1 = draw(st.integers(1, 5))
    k2 = k1 if group in ("D4", "C4") else draw(st.integers(1, 5))
    return tt.KernelSymmetry(group), (draw(small), k1, k2)


def direct_constraint_holds(tie, w):
    """Each tie's constraint written out independently of its relations() / key()."""
    if isinstance(tie, tt.Symmetric):
        return torch.equal(w, w.transpose(*tie.dims))
    if isinstance(tie, tt.Antisymmetric):
        return torch.equal(w, -w.transpose(*tie.dims))
    if isinstance(tie, tt.SymmetricFlip):
        return torch.equal(w, tie._sign * w.transpose(*tie.dims).flip(*tie.flip))
    if isinstance(tie, tt.ShareAlong):
        dims = [d % w.ndim for d in tie.dims]
        first = w
        for d in dims:
            first = first.narrow(d, 0, 1)
        return torch.equal(w, first.expand_as(w))
    if isinstance(tie, tt.ShareAcrossGroups):
        blocks = w.chunk(tie.groups, 0)
        return all(torch.equal(block, blocks[0]) for block in blocks)
    if isinstance(tie, (tt.Toeplitz, tt.Hankel)):
        m = w if not isinstance(tie, tt.Hankel) else w.flip(-1)
        return torch.equal(m[..., 1:, 1:], m[..., :-1, :-1])
    if isinstance(tie, tt.Circulant):
        return torch.equal(w[..., 1:, :], w[..., :-1, :].roll(1, -1))
    if isinstance(tie, tt.KernelSymmetry):
        images = {
            "D4": [w.rot90(1, (-2, -1)), w.flip(-1)],
            "C4": [w.rot90(1, (-2, -1))],
            "C2": [w.flip(-2, -1)],
            "flip_h": [w.flip(-1)],
            "flip_v": [w.flip(-2)],
        }[tie.group]
        return all(torch.equal(w, image) for image in images)
    raise AssertionError(tie)


@given(tie_and_shape(), st.integers(0, 2**31 - 1))
def test_constraint_holds_for_random_theta(case, seed):
    tie, shape = case
    layout = tie.layout(shape)
    theta = torch.randn(layout.n_free, generator=torch.Generator().manual_seed(seed))
    assert direct_constraint_holds(tie, layout.materialize(theta))


@given(tie_and_shape())
def test_n_free_is_the_dimension_of_the_solution_space(case):
    tie, shape = case
    layout = tie.layout(shape)
    c, g = constraint_matrix(tie, shape), gather_matrix(layout)
    assert np.abs(c @ g).max(initial=0) == 0
    assert layout.n_free == solution_dimension(tie, shape)


@given(tie_and_shape(), st.integers(0, 2**31 - 1))
def test_projection_is_idempotent_and_orthogonal(case, seed):
    tie, shape = case
    layout = tie.layout(shape)
    gen = torch.Generator().manual_seed(seed)
    w, v = (
        torch.randn(shape, generator=gen, dtype=torch.float64),
        torch.randn(shape, generator=gen, dtype=torch.float64),
    )
    pw = layout.materialize(layout.project(w))
    assert torch.allclose(layout.materialize(layout.project(pw)), pw, atol=1e-12)
    assert direct_constraint_holds(tie, pw)
    pv = layout.materialize(layout.project(v))
    # the residual is orthogonal to the whole tied subspace
    assert abs(float(((w - pw) * pv).sum())) < 1e-9 * (1 + float(w.norm() * pv.norm()))


def closed_forms():
    h = lambda k: math.ceil(k / 2)  # noqa: E731
    for n in range(1, 7):
        yield tt.Symmetric(), (n, n), n * (n + 1) // 2
        yield tt.Antisymmetric(), (n, n), n * (n - 1) // 2
        yield tt.Circulant(), (n, n), n
        yield tt.Circulant() & tt.Symmetric(), (n, n), n // 2 + 1
        yield tt.Toeplitz(), (n, n), 2 * n - 1
        yield tt.Toeplitz(), (n, n + 2), 2 * n + 1
        yield tt.Hankel(), (n + 1, n), 2 * n
        yield tt.Toeplitz() & tt.Symmetric(), (n, n), n
        persymmetric = tt.SymmetricFlip(dims=(0, 1), flip=(0, 1))
        yield persymmetric, (n, n), n * (n + 1) // 2
        yield tt.Tie.from_relation(lambda i, j: (-1 - i, -1 - j)), (n, n), math.ceil(n * n / 2)
        yield tt.Symmetric() & persymmetric, (n, n), h(n) * (n // 2 + 1)
    for k in range(1, 8):
        yield tt.KernelSymmetry("D4"), (k, k), h(k) * (h(k) + 1) // 2
        yield tt.KernelSymmetry("C4"), (k, k), math.ceil(k * k / 4)
        yield tt.KernelSymmetry("C2"), (k, k), math.ceil(k * k / 2)
        yield tt.KernelSymmetry("flip_h"), (k, k + 1), k * h(k + 1)
    for nf in range(1, 5):
        for kh, kw in [(1, 1), (3, 3), (2, 3), (5, 5)]:
            off = nf * (nf - 1) // 2 * kh * kw
            yield tt.SymmetricFlip(), (nf, nf, kh, kw), off + nf * math.ceil(kh * kw / 2)
            yield tt.SymmetricFlip(sign=-1), (nf, nf, kh, kw), off + nf * (kh * kw // 2)
        yield tt.ShareAlong(1), (nf, 3, 3, 3), nf * 9


@pytest.mark.parametrize(("tie", "shape", "expected"), list(closed_forms()), ids=str)
def test_closed_form_counts(tie, shape, expected):
    assert tie.layout(shape).n_free == expected


def test_deep_sets_equivariant_layer_has_two_parameters():
    # R^n -> R^n permutation-equivariant linear map: a*I + b*11^T
    eq = tt.Tie.from_key(lambda i, j: i == j)
    for n in range(2, 7):
        assert eq.layout((n, n)).n_free == 2


def test_antisymmetric_diagonal_is_forced_to_zero():
    layout = tt.Antisymmetric().layout((5, 5))
    assert layout.n_zero == 5
    w = layout.materialize(torch.randn(layout.n_free))
    assert torch.equal(torch.diagonal(w), torch.zeros(5))


def test_everything_forced_to_zero():
    layout = (tt.Symmetric() & tt.Antisymmetric()).layout((3, 3))
    assert layout.n_free == 0 and layout.n_zero == 9
    theta = torch.zeros(0, requires_grad=True)
    w = layout.materialize(theta)
    assert torch.equal(w, torch.zeros(3, 3))
    w.sum().backward()  # still differentiable, with an empty gradient
    assert theta.grad.shape == (0,)


def test_free_parameters_are_numbered_by_first_entry():
    index = tt.Symmetric().layout((3, 3)).index
    assert index.tolist() == [[0, 1, 2], [1, 3, 4], [2, 4, 5]]


@pytest.mark.parametrize(
    "tie, shape, message",
    [
        (tt.Symmetric(), (3, 4), "equal size"),
        (tt.SymmetricFlip(), (3, 3, 3), "dims"),
        (tt.Circulant(), (3, 4), "square"),
        (tt.KernelSymmetry("D4"), (3, 3, 2), "square"),
        (tt.KernelSymmetry("D4"), (3,), "last two dims"),
        (tt.ShareAcrossGroups(3), (4, 2), "divisible by 3"),
        (tt.ShareAlong(2), (4, 2), "dims"),
    ],
)
def test_refused_shapes_name_the_tie_and_shape(tie, shape, message):
    with pytest.raises(ValueError, match=message) as info:
        tie.layout(shape)
    assert type(tie).__name__ in str(info.value) and str(shape) in str(info.value)


def test_refused_relations():
    too_far = tt.Tie.from_relation(lambda i, j: (i + 1, j), name="shift")
    with pytest.raises(ValueError, match=r"shift.*dim 0 \(size 3\) to index 3"):
        too_far.layout((3, 3))
    wrong_arity = tt.Tie.from_relation(lambda i, j: (j,), name="short")
    with pytest.raises(ValueError, match="one index tensor per dim"):
        wrong_arity.layout((3, 3))
    bad_sign = tt.Tie.from_relation(lambda i, j: (j, i), sign=lambda i, j: 2 * torch.ones(()))
    with pytest.raises(ValueError, match=r"\+1 or -1"):
        bad_sign.layout((3, 3))
    with pytest.raises(ValueError, match="sign"):
        tt.Tie.from_relation(lambda i, j: (j, i), sign=0)
    float_index = tt.Tie.from_relation(lambda i: (i * 0.5,))
    with pytest.raises(TypeError, match="float"):
        float_index.layout((4,))


def test_negative_indices_wrap_like_python():
    cyclic = tt.Tie.from_relation(lambda i: (i - 1,))  # i=0 maps to -1, the last entry
    assert cyclic.layout((7,)).n_free == 1


def test_long_cyclic_shift_is_one_orbit():
    shift = tt.Tie.from_relation(lambda r, c: (r, c - 1))
    layout = shift.layout((3, 4096))
    assert layout.n_free == 3


def test_subclass_with_a_closed_form_layout_composes():
    class Constant(tt.Tie):
        def layout(self, shape):
            return tt.TieLayout(torch.zeros(shape, dtype=torch.long), 1)

    assert (Constant() & tt.Antisymmetric()).layout((3, 3)).n_free == 0
    assert (Constant() & tt.Toeplitz()).layout((3, 3)).n_free == 1


def test_tie_layout_refuses_malformed_layouts():
    with pytest.raises(ValueError, match="n_free"):
        tt.TieLayout(torch.tensor([0, 3]), 2)
    with pytest.raises(ValueError, match="unused"):
        tt.TieLayout(torch.tensor([0, 0]), 2)
    with pytest.raises(ValueError, match="sign"):
        tt.TieLayout(torch.tensor([0, 1]), 2, sign=torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="integer"):
        tt.TieLayout(torch.tensor([0.0, 1.0]), 2)


def test_layouts_are_cached_per_shape():
    tie = tt.SymmetricFlip()
    assert tie.layout((2, 2, 3, 3)) is tie.layout((2, 2, 3, 3))
    assert tie.layout((3, 3, 3, 3)) is not tie.layout((2, 2, 3, 3))


def test_d4_tied_conv_is_equivariant_to_rotations_and_flips():
    conv = torch.nn.Conv2d(3, 5, 5, padding=2, bias=False).double()
    tt.register_tie(conv, "weight", tt.KernelSymmetry("D4"))
    x = torch.randn(2, 3, 11, 11, dtype=torch.float64)
    for g in (lambda t: t.rot90(1, (2, 3)), lambda t: t.flip(3), lambda t: t.flip(2)):
        assert torch.allclose(conv(g(x)), g(conv(x)), atol=1e-12)


def test_symmetric_flip_conv_is_self_adjoint():
    conv = torch.nn.Conv2d(4, 4, 3, padding=1, bias=False).double()
    tt.register_tie(conv, "weight", tt.SymmetricFlip())
    x, y = torch.randn(2, 4, 9, 9, dtype=torch.float64).unbind(0)
    lhs = (conv(x[None]) * y).sum()
    rhs = (x * conv(y[None])).sum()
    assert torch.allclose(lhs, rhs, atol=1e-10)
