"""Hugging Face transformers and tietorch ties: tied embeddings, resizing, loading checks.

Needs ``transformers>=5`` (``pip install tietorch[hf]``); ``import tietorch`` does not import
this module. tietorch imports it by itself the first time it ties a tensor in a process that
has already imported ``transformers``, and importing it installs one check on
``from_pretrained`` (below). What it offers:

- :func:`tie_embeddings`: the input embedding and the output layer become one tietorch free
  vector, in one call, from transformers' default ``tie_word_embeddings=True`` model (one
  shared ``Parameter``, which tietorch refuses to tie again) or from two separate tensors.
- :func:`resize_token_embeddings`: transformers' resize for a tied model, keeping the ties or
  refusing with the model unchanged. Importing this module makes transformers' own
  ``model.resize_token_embeddings`` use it for a model whose embeddings are tied (on its own,
  transformers replaces a tied output layer by a new untied one).
- **A load check.** transformers' ``from_pretrained`` reports checkpoint keys the model does
  not have as UNEXPECTED and initializes the model's keys the checkpoint lacks at random, with
  only a warning (``PreTrainedModel._finalize_model_loading`` initializes missing keys, then
  ``utils/loading_report.py::log_state_dict_report`` logs the table and raises only for size
  mismatches and conversion errors). With a tietorch checkpoint in the plain, untied class
  (or a dense checkpoint in a tied class) that would silently give random weights, so the
  check raises :class:`tietorch.errors.CheckpointError` with the fix instead, before anything
  is initialized. It wraps ``PreTrainedModel._finalize_model_loading`` (a private hook of
  transformers 5, tested with 5.25); on a transformers without it the check is not installed.

Sources (transformers 5.25, ``src/transformers/modeling_utils.py``):
https://github.com/huggingface/transformers/blob/main/src/transformers/modeling_utils.py
(``_finalize_model_loading``, ``get_expanded_tied_weights_keys``, ``tie_weights``,
``_get_resized_embeddings``, ``resize_token_embeddings``).

>>> import torch, tietorch
>>> from transformers import GPT2Config, GPT2LMHeadModel
>>> from tietorch.integrations.transformers import tie_embeddings
>>> config = GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=40, n_positions=16)
>>> model = GPT2LMHeadModel(config)  # tie_word_embeddings=True: one shared Parameter
>>> tie_embeddings(model)
0.0
>>> model.config.tie_word_embeddings, tietorch.summary(model).free
(False, 320)
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn
from transformers import PreTrainedModel, modeling_utils

from .._checkpoint import dense_parts, densified
from .._dense import free_from_dense
from .._group import tie_tensors
from .._parametrization import TieParametrization, _tie_of
from .._register import _tied_tensors, register_tie, remove_tie
from .._transaction import all_or_nothing
from ..errors import CheckpointError, TargetError

__all__ = ["resize_token_embeddings", "tie_embeddings"]

_FREE_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?)parametrizations\.(?P<name>[^.]+)\.original$")


def _embeddings(model: PreTrainedModel, call: str) -> tuple[nn.Module, nn.Module]:
    if not isinstance(model, PreTrainedModel):
        raise TargetError(f"{call}: expected a transformers PreTrainedModel, got {type(model)}")
    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    if not isinstance(emb, nn.Module) or not isinstance(out, nn.Module):
        raise TargetError(
            f"{call}: {type(model).__name__} has no input embedding and output layer to tie "
            f"(get_input_embeddings() -> {type(emb).__name__}, "
            f"get_output_embeddings() -> {type(out).__name__})"
        )
    return emb, out


def _qualname(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def tie_embeddings(model: PreTrainedModel) -> float:
    """Tie ``model``'s input embedding and output layer to one tietorch free vector.

    From transformers' default ``tie_word_embeddings=True`` model (the two share one
    ``Parameter``), the values are kept exactly; from two separate tensors, the free vector
    starts as their mean. Afterwards ``config.tie_word_embeddings`` is ``False`` and the pair
    is gone from ``model.all_tied_weights_keys``, so transformers does not share the Parameter
    again (in ``tie_weights()``, or on ``from_pretrained`` of the saved config). Call it in a
    subclass's ``__init__`` after ``super().__init__(config)`` to get a class whose
    ``save_pretrained`` / ``from_pretrained`` round trip is exact. All or nothing.

    Returns:
        The relative distance of the two tensors from being equal (0.0 when they shared one
        Parameter; ``nan`` on the meta device).

    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> config = LlamaConfig(num_hidden_layers=1, num_attention_heads=2, hidden_size=8,
    ...                      intermediate_size=16, vocab_size=40, tie_word_embeddings=True)
    >>> model = LlamaForCausalLM(config)
    >>> tie_embeddings(model)
    0.0
    >>> "model.embed_tokens.parametrizations.weight.original" in model.state_dict()
    True
    >>> "lm_head.weight" in model.state_dict()  # the output layer reads the same free vector
    False
    """
    emb, out = _embeddings(model, "tie_embeddings")
    if _tie_of(emb, "weight") is not None or _tie_of(out, "weight") is not None:
        raise TargetError(
            f"tie_embeddings: {type(model).__name__}'s input embedding or output layer is "
            "already tied with tietorch"
        )
    shared = out._parameters.get("weight")
    is_shared = shared is not None and shared is emb._parameters.get("weight")
    if is_shared:
        assert shared is not None
        out.weight = nn.Parameter(shared.detach().clone(), requires_grad=shared.requires_grad)
    try:
        error = tie_tensors([(emb, "weight"), (out, "weight")])
    except Exception:
        if is_shared:
            out.register_parameter("weight", shared)
        raise
    # Last, nothing below can fail: transformers must not share the Parameter again.
    model.config.get_text_config().tie_word_embeddings = False
    tied = getattr(model, "all_tied_weights_keys", None)
    if isinstance(tied, dict):
        tied.pop(f"{_qualname(model, out)}.weight", None)
    return error


def _is_plain_share(a: TieParametrization, b: TieParametrization) -> bool:
    """Two members of one group of exactly two, equal entry by entry (no sign, no relation):
    each reads the whole free vector as itself (an identity view)."""
    if a.group is None or b.group is None or a.group.owner is not b.group.owner:
        return False
    owner = a if a.follows is None else b
    if owner.group is None or len(owner.group.followers) != 1:
        return False
    identity = tuple(range(len(a.shape)))
    return (
        tuple(a.shape) == tuple(b.shape)
        and a.view is not None
        and b.view is not None
        and a.view.order == b.view.order == identity
    )


def resize_token_embeddings(
    model: PreTrainedModel,
    new_num_tokens: int | None = None,
    pad_to_multiple_of: int | None = None,
    mean_resizing: bool = True,
) -> nn.Module:
    """``model.resize_token_embeddings(...)`` for a model whose input embedding or output layer
    is tied with tietorch: the ties are kept. transformers' own ``model.resize_token_embeddings``
    runs this for such a model once this integration is loaded (tietorch loads it on the first
    tie in a process that uses transformers).

    What it keeps, by arrangement:

    - **One group of exactly the two, equal entry by entry** (:func:`tie_embeddings`,
      ``tie_tensors([(emb, "weight"), (head, "weight")])``, either one owning the free vector):
      the new rows are initialized as transformers does for its own tied embeddings (it resizes
      the embedding, ``mean_resizing`` or ``_init_weights``, and the output layer reads the same
      rows), and the group is tied again with the same owner.
    - **Each tied on its own** (the embedding, the output layer, or both, with
      ``register_tie``): each is untied, transformers resizes the dense tensors, and the same
      :class:`~tietorch.Tie` is registered again on the new shape (the new rows projected onto
      it).

    Any other arrangement (a structured group such as a transpose or a sign, a group with other
    tensors) raises :class:`tietorch.errors.TargetError`, as does a tie that does not apply to
    the new shape; either way the model is left exactly as it was. The free vectors are new
    Parameters afterwards: build the optimizer after resizing.

    >>> import torch
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> config = GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=40, n_positions=16)
    >>> model = GPT2LMHeadModel(config)
    >>> _ = tie_embeddings(model)
    >>> resize_token_embeddings(model, 48).weight.shape
    torch.Size([48, 8])
    >>> torch.equal(model.transformer.wte.weight, model.lm_head.weight), model.config.vocab_size
    (True, 48)
    """
    emb, out = _embeddings(model, "resize_token_embeddings")
    a, b = _tie_of(emb, "weight"), _tie_of(out, "weight")
    if a is None and b is None:
        return _TRANSFORMERS_RESIZE(model, new_num_tokens, pad_to_multiple_of, mean_resizing)
    for value, what in ((new_num_tokens, "new_num_tokens"), (pad_to_multiple_of, "pad")):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise TargetError(f"resize_token_embeddings: {what} must be an int, got {value!r}")
        if value is not None and value <= 0:
            raise TargetError(f"resize_token_embeddings: {what} must be positive, got {value}")
    if a is not None and b is not None and _is_plain_share(a, b):
        resize_tied = _resize_shared_pair
    elif all(p is None or p.group is None for p in (a, b)):
        resize_tied = _resize_each
    else:
        raise TargetError(
            f"resize_token_embeddings: {type(model).__name__}'s input embedding and output layer "
            "are not tied to each other alone (one tietorch group of exactly these two, equal "
            "entry by entry) nor each on its own; resize by hand: remove_tie each tied tensor "
            "(a group's other members first), model.resize_token_embeddings(...), and tie again"
        )
    text_config = model.config.get_text_config()
    vocab_size = text_config.vocab_size
    resize = functools.partial(
        _TRANSFORMERS_RESIZE, model, new_num_tokens, pad_to_multiple_of, mean_resizing
    )
    try:
        with all_or_nothing([model]):
            return resize_tied(model, emb, out, resize)
    except Exception:
        text_config.vocab_size = vocab_size  # the config is no module: restored by hand
        raise


def _resize_shared_pair(
    model: PreTrainedModel, emb: nn.Module, out: nn.Module, resize: Callable[[], nn.Module]
) -> nn.Module:
    """Resize one group of the two equal tensors as transformers resizes its own shared one."""
    order = [(emb, "weight"), (out, "weight")]
    first = _tie_of(emb, "weight")
    if first is not None and first.follows is not None:  # the output layer owns the free vector
        order.reverse()
    lead, follower = _tie_of(*order[0]), _tie_of(*order[1])
    assert lead is not None and lead.group is not None and follower is not None
    requires_grad = bool(out.weight.requires_grad)
    remove_tie(*order[1])  # the follower first
    try:
        return _resize_untied_pair(model, emb, out, order, requires_grad, resize)
    except Exception:
        # all_or_nothing puts the modules back; the group's record of its members is no module
        lead.group.followers.add(follower)
        raise


def _resize_untied_pair(
    model: PreTrainedModel,
    emb: nn.Module,
    out: nn.Module,
    order: list[tuple[nn.Module, str]],
    requires_grad: bool,
    resize: Callable[[], nn.Module],
) -> nn.Module:
    remove_tie(*order[0])
    out.weight = emb.weight  # transformers' own tie: one Parameter, resized once
    new_emb = resize()
    new_out = model.get_output_embeddings()
    if new_emb is not emb or new_out is not out or out.weight is not emb.weight:
        raise TargetError(
            f"resize_token_embeddings: {type(model).__name__} replaced its embedding "
            "modules while resizing; resize by hand: remove_tie, resize, tie again"
        )
    weight = emb.weight
    assert isinstance(weight, Tensor)
    out.weight = nn.Parameter(weight.detach().clone(), requires_grad)
    tie_tensors(order)
    return new_emb


def _resize_each(
    model: PreTrainedModel, emb: nn.Module, out: nn.Module, resize: Callable[[], nn.Module]
) -> nn.Module:
    """Untie each tied tensor, let transformers resize, and register the same ties again."""
    ties = [_tie_of(emb, "weight"), _tie_of(out, "weight")]
    for module, param in zip((emb, out), ties):
        if param is not None:
            remove_tie(module, "weight")
    new_emb = resize()
    new_out = model.get_output_embeddings()
    for module, param in zip((new_emb, new_out), ties):
        if param is not None:
            register_tie(module, "weight", param.tie)
    return new_emb


def _check_loading(model: nn.Module, load_config: Any, info: Any) -> None:
    """Raise before transformers initializes a tied tensor (or its plain counterpart) at random."""
    missing, unexpected = set(info.missing_keys), set(info.unexpected_keys)
    source = getattr(load_config, "pretrained_model_name_or_path", None) or "the checkpoint"
    cls = type(model).__name__
    stray = sorted(k for k in unexpected if _FREE_KEY.match(k))
    if stray and missing:
        raise CheckpointError(
            f"from_pretrained: {source} holds tietorch free vectors ({', '.join(stray)}) that "
            f"{cls} does not tie, so transformers would initialize "
            f"{', '.join(sorted(missing))} at random. Load it with the class that ties in its "
            "__init__ (e.g. one calling tietorch.integrations.transformers.tie_embeddings(self)), "
            "or save a checkpoint for the plain class: "
            "model.save_pretrained(folder, state_dict=tietorch.dense_state_dict(model))"
        )
    lost = sorted(k for k in missing if _FREE_KEY.match(k))
    if lost:
        dense = []
        for key in lost:
            match = _FREE_KEY.match(key)
            assert match is not None
            dense.append(match["prefix"] + match["name"])
        found = [k for k in dense if k in unexpected]
        what = (
            f"holds the dense tensors {', '.join(found)} instead (an untied checkpoint)"
            if found
            else "does not hold them"
        )
        raise CheckpointError(
            f"from_pretrained: {cls} ties {', '.join(dense)}, but {source} {what}, so their free "
            f"vectors ({', '.join(lost)}) would stay uninitialized. Load an untied checkpoint "
            "with the plain class and tie afterwards (tie_embeddings(model) / tie_tensors), or "
            "load it into the tied model with tietorch.load_dense_state_dict(model, state_dict)"
        )


def _install_load_check() -> bool:
    """Wrap ``PreTrainedModel._finalize_model_loading`` (once) with :func:`_check_loading`."""
    original = modeling_utils.PreTrainedModel.__dict__.get("_finalize_model_loading")
    if not isinstance(original, staticmethod):
        return False
    func = original.__func__
    if getattr(func, "_tietorch_checked", False):
        return True

    @functools.wraps(func)
    def finalize(model: nn.Module, load_config: Any, loading_info: Any, *args: Any) -> Any:
        _check_loading(model, load_config, loading_info)
        return func(model, load_config, loading_info, *args)

    finalize._tietorch_checked = True  # type: ignore[attr-defined]
    modeling_utils.PreTrainedModel._finalize_model_loading = staticmethod(  # type: ignore[method-assign]
        finalize
    )
    return True


# transformers' own method (unwrapped again if this module is ever imported twice)
_TRANSFORMERS_RESIZE = getattr(
    PreTrainedModel.resize_token_embeddings, "__wrapped__", PreTrainedModel.resize_token_embeddings
)


@functools.wraps(_TRANSFORMERS_RESIZE)
def _resize_keeping_ties(
    self: PreTrainedModel,
    new_num_tokens: int | None = None,
    pad_to_multiple_of: int | None = None,
    mean_resizing: bool = True,
) -> nn.Module:
    # transformers replaces the output layer by a new untied module while resizing, so a tie
    # on it would be lost silently: a model with tietorch ties goes through tietorch's resize.
    return resize_token_embeddings(self, new_num_tokens, pad_to_multiple_of, mean_resizing)


def _load_dense_as_free(model: nn.Module, state_dict: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's dense tensors of ``model``'s tied tensors (as ``save_pretrained`` writes
    them for the plain class) turned into the free vectors ``model`` holds, so transformers
    loads them with no MISSING or UNEXPECTED keys. Each must satisfy its tie: an untied
    checkpoint is refused (``load_dense_state_dict`` projects it on purpose)."""
    tied = _tied_tensors(model)
    if not tied:
        return state_dict
    dense = {}
    for qualname, _, name, _ in tied:
        prefix = f"{qualname}." if qualname else ""
        dense_key, free_key = f"{prefix}{name}", f"{prefix}parametrizations.{name}.original"
        if dense_key in state_dict and free_key not in state_dict:
            # safetensors hands lazy slices; [...] reads one, as transformers itself does
            value = state_dict[dense_key]
            dense[dense_key] = value if isinstance(value, Tensor) else value[...]
    if not dense:
        return state_dict
    converted = {k: v for k, v in state_dict.items() if k not in dense}
    for free_key, (_, lead, parts) in dense_parts(model, dense, "from_pretrained").items():
        converted[free_key] = free_from_dense(lead, parts, None, exact=True)[0]
    return converted


