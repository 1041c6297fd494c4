"""tietorch.testing: check_tie passes correct ties and catches wrong ones with clear messages."""

import math
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tietorch as tt
from tietorch import Tie, TieLayout
from tietorch.testing import check_tie
from tietorch.testing.strategies import shapes_for, tensors_satisfying, thetas

# ------------------------------------------------------------------ hand-written layouts


def dense_index(codes):
    """Number the distinct values of ``codes`` 0, 1, ...: an index tensor and n_free."""
    values, index = torch.unique(codes, return_inverse=True)
    return index, len(values)


class ClosedFormSymmetricFlip(tt.SymmetricFlip):
    """A correct closed form, declared alongside its relation (inherited ``relations``/``sign``):
    each entry and its partner ``g(x)`` share the parameter of the smaller flat index."""

    def layout(self, shape):
        self.check_shape(shape)
        flat = torch.arange(math.prod(shape)).view(shape)
        ndim = len(shape)
        partner = flat.transpose(*self.dims).flip([d % ndim for d in self.flip])
        rep = torch.minimum(flat, partner)
        live = (flat != partner) | (self._sign == 1)  # W[x] = -W[x] forces x to zero
        index, n_free = dense_index(torch.where(live, rep, -1))
        if not live.all():  # code -1 sorts first: drop the class of the zeros
            index, n_free = index - 1, n_free - 1
        sign = torch.where(flat == rep, 1, self._sign) * live
        return TieLayout(index.clamp_min(0), n_free, sign)


class ClosedFormAntisymmetric(ClosedFormSymmetricFlip):
    def __init__(self):
        super().__init__(dims=(0, 1), flip=(), sign=-1)


class WrongSignAntisymmetric(ClosedFormAntisymmetric):
    """Declares W[i, j] = -W[j, i] but gives both triangles the same sign."""

    def layout(self, shape):
        layout = super().layout(shape)
        return TieLayout(layout.index, layout.n_free, layout.sign.abs())


class OverTiedToeplitz(Tie):
    """Declares Toeplitz (key i - j) but the layout reads |i - j|: symmetric Toeplitz."""

    def key(self, i, j):
        return i - j

    def check_shape(self, shape):
        if len(shape) != 2:
            raise ValueError(f"{self!r} needs a matrix, got shape {shape}")

    def layout(self, shape):
        i, j = torch.arange(shape[0])[:, None], torch.arange(shape[1])
        return TieLayout(*dense_index((i - j).abs()))


class UnderTiedSymmetric(Tie):
    """Declares W[i, j] = W[j, i] but the layout forgets to tie the corner pair (0, n-1)."""

    def relations(self, i, j):
        return (j, i)

    def check_shape(self, shape):
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"{self!r} needs a square matrix, got shape {shape}")

    def layout(self, shape):
        n = shape[0]
        i, j = torch.arange(n)[:, None], torch.arange(n)
        codes = torch.where(i <= j, i * n + j, j * n + i)
        codes[n - 1, 0] = -1  # its own parameter: no longer tied to W[0, n-1]
        return TieLayout(*dense_index(codes))


