"""Applying ties to modules through ``torch.nn.utils.parametrize``."""

from __future__ import annotations

import copy
import logging
import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ._tie import Tie, TieLayout, gather, signed_mean

__all__ = ["register_tie", "remove_tie", "bake", "tie_modules", "summary", "TieSummary"]

_log = logging.getLogger("tietorch")
Init = Literal["project", "preserve_std"]


class TieParametrization(nn.Module):
    """The parametrization ``theta -> theta[index] * sign`` that :func:`register_tie` installs.

    ``index``, ``sign`` and ``inverse_counts`` are constants derived from the tie, so they are
    plain tensor attributes, not buffers: they follow ``.to(device/dtype)`` (``_apply``), yet stay
    out of checkpoints and out of DDP's per-step buffer broadcast. They are always rebuilt from
    the CPU layout, so ``to_empty()`` after meta-device init cannot garble them.
    """

    index: Tensor
    sign: Tensor | None
    inverse_counts: Tensor

    def __init__(self, tie: Tie, layout: TieLayout, like: Tensor) -> None:
        super().__init__()
        self.tie = tie
        self.layout = layout
        self.shape = layout.shape
        self.n_free = layout.n_free
        self.projection_error = 0.0
        self._place(like.device, like.dtype)

    def _place(self, device: torch.device, dtype: torch.dtype) -> None:
        layout = self.layout
        self.index = layout.index.reshape(-1).to(device)
        self.sign = None if layout.sign is None else layout.sign.to(device, dtype)
        # Floating, so it tracks the module's dtype; right_inverse must return that dtype.
        self.inverse_counts = 1.0 / layout.class_sizes.to(device, dtype).clamp_min(1)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> nn.Module:
        # Learn where `fn` sends a floating tensor of ours (device, and dtype for .half() etc.).
        probe = fn(torch.empty(0, device=self.index.device, dtype=self.inverse_counts.dtype))
        self._place(probe.device, probe.dtype)
        return super()._apply(fn, recurse)

    def forward(self, theta: Tensor) -> Tensor:
        return gather(theta, self.index, self.sign, self.shape)

    def right_inverse(self, weight: Tensor) -> Tensor:
        if tuple(weight.shape) != self.shape:
            raise ValueError(
                f"{self.tie!r}: cannot assign a tensor of shape {tuple(weight.shape)} to a tied "
                f"tensor of shape {self.shape}"
            )
        weight = weight.to(self.inverse_counts.device, self.inverse_counts.dtype)
        return signed_mean(weight, self.index, self.sign, self.inverse_counts)

    def extra_repr(self) -> str:
        return f"{self.tie!r}, shape={self.shape}, n_free={self.n_free}"


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


def _prepare(module: nn.Module, name: str, tie: Tie) -> tuple[Tensor, TieLayout]:
    """Everything that can refuse a tie, run before the module is touched."""
    where = f"{type(module).__name__}.{name}"
    if not isinstance(tie, Tie):
        raise TypeError(f"register_tie({where}): expected a tietorch.Tie, got {type(tie).__name__}")
    existing = _tie_of(module, name)
    if existing is not None:
        raise ValueError(
            f"register_tie({where}): already tied with {existing.tie!r}; register "
            f"`old & new` after remove_tie(), so both constraints are solved together"
        )
    if parametrize.is_parametrized(module, name):
        raise ValueError(
            f"register_tie({where}): the tensor already has parametrizations; a tie must be the "
            "first one (register the tie, then the others)"
        )
    tensor = getattr(module, name, None)
    if not isinstance(tensor, Tensor):
        raise ValueError(
            f"register_tie({where}): {type(module).__name__} has no tensor named {name!r}"
        )
    if not (tensor.is_floating_point() or tensor.is_complex()):
        raise TypeError(f"register_tie({where}): cannot tie a {tensor.dtype} tensor")
    try:
        layout = tie.layout(tuple(tensor.shape))
    except (ValueError, TypeError, IndexError) as error:
        raise type(error)(f"register_tie({where}): {error}") from error
    return tensor, layout


