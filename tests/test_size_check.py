"""The up-front size check estimates the memory each kind of layout really needs: equal tensors
skip the solver, keys and unsigned relations need half what signed relations do."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tietorch
from tietorch import _tie


@pytest.fixture
def one_mib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_tie, "_memory_bytes", lambda: 2**20)


def _meta_pair(rows: int, cols: int) -> tuple[nn.Module, nn.Module]:
    with torch.device("meta"):
        return nn.Embedding(rows, cols), nn.Linear(cols, rows, bias=False)


def test_an_equal_pair_is_not_refused_where_it_fits(one_mib: None) -> None:
    emb, head = _meta_pair(128, 128)  # 32,768 entries: 16 bytes each is 512 KiB
    tietorch.tie_tensors([(emb, "weight"), (head, "weight")])
    assert tietorch.summary(nn.ModuleList([emb, head])).free == 128 * 128


def test_a_solved_pair_of_the_same_size_is_refused_with_its_estimate(one_mib: None) -> None:
    emb, head = _meta_pair(128, 128)
    with pytest.raises(tietorch.errors.ShapeError, match=r"1\.5 MiB|0\.00146 GiB \(48 bytes"):
        tietorch.tie_tensors([(emb, "weight"), (head, "weight")], relation=lambda i, j: (j, i))
    with pytest.raises(tietorch.errors.ShapeError, match=r"\(96 bytes per entry\)"):
        tietorch.tie_tensors([(emb, "weight"), (head, "weight")], sign=-1)
    assert not hasattr(emb, "parametrizations") and emb.weight.shape == (128, 128)


@pytest.mark.parametrize(
    ("tie", "per_entry"),
    [
        (tietorch.Toeplitz(), 48),  # a closed form that builds its index
        (tietorch.Antisymmetric(), 48),  # the same, signed
        (tietorch.Tie.from_key(lambda i, j: i - j), 48),  # a key
        (tietorch.Tie.from_relation(lambda i, j: (j, i)), 48),  # unsigned relations
        (tietorch.Tie.from_relation(lambda i, j: (j, i), sign=-1), 96),  # parities too
        (tietorch.Symmetric() & tietorch.Antisymmetric(), 96),
    ],
)
def test_each_kind_of_tie_is_refused_at_its_own_estimate(
    one_mib: None, tie: tietorch.Tie, per_entry: int
) -> None:
    fits = 2**20 // per_entry  # entries that fit in 1 MiB
    side = int(fits**0.5)
    tie.layout((side, side))  # fits: solved
    big = side + 8
    with pytest.raises(tietorch.errors.ShapeError, match=rf"\({per_entry} bytes per entry\)"):
        tie.layout((big, big))
