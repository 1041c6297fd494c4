"""``summary(model)``: what is tied, and how many free parameters remain."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from ._fast import rule_of
from ._register import _tied_tensors
from ._torch_compat import parametrization_list
from .errors import TieTypeError

__all__ = ["TieSummary", "summary"]


@dataclass(frozen=True)
class TieSummaryRow:
    tensor: str
    shape: tuple[int, ...]
    tie: str
    entries: int
    free: int
    owner: str | None = None  # for a group member: the tensor that holds its free vector
    fast: str | None = None  # the fast_forward rule the layer runs on this weight, if any


@dataclass(frozen=True)
class TieSummary:
    """What :func:`summary` returns: rows per tied tensor; ``str()`` is a table."""

    rows: tuple[TieSummaryRow, ...]
    model_parameters: int

    @property
    def entries(self) -> int:
        """Entries of every tied tensor in the summary, together."""
        return sum(r.entries for r in self.rows)

    @property
    def free(self) -> int:
        """Free parameters behind those entries, together."""
        return sum(r.free for r in self.rows)

    def _group_entries(self, row: TieSummaryRow) -> int:
        """Entries that read ``row``'s free vector: its own and its group members'."""
        return row.entries + sum(r.entries for r in self.rows if r.owner == row.tensor)

    def __str__(self) -> str:
        fast = any(r.fast for r in self.rows)  # the column appears once a layer has one
        header = ("tensor", "shape", "tie", "entries", "free", "ratio") + (
            ("fast path",) if fast else ()
        )
        lines = [
            (
                r.tensor,
                "x".join(map(str, r.shape)),
                r.tie,
                f"{r.entries:,}",
                f"{r.free:,}" if r.owner is None else "shared",
                _ratio(self._group_entries(r), r.free) if r.owner is None else "",
            )
            + ((r.fast or "",) if fast else ())
            for r in self.rows
        ]
        lines.append(
            (
                "total",
                "",
                "",
                f"{self.entries:,}",
                f"{self.free:,}",
                _ratio(self.entries, self.free),
            )
            + (("",) if fast else ())
        )
        widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
        right = {3, 4, 5}

        def fmt(row: tuple[str, ...]) -> str:
            return "  ".join(
                str(x).rjust(w) if k in right else str(x).ljust(w)
                for k, (x, w) in enumerate(zip(row, widths))
            ).rstrip()

        rule = "-" * len(fmt(header))
        body = [fmt(header), rule, *map(fmt, lines[:-1]), rule, fmt(lines[-1])]
        body.append(f"model parameters (free, all tensors): {self.model_parameters:,}")
        return "\n".join(body)

    __repr__ = __str__


def _ratio(entries: int, free: int) -> str:
    return f"{entries / free:.1f}x" if free else "inf"


def summary(model: nn.Module) -> TieSummary:
    """A table, per tied tensor, of shape, tie, full entries, free parameters and ratio.

    >>> import torch, tietorch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1))
    >>> _ = tietorch.register_tie(net[0], "weight", tietorch.SymmetricFlip())
    >>> s = tietorch.summary(net)
    >>> s.entries, s.free
    (81, 42)
    """
    if not isinstance(model, nn.Module):
        raise TieTypeError(f"summary: expected an nn.Module, got {type(model).__name__}")
    tied = _tied_tensors(model)
    names = {
        id(parametrization_list(module, name)): f"{qualname}.{name}" if qualname else name
        for qualname, module, name, _ in tied
    }
    rows = []
    for qualname, module, name, param in tied:
        follows = param.follows
        owner = None if follows is None else names.get(id(follows), "outside this model")
        rows.append(
            TieSummaryRow(
                tensor=f"{qualname}.{name}" if qualname else name,
                shape=param.shape,
                tie=repr(param.tie) if owner is None else f"{param.tie!r} (owner {owner})",
                entries=math.prod(param.shape),
                free=param.n_free if owner is None else 0,  # a group's vector counts once
                owner=owner,
                fast=rule_of(module) if name == "weight" else None,
            )
        )
    return TieSummary(tuple(rows), sum(p.numel() for p in model.parameters()))