def register_tie(module: nn.Module, name: str, tie: Tie, *, init: Init = "project") -> float:
    """Tie ``module.<name>`` with ``tie``; the module then trains only the free parameters.

    The tensor becomes a parametrization whose ``original`` (the real ``nn.Parameter``, seen by
    ``parameters()``, optimizers and ``state_dict()``) is the minimal free vector, and
    ``module.<name>`` is rebuilt from it by a gather, so it satisfies the tie exactly.

    The initial free vector is the orthogonal projection of the current tensor onto the tied
    subspace (the signed mean of each class), so a pretrained layer keeps as much as it can.
    Averaging ``n`` i.i.d. entries shrinks their spread by ``sqrt(n)``: for a *fresh* layer pass
    ``init="preserve_std"``, which scales each free parameter by ``sqrt(class size)`` so the
    entries keep the standard deviation of the layer's own initialization.

    Register ties *before* building the optimizer: the Parameter object is kept but changes
    shape. Assigning ``module.<name> = W`` later projects ``W`` the same way.

    Returns:
        The relative distance of the original tensor from the constraint,
        ``||W - P(W)|| / ||W||`` (0 when it already satisfied it); also logged on the
        ``"tietorch"`` logger.

    Example:
        >>> import torch, tietorch
        >>> conv = torch.nn.Conv2d(4, 4, 3)
        >>> error = tietorch.register_tie(conv, "weight", tietorch.SymmetricFlip())
        >>> torch.equal(conv.weight, conv.weight.transpose(0, 1).flip(2, 3))
        True
        >>> [p.numel() for p in conv.parameters()]  # bias, then 4*3/2*9 + 4*5 free weights
        [4, 74]
    """
    if init not in ("project", "preserve_std"):
        raise ValueError(f"register_tie: init must be 'project' or 'preserve_std', got {init!r}")
    tensor, layout = _prepare(module, name, tie)
    where = f"{type(module).__name__}.{name}"
    original = tensor.detach().clone()
    param = TieParametrization(tie, layout, tensor)
    parametrize.register_parametrization(module, name, param)
    plist = module.parametrizations[name]
    if not module.__dict__.get("_tietorch_hooked", False):
        # with_module: the hook gets the module as an argument and follows deepcopies.
        module._register_load_state_dict_pre_hook(_check_state_dict, with_module=True)
        module._tietorch_hooked = True
    _own_class_behaviour(module)
    with torch.no_grad():
        if init == "preserve_std":
            plist.original.mul_(layout.class_sizes.to(original).clamp_min(1).sqrt())
        projected = param(plist.original)
        norm = float(torch.linalg.vector_norm(original))
        error = float(torch.linalg.vector_norm(original - projected)) / norm if norm else 0.0
    param.projection_error = error
    _log.info(
        "tied %s with %r: %d -> %d parameters, relative projection error %.3g",
        where, tie, layout.numel, layout.n_free, error,
    )
    return error


def remove_tie(module: nn.Module, name: str) -> None:
    """Untie ``module.<name>``: it becomes a plain ``nn.Parameter`` holding the current value.

    >>> import torch, tietorch
    >>> lin = torch.nn.Linear(3, 3)
    >>> _ = tietorch.register_tie(lin, "weight", tietorch.Symmetric())
    >>> tietorch.remove_tie(lin, "weight")
    >>> lin.weight.shape, torch.equal(lin.weight, lin.weight.T)
    (torch.Size([3, 3]), True)
    """
    if _tie_of(module, name) is None:
        raise ValueError(f"remove_tie: {type(module).__name__}.{name} is not tied")
    if len(module.parametrizations[name]) > 1:
        raise ValueError(
            f"remove_tie: {type(module).__name__}.{name} has other parametrizations on top of "
            "its tie; remove those first"
        )
    parametrize.remove_parametrizations(module, name, leave_parametrized=True)


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
        k: v for k, v in cls.__dict__.items()
        if not isinstance(v, property) and k not in ("__dict__", "__weakref__")
    }
    replica.__class__ = type(cls.__name__, cls.__bases__, members)
    for name in replica.parametrizations:
        parametrize._inject_property(replica, name)
    return replica


def _reduce_parametrized(self: nn.Module, protocol: int) -> tuple[Any, ...]:
    names = list(self.parametrizations.keys())
    others = [n for n in names if _tie_of(self, n) is None or len(self.parametrizations[n]) > 1]
    if others:
        raise TypeError(
            f"cannot pickle {type(self).__name__}: {others} carry parametrizations other than "
            "ties, which PyTorch cannot pickle; save model.state_dict() instead"
        )
    ties = []
    for name in names:
        param = self.parametrizations[name][0]
        try:
            pickle.dumps(param.tie)
        except Exception as error:
            raise TypeError(
                f"cannot pickle {type(self).__name__}.{name}: its tie {param.tie!r} is not "
                f"picklable ({error}); declare the tie with a module-level function or class, "
                "or save model.state_dict() and rebuild the model in code"
            ) from None
        ties.append((name, param.tie, self.parametrizations[name].original.detach()))
    plain = copy.deepcopy(self)
    for name in names:
        remove_tie(plain, name)
    return _rebuild_tied, (plain, ties)


