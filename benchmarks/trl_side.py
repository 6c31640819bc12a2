"""TRL's side of ``e2e_trl.py``: TRL's ``GRPOTrainer`` on one workload, one step at a time on request.

Runs in the benchmark's own TRL virtualenv (``runs/_bench/venv-trl``), not in r1ray's. It reads the
workload spec ``e2e_trl.py`` wrote (model folder, prompts in batch order, G, max tokens, lr, KL), then
trains; before each step it waits for a line on stdin and after it prints ``{"step": n, "s": seconds,
"tokens": completion tokens}``, so the caller can interleave TRL's steps with r1ray's (A B A B) on the same two
cores.

    runs/_bench/venv-trl/bin/python benchmarks/trl_side.py SPEC.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the pure-Python rewards/ of r1ray


def reward_fn(spec: dict):
    from rewards.exact import exact_match_reward
    from rewards.format import format_reward

    if spec["fixed"]:

        def fixed(completions, **_):
            return [format_reward(c) for c in completions]

        return fixed

    def demo(completions, answer, **_):
        return [exact_match_reward(c, a) + 0.1 * format_reward(c) for c, a in zip(completions, answer, strict=True)]

    return demo


def main() -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    spec = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    batch = spec["prompts"] * spec["group"]
    gen = {}
    if spec["fixed"]:
        tok.eos_token = "<pad>"  # TRL needs an EOS id for its completion mask; min_new_tokens keeps it unsampled
        gen = {"min_new_tokens": spec["new_tokens"]}
    else:  # stop at </answer> (kept), as r1ray's engine does
        model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids("</answer>")]
    rows = spec["rows"]
    data = Dataset.from_dict({"prompt": [r["text"] for r in rows], "answer": [r["answer"] for r in rows]})
    args = GRPOConfig(
        output_dir=str(Path(sys.argv[1]).parent / "trl-out"),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        num_generations=spec["group"],
        steps_per_generation=1,
        num_iterations=1,
        max_completion_length=spec["new_tokens"],
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        generation_kwargs=gen,
        beta=spec["kl"],
        epsilon=0.2,
        loss_type="grpo",
        scale_rewards="group",
        learning_rate=spec["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=1.0,
        max_steps=spec["steps"],
        shuffle_dataset=False,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )

    class Lockstep(TrainerCallback):
        def on_step_begin(self, *_, **__):
            sys.stdin.readline()
            self.t0 = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.seconds = time.perf_counter() - self.t0

        def on_log(self, _args, state, _control, logs=None, **__):
            # The step's log follows its end (logging_steps=1): the mean completion length of its batch. (The
            # trainer's last log, its run summary, has none.)
            if "completions/mean_length" not in (logs or {}):
                return
            tokens = logs["completions/mean_length"] * batch
            print("BENCH", json.dumps({"step": state.global_step, "s": self.seconds, "tokens": tokens}), flush=True)

    trainer = GRPOTrainer(
        model=model, reward_funcs=reward_fn(spec), args=args, train_dataset=data, processing_class=tok
    )
    trainer.add_callback(Lockstep())
    print("BENCH", json.dumps({"ready": True}), flush=True)
    trainer.train()


if __name__ == "__main__":
    main()
