"""The base of every config section, and the sections of the R1 recipe's stages other than RL.

``cluster/config.py`` holds the run config as a whole (model, data, rollout, reward, grpo, learner,
cluster, and these); every section forbids unknown keys and validates on assignment.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class SFTConfig(Section):
    """Supervised fine-tuning (``r1ray sft``; the cold start, the SFT after rejection sampling, distillation)."""

    train: str | None = None
    """Local ``.jsonl``/``.json``/``.parquet`` rows: ``prompt`` + ``response`` columns, or ``messages`` (chat)."""
    eval: str | None = None
    """Held-out rows in the same layout; None holds out the tail of ``train`` (``eval_size`` rows)."""
    prompt_key: str = "prompt"
    response_key: str = "response"
    messages_key: str = "messages"
    """Column of chat-format rows (a list of ``{role, content}``; the last assistant turn is the response)."""
    epochs: int = Field(2, ge=1)
    """Passes over the training rows (R1's SFT after rejection sampling: 2)."""
    batch_size: int = Field(32, ge=1)
    """Sequences per optimizer step (all ranks together; the last short batch of an epoch is dropped)."""
    eval_size: int = Field(64, ge=1)
    """Rows held out of ``train`` when ``eval`` is not given."""
    eval_every: int = Field(0, ge=0)
    """Held-out loss every K optimizer steps (0: before and after training only)."""
    bucket_by_length: bool = True
    """Group rows of similar length into the same batch (and micro-batch), so short rows do not pay for long ones."""
    generate_eval: bool = True
    """Also measure generation accuracy on ``data``'s held-out prompts before and after (starts a rollout engine)."""


class SampleConfig(Section):
    """Rejection sampling (``r1ray sample``): k samples per prompt, kept only if they pass every filter."""

    prompts: int | None = Field(None, ge=1)
    """Prompts drawn from ``data.train`` (None: every training row of the file, so not the tail held out when
    ``data.eval`` is not given; required for builtin tasks)."""
    samples: int = Field(8, ge=1)
    """Completions sampled per prompt (k)."""
    temperature: float = Field(0.7, gt=0.0, le=10.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    keep_per_prompt: int = Field(1, ge=1)
    """At most this many kept completions per prompt (m)."""
    prefer: Literal["shortest", "random"] = "shortest"
    """Which of a prompt's passing completions are kept first."""
    require_correct: bool = True
    """Keep only completions the accuracy reward (``reward.accuracy_key``) scores correct."""
    require_format: bool = True
    """Keep only well-formed ``<think>...</think><answer>...</answer>`` completions."""
    min_language: float | None = Field(None, ge=0.0, le=1.0)
    """Keep only completions whose chain of thought has at least this language consistency (None: off)."""
    min_tokens: int = Field(1, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    """Longest kept completion in tokens (None: any that finished; truncated ones are never kept)."""
    max_paragraph_chars: int | None = Field(None, ge=1)
    """Drop completions with a paragraph (text between blank lines) longer than this (None: off)."""
    no_repetition: bool = True
    """Drop completions with a repetition loop (a stretch of 8+ characters repeated 3+ times in a row)."""
    no_code_fences: bool = True
    """Drop completions containing Markdown code fences."""
    output: Literal["sft", "pairs"] = "sft"
    """``sft``: the kept completions as ``prompt``/``response`` rows. ``pairs``: preference pairs for ``r1ray rm``
    (``prompt``/``chosen``/``rejected``), the model's own mistakes labelled by the rules as annotators would label
    its samples: a kept completion against one of the same prompt that the accuracy reward scores wrong, both cut
    to ``pair_span``; at most ``keep_per_prompt`` pairs per prompt, no rejected text twice."""
    pair_span: Literal["answer", "final", "response"] = "answer"
    """What a pair holds of each completion: the span its reward model will judge (``reward.models.*.span``)."""
    mix: str | None = None
    """Other rows in the output's layout (``prompt``/``response``, or ``prompt``/``chosen``/``rejected`` for
    ``pairs``) mixed into the output."""
    mix_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of the output taken from ``mix`` (R1: ~200k non-reasoning of ~800k)."""


class EvalConfig(Section):
    """Evaluation as the R1 paper reports it (``r1ray eval``)."""

    data: str | None = None
    """Problems (``prompt``/``answer`` columns); None: ``data.eval`` (or the builtin task's held-out set)."""
    samples: int = Field(4, ge=1)
    """Samples per problem (k): pass@1 is their mean accuracy, cons@k their majority vote."""
    temperature: float = Field(0.6, gt=0.0, le=10.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    greedy: bool = True
    """Also one greedy completion per problem (``greedy_accuracy``)."""
    size: int | None = Field(None, ge=1)
    """Evaluate only the first N problems (None: all)."""


class RMConfig(Section):
    """Reward-model training (``r1ray rm``): Bradley-Terry pairwise loss on preference pairs."""

    train: str | None = None
    """Local rows with ``prompt``, ``chosen`` and ``rejected`` columns."""
    eval: str | None = None
    """Held-out pairs; None holds out the tail of ``train`` (``eval_size`` pairs)."""
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)
    """Pairs per optimizer step."""
    eval_size: int = Field(64, ge=1)
    score: Literal["head", "likelihood"] = "head"
    """How the model scores a response. ``head``: a sequence-classification model, the scalar head at the
    response's last token (a new head when it starts from a language model). ``likelihood``: the language model
    itself, the mean log-probability of the response's tokens after the prompt; Bradley-Terry training then
    moves the model's likelihoods instead of a head's output, and a pre-trained model that already knows good
    answers starts out ranking them first (a DPO-style implicit reward, with no reference model)."""