class OffByOneSymmetric(UnderTiedSymmetric):
    """Computes n_free = n(n+1)/2 - 1 by hand: the last parameter is out of range."""

    def layout(self, shape):
        index, _ = dense_index(tt.Symmetric().layout(shape).index)
        n = shape[0]
        return TieLayout(index, n * (n + 1) // 2 - 1)


class Tampered(tt.Symmetric):
    """Builds a correct layout, then changes it behind the constructor's back (a user's
    ``layout()`` may return anything): ``changes`` maps attribute names to functions of the
    layout, or ``returns`` replaces the layout altogether."""

    def __init__(self, name, returns=None, **changes):
        super().__init__()
        self.name, self.returns, self.changes = name, returns, changes

    def layout(self, shape):
        base = tt.Symmetric().layout(shape)
        layout = TieLayout(base.index.clone(), base.n_free, torch.ones(shape, dtype=torch.int8))
        for attribute, change in self.changes.items():
            # TieLayout's fields are read-only properties; reach past them as a buggy
            # hand-written layout class could.
            setattr(layout, f"_{attribute}", change(layout))
        return layout if self.returns is None else self.returns(layout)

    def __repr__(self):
        return f"Tampered({self.name})"


class HankelForToeplitz(OverTiedToeplitz):
    """Declares Toeplitz but reads i + j (Hankel): same count, wrong entries."""

    def layout(self, shape):
        i, j = torch.arange(shape[0])[:, None], torch.arange(shape[1])
        return TieLayout(*dense_index(i + j))


class Constant(Tie):
    """Declared only by its layout: check_tie can check well-formedness, projection, gradients."""

    def layout(self, shape):
        return TieLayout(torch.zeros(shape, dtype=torch.long), 1)


class FirstEntryLayout(TieLayout):
    """project() returns each class's first entry instead of its mean."""

    __slots__ = ()

    def project(self, weight):
        flat = weight.reshape(-1)
        first = torch.full((self.n_free,), flat.numel()).scatter_reduce_(
            0, self.index.reshape(-1), torch.arange(flat.numel()), "amin"
        )
        return flat[first]


class DetachedLayout(TieLayout):
    __slots__ = ()

    def materialize(self, theta):
        return super().materialize(theta.detach())


class WithLayoutClass(tt.Symmetric):
    layout_class = TieLayout

    def __repr__(self):
        return f"{type(self).__name__}()"

    def layout(self, shape):
        base = tt.Symmetric().layout(shape)
        return self.layout_class(base.index, base.n_free)


class BadProjection(WithLayoutClass):
    layout_class = FirstEntryLayout


class NoGradient(WithLayoutClass):
    layout_class = DetachedLayout


# --------------------- a forum answer's hand-written construction
# (https://discuss.pytorch.org/t/intra-layer-tied-weights-in-a-convolution-layer/15514)


def forum_answer_weight(diff_chan_params, same_chan_params, nf):
    """The forum answer's construction of W from its parameters, kept as written except: ``/``
    became ``//`` (Python 2 integer division: in Python 3 ``nf*(nf-1)/2`` is a float and
    ``torch.rand`` refuses it, and ``same_chan_params[chan_in/2]`` is a float index), and the
    ``else:`` the forum's formatting lost is restored (as posted, ``triang = s.tril()`` sits inside
    ``if chan_in%2 == 0``, so an odd channel raises UnboundLocalError)."""

    def get_params(chan_in, chan_out):
        if chan_in == chan_out:
            s = same_chan_params[chan_in // 2]
            if chan_in % 2 == 0:
                triang = s.triu()
            else:
                triang = s.tril()
            return triang + triang.t()
        small_idx = min(chan_in, chan_out)
        large_idx = max(chan_in, chan_out)
        lin_idx = small_idx + large_idx * (large_idx - 1) // 2
        param = diff_chan_params[lin_idx]
        if chan_in < chan_out:
            param = param.t()
        return param

    conv_params = []
    for out_c in range(nf):
        tmp = []
        for in_c in range(nf):
            tmp.append(get_params(in_c, out_c))
        conv_params.append(torch.stack(tmp, 0))
    return torch.stack(conv_params, 0)


class ForumAnswer(Tie):
    """The question's constraint ``W[i, j, a, b] = W[j, i, ks-1-a, ks-1-b]``, declared, with the
    layout the answer builds: its parameter vector is ``diff_chan_params`` (nf(nf-1)/2 kernels)
    then ``same_chan_params`` (ceil(nf/2) kernels), and entry x reads the parameter that
    ``forum_answer_weight`` puts there (read off by evaluating it on ids and on ones; the answer's
    factor 2 on the kernel diagonal of same-channel blocks is a rescaling, dropped).

    Its bugs, which check_tie catches (see the tests below):

    * ``.t()`` transposes the kernel where the constraint flips both kernel axes (rotation by
      180°): off-diagonal blocks get ``W[j, i] = W[i, j].T`` and diagonal blocks
      ``triang + triang.t()`` are transpose-symmetric instead of point-symmetric. The declared
      relation fails for every ks >= 2.
    * Channels 2k and 2k+1 share one kernel ``s``: triu(s) for one, tril(s) for the other. The two
      triangles overlap on the diagonal, so ``W[2k, 2k, a, a] = W[2k+1, 2k+1, a, a]``: an over-tie
      the constraint does not impose (visible even at ks = 1).
    * For odd nf the last shared kernel is used only through triu: its strict lower triangle is
      read by no entry, so the layout has unused parameters (TieLayout refuses it). Parameter
      count: the answer uses (nf(nf-1)/2 + ceil(nf/2)) * ks², the minimum is
      nf(nf-1)/2 * ks² + nf * ceil(ks²/2) (45 vs 42 for nf = ks = 3).
    """

    def relations(self, i, j, a, b):
        return (j, i, -1 - a, -1 - b)

    def check_shape(self, shape):
        if len(shape) != 4 or shape[0] != shape[1] or shape[2] != shape[3]:
            raise ValueError(f"{self!r} needs a (nf, nf, ks, ks) weight, got shape {shape}")

    def layout(self, shape):
        nf, _, ks, _ = shape
        n_diff, n_same = nf * (nf - 1) // 2, (nf + 1) // 2
        n_params = (n_diff + n_same) * ks * ks

        def weight(params):
            diff = params[: n_diff * ks * ks].view(n_diff, ks, ks)
            same = params[n_diff * ks * ks :].view(n_same, ks, ks)
            return forum_answer_weight(diff, same, nf)

        scale = weight(torch.ones(n_params, dtype=torch.float64))
        index = (weight(torch.arange(n_params, dtype=torch.float64)) / scale).round().long()
        probe = torch.randn(n_params, dtype=torch.float64)  # every entry reads one parameter
        assert torch.allclose(weight(probe), scale * probe[index])
        return TieLayout(index, n_params)


# ------------------------------------------------------------------------------- tests


def failure(tie, **kwargs):
    with pytest.raises(AssertionError) as info:
        check_tie(tie, **kwargs)
    return str(info.value)


BUILT_IN = [
    tt.SymmetricFlip(),
    tt.SymmetricFlip(sign=-1),
    tt.Symmetric(),
    tt.Symmetric(dims=(1, 2)),
    tt.Antisymmetric(),
    tt.ShareAlong(1),
    tt.ShareAlong((0, -1)),
    tt.ShareAcrossGroups(2),
    tt.Toeplitz(),
    tt.Hankel(),
    tt.Circulant(),
    *(tt.KernelSymmetry(g) for g in ["D4", "C4", "C2", "flip_h", "flip_v"]),
    tt.Circulant() & tt.Symmetric(),
    tt.Toeplitz() & tt.SymmetricFlip(dims=(-2, -1), flip=(-2, -1)),
    tt.Tie.from_key(lambda i, j: i == j),
]


@pytest.mark.parametrize("tie", BUILT_IN, ids=repr)
def test_built_in_ties_pass(tie):
    check_tie(tie, max_examples=8)


def test_correct_hand_written_layouts_pass():
    check_tie(ClosedFormSymmetricFlip(), max_examples=10)
    check_tie(ClosedFormSymmetricFlip(sign=-1), shapes=[(2, 2, 3, 3), (3, 3, 1, 2)], max_examples=5)
    check_tie(ClosedFormAntisymmetric(), max_examples=10)


def test_closed_form_is_used_and_matches_the_solver():
    tie, shape = ClosedFormSymmetricFlip(), (3, 3, 3, 3)
    assert tie.layout(shape).n_free == tt.SymmetricFlip().layout(shape).n_free == 42


def test_layout_only_ties_get_the_checks_they_can_have():
    check_tie(Constant(), max_examples=10)
    check_tie(Constant() & tt.Toeplitz(), max_examples=10)  # the layout is the part's declaration
    check_tie(Constant() & tt.Antisymmetric(), shapes=[(3, 3)], max_examples=3)


def test_over_tie_is_caught_and_named():
    message = failure(OverTiedToeplitz(), shapes=[(3, 3)], max_examples=5)
    assert "shape (3, 3)" in message and "over-ties" in message
    assert "n_free = 3" in message and "5-dimensional" in message
    # a witness: two entries tied by the layout but not by the declaration
    assert "the layout ties W[1, 0] = +1 * W[0, 1]" in message


def test_under_tie_is_caught_and_named():
    message = failure(UnderTiedSymmetric(), shapes=[(3, 3)], max_examples=5)
    assert "shape (3, 3)" in message and "relation 0 does not hold" in message
    assert "W[0, 2] =" in message and "sign * W[2, 0] = +1 *" in message
    assert "n_free = 7" in message and "ties too little (under-ties)" in message


def test_wrong_sign_is_caught():
    message = failure(WrongSignAntisymmetric(), shapes=[(3, 3)], max_examples=5)
    assert "relation 0 does not hold: W[0, 1] =" in message
    assert "sign * W[1, 0] = -1 *" in message
    assert "ties the wrong entries together, or with the wrong signs" in message


def test_key_violation_is_caught():
    message = failure(HankelForToeplitz(), shapes=[(2, 2)], max_examples=5)
    assert "key does not hold" in message and "have the same key (0) but differ" in message


def test_out_of_range_is_caught():
    # the TieLayout constructor refuses it: reported as a malformed layout, with the shape
    message = failure(OffByOneSymmetric(), shapes=[(2, 2)], max_examples=5)
    assert "shape (2, 2): the layout is malformed" in message
    assert "built a TieLayout that its constructor refuses" in message
    assert "index values must lie in [0, n_free=2), got [0, 2]" in message
    # changed after construction: check_tie checks what layout() returns, not the constructor
    message = failure(
        Tampered("n_free - 1", n_free=lambda t: t.n_free - 1), shapes=[(2, 2)], max_examples=5
    )
    assert "shape (2, 2): the layout is malformed" in message
    assert "index out of range: W[1, 1] reads free parameter 2, outside [0, n_free = 2)" in message


@pytest.mark.parametrize(
    ("tie", "expected"),
    [
        (
            Tampered("tuple", returns=lambda t: (t.index, t.n_free)),
            "layout() returned a tuple, not a tietorch.TieLayout",
        ),
        (
            Tampered("shape", index=lambda t: t.index[:1]),
            "index has shape (1, 3), but the tensor has shape (3, 3)",
        ),
        (
            Tampered("float", index=lambda t: t.index.double()),
            "index has dtype torch.float64; it must be an integer tensor",
        ),
        (
            Tampered("sign 2", sign=lambda t: t.sign * 2),
            "sign values must be +1, -1 or 0, but the sign of W[0, 0] is 2",
        ),
        (
            Tampered("sign shape", sign=lambda t: t.sign[0]),
            "sign has shape (3,), but the tensor has shape (3, 3)",
        ),
        (
            Tampered("n_free + 1", n_free=lambda t: t.n_free + 1),
            "1 of the n_free = 7 free parameters are read by no entry (unused: 6)",
        ),
        (
            Tampered("relabelled", index=lambda t: torch.where(t.index < 2, 1 - t.index, t.index)),
            "class_sizes does not match the index",
        ),
    ],
    ids=repr,
)
def test_malformed_layouts_are_caught(tie, expected):
    message = failure(tie, shapes=[(3, 3)], max_examples=3)
    assert "shape (3, 3): the layout is malformed" in message and expected in message


def test_projection_and_gradients_are_checked():
    message = failure(BadProjection(), shapes=[(3, 3)], max_examples=5)
    assert "not the orthogonal projection" in message
    message = failure(NoGradient(), shapes=[(3, 3)], max_examples=5)
    assert "no gradient reaches theta" in message


def test_the_forum_answers_construction_is_caught():
    # ks = 1, nf = 2: no kernel to transpose, but channels 0 and 1 share the diagonal of one
    # kernel: the layout ties W[1, 1, 0, 0] to W[0, 0, 0, 0], which the constraint does not.
    message = failure(ForumAnswer(), shapes=[(2, 2, 1, 1)], max_examples=3)
    assert "over-ties" in message and "n_free = 2" in message and "3-dimensional" in message
    assert "the layout ties W[1, 1, 0, 0] = +1 * W[0, 0, 0, 0]" in message
    # ks = 2: the transpose is not the 180° rotation the constraint asks for; the answer's count
    # happens to be the minimum here (8), so the message says it ties the wrong entries.
    message = failure(ForumAnswer(), shapes=[(2, 2, 2, 2)], max_examples=3)
    assert "relation 0 does not hold: W[0, 0, 0, 0] =" in message
    assert "but sign * W[0, 0, 1, 1] = +1 *" in message
    assert "n_free = 8 is the dimension" in message and "ties the wrong entries" in message
    # odd nf: half of the last shared kernel is never read
    message = failure(ForumAnswer(), shapes=[(1, 1, 2, 2)], max_examples=3)
    assert "shape (1, 1, 2, 2): the layout is malformed" in message
    assert "every free parameter must be used by some entry; unused: [2]" in message
    # with shapes derived from check_shape, Hypothesis finds and shrinks a counterexample
    assert "check_tie: ForumAnswer() on shape (" in failure(ForumAnswer(), max_examples=30)


def test_shapes_as_a_strategy():
    check_tie(tt.Circulant(), shapes=st.integers(1, 6).map(lambda n: (n, n)), max_examples=8)


def test_shapes_errors_are_clear():
    with pytest.raises(ValueError, match=r"shapes="):
        check_tie(tt.ShareAcrossGroups(7))  # no dim of size <= 5 is divisible by 7
    with pytest.raises(ValueError, match=r"refuses shape \(3, 4\)"):
        check_tie(tt.Symmetric(), shapes=[(3, 3), (3, 4)])
    with pytest.raises(TypeError, match="several shapes"):
        check_tie(tt.Symmetric(), shapes=(3, 3))


def test_layout_errors_on_unrefused_shapes_are_reported():
    # no check_shape, relation (j, i): non-square shapes fail, and the message says what to do
    message = failure(tt.Tie.from_relation(lambda i, j: (j, i), name="transpose"), max_examples=20)
    assert (
        "raised DeclarationError" in message and "check_shape refuse it (or pass shapes=" in message
    )
    check_tie(tt.Tie.from_relation(lambda i, j: (j, i)), shapes=[(1, 1), (3, 3)], max_examples=5)


def test_not_inside_given():
    @settings(max_examples=1, database=None)
    @given(st.just(0))
    def inner(_):
        check_tie(tt.Symmetric(), shapes=[(2, 2)])

    with pytest.raises(RuntimeError, match="not inside a @given test"):
        inner()


# --------------------------------------------------------------------------- strategies


@settings(max_examples=15)
@given(st.data())
def test_strategies_compose(data):
    tie = tt.KernelSymmetry("C4")
    shape = data.draw(shapes_for(tie, max_side=4, max_dims=3))
    assert len(shape) >= 2 and shape[-1] == shape[-2]
    theta = data.draw(thetas(tie.layout(shape), dtype=torch.float64))
    assert theta.shape == (tie.layout(shape).n_free,) and bool(torch.isfinite(theta).all())
    w = data.draw(tensors_satisfying(tie, shape))
    assert w.shape == shape and torch.equal(w, w.rot90(1, (-2, -1)))


@settings(max_examples=20)
@given(shapes_for(tt.Tie.from_key(lambda i, j: i - j), max_side=3))
def test_shapes_for_keeps_only_ranks_the_declaration_takes(shape):
    assert len(shape) == 2  # no check_shape, but the key takes exactly two index grids


# ------------------------------------------------------------------------- optional extra


def test_import_tietorch_without_hypothesis():
    code = textwrap.dedent("""
        import sys
        sys.modules["hypothesis"] = None  # as if it were not installed
        import tietorch
        assert tietorch.Symmetric().layout((3, 3)).n_free == 6
        try:
            import tietorch.testing
        except ImportError as error:
            print(error)
        else:
            raise SystemExit("tietorch.testing imported without Hypothesis")
    """)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert 'pip install "tietorch[testing]"' in result.stdout


def test_over_tying_is_caught_beyond_the_dense_rank_limit():
    class ToeplitzButConstant(tt.Toeplitz):
        """Declares Toeplitz, but its closed-form layout ties every entry together."""

        def layout(self, shape):
            return TieLayout(torch.zeros(shape, dtype=torch.long), 1)

    with pytest.raises(AssertionError, match=r"over-ties.*n_free = 1.*leave 59 free.*ties W\["):
        check_tie(ToeplitzButConstant(), shapes=[(30, 30)], max_examples=2)


# ----------------------------------------------------------- the report, and the defaults


def toeplitz_free(shape):
    """Toeplitz on the last two dims: one parameter per diagonal, per batch entry."""
    return math.prod(shape[:-2]) * (shape[-2] + shape[-1] - 1)


def test_report_says_what_was_checked():
    report = check_tie(tt.Toeplitz(), shapes=[(3, 3), (2, 4, 5), (30, 30)], max_examples=4)
    assert report.declaration == "key" and report.examples >= 4
    assert [s.shape for s in report.shapes] == [(3, 3), (2, 4, 5), (30, 30)]
    for s in report.shapes:
        assert s.n_free == toeplitz_free(s.shape)
        assert s.minimality == ("dense rank" if math.prod(s.shape) <= 400 else "solver")
        assert s.examples >= 1
    summary = report.summary()
    assert "minimal by dense rank on 2 shapes (9 to 40 entries)" in summary
    assert "not over-tied by tietorch's solver on 1 shape (900 entries" in summary
    layout_only = check_tie(Constant(), shapes=[(2, 2)], max_examples=2)
    assert layout_only.declaration == "layout"
    assert {s.minimality for s in layout_only.shapes} == {"not checked"}


def default_shapes(tie):
    """Every shape of 1 to 4 dims of sizes 1 to 5 the tie accepts: brute force."""
    import itertools

    found = []
    for ndim in range(1, 5):
        for shape in itertools.product(range(1, 6), repeat=ndim):
            try:
                tie.check_shape(shape)
                tie.layout(shape)
            except Exception:
                continue
            found.append(shape)
    return found


def test_default_shapes_are_spread_over_the_sizes():
    report = check_tie(tt.Toeplitz(), seed=0)
    # one size per shape check (a shape checked by k examples counts k times)
    sizes = sorted(s.numel for s in report.shapes for _ in range(s.examples))
    accepted = sorted(math.prod(s) for s in default_shapes(tt.Toeplitz()))
    assert report.examples == 40 and len(sizes) == 160 and len(report.shapes) > 80
    # each example checks a shape from every quarter of the accepted sizes
    quartiles = [accepted[len(accepted) * q // 4] for q in (1, 2, 3)]
    for low, high in zip([0, *quartiles], [*quartiles, accepted[-1] + 1]):
        assert sum(low <= n < high for n in sizes) >= 30, (low, high)
    assert sum(n >= 100 for n in sizes) >= 0.15 * len(sizes)  # 5-8% when drawn one at a time
    for s in report.shapes:
        assert s.n_free == toeplitz_free(s.shape)


class ToeplitzWrongOn(tt.Toeplitz):
    """Declares Toeplitz, but on the shapes in ``bad`` its layout ties every entry together."""

    def __init__(self, bad):
        super().__init__()
        self.bad = frozenset(bad)

    def layout(self, shape):
        if tuple(shape) in self.bad:
            return TieLayout(torch.zeros(shape, dtype=torch.long), 1)
        return super().layout(shape)

    def __repr__(self):
        return f"ToeplitzWrongOn({len(self.bad)} shapes)"


@pytest.mark.parametrize("which", ["largest", "random"])
def test_defaults_catch_a_layout_wrong_on_a_few_percent_of_shapes(which):
    import random

    shapes = sorted(default_shapes(tt.Toeplitz()), key=math.prod)
    assert len(shapes) == 775
    bad = shapes[-25:] if which == "largest" else random.Random(1).sample(shapes, 25)  # 3.2%
    tie = ToeplitzWrongOn(bad)
    caught = 0
    for seed in range(20):
        try:
            check_tie(tie, seed=seed)
        except AssertionError as error:
            assert "over-ties" in str(error)
            caught += 1
    assert caught >= 19, f"caught in {caught} of 20 runs"
