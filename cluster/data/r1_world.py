"""The miniature world of ``make demo-r1``: the DeepSeek-R1 recipe's data, in two scripts, built locally.

Numbers are written in one of two scripts: Latin ``a``..``j`` or Cyrillic ``а``..``к`` for the digits
0..9 (``deh+cif=`` is 347+285 in Latin), so "language" is real for a character model and the
``language`` reward (``rewards/language.py``: share of the chain of thought's words in the prompt's
script) measures it. Two kinds of prompt:

- **reasoning** (task ``arith``): a 3-digit addition, worked column by column with the carry as the
  builtin demo does (``<think>e+f+a=bb;...</think><answer>...</answer>``). The base model's
  pre-training text mixes the scripts inside many chains of thought (as R1-Zero mixed languages) and
  mostly answers in one short line, which a model this small gets wrong;
- **non-reasoning** (task ``echo``): ``(dhec)=`` answered ``<think></think><answer>dhec</answer>``,
  no chain of thought. Pre-training text (like the annotated SFT data) has typos in some answers, and
  some responses carry the forbidden token ``!`` (the ``harmless`` rule judges the whole response).

``build_world`` writes the data files a pipeline names (``deploy/pipelines/r1-demo.yaml``) and
pre-trains two bases on the same text: ``base/`` (~1M parameters) and a ~4x smaller ``student/``.
Everything is drawn from fixed seeds, and held-out problems never appear in any file but ``eval``.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCRIPTS = {"en": "abcdefghij", "ru": "абвгдежзик"}
"""Each script's ten letters, standing for the digits 0..9."""
FORBIDDEN = "!"
REASONING, GENERAL = "arith", "echo"


def spell(number: str, language: str) -> str:
    """``number``'s digits in ``language``'s script."""
    letters = SCRIPTS[language]
    return "".join(letters[int(d)] for d in number)


def other(language: str) -> str:
    return "ru" if language == "en" else "en"


@dataclass(frozen=True)
class Problem:
    a: int
    b: int
    language: str

    @property
    def prompt(self) -> str:
        return f"{spell(str(self.a), self.language)}+{spell(str(self.b), self.language)}="

    @property
    def answer(self) -> str:
        return spell(str(self.a + self.b), self.language)

    def steps(self, digits: int = 3) -> list[tuple[str, str, str, str]]:
        """Each column, lowest first: the two digits, the carry in and the two-digit total."""
        out, carry = [], 0
        for x, y in zip(str(self.a).zfill(digits)[::-1], str(self.b).zfill(digits)[::-1], strict=True):
            total = int(x) + int(y) + carry
            out.append((x, y, str(carry), f"{total:02d}"))
            carry = total // 10
        return out

    def worked(self, rng: random.Random | None = None, switch: float = 0.0, harm: bool = False) -> str:
        """The worked solution; each step written in the other script with probability ``switch``."""
        parts = []
        for x, y, c, t in self.steps():
            lang = other(self.language) if rng is not None and rng.random() < switch else self.language
            parts.append(f"{spell(x, lang)}+{spell(y, lang)}+{spell(c, lang)}={spell(t, lang)}")
        return f"<think>{FORBIDDEN if harm else ''}{';'.join(parts)}</think><answer>{self.answer}</answer>"

    def short(self, harm: bool = False) -> str:
        return f"<think>{FORBIDDEN if harm else ''}</think><answer>{self.answer}</answer>"


@dataclass(frozen=True)
class Echo:
    word: str
    """Letters of one script, the string to copy."""

    @property
    def prompt(self) -> str:
        return f"({self.word})="

    @property
    def answer(self) -> str:
        return self.word

    def response(self, text: str | None = None, harm: bool = False) -> str:
        return f"<think>{FORBIDDEN if harm else ''}</think><answer>{self.word if text is None else text}</answer>"


def typo(word: str, rng: random.Random) -> str:
    """``word`` with one letter replaced by another of its script."""
    letters = next(s for s in SCRIPTS.values() if word[0] in s)
    i = rng.randrange(len(word))
    return word[:i] + rng.choice([c for c in letters if c != word[i]]) + word[i + 1 :]


