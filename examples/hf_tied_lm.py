"""A Hugging Face GPT-2 whose embedding and output layer are one tietorch free vector.

The class ties in ``__init__``, so transformers' ``from_pretrained`` (which builds the model on
the meta device) gives back the tied model exactly. The script trains a tiny GPT-2 built from
a config (no download) on a synthetic repeating sequence, checks the tie after training,
round-trips ``save_pretrained`` / ``from_pretrained`` (safetensors) with no missing or
unexpected keys, and checks that ``generate()`` continues the sequence identically before and
after loading. Then it shows what a tied checkpoint gives everyone else: the plain
``GPT2LMHeadModel`` loads the same checkpoint exactly (``save_pretrained`` writes the tied
tensors dense, under their own names); and the vocabulary is resized keeping the tie.

Run: ``python examples/hf_tied_lm.py [--quick]``; exits non-zero if a check fails. Needs
``transformers`` (``pip install tietorch[test]``).
"""

from __future__ import annotations

import sys
import tempfile
from typing import Any

import torch
from _checks import check, setup, verdict
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging

import tietorch
from tietorch.integrations.transformers import resize_token_embeddings


class TiedGPT2(GPT2LMHeadModel):
    """GPT-2 with ``lm_head.weight`` tied to ``transformer.wte.weight`` by tietorch."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        tietorch.tie_tensors([(self.transformer.wte, "weight"), (self.lm_head, "weight")])


def main(argv: list[str] | None = None) -> int:
    quick = setup(argv, __doc__)
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    steps, vocab = (60, 16) if quick else (400, 32)
    config = GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        vocab_size=vocab,
        n_positions=64,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
    )
    model = TiedGPT2(config)
    # A periodic token stream: next token = (token + 3) mod vocab.
    ids = (torch.arange(32).unsqueeze(0) * 3 + torch.arange(8).unsqueeze(1)) % vocab
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
    model.eval()
    print(f"trained {steps} steps, loss {loss.item():.3f}")
    check(
        "embedding and output layer are one tensor after training",
        torch.equal(model.transformer.wte.weight, model.lm_head.weight),
    )
    prompt = ids[:1, :4]
    kwargs: dict[str, Any] = dict(max_new_tokens=8, do_sample=False, pad_token_id=1)
    before = model.generate(prompt, **kwargs)
    expected = (prompt[0, -1] + 3 * torch.arange(1, 9)) % vocab
    check("the trained model continues the sequence", torch.equal(before[0, 4:], expected))
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        loaded, info = TiedGPT2.from_pretrained(folder, output_loading_info=True)
        plain, plain_info = GPT2LMHeadModel.from_pretrained(folder, output_loading_info=True)
    check(
        "the same checkpoint loads exactly into the plain class",
        torch.equal(plain.eval()(ids).logits, model(ids).logits)
        and not plain_info["missing_keys"]
        and not plain_info["unexpected_keys"],
    )
    loaded.eval()
    check(
        "from_pretrained: no missing or unexpected keys",
        not info["missing_keys"] and not info["unexpected_keys"],
    )
    check("loaded logits equal", torch.equal(model(ids).logits, loaded(ids).logits))
    check("generate() equal after loading", torch.equal(before, loaded.generate(prompt, **kwargs)))
    untied = sum(p.numel() for p in GPT2LMHeadModel(config).parameters())
    tied = sum(p.numel() for p in loaded.parameters())
    print(f"parameters: {tied:,} tied vs {untied:,} untied (one vocab x hidden matrix less)")
    check("one vocab x hidden matrix saved", untied - tied == vocab * 32)
    resize_token_embeddings(loaded, vocab + 8)
    check(
        "resized to vocab + 8 rows, still one tensor",
        loaded.transformer.wte.weight.shape == (vocab + 8, 32)
        and torch.equal(loaded.transformer.wte.weight, loaded.lm_head.weight),
    )
    return verdict()


if __name__ == "__main__":
    sys.exit(main())
