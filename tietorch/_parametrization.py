"""The parametrization a tie installs: ``theta -> theta[index] * sign`` on one tensor."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from weakref import WeakSet

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ._layout import Shape, TieLayout, ViewRecipe, gather, signed_class_means
from ._torch_compat import (
    DTensor,
    _rebuild_parametrized,  # noqa: F401  (pickles written by tietorch 0.1 name it here)
    add_pickle_check,
    original,
    original_class,
    own_class_behaviour,
    parametrization_list,
    parametrization_lists,
    register_load_pre_hook,
    register_state_dict_post_hook,
)
from .errors import CheckpointError, ShapeError, TieTypeError

if TYPE_CHECKING:
    from ._fast import FastPlan

__all__ = ["TieParametrization"]


class _Followers(WeakSet["TieParametrization"]):
    """The members that read a group owner's free vector (weakly held: a member that is gone
    does not keep the owner from being untied). Pickled as a plain list."""

    def __reduce__(self) -> tuple[Any, ...]:
        return _Followers, (list(self),)


@dataclass(eq=False)
class GroupMembership:
    """How a tensor takes part in a group of tensors tied together (:func:`tie_tensors`).

    ``owner`` is the ParametrizationList holding the group's free vector (the owner's own list
    for the owner). It is held here, not as a submodule, so it is not registered twice.
    """

    owner: parametrize.ParametrizationList
    is_owner: bool
    followers: _Followers = field(default_factory=_Followers)  # the owner's only
    requires_grad: bool = True  # a follower's, restored when it is untied
    was_buffer: bool = False  # a follower that was a buffer before it joined

    def __deepcopy__(self, memo: dict[int, Any]) -> GroupMembership:
        # A copy of the owner alone has no followers (so it can be untied); copied followers
        # add themselves. Copies never point back at the originals.
        return GroupMembership(
            copy.deepcopy(self.owner, memo),
            self.is_owner,
            _Followers(),
            self.requires_grad,
            self.was_buffer,
        )


class TieParametrization(nn.Module):
    """The parametrization ``theta -> theta[index] * sign`` that :func:`register_tie` installs.

    Built from a :class:`TieLayout` (on the CPU; for a group, the one layout of the whole group,
    with this tensor at ``offset`` of its index space). The device copies of ``index`` and
    ``sign`` are plain tensor attributes, not buffers: they follow ``.to(device/dtype)``
    (``_apply``), yet stay out of checkpoints and out of DDP's per-step buffer broadcast. They are
    always rebuilt from the layout, so ``to_empty()`` after meta-device init cannot garble them.

    In a group, every member reads the one free vector of the group's *owner*
    (``group.original(owner)``); the others keep an empty placeholder as ``original``.
    """

    sign: Tensor | None
    tie: Any
    layout: TieLayout
    offset: int
    shape: Shape
    n_free: int
    projection_error: float
    group: GroupMembership | None
    #: The tensor as a view of the free vector (identity, a permutation of axes, a broadcast,
    #: a window), or None: a gather. The class-level default keeps parametrizations pickled
    #: before it existed loadable.
    view: ViewRecipe | None = None
    #: A cheaper forward of the module that reads this tensor (set by ``fast_forward``); the
    #: class-level default keeps parametrizations pickled before it existed loadable.
    fast: FastPlan | None = None
    device: torch.device
    _dtype: torch.dtype
    _registration_value: Tensor | None

    def __init__(
        self, tie: Any, layout: TieLayout, like: Tensor, offset: int = 0, shape: Shape | None = None
    ) -> None:
        super().__init__()
        self.tie = tie
        self.layout = layout
        self.offset = offset
        self.shape = layout.shape if shape is None else shape
        self.n_free = layout.n_free
        self.projection_error = 0.0
        self.group = None
        self.view = layout.view_of(offset, self.shape)
        # Whether every class has an entry here, so assigning this tensor sets all of theta.
        if self.view is not None:  # a view reads every free parameter exactly once
            self._covers_all = True
        else:
            index, sign = layout.part(offset, self.shape)
            live = index if sign is None else index[sign != 0]
            self._covers_all = bool((torch.bincount(live, minlength=self.n_free) > 0).all())
        # The free vector (or a member's placeholder) that registration installs: parametrize
        # takes it from right_inverse, which returns it once.
        self._registration_value = None
        self._place(like.device, like.dtype)

    @property
    def owner(self) -> parametrize.ParametrizationList | None:
        """The ParametrizationList holding the free vector (None: this tensor's own)."""
        return None if self.group is None else self.group.owner

    @property
    def follows(self) -> parametrize.ParametrizationList | None:
        """For a group member that reads another tensor's free vector: that ParametrizationList."""
        return None if self.group is None or self.group.is_owner else self.group.owner

    def _place(self, device: torch.device, dtype: torch.dtype) -> None:
        """Keep device copies of the index and sign where the tensor is a gather (a view reads
        none: its index is built only if someone asks for :attr:`index`)."""
        self.device = device
        self._dtype = dtype  # right_inverse must return the module's dtype
        if self.fast is not None:
            self.fast = self.fast.placed(device, dtype)
        self._index: Tensor | None = None
        self.sign: Tensor | None = None
        if self.view is None:
            index, sign = self.layout.part(self.offset, self.shape)
            self._index = index.to(device)
            self.sign = None if sign is None else sign.view(self.shape).to(device, dtype)

    @property
    def index(self) -> Tensor:
        """The free parameter each entry of this tensor reads (flat, on :attr:`device`)."""
        if self._index is None:
            self._index = self.layout.part(self.offset, self.shape)[0].to(self.device)
        return self._index

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Pickled before views existed: the index and its device were plain attributes.
        if "index" in state:
            state["_index"] = state.pop("index")
            state.setdefault("device", state["_index"].device)
        super().__setstate__(state)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> nn.Module:
        # Learn where `fn` sends a floating tensor of ours (device, and dtype for .half() etc.).
        try:
            probe = fn(torch.empty(0, device=self.device, dtype=self._dtype))
        except NotImplementedError:  # a copy out of the meta device: ask where a CPU tensor goes
            probe = fn(torch.empty(0, device="cpu", dtype=self._dtype))
        self._place(probe.device, probe.dtype)
        return super()._apply(fn, recurse)

    def forward(self, theta: Tensor) -> Tensor:
        theta = self.free_vector(theta)
        if self.view is not None:
            return self.view.apply(theta)
        return gather(theta, self.index, self.sign, self.shape)

    def free_vector(self, theta: Tensor) -> Tensor:
        """The free vector this tensor reads: ``theta`` (its ParametrizationList's
        ``original``), or a group owner's, on this parametrization's device."""
        owner = self.owner
        if owner is not None:
            theta = original(owner)
        if isinstance(theta, DTensor):
            raise RuntimeError(
                f"{self.tie!r}: the free vector is still sharded by FSDP here. Read tied "
                "weights inside forward or after module.unshard(), and keep every tensor of a "
                "tie group inside one FSDP unit (fully_shard their common parent)"
            )
        if theta.device != self.device:
            # The free vector was moved without Module._apply (accelerate's
            # set_module_tensor_to_device fills meta-built models that way): follow it.
            self._place(theta.device, self._dtype)
        return theta

    def right_inverse(self, weight: Tensor) -> Tensor:
        """The free vector for an assigned tensor (``module.weight = W``): the class means of
        ``sign * W``, accumulated in float64 and cast once, so a tensor that already satisfies
        the tie is kept bitwise."""
        if not isinstance(weight, Tensor):
            raise TieTypeError(
                f"{self.tie!r}: cannot assign a {type(weight).__name__} to a tied tensor"
            )
        if tuple(weight.shape) != self.shape:
            raise ShapeError(
                f"{self.tie!r}: cannot assign a tensor of shape {tuple(weight.shape)} to a tied "
                f"tensor of shape {self.shape}"
            )
        if self._registration_value is not None:
            value, self._registration_value = self._registration_value, None
            return value
        if self.view is not None:  # each free parameter read once: the tensor, reordered
            theta = self.view.invert(weight.detach().to(self.device))
            covered = None
        else:  # averaged in float64 from the assigned tensor's own dtype, cast once
            theta, covered = signed_class_means(
                self.index, self.sign, weight.detach().to(self.device), self.n_free
            )
        owner = self.owner
        if owner is None:
            return theta.to(self._dtype)
        if not self._covers_all:  # classes without an entry here keep their value
            assert covered is not None
            current = original(owner).detach().to(theta)
            theta = torch.where(covered, theta, current)
        theta = theta.to(self._dtype)
        if self.group is not None and self.group.is_owner:
            return theta
        original(owner).copy_(theta)
        return theta.new_zeros(0)  # a member's own placeholder

    def __deepcopy__(self, memo: dict[int, Any]) -> TieParametrization:
        replica = type(self).__new__(type(self))
        memo[id(self)] = replica
        replica.__dict__.update(copy.deepcopy(self.__dict__, memo))
        follows = replica.follows
        if follows is not None:
            lead = follows[0]
            assert isinstance(lead, TieParametrization) and lead.group is not None
            lead.group.followers.add(replica)
        return replica

    def extra_repr(self) -> str:
        return f"{self.tie!r}, shape={self.shape}, n_free={self.n_free}"


def _label(module: nn.Module, name: str) -> str:
    """``Linear.weight``: the module's own class name, not parametrize's generated one."""
    return f"{original_class(module).__name__}.{name}"


def _tie_of(module: nn.Module, name: str) -> TieParametrization | None:
    if not parametrize.is_parametrized(module, name):
        return None
    first = parametrization_list(module, name)[0]
    return first if isinstance(first, TieParametrization) else None


def lone_tie(module: nn.Module, name: str) -> TieParametrization | None:
    """The tie on ``module.<name>`` when it is the tensor's only parametrization, else None
    (what a faster forward that reads the free vector directly can rely on)."""
    first = _tie_of(module, name)
    return first if first is not None and len(parametrization_list(module, name)) == 1 else None


# The key of a module's entry in ``state_dict._metadata`` under which each tied tensor's
# identity is saved (see _save_identity), and the format of that entry.
_METADATA_KEY = "tietorch"
_IDENTITY_FORMAT = 1


def _identity(param: TieParametrization) -> dict[str, Any]:
    """What a checkpoint records about a tied tensor: plain str/int/list values only, so
    ``torch.load(weights_only=True)`` reads it. ``layout`` decides; the rest is for messages."""
    return {
        "format": _IDENTITY_FORMAT,
        "tie": repr(param.tie),
        "shape": list(param.shape),
        "n_free": param.n_free,
        "layout": param.layout.fingerprint(param.offset, param.shape),
    }


def _save_identity(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any]
) -> None:
    """state_dict post-hook: record the identity of each tie of ``module`` in the module's
    ``_metadata`` entry (which travels with the state dict through ``torch.save``; keys and
    values of the state dict itself are untouched)."""
    identities = {}
    if parametrize.is_parametrized(module):
        for name in parametrization_lists(module):
            param = _tie_of(module, name)
            if param is not None:
                identities[name] = _identity(param)
    if identities:
        local_metadata[_METADATA_KEY] = identities
    else:
        local_metadata.pop(_METADATA_KEY, None)


