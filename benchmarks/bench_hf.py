"""Loading a tied Hugging Face GPT-2: meta-device ``from_pretrained`` against eager loading.

Three ways to get a trained GPT-2 whose embedding and output layer are tied back from disk:

- ``plain from_pretrained``: the baseline, transformers' own class with its own
  ``tie_word_embeddings=True`` tie (one shared Parameter), from its own checkpoint;
- ``tied from_pretrained``: a class that calls ``tie_embeddings(self)`` in ``__init__``;
  transformers builds it on the meta device and fills in the saved free vector;
- ``tied eager + load``: the same class built on the CPU (initialized at random), then
  ``load_state_dict`` of the safetensors file: what one does without meta-device init.

Each run is a fresh process (so its peak resident memory is its own), interleaved, medians;
``peak MiB`` is the rise of the peak resident set (``VmHWM``, reset just before loading) over
the process's size before loading (Linux only).

Run: ``python benchmarks/bench_hf.py [--quick]`` (or ``python -m benchmarks``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks._common import table  # noqa: E402

VARIANTS = ("plain from_pretrained", "tied from_pretrained", "tied eager + load")

_CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(2)
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging
from tietorch.integrations.transformers import tie_embeddings
logging.set_verbosity_error()
logging.disable_progress_bar()

class TiedGPT2(GPT2LMHeadModel):
    def __init__(self, config):
        super().__init__(config)
        tie_embeddings(self)

variant, folder = sys.argv[1], sys.argv[2]
def status_mib(field):
    with open("/proc/self/status") as f:
        line = next(l for l in f if l.startswith(field + ":"))
    return int(line.split()[1]) / 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak resident set (VmHWM) to the current one
before = status_mib("VmRSS")
start = time.perf_counter()
if variant == "plain from_pretrained":
    model = GPT2LMHeadModel.from_pretrained(folder + "/plain")
elif variant == "tied from_pretrained":
    model = TiedGPT2.from_pretrained(folder + "/tied")
else:
    model = TiedGPT2(GPT2Config.from_pretrained(folder + "/tied"))
    model.load_state_dict(load_file(folder + "/tied/model.safetensors"))
seconds = time.perf_counter() - start
peak = status_mib("VmHWM")
assert torch.equal(model.transformer.wte.weight, model.lm_head.weight)
print(json.dumps({"ms": seconds * 1e3, "peak": peak - before}))
"""


def _save(folder: Path, vocab: int, hidden: int, layers: int) -> int:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    from tietorch.integrations.transformers import tie_embeddings

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    config = GPT2Config(n_layer=layers, n_head=8, n_embd=hidden, vocab_size=vocab, n_positions=256)
    torch.manual_seed(0)
    plain = GPT2LMHeadModel(config)
    plain.save_pretrained(folder / "plain")
    tie_embeddings(plain)  # the same values, now one tietorch free vector
    plain.save_pretrained(folder / "tied")
    return plain.num_parameters()


def _child(variant: str, folder: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, variant, str(folder)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def run(quick: bool) -> str:
    vocab, hidden, layers, repeats = (8000, 256, 2, 1) if quick else (32000, 512, 4, 3)
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        params = _save(folder, vocab, hidden, layers)
        samples: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
        for _ in range(repeats):  # interleaved
            for variant in VARIANTS:
                samples[variant].append(_child(variant, folder))
    ms = {v: statistics.median(s["ms"] for s in samples[v]) for v in VARIANTS}
    peak = {v: statistics.median(s["peak"] for s in samples[v]) for v in VARIANTS}
    base = VARIANTS[0]
    rows = [
        [v, ms[v], ms[v] / ms[base], peak[v], peak[v] / peak[base] if peak[base] else 0.0]
        for v in VARIANTS
    ]
    title = (
        f"GPT-2, {layers} layers, hidden {hidden}, vocab {vocab}: {params:,} parameters "
        f"({params * 4 / 2**20:.0f} MiB fp32), {repeats} run(s) each, medians"
    )
    header = ["variant", "load ms", "x plain", "peak MiB", "x plain"]
    return title + "\n" + table(header, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small model, one run each")
    args = parser.parse_args(argv)
    print(run(args.quick))


if __name__ == "__main__":
    main()
