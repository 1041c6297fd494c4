"""Real transformers models (tiny GPT-2 and Llama built from configs, no download) whose class
ties in ``__init__``: transformers 5 builds them on the meta device in ``from_pretrained``."""

from __future__ import annotations

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
