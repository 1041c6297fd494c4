"""Real transformers models (tiny GPT-2 and Llama built from configs, no download) whose class
ties in ``__init__``: transformers 5 builds them on the meta device in ``from_pretrained``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import tietorch

transformers = pytest.importorskip("transformers")


def _tied_class(base: type) -> type:
    class Tied(base):  # type: ignore[misc, valid-type]
        def __init__(self, config: Any) -> None:
            super().__init__(config)
            embed = self.get_input_embeddings()
            tietorch.tie_tensors([(embed, "weight"), (self.lm_head, "weight")])

    Tied.__name__ = f"Tied{base.__name__}"
    return Tied


CONFIGS = {
    "gpt2": lambda: (
        transformers.GPT2LMHeadModel,
        transformers.GPT2Config(
            n_layer=1,
            n_head=2,
            n_embd=8,
            vocab_size=40,
            n_positions=16,
            tie_word_embeddings=False,
            bos_token_id=0,
            eos_token_id=1,
        ),
    ),
    "llama": lambda: (
        transformers.LlamaForCausalLM,
        transformers.LlamaConfig(
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            hidden_size=8,
            intermediate_size=16,
            vocab_size=40,
            max_position_embeddings=16,
            tie_word_embeddings=False,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=2,
        ),
    ),
}


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_class_that_ties_in_init_round_trips_save_pretrained(family: str, tmp_path: Path) -> None:
    base, config = CONFIGS[family]()
    tied = _tied_class(base)
    torch.manual_seed(0)
    model = tied(config).eval()
    model.save_pretrained(tmp_path)  # safetensors, the default
    assert (tmp_path / "model.safetensors").exists()
    loaded, info = tied.from_pretrained(tmp_path, output_loading_info=True)
    loaded.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"] and not info["error_msgs"]
    saved, restored = model.state_dict(), loaded.state_dict()
    assert saved.keys() == restored.keys()
    assert all(torch.equal(saved[k], restored[k]) for k in saved)
    # Still one free vector: the embedding and the output layer are the same tensor.
    assert torch.equal(loaded.get_input_embeddings().weight, loaded.lm_head.weight)
    untied = sum(p.numel() for p in base(config).parameters())
    assert sum(p.numel() for p in loaded.parameters()) == untied - 40 * 8  # one vocab x hidden
    ids = torch.randint(3, 40, (2, 5))
    assert torch.equal(model(ids).logits, loaded(ids).logits)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=2)
    assert torch.equal(model.generate(ids, **kwargs), loaded.generate(ids, **kwargs))


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_meta_device_construction(family: str) -> None:
    base, config = CONFIGS[family]()
    with torch.device("meta"):
        model = _tied_class(base)(config)
    embed = model.get_input_embeddings()
    assert embed.parametrizations.weight.original.is_meta
    assert embed.parametrizations.weight.original.shape == (40 * 8,)
    model.to_empty(device="cpu")
    with torch.no_grad():  # to_empty leaves garbage (maybe NaN): initialize the one free vector
        embed.parametrizations.weight.original.normal_()
    assert torch.equal(embed.weight, model.lm_head.weight)
    assert not model.lm_head.weight.is_meta


class _Stream(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        ids = (torch.arange(6) * 3 + k) % 40
        return {"input_ids": ids, "labels": ids}


def test_trainer_save_and_resume_is_exact(tmp_path: Path) -> None:
    """4 steps in one go equal 2 steps, a checkpoint, and 2 resumed steps (a fresh model)."""
    base, config = CONFIGS["gpt2"]()
    tied = _tied_class(base)

    def trainer(folder: Path, steps: int) -> Any:
        torch.manual_seed(0)
        args = transformers.TrainingArguments(
            output_dir=str(folder),
            max_steps=steps,
            per_device_train_batch_size=4,
            learning_rate=1e-2,
            lr_scheduler_type="constant",  # the same schedule whatever max_steps
            save_strategy="steps",
            save_steps=2,
            report_to=[],
            use_cpu=True,
            seed=0,
            data_seed=0,
            logging_strategy="no",
            disable_tqdm=True,
        )
        return transformers.Trainer(model=tied(config), args=args, train_dataset=_Stream())

    straight = trainer(tmp_path / "straight", 4)
    straight.train()
    first = trainer(tmp_path / "resumed", 2)
    first.train()
    from safetensors import safe_open

    with safe_open(tmp_path / "resumed" / "checkpoint-2" / "model.safetensors", "pt") as saved:
        keys = set(saved.keys())  # portable: dense, read back by load_state_dict's check
    assert {"transformer.wte.weight", "lm_head.weight"} <= keys
    assert not any("parametrizations" in k for k in keys)
    resumed = trainer(tmp_path / "resumed", 4)
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-2"))
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(resumed.model.transformer.wte.weight, resumed.model.lm_head.weight)
    torch.manual_seed(0)
    initial = tied(config).state_dict()
    key = "transformer.wte.parametrizations.weight.original"
    assert key in a and not torch.equal(a[key], initial[key])  # the tied vector did train


# --- tietorch.integrations.transformers ----------------------------------------------------

hf = pytest.importorskip("tietorch.integrations.transformers")


def _untied_pair(family: str) -> tuple[Any, Any]:
    base, config = CONFIGS[family]()
    torch.manual_seed(0)
    return base, base(config).eval()


def test_import_tietorch_imports_neither_transformers_nor_the_integration() -> None:
    code = (
        "import sys, tietorch, torch\n"
        "tietorch.register_tie(torch.nn.Linear(3, 3), 'weight', tietorch.Symmetric())\n"
        "assert 'transformers' not in sys.modules, 'transformers imported'\n"
        "assert 'tietorch.integrations.transformers' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(tietorch.__file__).parent.parent)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def _tied_three_ways(family: str, how: str) -> Any:
    """A model of ``family`` tied with ``tie_model`` (embeddings and a square projection),
    ``tie_embeddings`` (from transformers' default shared Parameter), or in ``__init__``."""
    base, config = CONFIGS[family]()
    torch.manual_seed(0)
    if how == "init":
        return _tied_class(base)(config).eval()
    if how == "tie_embeddings":
        config.tie_word_embeddings = True
        model = base(config).eval()
        hf.tie_embeddings(model)
        return model
    model = base(config).eval()
    embed = "transformer.wte" if family == "gpt2" else "model.embed_tokens"
    square = (
        "transformer.h.0.attn.c_proj" if family == "gpt2" else "model.layers.0.self_attn.o_proj"
    )
    tietorch.tie_model(
        model,
        {(f"{embed}.weight", "lm_head.weight"): None, f"{square}.weight": tietorch.Symmetric()},
    )
    return model


HOWS = ["tie_model", "tie_embeddings", "init"]


def test_save_pretrained_loads_exactly_into_the_plain_class_without_tietorch(
    tmp_path: Path,
) -> None:
    """The portable checkpoint: every tied tensor dense under its own name, in a process that
    imports transformers only; and the class that ties in __init__ reads it back exactly."""
    ids = torch.randint(3, 40, (2, 5), generator=torch.Generator().manual_seed(0))
    cases = []
    for family in sorted(CONFIGS):
        for how in HOWS:
            model = _tied_three_ways(family, how)
            folder = tmp_path / f"{family}-{how}"
            model.save_pretrained(folder)
            torch.save(model(ids).logits, folder / "expected.pt")
            cases.append((CONFIGS[family]()[0].__name__, str(folder)))
            if how == "init":
                loaded, info = type(model).from_pretrained(folder, output_loading_info=True)
                assert not info["missing_keys"] and not info["unexpected_keys"]
                assert torch.equal(loaded.eval()(ids).logits, model(ids).logits)
                a, b = model.state_dict(), loaded.state_dict()
                assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    code = (
        "import sys, torch, transformers\n"
        f"ids = torch.tensor({ids.tolist()})\n"
        f"for cls, folder in {cases!r}:\n"
        "    model, info = getattr(transformers, cls).from_pretrained(folder, "
        "output_loading_info=True)\n"
        "    assert not info['missing_keys'] and not info['unexpected_keys'], (folder, info)\n"
        "    expected = torch.load(folder + '/expected.pt')\n"
        "    assert torch.equal(model.eval()(ids).logits, expected), folder\n"
        "assert not any(m.startswith('tietorch') for m in sys.modules), 'tietorch imported'\n"
        "print('exact', len(ids))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))


def _save_compact(model: Any, folder: Path) -> None:
    """The checkpoint tietorch 0.1's save_pretrained wrote: the state dict as it is, free
    vectors under their parametrization keys."""
    from safetensors.torch import save_file

    model.config.save_pretrained(folder)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def test_the_compact_checkpoint_in_the_plain_class_fails_loudly(tmp_path: Path) -> None:
    """A checkpoint of free vectors loads only where they are tied: the plain class refuses it
    once tietorch is loaded."""
    base, model = _untied_pair("gpt2")
    tietorch.tie_tensors([(model.transformer.wte, "weight"), (model.lm_head, "weight")])
    _save_compact(model, tmp_path)
    with pytest.raises(tietorch.errors.CheckpointError) as caught:
        base.from_pretrained(tmp_path)
    message = str(caught.value)
    assert "transformer.wte.parametrizations.weight.original" in message
    assert "lm_head.weight" in message and "dense_state_dict" in message


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_compact_checkpoints_of_earlier_versions_still_load_into_the_tied_class(
    family: str, tmp_path: Path
) -> None:
    base, config = CONFIGS[family]()
    tied = _tied_class(base)
    model = tied(config).eval()
    _save_compact(model, tmp_path)
    loaded, info = tied.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_dense_checkpoint_in_a_tied_class_fails_loudly(tmp_path: Path) -> None:
    base, model = _untied_pair("gpt2")  # separate, different embedding and output layer
    model.save_pretrained(tmp_path)
    with pytest.raises(tietorch.errors.CheckpointError, match="untied checkpoint"):
        _tied_class(base).from_pretrained(tmp_path)


def test_the_check_is_on_in_a_process_that_only_imports_the_integration(tmp_path: Path) -> None:
    _, model = _untied_pair("gpt2")
    tietorch.tie_tensors([(model.transformer.wte, "weight"), (model.lm_head, "weight")])
    _save_compact(model, tmp_path)
    code = (
        "import sys, transformers, tietorch.integrations.transformers, tietorch.errors\n"
        "try:\n"
        f"    transformers.GPT2LMHeadModel.from_pretrained({str(tmp_path)!r})\n"
        "except tietorch.errors.CheckpointError:\n"
        "    sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(tietorch.__file__).parent.parent)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


class _TiedByDefault(transformers.GPT2LMHeadModel):  # type: ignore[misc]
    """transformers' default tie_word_embeddings=True GPT-2, converted in __init__."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        hf.tie_embeddings(self)


def test_tie_embeddings_converts_the_default_tied_model_exactly(tmp_path: Path) -> None:
    _, config = CONFIGS["gpt2"]()
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    shared = transformers.GPT2LMHeadModel(config).eval()
    assert shared.lm_head.weight is shared.transformer.wte.weight
    torch.manual_seed(0)
    model = _TiedByDefault(config).eval()  # the same draws: the same values
    assert model.config.tie_word_embeddings is False
    assert sum(p.numel() for p in model.parameters()) == shared.num_parameters()
    ids = torch.randint(3, 40, (2, 5))
    assert torch.equal(model(ids).logits, shared(ids).logits)
    model.save_pretrained(tmp_path)
    loaded, info = _TiedByDefault.from_pretrained(tmp_path, output_loading_info=True)
    loaded.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(loaded(ids).logits, shared(ids).logits)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=2)
    assert torch.equal(loaded.generate(ids, **kwargs), shared.generate(ids, **kwargs))
    with pytest.raises(tietorch.errors.TargetError, match="already tied"):
        hf.tie_embeddings(loaded)


def test_tied_class_loads_with_device_map(tmp_path: Path) -> None:
    base, config = CONFIGS["llama"]()
    tied = _tied_class(base)
    torch.manual_seed(0)
    model = tied(config).eval()
    model.save_pretrained(tmp_path)
    loaded, info = tied.from_pretrained(tmp_path, device_map="cpu", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _rows_constant(w: torch.Tensor) -> bool:  # ShareAlong(1): one value per row
    return torch.equal(w, w[:, :1].expand_as(w))


def _column_pairs_equal(w: torch.Tensor) -> bool:  # PAIRS: columns 2k and 2k+1 equal
    return torch.equal(w[:, 0::2], w[:, 1::2])


PAIRS = tietorch.Tie.from_key(lambda i, j: (i, j // 2), name="column_pairs")


def _arrange(arrangement: str, model: Any) -> Any:
    """Tie ``model``'s embeddings as named; return a check of the constraint on each weight."""
    emb, out = model.get_input_embeddings(), model.lm_head
    if arrangement == "embedding":
        tietorch.register_tie(emb, "weight", tietorch.ShareAlong(1))
        return lambda e, o: _rows_constant(e)
    if arrangement == "output":
        tietorch.register_tie(out, "weight", tietorch.ShareAlong(1))
        return lambda e, o: _rows_constant(o)
    if arrangement == "both":
        tietorch.register_tie(emb, "weight", tietorch.ShareAlong(1))
        tietorch.register_tie(out, "weight", PAIRS)
        return lambda e, o: _rows_constant(e) and _column_pairs_equal(o)
    pair = [(emb, "weight"), (out, "weight")]
    tietorch.tie_tensors(pair if arrangement == "group-embedding" else pair[::-1])
    return lambda e, o: torch.equal(e, o)


def _resize(method: str, model: Any, n: int) -> None:
    if method == "transformers":
        model.resize_token_embeddings(n)
    else:
        hf.resize_token_embeddings(model, n)


ARRANGEMENTS = ["embedding", "output", "both", "group-embedding", "group-output"]


@pytest.mark.parametrize("method", ["transformers", "tietorch"])
@pytest.mark.parametrize("arrangement", ARRANGEMENTS)
@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_resize_keeps_every_arrangement_of_ties(family: str, arrangement: str, method: str) -> None:
    _, model = _untied_pair(family)
    holds = _arrange(arrangement, model)
    rows = {
        name: getattr(model, name)().weight.detach().clone()
        for name in ("get_input_embeddings", "get_output_embeddings")
    }
    ties = [(row.tensor.rsplit(".", 1)[-1], row.tie) for row in tietorch.summary(model).rows]
    _resize(method, model, 52)
    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    assert model.config.vocab_size == 52
    assert emb.weight.shape == (52, 8) and out.weight.shape == (52, 8)
    assert holds(emb.weight, out.weight), "the constraint no longer holds on the new shape"
    assert [(row.tensor.rsplit(".", 1)[-1], row.tie) for row in tietorch.summary(model).rows] == (
        ties
    )
    # Every tie here is row by row, so the old rows keep their values exactly.
    assert torch.equal(emb.weight[:40], rows["get_input_embeddings"])
    assert torch.equal(out.weight[:40], rows["get_output_embeddings"])
    model(torch.tensor([[3, 51, 50, 4]]))  # the new token ids work


class _Only40Rows(tietorch.Tie):
    """A tie that exists on 40 rows only: re-tying the resized tensor fails."""

    def check_shape(self, shape: tuple[int, ...]) -> None:
        if shape[0] != 40:
            raise ValueError(f"_Only40Rows needs 40 rows, got {shape[0]}")

    def key(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        return i


@pytest.mark.parametrize("method", ["transformers", "tietorch"])
def test_resize_that_cannot_keep_a_tie_refuses_and_leaves_the_model(method: str) -> None:
    _, model = _untied_pair("gpt2")
    tietorch.register_tie(model.transformer.wte, "weight", tietorch.ShareAlong(1))
    tietorch.register_tie(model.lm_head, "weight", _Only40Rows())
    objects = [model.transformer.wte, model.lm_head, *model.parameters()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(tietorch.errors.ShapeError, match="40 rows"):
        _resize(method, model, 52)
    assert [model.transformer.wte, model.lm_head, *model.parameters()] == objects
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in after)
    assert model.config.vocab_size == 40 and model.lm_head.weight.shape == (40, 8)
    assert model.transformer.wte.num_embeddings == 40
    _resize(method, model, 40)  # no change in size: allowed


@pytest.mark.parametrize("mean_resizing", [True, False])
@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_resize_keeps_the_tie_and_matches_transformers_own_tied_resize(
    family: str, mean_resizing: bool
) -> None:
    _, config = CONFIGS[family]()
    config.tie_word_embeddings = True
    base = CONFIGS[family]()[0]
    torch.manual_seed(0)
    reference = base(config).eval()  # transformers' own tie: one shared Parameter
    torch.manual_seed(0)
    model = base(config).eval()
    hf.tie_embeddings(model)
    torch.manual_seed(1)
    reference.resize_token_embeddings(52, mean_resizing=mean_resizing)
    torch.manual_seed(1)
    embed = hf.resize_token_embeddings(model, 52, mean_resizing=mean_resizing)
    assert embed is model.get_input_embeddings() and embed.num_embeddings == 52
    assert model.config.vocab_size == 52 and model.lm_head.out_features == 52
    assert torch.equal(embed.weight, reference.get_input_embeddings().weight)
    assert torch.equal(model.lm_head.weight, embed.weight)
    assert tietorch.summary(model).free == 52 * 8  # still one vocab x hidden vector
    ids = torch.tensor([[3, 51, 50, 4]])  # new token ids work
    assert torch.equal(model(ids).logits, reference(ids).logits)


def test_resize_refuses_a_structured_tie_and_leaves_the_model() -> None:
    _, model = _untied_pair("gpt2")
    tietorch.tie_tensors([(model.transformer.wte, "weight"), (model.lm_head, "weight")], sign=-1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(tietorch.errors.TargetError, match="resize by hand"):
        hf.resize_token_embeddings(model, 50)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in after)


def _default_tied(family: str) -> Any:
    """transformers' default model: tie_word_embeddings=True, one Parameter in two modules."""
    base, config = CONFIGS[family]()
    config.tie_word_embeddings = True
    model = base(config)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    return model


def _tie_one_holder(how: str, model: Any) -> None:
    embed = model.get_input_embeddings()
    names = {m: n for n, m in model.named_modules()}
    if how == "register_tie":
        tietorch.register_tie(embed, "weight", tietorch.ShareAlong(1))
    elif how == "tie_tensors":  # without model=: the other holder is not among the tensors
        other = model.model.layers[0].mlp.gate_proj if hasattr(model, "model") else None
        other = other if other is not None else model.transformer.h[0].mlp.c_fc
        tietorch.tie_tensors([(embed, "weight"), (other, "weight")], relation=lambda i, j: (0, 0))
    elif how == "tie_modules":
        tietorch.tie_modules(model, tietorch.ShareAlong(1), types=torch.nn.Embedding)
    else:
        tietorch.tie_model(model, {f"{names[embed]}.weight": tietorch.ShareAlong(1)})


@pytest.mark.parametrize("how", ["register_tie", "tie_tensors", "tie_modules", "tie_model"])
@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_a_parameter_held_by_two_modules_is_never_changed_through_one(
    family: str, how: str
) -> None:
    model = _default_tied(family)
    shared = model.lm_head.weight
    before = shared.detach().clone()
    with pytest.raises(tietorch.errors.TargetError, match=r"lm_head|Linear\.weight") as caught:
        _tie_one_holder(how, model)
    message = str(caught.value)  # both holders named: qualified names where a model is known
    assert ("Embedding.weight" in message and "Linear.weight" in message) or (
        "lm_head.weight" in message and ("wte.weight" in message or "embed_tokens" in message)
    )
    assert model.lm_head.weight is shared and model.get_input_embeddings().weight is shared
    assert torch.equal(shared, before) and shared.shape == before.shape
    assert tietorch.summary(model).rows == ()
    ids = torch.randint(3, 40, (2, 5))
    model(ids)  # still runs: nothing was half-changed


def test_a_held_elsewhere_check_names_holders_in_the_same_module() -> None:
    holder = torch.nn.Module()
    holder.a = torch.nn.Parameter(torch.randn(3, 3))
    holder.b = holder.a
    with pytest.raises(tietorch.errors.TargetError, match=r"Module\.a .* also held by Module\.b"):
        tietorch.register_tie(holder, "a", tietorch.Symmetric())
    lone = torch.nn.Linear(3, 3)
    alias = lone.weight  # a plain reference (not a module) is no other holder
    tietorch.register_tie(lone, "weight", tietorch.Symmetric())
    assert alias is lone.parametrizations.weight.original