def near_miss(word: str, rng: random.Random, typo_share: float = 0.8) -> str:
    """A wrong answer to echo ``word``, as a policy might write one: mostly (``typo_share``) a one-letter typo,
    the mistake a copying policy makes and the one a reward model finds hardest to see; else a letter dropped
    or added, or junk (letters of both scripts and arithmetic signs, possibly with a stray tag), so the reward
    model also ranks what no annotator would have written below the copy."""
    kind = rng.random()
    if kind < typo_share:
        return typo(word, rng)
    kind = (kind - typo_share) / (1 - typo_share)
    letters = next(s for s in SCRIPTS.values() if word[0] in s)
    if kind < 0.35 and len(word) > 1:
        i = rng.randrange(len(word))
        return word[:i] + word[i + 1 :]
    if kind < 0.7:
        i = rng.randrange(len(word) + 1)
        return word[:i] + rng.choice(letters) + word[i:]
    pool = SCRIPTS["en"] + SCRIPTS["ru"] + "+=;"
    head, tail = ("".join(rng.choice(pool) for _ in range(rng.randint(a, b))) for a, b in ((3, 16), (0, 8)))
    return head + rng.choice(["", "", "<think>", "</answer>"]) + tail


@dataclass(frozen=True, kw_only=True)
class WorldRecipe:
    """Everything that decides the world's files and its two base models (all of it goes into the cache key)."""

    seed: int = 0
    eval_reasoning: int = 100
    """Held-out reasoning problems (half in each script)."""
    eval_general: int = 60
    train_reasoning: int = 4000
    train_general: int = 1000
    cold_start: int = 300
    general_sft: int = 400
    preference_pairs: int = 8000
    """Fresh pairs rather than epochs over few. The likelihood-scored reward model starts out ranking them as the
    base does (all of the held-out ones right); a head on the last token needed 16,000 for 82%."""
    pair_typo_share: float = 0.8
    """Share of the rejected answers that are one-letter typos (the rest: dropped or added letters, junk)."""
    # pre-training text
    general_share: float = 0.35
    long_fraction: float = 0.2
    """Share of reasoning text that works the sum out (after ``long_only_steps``)."""
    mix_share: float = 0.6
    """Share of worked solutions that switch scripts inside the chain of thought."""
    switch: float = 0.4
    """In those, each step's chance to be written in the other script."""
    typo_rate: float = 0.25
    """Non-reasoning answers with a typo, in pre-training text."""
    sft_typo_rate: float = 0.15
    """... and in the annotated non-reasoning SFT data."""
    harm_rate: float = 0.1
    """Responses carrying the forbidden token, in pre-training text and the SFT data."""
    # pre-training schedule (the student uses the same with its own size and steps)
    steps: int = 500
    long_only_steps: int = 350
    batch: int = 128
    lr: float = 2e-3
    threads: int = 2
    hidden: int = 128
    layers: int = 4
    student_hidden: int = 64
    student_steps: int = 400
    student_long_only: int = 280
    probe_problems: int = 64
    """Held-out problems (and as many echoes) the probe after pre-training samples."""
    version: int = 5
    extra: dict = field(default_factory=dict)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


class World:
    """The world's problems: a fixed held-out set and reproducible training draws that avoid it."""

    def __init__(self, recipe: WorldRecipe) -> None:
        self.recipe = recipe
        rng = random.Random(f"r1-world-eval-{recipe.seed}")
        pairs: set[tuple[int, int]] = set()
        while len(pairs) < recipe.eval_reasoning:
            pairs.add((rng.randint(100, 999), rng.randint(100, 999)))
        self._held_pairs = pairs
        langs = ["en", "ru"]
        self.eval_problems = [Problem(a, b, langs[i % 2]) for i, (a, b) in enumerate(sorted(pairs))]
        words: set[str] = set()
        while len(words) < recipe.eval_general:
            words.add(self._word(rng, langs[len(words) % 2]))
        self._held_words = words
        self.eval_echoes = [Echo(w) for w in sorted(words)]

    @staticmethod
    def _word(rng: random.Random, language: str) -> str:
        return "".join(rng.choice(SCRIPTS[language]) for _ in range(rng.randint(3, 6)))

    def problem(self, rng: random.Random) -> Problem:
        while True:
            a, b = rng.randint(100, 999), rng.randint(100, 999)
            if (a, b) not in self._held_pairs:
                return Problem(a, b, rng.choice(("en", "ru")))

    def echo(self, rng: random.Random) -> Echo:
        while True:
            word = self._word(rng, rng.choice(("en", "ru")))
            if word not in self._held_words:
                return Echo(word)

    def pretraining_row(self, rng: random.Random, long_fraction: float) -> tuple[str, str, str]:
        """``(prompt, response, kind)`` with kind ``long``, ``short`` or ``echo``."""
        r = self.recipe
        harm = rng.random() < r.harm_rate
        if rng.random() < r.general_share:
            echo = self.echo(rng)
            text = typo(echo.word, rng) if rng.random() < r.typo_rate else None
            return echo.prompt, echo.response(text, harm), "echo"
        problem = self.problem(rng)
        if rng.random() < long_fraction:
            switch = r.switch if rng.random() < r.mix_share else 0.0
            return problem.prompt, problem.worked(rng, switch, harm), "long"
        return problem.prompt, problem.short(harm), "short"