def _install_portable_checkpoints() -> bool:
    """``save_pretrained`` writes a tied model's tensors dense, under their own names (so the
    plain class loads the checkpoint exactly, in a process without tietorch), and
    ``from_pretrained`` of a class that ties reads them back as its free vectors. Wraps
    ``PreTrainedModel.save_pretrained`` and the loader ``modeling_utils`` calls,
    ``convert_and_load_state_dict_in_model`` (transformers 5); without it, nothing is installed
    and a dense checkpoint in a tied class is refused by the load check."""
    load = getattr(modeling_utils, "convert_and_load_state_dict_in_model", None)
    if load is None or getattr(load, "_tietorch_dense", False):
        return load is not None

    @functools.wraps(load)
    def load_dense_as_free(
        model: nn.Module, state_dict: dict[str, Any], *args: Any, **kw: Any
    ) -> Any:
        return load(model, _load_dense_as_free(model, state_dict), *args, **kw)

    load_dense_as_free._tietorch_dense = True  # type: ignore[attr-defined]
    modeling_utils.convert_and_load_state_dict_in_model = load_dense_as_free
    save = PreTrainedModel.save_pretrained

    @functools.wraps(save)
    def save_dense(self: PreTrainedModel, *args: Any, **kwargs: Any) -> Any:
        # The state dict to save (the model's own, or one passed in: the Trainer passes
        # model.state_dict()), with its free vectors written dense.
        if len(args) < 3 and _tied_tensors(self):
            given = kwargs.get("state_dict")
            kwargs["state_dict"] = densified(self, self.state_dict() if given is None else given)
        return save(self, *args, **kwargs)

    PreTrainedModel.save_pretrained = save_dense  # type: ignore[method-assign]
    return True


_install_load_check()
_install_portable_checkpoints()
PreTrainedModel.resize_token_embeddings = _resize_keeping_ties  # type: ignore[method-assign, assignment]
