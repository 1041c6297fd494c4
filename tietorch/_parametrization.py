"""The parametrization a tie installs, and what parametrize's generated class gets from us."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from typing import Any
from weakref import WeakSet

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ._tie import gather, signed_mean

try:  # FSDP2 shards parameters as DTensors; a tie cannot gather from a shard
    from torch.distributed.tensor import DTensor as _DTensor
except ImportError:  # pragma: no cover - builds without torch.distributed
    _DTensor = ()  # type: ignore[assignment,misc]

__all__ = ["TieParametrization"]


class _Followers(WeakSet):
    """The members that read a group owner's free vector (weakly held: a member that is gone
    does not keep the owner from being untied). Pickled as a plain list."""

    def __reduce__(self) -> tuple[Any, ...]:
        return _Followers, (list(self),)


class TieParametrization(nn.Module):
    """The parametrization ``theta -> theta[index] * sign`` that :func:`register_tie` installs.

    ``index``, ``sign`` and ``inverse_counts`` are constants derived from the tie, so they are
    plain tensor attributes, not buffers: they follow ``.to(device/dtype)`` (``_apply``), yet stay
    out of checkpoints and out of DDP's per-step buffer broadcast. They are always rebuilt from
    CPU copies, so ``to_empty()`` after meta-device init cannot garble them.

    In a group of tensors tied together (:func:`tie_tensors`), every member reads the one free
    vector of the group's *owner*; the others keep an empty placeholder as ``original``.
    """

    index: Tensor
    sign: Tensor | None
    inverse_counts: Tensor

    def __init__(
        self,
        tie: Any,
        index: Tensor,
        sign: Tensor | None,
        n_free: int,
        like: Tensor,
    ) -> None:
        super().__init__()
        self.tie = tie
        self.shape = tuple(index.shape)
        self.n_free = n_free
        self.projection_error = 0.0
        self._cpu_index = index.reshape(-1)
        self._cpu_sign = None if sign is None else sign.reshape(-1)
        live = self._cpu_index if sign is None else self._cpu_index[self._cpu_sign != 0]
        self._cpu_counts = torch.bincount(live, minlength=n_free)
        # Whether every class has an entry here, so assigning this tensor sets all of theta.
        self._covers_all = bool((self._cpu_counts > 0).all())
        self._initial: Tensor | None = None  # a group's initial theta, used once at registration
        self._place(like.device, like.dtype)

    @property
    def owner(self) -> nn.Module | None:
        """The ParametrizationList holding the free vector (None: this tensor's own)."""
        return self.__dict__.get("_owner")

    @property
    def follows(self) -> nn.Module | None:
        """For a group member that reads another tensor's free vector: that ParametrizationList."""
        return None if self.__dict__.get("_is_owner", False) else self.owner

    def _place(self, device: torch.device, dtype: torch.dtype) -> None:
        self.index = self._cpu_index.to(device)
        sign = self._cpu_sign
        self.sign = None if sign is None else sign.view(self.shape).to(device, dtype)
        # Floating, so it tracks the module's dtype; right_inverse must return that dtype.
        self.inverse_counts = 1.0 / self._cpu_counts.to(device, dtype).clamp_min(1)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> nn.Module:
        # Learn where `fn` sends a floating tensor of ours (device, and dtype for .half() etc.).
        probe = fn(torch.empty(0, device=self.index.device, dtype=self.inverse_counts.dtype))
        self._place(probe.device, probe.dtype)
        return super()._apply(fn, recurse)

    def forward(self, theta: Tensor) -> Tensor:
        owner = self.owner
        if owner is not None:
            theta = owner.original
        if isinstance(theta, _DTensor):
            raise RuntimeError(
                f"{self.tie!r}: the free vector is still sharded by FSDP here. Read tied "
                "weights inside forward or after module.unshard(), and keep every tensor of a "
                "tie group inside one FSDP unit (fully_shard their common parent)"
            )
        return gather(theta, self.index, self.sign, self.shape)

    def right_inverse(self, weight: Tensor) -> Tensor:
        if tuple(weight.shape) != self.shape:
            raise ValueError(
                f"{self.tie!r}: cannot assign a tensor of shape {tuple(weight.shape)} to a tied "
                f"tensor of shape {self.shape}"
            )
        if self._initial is not None:  # registration of a group member
            initial, self._initial = self._initial, None
            return initial
        weight = weight.to(self.inverse_counts.device, self.inverse_counts.dtype)
        theta = signed_mean(weight, self.index, self.sign, self.inverse_counts)
        owner = self.owner
        if owner is None:
            return theta
        if not self._covers_all:  # classes without an entry here keep their value
            covered = self._cpu_counts.to(theta.device) > 0
            theta = torch.where(covered, theta, owner.original.detach())
        if self.__dict__.get("_is_owner", False):
            return theta
        owner.original.copy_(theta)
        return theta.new_zeros(0)  # a member's own placeholder

    def __deepcopy__(self, memo: dict[int, Any]) -> TieParametrization:
        # A group owner's set of followers is rebuilt by the followers that are copied with it:
        # a copy of the owner alone has none (and can be untied), and copies never point back
        # at the originals.
        replica = type(self).__new__(type(self))
        memo[id(self)] = replica
        state = {k: v for k, v in self.__dict__.items() if k != "_followers"}
        replica.__dict__.update(copy.deepcopy(state, memo))
        if "_followers" in self.__dict__:
            replica.__dict__["_followers"] = _Followers()
        follows = replica.follows
        if follows is not None:
            follows[0].__dict__["_followers"].add(replica)
        return replica

    def extra_repr(self) -> str:
        return f"{self.tie!r}, shape={self.shape}, n_free={self.n_free}"


def _label(module: nn.Module, name: str) -> str:
    """``Linear.weight``: the module's own class name, not parametrize's generated one."""
    cls = type(module).__bases__[0] if parametrize.is_parametrized(module) else type(module)
    return f"{cls.__name__}.{name}"


def _tie_of(module: nn.Module, name: str) -> TieParametrization | None:
    if not parametrize.is_parametrized(module, name):
        return None
    first = module.parametrizations[name][0]
    return first if isinstance(first, TieParametrization) else None


def _check_state_dict(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """load_state_dict pre-hook (registered once per module): explain the common mistakes."""
    if not parametrize.is_parametrized(module):
        return
    for name in module.parametrizations:
        param = _tie_of(module, name)
        if param is None:
            continue
        where = f"{prefix}{name}"
        free_key = f"{prefix}parametrizations.{name}.original"
        value = state_dict.get(free_key)
        if isinstance(value, Tensor) and value.shape != (param.n_free,):
            raise ValueError(
                f"{where} is tied with {param.tie!r} (shape {param.shape}): its free vector has "
                f"{param.n_free} entries, but the state dict holds {value.numel()} "
                f"(shape {tuple(value.shape)}) under '{free_key}'"
            )
        if value is None and isinstance(state_dict.get(where), Tensor):
            raise ValueError(
                f"{where} is tied with {param.tie!r}, but the state dict holds a dense tensor "
                f"'{where}' instead of its free vector '{free_key}': load dense checkpoints "
                "with tietorch.load_dense_state_dict(model, state_dict)"
            )


def _install(module: nn.Module, name: str, param: TieParametrization, initial: Tensor) -> None:
    """Register ``param`` on ``module.<name>`` with the free vector (or placeholder) ``initial``.

    Callers have validated everything first, so this does not fail half-way.
    """
    param._initial = initial
    old = getattr(module, name)
    if old.grad is not None:  # a gradient of the full tensor means nothing for the free vector
        old.grad = None
    parametrize.register_parametrization(module, name, param)
    if not module.__dict__.get("_tietorch_hooked", False):
        # with_module: the hook gets the module as an argument and follows deepcopies.
        module._register_load_state_dict_pre_hook(_check_state_dict, with_module=True)
        module._tietorch_hooked = True
    _own_class_behaviour(module)


def _own_class_behaviour(module: nn.Module) -> None:
    """Give parametrize's generated class a correct deepcopy and a working pickle.

    Plain parametrize shares the generated class, and properties whose closures point at the
    original module, between a module and its deepcopy: under ``parametrize.cached()`` the copy
    returns the original's weight, and removing a parametrization from the copy deletes the
    property the original still needs. It also refuses to pickle (``torch.save(model)``).
    """
    cls = type(module)
    if cls.__dict__.get("_tietorch_class", False):
        return
    cls._tietorch_class = True
    cls.__deepcopy__ = _deepcopy_parametrized
    cls.__reduce_ex__ = _reduce_parametrized


def _deepcopy_parametrized(self: nn.Module, memo: dict[int, Any]) -> nn.Module:
    cls = type(self)
    replica = cls.__new__(cls)
    memo[id(self)] = replica
    replica.__dict__ = copy.deepcopy(self.__dict__, memo)
    # A class of its own, with properties bound to the replica (parametrize's own injector).
    members = {
        k: v
        for k, v in cls.__dict__.items()
        if not isinstance(v, property) and k not in ("__dict__", "__weakref__")
    }
    replica.__class__ = type(cls.__name__, cls.__bases__, members)
    for name in replica.parametrizations:
        parametrize._inject_property(replica, name)
    return replica


def _reduce_parametrized(self: nn.Module, protocol: int) -> tuple[Any, ...]:
    # Pickle as the plain class plus the parametrized tensors' names; unpickling rebuilds the
    # generated class. Ties are checked first so a lambda gives a clear message.
    for name in self.parametrizations:
        for first in self.parametrizations[name]:
            if not isinstance(first, TieParametrization):
                continue
            # A group's owner pickles its followers too.
            for param in [first, *first.__dict__.get("_followers", [])]:
                try:
                    pickle.dumps(param.tie)
                except Exception as error:
                    raise TypeError(
                        f"cannot pickle {type(self).__name__}.{name}: the tie {param.tie!r} is "
                        f"not picklable ({error}); declare it with a module-level function or "
                        "class, or save model.state_dict() and rebuild the model in code"
                    ) from None
    base = type(self).__bases__[0]
    return _rebuild_parametrized, (base, tuple(self.parametrizations)), dict(self.__dict__)


def _rebuild_parametrized(base: type[nn.Module], names: tuple[str, ...]) -> nn.Module:
    module = base.__new__(base)
    parametrize._inject_new_class(module)
    _own_class_behaviour(module)
    for name in names:
        parametrize._inject_property(module, name)
    return module
