"""End to end: r1ray vs TRL's GRPOTrainer per step, and r1ray's step vs this machine's floor, in one run.

Both sides get the same model, prompts (in the same order), G, batch, max new tokens, stop (``</answer>``
for the demo; fixed-length completions for the 40M model), T = 1, lr, k3 KL and one optimizer step per
batch, on the same two cores. The speed-up is per step (the target); each side's policy learns on its own,
so on the demo the two may answer at different lengths within the measured steps: the table shows each
side's completion tokens per step and the speed-up in completion tokens per second beside it. TRL runs in
its own virtualenv (``runs/_bench/venv-trl``, created on first use; TRL is no dependency of r1ray) as a
child process that takes one step whenever told, so the sides alternate step by step: r1ray, TRL, floor,
r1ray, TRL, floor... Medians after the warm-up step(s).

The floor is measured in this process between the steps, on the batch r1ray just trained on: plain
PyTorch training of that batch (``floor.PlainTrainer``), the fastest generation of its prompts with the
weights r1ray sampled them with (``generate`` or r1ray's engine, whichever was faster; the table shows the
tokens each generated, medians per step) and a ``copy_`` of the weights; generation first, then training, as
in a step.

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/e2e_trl.py [--workloads demo,40m] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from dataclasses import dataclass, field

from workloads import WORK, WORKLOADS, Workload, ensure_trl_venv, init_ray, median, overrides, table, write_spec


@dataclass
class R1RaySide:
    """r1ray's driver loop for one workload: a fleet of real actors and the stage's own step functions."""

    w: Workload
    extra: list[str] = field(default_factory=list)
    prefix: str = ""
    """Before the fleet's actor names: two sides can live in one Ray cluster."""

    def __post_init__(self) -> None:
        from transformers import AutoTokenizer
        from workloads import model_path

        from cluster.config import load_config
        from cluster.data.prompts import Prompts
        from cluster.runtime.fleet import Fleet
        from cluster.stages.rl import grpo_objective

        path = model_path(self.w)
        self.cfg = load_config(None, overrides(self.w, path if self.w.name == "40m" else None) + self.extra)
        self.prompts = Prompts(self.cfg, AutoTokenizer.from_pretrained(path))
        self.objective = grpo_objective(self.cfg)
        self.fleet = Fleet(
            self.cfg, path, path, optimizer_steps=1000, reference=self.objective.uses_reference, prefix=self.prefix
        )
        self.version = 0

    def sample(self):
        from cluster.stages.rl import collect

        return collect(self.fleet, self.prompts, self.cfg)

    def learn(self, sampled, settle=None) -> tuple[object, dict[str, float]]:
        """Advantages, train, broadcast (+ sync check) on ``sampled``; returns the batch and phase seconds.
        ``settle``: called before the broadcast (asynchronous rollouts finish sampling first)."""
        from cluster.stages.rl import train_batch

        # As rl_loop: a batch sampled with the weights the learner holds (synchronous rollouts, top_p 1) proves the
        # last push for free; after a stale one (asynchronous rollouts) a probe of it runs during this step.
        free = self.cfg.rollout.top_p == 1.0 and sampled.rollouts.policy_version == self.version
        batch = train_batch(sampled, self.cfg, check_engine=free)
        proof = None if free else self.fleet.start_sync_check(batch)
        t0 = time.perf_counter()
        metrics = self.fleet.train(batch, self.objective)
        t1 = time.perf_counter()
        if settle:
            settle()
        t2 = time.perf_counter()
        if proof:
            gap = self.fleet.sync_check_result(proof)["rollout/logprob_diff_max"]
            assert gap < 1e-3, f"the engines' weights differ from the learner's: logprob gap {gap:.1e}"
        self.version += 1
        self.fleet.sync_weights(self.version, probe=batch, check=False)
        t3 = time.perf_counter()
        phases = {"train_s": t1 - t0, "wait_s": t2 - t1, "sync_s": t3 - t2}
        return batch, phases | {"reward": float(sampled.scores.total.mean()), "kl": metrics.get("kl", 0.0)}

    def step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        sampled = self.sample()
        t1 = time.perf_counter()
        batch, phases = self.learn(sampled)
        self.last_batch, self.last_rollouts = batch, sampled.rollouts
        return phases | {"sample_s": t1 - t0, "gen_s": sampled.rollouts.gen_seconds, "step_s": time.perf_counter() - t0}

    def policy_state(self) -> dict:
        """The learner's current weights (world size 1: its plain module), for the floor's generation."""
        import ray

        def state(learner):
            return {k: v.detach().clone() for k, v in learner.model.state_dict().items()}

        return ray.get(self.fleet.learners[0].__ray_call__.remote(state))

    def close(self) -> None:
        self.fleet.shutdown()