def _check_identity(
    param: TieParametrization, prefix: str, name: str, local_metadata: Mapping[str, Any]
) -> None:
    """Refuse a free vector saved from another layout: the same numbers would be other weights.

    A checkpoint without an identity (saved by an older tietorch, through safetensors, or
    rebuilt as a plain dict) is not checked: there is nothing to compare with.
    """
    saved = local_metadata.get(_METADATA_KEY)
    entry = saved.get(name) if isinstance(saved, Mapping) else None
    if not isinstance(entry, Mapping) or entry.get("format") != _IDENTITY_FORMAT:
        return
    ours = param.layout.fingerprint(param.offset, param.shape)
    if entry.get("layout") == ours:
        return
    if entry.get("layout") == param.layout.index_fingerprint(param.offset, param.shape):
        return  # recorded from the index, before the layout was held as a description
    theirs = (
        f"{entry.get('tie')} (shape {tuple(entry.get('shape') or ())}, "
        f"{entry.get('n_free')} free parameters)"
    )
    mine = f"{param.tie!r} (shape {param.shape}, {param.n_free} free parameters)"
    if entry.get("tie") == repr(param.tie):
        why = (
            f"was saved with the same tie, {theirs}, but a different layout (its classes are "
            "numbered otherwise, e.g. by another tietorch version or a changed tie class)"
        )
    else:
        why = f"was saved tied with {theirs}, but this model ties it with {mine}"
    raise CheckpointError(
        f"{prefix}{name}: the free vector '{prefix}parametrizations.{name}.original' {why}; "
        "the same numbers would be other weights. Load it into a model tied as it was saved, "
        "or convert it: tietorch.dense_state_dict() of that model, then "
        "tietorch.load_dense_state_dict(model, dense) projects it onto this tie. To load it "
        "anyway, delete the checkpoint's record: "
        f"del state_dict._metadata[{prefix[:-1]!r}][{_METADATA_KEY!r}]"
    )


