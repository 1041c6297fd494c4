"""Dense tensors to free vectors: the one computation behind every dense checkpoint load.

A tied tensor written out dense (``dense_state_dict``, or ``save_pretrained``, which writes a
checkpoint the plain class loads) holds each free parameter once per entry of its class. Reading
it back takes the (signed) class means over every dense tensor that reads one free vector, then
measures how far each dense tensor is from what that free vector rebuilds:

- :func:`tietorch.load_dense_state_dict` projects on purpose: any dense tensor loads, and the
  distances are returned;
- ``load_state_dict``, and transformers' ``from_pretrained`` of a class that ties, accept a dense
  tensor only when it *satisfies* its tie (``exact=True``): a checkpoint written from a tied model
  loads bit for bit, and an untied one is refused instead of being averaged without a word.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from weakref import WeakKeyDictionary

import torch
from torch import Tensor

from ._layout import gather, relative_error
from ._parametrization import TieParametrization
from .errors import CheckpointError

__all__: list[str] = []

#: The largest relative distance ``||W - P(W)|| / ||W||`` at which a dense tensor counts as
#: satisfying its tie. Written from a tied model, the distance is exactly 0 (the class means of
#: equal values, accumulated in float64); the margin only absorbs float32 accumulation on
#: devices without float64.
SATISFIES_TOLERANCE = 1e-6

#: A dense tensor that reads a free vector: (its parametrization, its state-dict key, its value).
DensePart = tuple[TieParametrization, str, Tensor]


def free_from_dense(
    lead: TieParametrization, parts: Sequence[DensePart], current: Tensor | None, *, exact: bool
) -> tuple[Tensor, dict[str, float]]:
    """The free vector of ``lead``'s layout (a tie, or a group's owner) from dense tensors.

    Classes that no dense tensor covers keep their values in ``current`` (the free vector the
    model or the checkpoint already holds); without one every class must be covered. The free
    vector is computed on the CPU for a model on the meta device (filled from a CPU checkpoint),
    and in the model's dtype.

    Returns:
        The free vector, and each dense tensor's relative distance from what it rebuilds.

    Raises:
        CheckpointError: a class is not covered and there is no ``current``; or, with
            ``exact``, a dense tensor does not satisfy its tie.
    """
    device = torch.device("cpu") if lead.device.type == "meta" else lead.device
    means, covered = lead.layout.project_parts(
        [(param.offset, dense.detach().to(device)) for param, _, dense in parts]
    )
    if bool(covered.all()):
        theta = means
    elif current is not None and not current.is_meta:
        theta = torch.where(covered, means, current.detach().to(means))
    else:
        keys = ", ".join(key for _, key, _ in parts)
        raise CheckpointError(
            f"{keys} (tied with {lead.tie!r}) cover only {int(covered.sum())} of the "
            f"{lead.n_free} free parameters they read, and the checkpoint holds no free vector "
            "for the rest; load the whole group's tensors"
        )
    theta = theta.to(lead._dtype)
    distances = {part[1]: distance(part, theta, exact) for part in parts}
    return theta, distances


def distance(part: DensePart, theta: Tensor, exact: bool) -> float:
    """The relative distance of a dense tensor from what ``theta`` rebuilds; with ``exact``,
    a distance above :data:`SATISFIES_TOLERANCE` raises :class:`CheckpointError`."""
    param, key, dense = part
    found = relative_error(dense, rebuilt(param, theta))
    if exact and found > SATISFIES_TOLERANCE:
        raise CheckpointError(
            f"'{key}' is tied with {param.tie!r} (shape {param.shape}), but the dense tensor "
            f"the checkpoint holds does not satisfy that tie (relative distance {found:.3g}): "
            "it is an untied checkpoint. Load it with tietorch.load_dense_state_dict(model, "
            "state_dict), which projects it onto the tie and returns the distances, or untie "
            "the model"
        )
    return found


def rebuilt(param: TieParametrization, theta: Tensor) -> Tensor:
    """The tensor ``param`` reads from the free vector ``theta`` (on ``theta``'s device)."""
    if param.view is not None:
        return param.view.apply(theta)
    index, sign = param.layout.part(param.offset, param.shape)
    sign = None if sign is None else sign.view(param.shape).to(theta.device, theta.dtype)
    return gather(theta, index.to(theta.device), sign, param.shape)


# ------------------------------------------------------------------ load_state_dict, in parts


@dataclass(eq=False)
class _GroupLoad:
    """A group's dense tensors met so far in one ``load_state_dict`` call.

    torch hands each module's pre-hook its own slice of the state dict, so the members of a
    group (an embedding and an output layer) meet only here, in either order: members before
    their owner wait in ``pending`` until the owner makes the free vector; members after it are
    checked against the free vector the owner has loaded by then (torch loads a module's
    subtree before its next sibling). ``session`` is the call's ``missing_keys`` list, one object
    per ``load_state_dict`` call (held, so its identity cannot be reused).
    """

    session: list[str]
    pending: list[DensePart] = field(default_factory=list)
    owner_loaded: bool = False


_GROUP_LOADS: WeakKeyDictionary[TieParametrization, _GroupLoad] = WeakKeyDictionary()


def load_dense_entry(
    param: TieParametrization,
    current: Tensor,
    dense: DensePart | None,
    free: Tensor | None,
    session: list[str],
) -> Tensor | None:
    """One tied tensor's share of a ``load_state_dict`` call: its dense entry (``dense``) or,
    for an owner, the free vector the state dict holds (``free``). ``current``: the free vector
    it reads now. Returns the free vector to load in place of the dense entry (``None`` for a
    group member, which holds none). Dense tensors must satisfy their tie."""
    if param.group is None:
        assert dense is not None
        return free_from_dense(param, [dense], current, exact=True)[0]
    lead = param.group.owner[0]
    assert isinstance(lead, TieParametrization)
    load = _GROUP_LOADS.get(lead)
    if load is None or load.session is not session:
        load = _GROUP_LOADS[lead] = _GroupLoad(session)
    if param is lead:
        if free is None:
            assert dense is not None
            free = free_from_dense(lead, [dense, *load.pending], current, exact=True)[0]
        else:
            for waiting in load.pending:
                distance(waiting, free, exact=True)
        load.pending.clear()
        load.owner_loaded = True
        return free
    assert dense is not None
    if load.owner_loaded:
        distance(dense, current, exact=True)
    else:
        load.pending.append(dense)
    return None
