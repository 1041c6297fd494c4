"""Ties across tensors: several (module, name) tensors, one minimal free vector.

The tensors of a group share one index space (each at its own offset), so within-tensor ties and
the relations between tensors go through the same solver as a single tie. The first tensor of
the group *owns* the free vector (``<owner>.parametrizations.<name>.original``); the others read
it, hold no parameter and no state of their own, and are rebuilt by the same gather.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ._layout import Init, Shape, TieLayout, check_init, on_cpu
from ._parametrization import GroupMembership, TieParametrization, _install
from ._register import _log, _prepare, _refuse_shared, _tieable, register_tie
from ._solver import _KeyConstraint, _RelationConstraint, solve
from ._tie import (
    RELATION_BYTES_PER_ENTRY,
    SIGNED_BYTES_PER_ENTRY,
    Tie,
    _evaluate_relations,
    _grids,
    check_size,
    checked_shape,
)
from ._torch_compat import parametrization_list
from ._transaction import all_or_nothing
from .errors import DeclarationError, ShapeError, TargetError, TieTypeError, _context

__all__ = ["tie_tensors", "tie_model"]

Relation = Callable[..., Any]
TensorRef = tuple[nn.Module, str] | str


@dataclass(frozen=True, eq=False)
class GroupMember:
    """What a tensor of a group is tied by (shown by ``summary`` and in error messages)."""

    position: int
    size: int
    tie: Tie | None = None
    relation: Relation | None = None
    sign: int | Callable[..., Any] = 1

    def __repr__(self) -> str:
        parts = []
        if self.position == 0:
            parts.append(f"owner of a group of {self.size}")
        else:
            how = "identity" if self.relation is None else _name(self.relation)
            sign = "" if self.sign == 1 else f", sign={_name(self.sign)}"
            parts.append(f"= owner[{how}]{sign}")
        if self.tie is not None:
            parts.append(repr(self.tie))
        return " & ".join(parts)


def _name(fn: Any) -> str:
    return getattr(fn, "__name__", repr(fn))


@dataclass
class _SolvedGroup:
    """A validated, solved group, ready to install: one layout over the members' concatenated
    flat index space (member ``k`` at ``offsets[k]``) and its initial free vector."""

    members: list[tuple[nn.Module, str, str, Tensor]]  # module, name, label, tensor
    descriptions: list[GroupMember]
    offsets: list[int]
    layout: TieLayout
    theta: Tensor
    error: float


def _resolve(item: TensorRef, model: nn.Module | None) -> tuple[nn.Module, str, str]:
    if isinstance(item, str):
        if model is None:
            raise TieTypeError(f"tie_tensors: the qualified name {item!r} needs model=")
        module_name, _, name = item.rpartition(".")
        try:
            module = model.get_submodule(module_name) if module_name else model
        except AttributeError:
            raise TargetError(f"tie_tensors: the model has no module {module_name!r}") from None
        return module, name, item
    if not (isinstance(item, tuple) and len(item) == 2):
        raise TieTypeError(
            f"tie_tensors: each tensor is a (module, name) pair or a qualified name, got {item!r}"
        )
    module, name = item
    return module, name, f"{type(module).__name__}.{name}"


def _per_follower(value: Any, followers: int, what: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != followers:
            raise DeclarationError(
                f"tie_tensors: {what} lists {len(value)} entries for {followers} tensors after "
                "the first"
            )
        return list(value)
    return [value] * followers


def _group_bytes_per_entry(
    plain: bool, lead: Tensor, ties: Sequence[Tie | None], signs: Sequence[Any], shapes: list[Shape]
) -> int:
    """Peak bytes per entry (of all the tensors together) to lay out a group: equal tensors are
    described (:meth:`TieLayout.copies`) and need only the free vector; anything else is
    solved."""
    if plain:  # described: only the free vector itself, off the meta device
        return 0 if lead.is_meta else lead.element_size()
    signed = any(not (type(s) is int and s == 1) for s in signs)
    relations = SIGNED_BYTES_PER_ENTRY if signed else RELATION_BYTES_PER_ENTRY
    return max(
        [relations]
        + [t._solve_bytes_per_entry(s) for t, s in zip(ties, shapes) if isinstance(t, Tie)]
    )


@on_cpu
def _solve_group(
    tensors: Sequence[TensorRef],
    relation: Relation | Sequence[Relation | None] | None,
    sign: int | Callable[..., Any] | Sequence[int | Callable[..., Any]],
    ties: Sequence[Tie | None] | None,
    model: nn.Module | None,
    init: Init = "project",
) -> _SolvedGroup:
    """Validate and solve a group without touching any module."""
    resolved = [_resolve(item, model) for item in tensors]
    labels = [label for _, _, label in resolved]
    where = f"tie_tensors({', '.join(labels)})"
    if len(resolved) < 2:
        raise DeclarationError(f"{where}: a group needs at least two tensors")
    seen = {(id(module), name) for module, name, _ in resolved}
    if len(seen) != len(resolved):
        raise TargetError(f"{where}: the same tensor is listed twice")
    if model is not None:  # names the holders by their qualified names in the model
        _refuse_shared(model, labels, where)
    members = []
    for module, name, label in resolved:
        members.append((module, name, label, _tieable(module, name, where)))
    lead = members[0][3]
    for _, _, label, tensor in members[1:]:
        if (tensor.dtype, tensor.device) != (lead.dtype, lead.device):
            raise TargetError(
                f"{where}: {label} is {tensor.dtype} on {tensor.device}, but {labels[0]} is "
                f"{lead.dtype} on {lead.device}; one free vector needs one dtype and device"
            )
    followers = len(members) - 1
    relations = _per_follower(relation, followers, "relation")
    signs = _per_follower(sign, followers, "sign")
    ties = [None] * len(members) if ties is None else list(ties)
    if len(ties) != len(members):
        raise DeclarationError(
            f"{where}: ties lists {len(ties)} entries for {len(members)} tensors"
        )

    shapes = [tuple(tensor.shape) for *_, tensor in members]
    offsets = [0]
    for shape in shapes:
        offsets.append(offsets[-1] + math.prod(shape))
    descriptions = [GroupMember(0, len(members), ties[0])] + [
        GroupMember(k + 1, len(members), ties[k + 1], relations[k], signs[k])
        for k in range(followers)
    ]
    constraints: list[_KeyConstraint | _RelationConstraint] = []
    # The common case (an embedding and an output layer): equal shapes, equal entry by entry.
    # Its layout is known without solving (entry j of every tensor is class j), which the
    # solver would take seconds and GiBs to find for a large vocabulary.
    plain = (
        all(tie is None for tie in ties)
        and all(fn is None for fn in relations)
        and all(type(s) is int and s == 1 for s in signs)
        and all(shape == shapes[0] for shape in shapes)
    )
    with _context(where):
        check_size(
            (offsets[-1],),
            _group_bytes_per_entry(plain, lead, ties, signs, shapes),
        )
        for k, tie in enumerate(ties):
            if tie is None:
                continue
            if not isinstance(tie, Tie):
                raise TieTypeError(f"ties[{k}] must be a tietorch.Tie or None, got {tie!r}")
            with _context(f"{tie!r} on shape {shapes[k]}"):
                checked_shape(tie, shapes[k])
                constraints += [c.shifted(offsets[k]) for c in tie._constraints(shapes[k])]
        for k in range(1, 1 if plain else len(members)):
            fn, s = relations[k - 1], signs[k - 1]
            if fn is None and shapes[k] != shapes[0]:
                raise ShapeError(
                    f"{labels[k]} has shape {shapes[k]} and {labels[0]} has {shapes[0]}: "
                    "tensors of different shapes need a relation"
                )
            grids = _grids(shapes[k])
            image = grids if fn is None else fn(*grids)
            sign_value = s(*grids) if callable(s) else s
            with _context(f"{descriptions[k]!r} on shape {shapes[k]}"):
                evaluated = _evaluate_relations(
                    descriptions[k], image, sign_value, shapes[k], shapes[0]
                )
            for c in evaluated:
                assert isinstance(c, _RelationConstraint)
                constraints.append(_RelationConstraint(c.target + offsets[0], c.sign, offsets[k]))

    if plain:  # described, not solved: no index, no concatenated copy
        layout = TieLayout.copies(offsets[1], len(members))
        theta, error = layout.initial_theta_of_copies([t for *_, t in members], init)
        return _SolvedGroup(members, descriptions, offsets, layout, theta, error)
    index, n_free, sign_flat = solve(offsets[-1], constraints)
    layout = TieLayout(index, n_free, sign_flat)
    flat = torch.cat([tensor.detach().reshape(-1) for *_, tensor in members])
    theta, error = layout.initial_theta(flat, init)
    return _SolvedGroup(members, descriptions, offsets, layout, theta, error)


def _install_group(group: _SolvedGroup) -> None:
    owner_param: TieParametrization | None = None
    owner_list: parametrize.ParametrizationList | None = None
    for k, ((module, name, _, tensor), description) in enumerate(
        zip(group.members, group.descriptions)
    ):
        shape = tuple(tensor.shape)
        param = TieParametrization(description, group.layout, tensor, group.offsets[k], shape)
        if owner_list is None:
            _install(module, name, param, group.theta)
            owner_param, owner_list = param, parametrization_list(module, name)
            param.group = GroupMembership(owner_list, is_owner=True)
            param.projection_error = group.error
            continue
        assert owner_param is not None and owner_param.group is not None
        param.group = GroupMembership(
            owner_list,
            is_owner=False,
            requires_grad=tensor.requires_grad,
            was_buffer=name in module._buffers,
        )
        _install(module, name, param, tensor.new_zeros(0))
        plist = parametrization_list(module, name)
        # The placeholder is no parameter and no state: a non-persistent buffer.
        held = plist._parameters if "original" in plist._parameters else plist._buffers
        placeholder = held.pop("original")
        assert placeholder is not None
        if placeholder.is_meta:  # empty, so never meta: loaders that fill only the state
            # dict's keys into a meta-built model (accelerate's load_checkpoint_in_model) would
            # leave it without data
            placeholder = placeholder.new_zeros(0, device="cpu")
        plist.register_buffer("original", placeholder.detach(), persistent=False)
        owner_param.group.followers.add(param)
    labels = ", ".join(label for _, _, label, _ in group.members)
    _log.info(
        "tied %s together: %d -> %d parameters, relative projection error %.3g",
        labels,
        group.layout.numel,
        group.layout.n_free,
        group.error,
    )


def tie_tensors(
    tensors: Sequence[TensorRef],
    relation: Relation | Sequence[Relation | None] | None = None,
    sign: int | Callable[..., Any] | Sequence[int | Callable[..., Any]] = 1,
    ties: Sequence[Tie | None] | None = None,
    *,
    model: nn.Module | None = None,
    init: Init = "project",
) -> float:
    """Tie several tensors, possibly of different shapes, to one minimal free vector.

    Every tensor after the first is related to the first (the *owner*) entry by entry:
    ``tensors[k][x] = sign * tensors[0][relation(*x)]``, where ``relation`` gets the index grids
    of tensor ``k`` and returns indices into tensor 0 (``None``: the identity, for equal shapes),
    exactly like :meth:`Tie.relations`. ``relation`` and ``sign`` may also be lists, one entry
    per tensor after the first. ``ties`` adds a within-tensor tie per tensor (or None); all
    constraints are solved together, so the group has exactly the free parameters it needs.

    ``tensors`` holds ``(module, name)`` pairs, or qualified names such as
    ``"decoder.weight"`` with ``model=``. The free vector lives with the owner, under the state
    dict key ``<owner>.parametrizations.<name>.original``; the other tensors keep no parameter
    and no state. Initial value: the orthogonal projection of all the tensors together.
    ``remove_tie`` unties a follower; the owner is untied last (``bake`` does the order).

    Returns:
        The relative distance of the tensors (together) from the constraints.

    Example (a tied autoencoder: the decoder is the encoder transposed):
        >>> import torch, tietorch
        >>> enc, dec = torch.nn.Linear(8, 3), torch.nn.Linear(3, 8)
        >>> _ = tietorch.tie_tensors([(enc, "weight"), (dec, "weight")],
        ...                          relation=lambda i, j: (j, i))
        >>> torch.equal(dec.weight, enc.weight.T)
        True
        >>> sum(p.numel() for m in (enc, dec) for p in m.parameters())  # 24 + 3 + 8
        35
    """
    check_init(init)
    group = _solve_group(tensors, relation, sign, ties, model, init)
    with all_or_nothing([module for module, *_ in group.members]):
        _install_group(group)
    return group.error


def tie_model(
    model: nn.Module,
    spec: Mapping[str | tuple[str, ...], Tie | Relation | None],
    *,
    init: Init = "project",
) -> dict[str, float]:
    """Declare every tie of a model by qualified names, all checked before any is applied.

    ``spec`` maps a tensor name to a :class:`Tie` (within one tensor), or a tuple of names to
    the relation from each later tensor onto the first (a callable as in :func:`tie_tensors`,
    or None for equality). A within-tensor tie on a grouped tensor joins its group's solve.

    Returns:
        ``{name: relative projection error}`` (groups under their first name).

    Example (embedding/output tying in a tiny language model, and a symmetric mixing layer):
        >>> import torch, tietorch
        >>> lm = torch.nn.ModuleDict(dict(embed=torch.nn.Embedding(50, 8),
        ...                               mix=torch.nn.Linear(8, 8),
        ...                               head=torch.nn.Linear(8, 50, bias=False)))
        >>> errors = tietorch.tie_model(lm, {("embed.weight", "head.weight"): None,
        ...                                  "mix.weight": tietorch.Symmetric()})
        >>> sorted(errors)
        ['embed.weight', 'mix.weight']
        >>> torch.equal(lm["head"].weight, lm["embed"].weight)
        True
    """
    check_init(init)
    within: dict[str, Tie] = {}
    groups: list[tuple[tuple[str, ...], Relation | None]] = []
    for key, value in spec.items():
        if isinstance(key, str):
            if not isinstance(value, Tie):
                raise TieTypeError(f"tie_model: {key!r} maps to {value!r}; expected a tietorch.Tie")
            within[key] = value
        else:
            if isinstance(value, Tie):
                raise TieTypeError(
                    f"tie_model: the group {key!r} maps to a Tie; a group takes a relation "
                    "(a function of the index grids) or None"
                )
            groups.append((tuple(key), value))
    grouped = [name for names, _ in groups for name in names]
    repeated = sorted({n for n in grouped if grouped.count(n) > 1})
    if repeated:
        raise DeclarationError(
            f"tie_model: {repeated} appear in more than one group; merge the groups"
        )

    _refuse_shared(model, [*grouped, *within], "tie_model")
    solved = [
        _solve_group(names, relation, 1, [within.get(n) for n in names], model, init)
        for names, relation in groups
    ]
    singles = []
    for name, tie in within.items():
        if name in grouped:
            continue
        module, tensor_name, _ = _resolve(name, model)
        _prepare(module, tensor_name, tie, "tie_model", name)
        singles.append((name, module, tensor_name, tie))

    errors: dict[str, float] = {}
    with all_or_nothing([model]):
        for (names, _), group in zip(groups, solved):
            _install_group(group)
            errors[names[0]] = group.error
        for name, module, tensor_name, tie in singles:
            errors[name] = register_tie(module, tensor_name, tie, init=init)
    return errors
