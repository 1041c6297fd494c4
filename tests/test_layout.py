"""The layout's projection in every floating dtype, against exact arithmetic (fractions).

Properties: a tensor that already satisfies its tie is kept (``torch.equal``) and its reported
error is exactly 0, whatever the dtype, the class sizes and the magnitudes (up to the dtype's
max); otherwise each free parameter is the exact signed class mean rounded once to the dtype.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tietorch as tt
from tietorch import _tie

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _values(dtype: torch.dtype, n: int) -> st.SearchStrategy[torch.Tensor]:
    """``n`` finite values of ``dtype``, anywhere up to its max (and exactly the max)."""
    big = float(torch.finfo(dtype).max)
    element = st.one_of(
        st.floats(-big, big, allow_nan=False, allow_infinity=False),
        st.sampled_from([big, -big, 0.0, 1.0, -1.0, 1 / 3]),
    )
    return st.lists(element, min_size=n, max_size=n).map(
        lambda xs: torch.tensor(xs, dtype=torch.float64).to(dtype)
    )


TIES = [
    (tt.ShareAlong(1), lambda rows, cols: (rows, cols)),  # classes of size cols (any size)
    (tt.Toeplitz(), lambda rows, cols: (rows, cols)),  # classes of sizes 1..min(rows, cols)
    (tt.Antisymmetric(), lambda rows, cols: (rows, rows)),  # signs and forced zeros
    (tt.Symmetric(), lambda rows, cols: (cols, cols)),
]


@settings(max_examples=150, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    which=st.integers(0, len(TIES) - 1),
    rows=st.integers(1, 6),
    cols=st.integers(1, 70),
    data=st.data(),
)
def test_a_tensor_that_satisfies_its_tie_is_kept_exactly(dtype, which, rows, cols, data):
    tie, shape_of = TIES[which]
    shape = shape_of(rows, cols)
    layout = tie.layout(shape)
    theta = data.draw(_values(dtype, layout.n_free))
    w = layout.materialize(theta)
    assert torch.isfinite(w).all()
    assert torch.equal(layout.materialize(layout.project(w)), w)
    module = nn.Module()
    module.weight = nn.Parameter(w.clone())
    error = tt.register_tie(module, "weight", tie)
    assert error == 0.0
    assert torch.equal(module.weight, w)
    module.weight = w  # assignment projects the same way
    assert torch.equal(module.weight, w)


@settings(max_examples=150, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES), rows=st.integers(1, 3), cols=st.integers(1, 40), data=st.data()
)
def test_class_means_are_exact_means_rounded_once(dtype, rows, cols, data):
    w = data.draw(_values(dtype, rows * cols)).view(rows, cols)
    theta = tt.ShareAlong(1).layout((rows, cols)).project(w)
    assert theta.dtype == dtype
    assert torch.isfinite(theta).all()  # no overflow on the way, even at the dtype's max
    eps = Fraction(torch.finfo(dtype).eps)
    tiny = Fraction(torch.finfo(dtype).tiny)
    for r in range(rows):
        exact = sum((Fraction(float(x)) for x in w[r].double()), Fraction(0)) / cols
        got = Fraction(float(theta[r]))
        # one rounding to the dtype, plus the float64 summation bound (n * eps64 * max |x|),
        # which only shows for float64 inputs with cancellation
        summation = (
            cols
            * Fraction(torch.finfo(torch.float64).eps)
            * Fraction(float(w[r].double().abs().max()))
        )
        assert abs(got - exact) <= abs(exact) * eps + tiny + summation


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_cases_that_lost_data_before(dtype):
    # all ones under ShareAlong(1): the mean of 4096 ones is 1 in every dtype
    lin = nn.Linear(4096, 4).to(dtype)
    nn.init.ones_(lin.weight)
    assert tt.register_tie(lin, "weight", tt.ShareAlong(1)) == 0.0
    assert bool((lin.weight == 1).all())
    # entries near the dtype's max do not overflow while averaging
    big = float(torch.finfo(dtype).max) / 2
    lin = nn.Linear(64, 4).to(dtype)
    nn.init.constant_(lin.weight, big)
    assert tt.register_tie(lin, "weight", tt.ShareAlong(1)) == 0.0
    assert torch.isfinite(lin.weight).all() and bool((lin.weight == lin.weight[0, 0]).all())


def test_toeplitz_with_classes_of_every_size_is_kept_bitwise():
    layout = tt.Toeplitz().layout((64, 64))
    w = layout.materialize(torch.randn(layout.n_free, generator=torch.Generator().manual_seed(0)))
    lin = nn.Linear(64, 64)
    with torch.no_grad():
        lin.weight.copy_(w)
    assert tt.register_tie(lin, "weight", tt.Toeplitz()) == 0.0
    assert torch.equal(lin.weight, w)


def test_dense_checkpoint_is_averaged_before_the_cast_to_the_model_dtype():
    dense = nn.Linear(300, 2)
    with torch.no_grad():
        dense.weight.copy_(torch.linspace(-1, 1, 600).view(2, 300) + 1000)
    tied = nn.Linear(300, 2).to(torch.bfloat16)
    tt.register_tie(tied, "weight", tt.ShareAlong(1))
    tt.load_dense_state_dict(tied, dense.state_dict())
    exact = dense.weight.double().mean(1)  # the fp32 checkpoint averaged in float64
    assert torch.equal(tied.weight[:, 0], exact.to(torch.bfloat16))


def test_group_initialization_is_precision_safe():
    a, b = nn.Linear(2048, 2).half(), nn.Linear(2048, 2).half()
    for lin in (a, b):
        nn.init.constant_(lin.weight, 30000.0)
    assert tt.tie_tensors([(a, "weight"), (b, "weight")], ties=[tt.ShareAlong(1), None]) == 0.0
    assert bool((b.weight == 30000.0).all())


class _EvictWhileChecking(OrderedDict):
    """A layout cache that, the first time it finds a shape, lets another thread fill the cache
    (evicting that shape) before the caller reads it: the interleaving a race needs, forced.
    With the lock held across the check and the read, that thread has to wait."""

    def __init__(self, evict: Callable[[], None]) -> None:
        super().__init__()
        self.evict, self.armed, self.evictor = evict, False, None

    def __contains__(self, key: object) -> bool:
        found = super().__contains__(key)
        if found and self.armed:
            self.armed = False
            self.evictor = threading.Thread(target=self.evict)
            self.evictor.start()
            self.evictor.join(timeout=0.5)  # blocked on the lock: give up waiting, go on
        return found


def _race_on_the_layout_cache() -> BaseException | None:
    """Read a cached layout while another thread evicts it; the error the reader got."""
    tie = tt.Toeplitz()
    fresh = [(n, 9) for n in range(2, 8)]  # more shapes than the cache holds

    def evict() -> None:
        for shape in fresh:
            tie.layout(shape)

    cache = _EvictWhileChecking(evict)
    tie.__dict__["_layout_cache"] = cache
    tie.layout((1, 9))
    cache.armed = True
    try:
        layout = tie.layout((1, 9))  # found, then evicted before it is read
        assert layout.shape == (1, 9)
    except BaseException as error:
        return error
    finally:
        if cache.evictor is not None:
            cache.evictor.join()
    return None


def test_layout_cache_is_thread_safe():
    assert _race_on_the_layout_cache() is None


def test_the_thread_safety_test_fails_without_the_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_tie, "_CACHE_LOCK", contextlib.nullcontext())
    assert isinstance(_race_on_the_layout_cache(), KeyError)


def test_an_assigned_low_precision_tensor_is_averaged_past_its_dtype():
    """``module.weight = W`` in bfloat16: 2048 ones and 2048 of 1.5 in one class average to 1.25
    (summed in bfloat16 they would stall at 256 + ..., giving 0.125)."""
    lin = nn.Linear(4096, 1, bias=False).to(torch.bfloat16)
    tt.register_tie(lin, "weight", tt.ShareAlong(1))
    lin.weight = torch.cat([torch.ones(1, 2048), torch.full((1, 2048), 1.5)], 1).bfloat16()
    assert lin.weight.dtype == torch.bfloat16 and lin.weight[0, 0].item() == 1.25