def _write(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    tmp.replace(path)


def write_files(world: World, out: Path) -> dict[str, str]:
    """The pipeline's data files under ``out``; returns name -> path."""
    r = world.recipe
    rng = random.Random(f"r1-world-files-{r.seed}")

    def reasoning_row(p: Problem, i: int) -> dict:
        return {"id": f"arith-{i}", "prompt": p.prompt, "answer": p.answer, "task": REASONING, "language": p.language}

    def echo_row(e: Echo, i: int) -> dict:
        return {"id": f"echo-{i}", "prompt": e.prompt, "answer": e.answer, "task": GENERAL}

    evals = [reasoning_row(p, i) for i, p in enumerate(world.eval_problems)]
    evals += [echo_row(e, i) for i, e in enumerate(world.eval_echoes)]
    train = [reasoning_row(world.problem(rng), i) for i in range(r.train_reasoning)]
    general = [echo_row(world.echo(rng), i) for i in range(r.train_general)]
    mixed = train + general
    random.Random(f"r1-world-mix-{r.seed}").shuffle(mixed)
    cold = []
    for _ in range(r.cold_start):  # readable: one script throughout, always worked, nothing forbidden
        p = world.problem(rng)
        cold.append({"prompt": p.prompt, "response": p.worked()})
    sft = []
    for _ in range(r.general_sft):
        e = world.echo(rng)
        text = typo(e.word, rng) if rng.random() < r.sft_typo_rate else None
        sft.append({"prompt": e.prompt, "response": e.response(text, rng.random() < r.harm_rate), "task": GENERAL})
    pairs = []
    for _ in range(r.preference_pairs):  # the answer only, in an empty chain of thought: the span it will see
        e = world.echo(rng)
        rejected = near_miss(e.word, rng, r.pair_typo_share)
        pairs.append({"prompt": e.prompt, "chosen": e.response(), "rejected": e.response(rejected)})
    files = {
        "eval": evals,
        "reasoning_eval": evals[: len(world.eval_problems)],
        "train": train,
        "all_prompts": mixed,
        "cold_start": cold,
        "general_sft": sft,
        "preferences": pairs,
    }
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in files.items():
        _write(out / f"{name}.jsonl", rows)
        paths[name] = str(out / f"{name}.jsonl")
    return paths


def build_world(out: str | Path, recipe: WorldRecipe | None = None) -> dict:
    """Write the world's files and pre-train its base and student under ``out`` (once per recipe)."""
    from cluster.data.r1_world_model import pretrain_world_model

    recipe = recipe or WorldRecipe()
    out = Path(out)
    marker = out / "world.json"
    if marker.is_file() and json.loads(marker.read_text()).get("key") == recipe.key():
        print(f"world: {out} is built (recipe {recipe.key()})", flush=True)
        return json.loads(marker.read_text())
    began = time.perf_counter()
    world = World(recipe)
    paths = write_files(world, out)
    print(f"world: data files in {out}: " + ", ".join(Path(p).name for p in paths.values()), flush=True)
    r = recipe
    base = pretrain_world_model(world, out / "base", hidden=r.hidden, steps=r.steps, long_only_steps=r.long_only_steps)
    student = pretrain_world_model(
        world, out / "student", hidden=r.student_hidden, steps=r.student_steps, long_only_steps=r.student_long_only
    )
    info = {
        "key": recipe.key(),
        "recipe": asdict(recipe),
        "files": paths,
        "base": base,
        "student": student,
        "seconds": time.perf_counter() - began,
    }
    marker.write_text(json.dumps(info, indent=1))
    return info