class TRLSide:
    def __init__(self, w: Workload, steps: int) -> None:
        python = ensure_trl_venv()
        spec = write_spec(w, steps, WORK / f"trl-{w.name}.json")
        here = WORK.parent.parent / "benchmarks" / "trl_side.py"
        self.proc = subprocess.Popen(
            [str(python), str(here), str(spec)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self._read()  # ready

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("TRL side exited")
            if line.startswith("BENCH "):  # TRL prints its own logs to stdout too
                return json.loads(line[6:])

    def step(self) -> dict[str, float]:
        """One TRL step: its seconds and the completion tokens it generated."""
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        out = self._read()
        return {"trl_s": out["s"], "trl_tokens": out["tokens"]}

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=120)


def run(w: Workload, steps: int, warmup: int) -> dict:
    import torch
    from floor import PlainTrainer, plain_copy, plain_generate
    from transformers import AutoModelForCausalLM
    from workloads import model_path

    path = model_path(w)
    r1, trl = R1RaySide(w), TRLSide(w, steps + warmup)
    torch.set_num_threads(2)
    plain = PlainTrainer(path, w.lr, w.kl)
    # The floor's training is the faster of one padded batch and r1ray's own length buckets of it.
    budget = r1.cfg.learner.micro_batch_tokens
    bucketed = PlainTrainer(path, w.lr, w.kl, bucket_tokens=budget) if budget and not w.fixed else None
    gen_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    stop = [] if w.fixed else [1, r1.prompts.tokenizer.convert_tokens_to_ids("</answer>")]
    rows: dict[str, list[float]] = {}
    try:
        for i in range(steps + warmup):
            sampled_with = r1.policy_state()
            r = r1.step()
            t = trl.step()
            ids = [list(map(int, p)) for p in r1.last_rollouts.prompt_ids]
            # The floor generates with the policy r1ray sampled this batch with (the weights before its update):
            # a policy that has learned to answer longer generates more tokens for the same prompts.
            gen_model.load_state_dict(sampled_with)
            # In a step's order: generation, then training right after it (as r1ray's learner trains after its
            # engine generated). The padded update runs last: a second update of the same batch finds the
            # model's weights and optimizer state still in cache, which no step's training does.
            gen_s, gen = plain_generate(gen_model, ids, w.group, w.new_tokens, w.fixed, stop)
            bucketed_s = bucketed.step(r1.last_batch) if bucketed else None
            padded_s = plain.step(r1.last_batch)
            bucketed_s = padded_s if bucketed_s is None else bucketed_s
            floor = {"floor_train_s": min(padded_s, bucketed_s), "floor_gen_s": min(gen_s, r["gen_s"])}
            floor |= {"padded_train_s": padded_s, "bucketed_train_s": bucketed_s}
            floor |= {"hf_gen_s": gen_s, "floor_copy_s": plain_copy(plain.model, gen_model)}
            floor |= {"r1ray_tokens": float(r1.last_rollouts.lengths.sum()), "hf_tokens": float(sum(map(len, gen)))}
            if i >= warmup:
                for key, value in (r | floor | t).items():
                    rows.setdefault(key, []).append(value)
    finally:
        r1.close()
        trl.close()
    out = {key: median(v) for key, v in rows.items()}
    out["floor_s"] = out["floor_train_s"] + out["floor_gen_s"] + out["floor_copy_s"]
    return out


def steps_per_workload(text: str, names: list[str]) -> dict[str, int]:
    """``--steps``: ``4`` for every workload, or ``demo=4,40m=3``, which must name each of ``names``."""
    try:
        if "=" not in text:
            return dict.fromkeys(names, int(text))
        pairs = {name: int(count) for name, count in (part.split("=") for part in text.split(","))}
    except ValueError:
        raise SystemExit(f"--steps {text}: expected a count (4) or workload=count pairs (demo=4,40m=3)") from None
    missing = [n for n in names if n not in pairs]
    if missing:
        raise SystemExit(f"--steps {text}: no step count for workload(s) {missing}")
    return {n: pairs[n] for n in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="demo,40m")
    parser.add_argument("--steps", default="4", help="measured steps: one count, or per workload (demo=4,40m=3)")
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    init_ray()
    names = args.workloads.split(",")
    steps = steps_per_workload(args.steps, names)
    results = {name: run(WORKLOADS[name], steps[name], args.warmup) for name in names}
    for r in results.values():  # the speed-up in completion tokens per second
        r["token_speedup"] = (r["r1ray_tokens"] / r["step_s"]) / (r["trl_tokens"] / r["trl_s"])
    header = ["workload", "r1ray s/step", "TRL s/step", "speed-up", "tokens (r1ray / TRL)", "tokens/s speed-up"]
    header += ["r1ray sample+score", "train", "sync"]
    table(
        f"end to end, median s/step of {'/'.join(map(str, steps.values()))} after {args.warmup} warm-up (interleaved)",
        header,
        [
            [
                n,
                r["step_s"],
                r["trl_s"],
                r["trl_s"] / r["step_s"],
                f"{r['r1ray_tokens']:,.0f} / {r['trl_tokens']:,.0f}",
                r["token_speedup"],
                r["sample_s"],
                r["train_s"],
                r["sync_s"],
            ]
            for n, r in results.items()
        ],
    )
    table(
        "floor: plain PyTorch train + fastest generation + copy_ of the same batch, s",
        [
            "workload",
            "train (padded / bucketed)",
            "generate (HF / r1ray engine)",
            "tokens (HF / r1ray)",
            "copy",
            "floor",
            "r1ray step",
            "step/floor",
        ],
        [
            [
                n,
                f"{r['floor_train_s']:.3g} ({r['padded_train_s']:.3g} / {r['bucketed_train_s']:.3g})",
                f"{r['floor_gen_s']:.3g} ({r['hf_gen_s']:.3g} / {r['gen_s']:.3g})",
                f"{r['hf_tokens']:,.0f} / {r['r1ray_tokens']:,.0f}",
                r["floor_copy_s"],
                r["floor_s"],
                r["step_s"],
                r["step_s"] / r["floor_s"],
            ]
            for n, r in results.items()
        ],
    )
    (WORK / "e2e.json").write_text(json.dumps(results, indent=1))
    per_token = ", ".join(f"{n} x{r['token_speedup']:.2f}" for n, r in results.items())
    print(
        "\n"
        + "r1ray/TRL speed-up: "
        + ", ".join(f"{n} x{r['trl_s'] / r['step_s']:.2f}" for n, r in results.items())
        + f" (in completion tokens per second: {per_token})"
    )
    print("step / floor = " + ", ".join(f"{n} x{r['step_s'] / r['floor_s']:.2f}" for n, r in results.items()))


if __name__ == "__main__":
    main()