def _check_state_dict(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: Mapping[str, Any] | None = None,
    strict: bool = True,
    missing_keys: list[str] | None = None,
    *_: Any,
) -> None:
    """load_state_dict pre-hook (registered once per module): refuse a free vector saved from
    another tie, and load a dense tensor that satisfies its tie (a checkpoint written for the
    plain class, e.g. by ``save_pretrained``) as the free vector it holds."""
    if not parametrize.is_parametrized(module):
        return
    from ._dense import load_dense_entry  # it builds on this module

    session = [] if missing_keys is None else missing_keys
    for name in parametrization_lists(module):
        param = _tie_of(module, name)
        if param is None:
            continue
        where = f"{prefix}{name}"
        free_key = f"{prefix}parametrizations.{name}.original"
        value = state_dict.get(free_key)
        if isinstance(value, Tensor) and value.shape != (param.n_free,):
            raise CheckpointError(
                f"{where} is tied with {param.tie!r} (shape {param.shape}): its free vector has "
                f"{param.n_free} entries, but the state dict holds {value.numel()} "
                f"(shape {tuple(value.shape)}) under '{free_key}'"
            )
        if value is not None and isinstance(local_metadata, Mapping):
            _check_identity(param, prefix, name, local_metadata)
        dense = state_dict.get(where)
        if isinstance(dense, Tensor) and value is None:
            if tuple(dense.shape) != param.shape:
                raise CheckpointError(
                    f"{where} is tied with {param.tie!r} on shape {param.shape}, but the state "
                    f"dict holds a dense tensor of shape {tuple(dense.shape)}"
                )
            current = original(param.owner or parametrization_list(module, name))
            free = load_dense_entry(param, current, (param, where, dense), None, session)
            del state_dict[where]
            if free is not None:
                state_dict[free_key] = free
        elif isinstance(value, Tensor) and param.group is not None and param.follows is None:
            # a group owner's free vector: members' dense tensors are checked against it
            load_dense_entry(param, value, None, value, session)