def _rebuild_tied(plain: nn.Module, ties: list[tuple[str, Tie, Tensor]]) -> nn.Module:
    """Unpickle a tied module: re-register its ties and restore the exact free vectors."""
    for name, tie, theta in ties:
        register_tie(plain, name, tie)
        with torch.no_grad():
            plain.parametrizations[name].original.copy_(theta)
    return plain


def _tied_tensors(model: nn.Module) -> list[tuple[str, nn.Module, str, TieParametrization]]:
    found = []
    for qualname, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                param = _tie_of(module, name)
                if param is not None:
                    found.append((qualname, module, name, param))
    return found


def bake(model: nn.Module) -> nn.Module:
    """Untie every tied tensor of ``model`` in place (for export); returns ``model``.

    >>> import torch, tietorch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3))
    >>> _ = tietorch.tie_modules(net, tietorch.KernelSymmetry("D4"))
    >>> type(tietorch.bake(net)[0]) is torch.nn.Conv2d
    True
    """
    for _, module, name, _ in _tied_tensors(model):
        remove_tie(module, name)
    return model


def tie_modules(
    model: nn.Module,
    tie: Tie,
    types: type[nn.Module] | tuple[type[nn.Module], ...] = (nn.Conv2d,),
    name: str = "weight",
    where: Callable[[str, nn.Module], bool] | None = None,
    *,
    init: Init = "project",
) -> dict[str, float]:
    """Tie ``<name>`` of every existing module of ``model`` that is an instance of ``types``.

    ``where(qualified_name, module)`` narrows the choice; modules without a tensor called
    ``name`` (e.g. ``bias=False``) are skipped. All shapes are checked first, so a refused tie
    leaves the whole model untouched.

    Returns:
        ``{qualified name: relative projection error}`` for every tensor it tied.

    Example:
        >>> import torch, tietorch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
        ...                           torch.nn.Conv2d(8, 8, 3))
        >>> sorted(tietorch.tie_modules(net, tietorch.KernelSymmetry("D4")))
        ['0', '2']
    """
    targets = [
        (qualname, module)
        for qualname, module in model.named_modules()
        if isinstance(module, types)
        and isinstance(getattr(module, name, None), Tensor)
        and (where is None or where(qualname, module))
    ]
    for qualname, module in targets:
        try:
            _prepare(module, name, tie)
        except (ValueError, TypeError) as error:
            raise type(error)(f"tie_modules: module '{qualname}': {error}") from error
    return {
        qualname: register_tie(module, name, tie, init=init) for qualname, module in targets
    }


@dataclass(frozen=True)
class TieSummaryRow:
    tensor: str
    shape: tuple[int, ...]
    tie: str
    entries: int
    free: int


@dataclass(frozen=True)
class TieSummary:
    """What :func:`summary` returns: rows per tied tensor; ``str()`` is a table."""

    rows: tuple[TieSummaryRow, ...]
    model_parameters: int

    @property
    def entries(self) -> int:
        return sum(r.entries for r in self.rows)

    @property
    def free(self) -> int:
        return sum(r.free for r in self.rows)

    def __str__(self) -> str:
        header = ("tensor", "shape", "tie", "entries", "free", "ratio")
        lines = [
            (r.tensor, "x".join(map(str, r.shape)), r.tie, f"{r.entries:,}", f"{r.free:,}",
             _ratio(r.entries, r.free))
            for r in self.rows
        ]
        lines.append(("total", "", "", f"{self.entries:,}", f"{self.free:,}",
                      _ratio(self.entries, self.free)))
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
    rows = tuple(
        TieSummaryRow(
            tensor=f"{qualname}.{name}" if qualname else name,
            shape=param.shape,
            tie=repr(param.tie),
            entries=math.prod(param.shape),
            free=param.n_free,
        )
        for qualname, _, name, param in _tied_tensors(model)
    )
    return TieSummary(rows, sum(p.numel() for p in model.parameters()))
