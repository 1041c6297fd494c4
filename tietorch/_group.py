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

from ._solver import _RelationConstraint, solve
from ._parametrization import TieParametrization, _Followers, _install
from ._register import (
    Init,
    _check_init,
    _log,
    _prepare,
    _refuse_shared,
    _tieable,
    register_tie,
    relative_error,
)
from ._tie import Tie, _evaluate_relations, _grids, gather, signed_mean

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
class _Plan:
    """A validated, solved group, ready to install."""

    members: list[tuple[nn.Module, str, str, Tensor]]  # module, name, label, tensor
    descriptions: list[GroupMember]
    index: Tensor
    sign: Tensor | None
    n_free: int
    theta: Tensor
    error: float


def _resolve(item: TensorRef, model: nn.Module | None) -> tuple[nn.Module, str, str]:
    if isinstance(item, str):
        if model is None:
            raise TypeError(f"tie_tensors: the qualified name {item!r} needs model=")
        module_name, _, name = item.rpartition(".")
        try:
            module = model.get_submodule(module_name) if module_name else model
        except AttributeError:
            raise ValueError(f"tie_tensors: the model has no module {module_name!r}") from None
        return module, name, item
    module, name = item
    return module, name, f"{type(module).__name__}.{name}"


def _per_follower(value: Any, followers: int, what: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != followers:
            raise ValueError(
                f"tie_tensors: {what} lists {len(value)} entries for {followers} tensors after "
                "the first"
            )
        return list(value)
    return [value] * followers


def _plan(
    tensors: Sequence[TensorRef],
    relation: Relation | Sequence[Relation | None] | None,
    sign: int | Callable[..., Any] | Sequence[int | Callable[..., Any]],
    ties: Sequence[Tie | None] | None,
    model: nn.Module | None,
    init: Init = "project",
) -> _Plan:
    """Validate and solve a group without touching any module."""
    resolved = [_resolve(item, model) for item in tensors]
    labels = [label for _, _, label in resolved]
    where = f"tie_tensors({', '.join(labels)})"
    if len(resolved) < 2:
        raise ValueError(f"{where}: a group needs at least two tensors")
    seen = {(id(module), name) for module, name, _ in resolved}
    if len(seen) != len(resolved):
        raise ValueError(f"{where}: the same tensor is listed twice")
    members = []
    for module, name, label in resolved:
        members.append((module, name, label, _tieable(module, name, where)))
    if len({id(tensor) for *_, tensor in members}) != len(members):
        raise ValueError(
            f"{where}: some of these names hold one and the same tensor object; give each "
            "module its own nn.Parameter first (the group then keeps them equal)"
        )
    if model is not None:
        _refuse_shared(model, labels, where)
    lead = members[0][3]
    for _, _, label, tensor in members[1:]:
        if (tensor.dtype, tensor.device) != (lead.dtype, lead.device):
            raise ValueError(
                f"{where}: {label} is {tensor.dtype} on {tensor.device}, but {labels[0]} is "
                f"{lead.dtype} on {lead.device}; one free vector needs one dtype and device"
            )
    followers = len(members) - 1
    relations = _per_follower(relation, followers, "relation")
    signs = _per_follower(sign, followers, "sign")
    ties = [None] * len(members) if ties is None else list(ties)
    if len(ties) != len(members):
        raise ValueError(f"{where}: ties lists {len(ties)} entries for {len(members)} tensors")

    shapes = [tuple(tensor.shape) for *_, tensor in members]
    offsets = [0]
    for shape in shapes:
        offsets.append(offsets[-1] + math.prod(shape))
    descriptions = [GroupMember(0, len(members), ties[0])] + [
        GroupMember(k + 1, len(members), ties[k + 1], relations[k], signs[k])
        for k in range(followers)
    ]
    constraints = []
    try:
        for k, tie in enumerate(ties):
            if tie is None:
                continue
            if not isinstance(tie, Tie):
                raise TypeError(f"ties[{k}] must be a tietorch.Tie or None, got {tie!r}")
            tie.check_shape(shapes[k])
            constraints += [c.shifted(offsets[k]) for c in tie._constraints(shapes[k])]
        for k in range(1, len(members)):
            fn, s = relations[k - 1], signs[k - 1]
            if fn is None and shapes[k] != shapes[0]:
                raise ValueError(
                    f"{labels[k]} has shape {shapes[k]} and {labels[0]} has {shapes[0]}: "
                    "tensors of different shapes need a relation"
                )
            grids = _grids(shapes[k])
            image = grids if fn is None else fn(*grids)
            sign_value = s(*grids) if callable(s) else s
            for c in _evaluate_relations(descriptions[k], image, sign_value, shapes[k], shapes[0]):
                constraints.append(_RelationConstraint(c.target + offsets[0], c.sign, offsets[k]))
    except (ValueError, TypeError) as error:
        raise type(error)(f"{where}: {error}") from error

    index, n_free, sign_flat = solve(offsets[-1], constraints)
    with torch.no_grad():
        flat = torch.cat([tensor.detach().reshape(-1) for *_, tensor in members])
        live = index if sign_flat is None else index[sign_flat != 0]
        counts = torch.bincount(live.to(flat.device), minlength=n_free).to(flat.dtype)
        sign_float = None if sign_flat is None else sign_flat.to(flat)
        theta = signed_mean(flat, index.to(flat.device), sign_float, 1 / counts.clamp_min(1))
        error = relative_error(flat, gather(theta, index.to(flat.device), sign_float, flat.shape))
        if init == "preserve_std":
            theta = theta * counts.clamp_min(1).sqrt()
    return _Plan(members, descriptions, index, sign_flat, n_free, theta, error)


def _apply(plan: _Plan) -> None:
    offset = 0
    owner_param: TieParametrization | None = None
    owner_list: nn.Module | None = None
    for (module, name, _, tensor), description in zip(plan.members, plan.descriptions):
        size = tensor.numel()
        index = plan.index[offset : offset + size].view(tensor.shape)
        sign = None if plan.sign is None else plan.sign[offset : offset + size].view(tensor.shape)
        offset += size
        param = TieParametrization(description, index, sign, plan.n_free, tensor)
        if owner_list is None:
            _install(module, name, param, plan.theta)
            owner_param, owner_list = param, module.parametrizations[name]
            param.__dict__.update(_owner=owner_list, _is_owner=True, _followers=_Followers())
            param.projection_error = plan.error
            continue
        assert owner_param is not None
        param.__dict__.update(
            _owner=owner_list,
            _requires_grad=tensor.requires_grad,
            _was_buffer=name in module._buffers,
        )
        _install(module, name, param, tensor.new_zeros(0))
        plist = module.parametrizations[name]
        # The placeholder is no parameter and no state: a non-persistent buffer.
        held = plist._parameters if "original" in plist._parameters else plist._buffers
        placeholder = held.pop("original").detach()
        plist.register_buffer("original", placeholder, persistent=False)
        owner_param.__dict__["_followers"].add(param)
    labels = ", ".join(label for _, _, label, _ in plan.members)
    _log.info(
        "tied %s together: %d -> %d parameters, relative projection error %.3g",
        labels,
        plan.index.numel(),
        plan.n_free,
        plan.error,
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
    _check_init(init)
    plan = _plan(tensors, relation, sign, ties, model, init)
    _apply(plan)
    return plan.error


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
    _check_init(init)
    within: dict[str, Tie] = {}
    groups: list[tuple[tuple[str, ...], Relation | None]] = []
    for key, value in spec.items():
        if isinstance(key, str):
            if not isinstance(value, Tie):
                raise TypeError(f"tie_model: {key!r} maps to {value!r}; expected a tietorch.Tie")
            within[key] = value
        else:
            if isinstance(value, Tie):
                raise TypeError(
                    f"tie_model: the group {key!r} maps to a Tie; a group takes a relation "
                    "(a function of the index grids) or None"
                )
            groups.append((tuple(key), value))
    grouped = [name for names, _ in groups for name in names]
    repeated = sorted({n for n in grouped if grouped.count(n) > 1})
    if repeated:
        raise ValueError(f"tie_model: {repeated} appear in more than one group; merge the groups")

    _refuse_shared(model, [*grouped, *within], "tie_model")
    plans = [
        _plan(names, relation, 1, [within.get(n) for n in names], model, init)
        for names, relation in groups
    ]
    singles = []
    for name, tie in within.items():
        if name in grouped:
            continue
        module, tensor_name, _ = _resolve(name, model)
        try:
            _prepare(module, tensor_name, tie)
        except (ValueError, TypeError) as error:
            raise type(error)(f"tie_model: {name!r}: {error}") from error
        singles.append((name, module, tensor_name, tie))

    errors: dict[str, float] = {}
    for (names, _), plan in zip(groups, plans):
        _apply(plan)
        errors[names[0]] = plan.error
    for name, module, tensor_name, tie in singles:
        errors[name] = register_tie(module, tensor_name, tie, init=init)
    return errors