def _install(module: nn.Module, name: str, param: TieParametrization, value: Tensor) -> None:
    """Register ``param`` on ``module.<name>`` with the free vector (or placeholder) ``value``.

    Callers have validated everything first, so this does not fail half-way.
    """
    from .integrations import _notify_tie  # lazily: transformers' load check, if in use

    _notify_tie()  # first: nothing is changed yet if it fails
    param._registration_value = value
    old = getattr(module, name)
    if old.grad is not None:  # a gradient of the full tensor means nothing for the free vector
        old.grad = None
    parametrize.register_parametrization(module, name, param)
    if not module.__dict__.get("_tietorch_hooked", False):
        register_load_pre_hook(module, _check_state_dict)
        module.__dict__["_tietorch_hooked"] = True  # one hook per module, even if re-tied
    if not module.__dict__.get("_tietorch_saves_identity", False):
        register_state_dict_post_hook(module, _save_identity)
        module.__dict__["_tietorch_saves_identity"] = True
    own_class_behaviour(module)


def _check_picklable(module: nn.Module) -> None:
    """Before pickling a tied module: its ties (and a group owner's followers') must pickle,
    checked first so a lambda gives a clear message."""
    for name in parametrization_lists(module):
        for first in parametrization_list(module, name):
            if not isinstance(first, TieParametrization):
                continue
            followers = [] if first.group is None else list(first.group.followers)
            for param in [first, *followers]:
                try:
                    pickle.dumps(param.tie)
                except Exception as error:
                    raise TieTypeError(
                        f"cannot pickle {type(module).__name__}.{name}: the tie {param.tie!r} is "
                        f"not picklable ({error}); declare it with a module-level function or "
                        "class, or save model.state_dict() and rebuild the model in code"
                    ) from None


add_pickle_check(_check_picklable)
