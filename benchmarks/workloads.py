"""The benchmarks' two workloads, their configs and the small helpers every benchmark shares.

``demo``: the builtin ~1M-parameter model on its addition prompts, 32 prompts x G = 8, <= 40 new tokens,
stop at ``</answer>``, T = 1, lr 1e-4, k3 KL 0.01, one optimizer step per batch. ``40m``: a random
~40M-parameter Qwen2 (hidden 512, 8 layers, vocab 32k) whose tokenizer has no EOS, so every completion
is exactly ``new_tokens`` long on every side (vLLM never stops early, ``generate`` gets ``min_new_tokens``).
Nothing here starts Ray.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "_bench"
TRL_VENV = WORK / "venv-trl"
TRL_PINS = ("torch==2.13.0", "transformers==5.19.0", "trl==1.16.0")
"""TRL 1.16 is the newest release; it accepts the CPU torch 2.13 and the transformers r1ray uses."""


@dataclass(frozen=True, kw_only=True)
class Workload:
    name: str
    prompts: int
    group: int
    new_tokens: int
    fixed: bool
    """Every completion exactly ``new_tokens`` long (no stop, no EOS)."""
    lr: float = 1e-4
    kl: float = 0.01


WORKLOADS = {
    "demo": Workload(name="demo", prompts=32, group=8, new_tokens=40, fixed=False),
    # Sized so that a step takes seconds, not minutes, on 2 shared cores (the rollout benchmark runs 32 x 8).
    "40m": Workload(name="40m", prompts=4, group=4, new_tokens=64, fixed=True),
}


DEMO_BASE = ["model.builtin_pretrain_steps=120", "model.builtin_long_only_steps=90"]
"""The benchmarks' demo base: the builtin model pre-trained 120 steps instead of 500 (~1 min instead of 3 on
an idle 2-core machine); it writes the same answers, mostly worked out (~34 tokens, then ``</answer>``)."""


def overrides(w: Workload, model: str | None = None) -> list[str]:
    """``--set`` overrides turning the demo config into workload ``w`` (one update per batch)."""
    sets = [
        *DEMO_BASE,
        f"grpo.prompts_per_step={w.prompts}",
        f"grpo.group_size={w.group}",
        "grpo.mini_batches=1",
        f"grpo.kl_coef={w.kl}",
        f"learner.lr={w.lr}",
        f"learner.micro_batch_size={w.prompts * w.group}",
        f"model.max_response_len={w.new_tokens}",
    ]
    if model:
        sets += [f"model.path={model}", "model.max_prompt_len=32", "rollout.stop=[]", "data.template=raw"]
        sets += ["reward.weights={format: 1.0}", "reward.accuracy_key=format"]
        # A 40M model's decoding step is mostly kernels: one engine with both cores' threads, one weight reload.
        sets += ["rollout.num_workers=1", "rollout.cpus_per_worker=2"]
    return sets


def random_40m(path: Path) -> Path:
    """A random Qwen2 of ~40M parameters (hidden 512, 8 layers, vocab 32k) and a 32k word-level tokenizer over
    the addition characters plus filler tokens, with no EOS token: completions run to ``max_tokens``."""
    if (path / "model.safetensors").exists():
        return path
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from cluster.data.builtin_model import CHARS, TAGS

    base = ["<pad>", *TAGS, *CHARS]
    vocab = {tok: i for i, tok in enumerate(base + [f"<w{i}>" for i in range(32000 - len(base))])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token=None, bos_token=None)
    config = Qwen2Config(
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=None,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = None
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def model_path(w: Workload) -> str:
    """The workload's model folder (the builtin base is built and cached by r1ray on first use)."""
    if w.name == "40m":
        return str(random_40m(WORK / "qwen2-40m"))
    from cluster.config import load_config
    from cluster.stages.common import resolve_model

    return str(resolve_model(load_config(None, DEMO_BASE)))


def prompt_rows(w: Workload, steps: int) -> list[dict]:
    """``steps`` batches of prompts in stream order: text (template applied), token ids and answer."""
    from transformers import AutoTokenizer

    from cluster.config import load_config
    from cluster.data.prompts import Prompts

    path = model_path(w)
    cfg = load_config(None, overrides(w, path if w.name == "40m" else None))
    prompts = Prompts(cfg, AutoTokenizer.from_pretrained(path))
    rows = []
    for ex in prompts.train.take(w.prompts * steps):
        text = prompts.format.text(ex.prompt)
        rows.append({"text": text, "ids": [int(i) for i in prompts.format.ids(ex.prompt)], "answer": ex.answer})
    return rows


def ensure_trl_venv() -> Path:
    """The TRL side's own virtualenv (not a dependency of r1ray): created on first use with pip."""
    python = TRL_VENV / "bin" / "python"
    stamp = TRL_VENV / ".installed"
    if not stamp.exists():
        print(f"creating {TRL_VENV} with {' '.join(TRL_PINS)} (once)...", flush=True)
        subprocess.run(["python3.11", "-m", "venv", str(TRL_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *TRL_PINS], check=True)
        stamp.write_text(" ".join(TRL_PINS))
    return python


def write_spec(w: Workload, steps: int, path: Path) -> Path:
    spec = asdict(w) | {"model": model_path(w), "rows": prompt_rows(w, steps), "steps": steps}
    path.write_text(json.dumps(spec))
    return path


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(title: str, header: list[str], rows: list[list]) -> None:
    """Print a plain-text table (numbers to 3 significant figures)."""
    cells = [[_fmt(c) for c in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for i, r in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True))))
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _fmt(c) -> str:
    if isinstance(c, float):
        return f"{c:.3g}" if abs(c) < 1000 else f"{c:,.0f}"
    return str(c)


SHARED_RAY = "R1RAY_BENCH_RAY_ADDRESS"
"""Where ``run_all.py`` puts the address of the one Ray cluster its benchmarks share (each would otherwise start
and stop its own, ~4 s apiece)."""
SHARED_CPUS = 48
"""The shared cluster's logical CPUs: at least any benchmark's own ``num_cpus``."""


def start_local_ray(num_cpus: int) -> None:
    """A local Ray cluster of ``num_cpus`` logical CPUs, its actors at the driver's priority."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # As cluster/runtime/ray_cluster.py: the actors at the priority of the driver (and of the floor it measures).
    os.environ.setdefault("RAY_worker_niceness", "0")
    import ray

    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def init_ray(num_cpus: int = 8) -> None:
    """Join ``run_all.py``'s cluster where it is running, else start a local one of ``num_cpus`` logical CPUs."""
    shared = os.environ.get(SHARED_RAY)
    if not shared:
        start_local_ray(num_cpus)
        return
    if num_cpus > SHARED_CPUS:
        raise SystemExit(f"this benchmark needs {num_cpus} logical CPUs; run_all's cluster has {SHARED_CPUS}")
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address=shared, log_to_driver=False)
