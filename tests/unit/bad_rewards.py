"""Rewards that misbehave, for the scorer's deadline tests (referenced as ``tests.unit.bad_rewards:<name>``)."""

import time


def sleep_forever(completion: str, answer: str) -> float:
    while True:
        time.sleep(60)


def explode(completion: str, answer: str) -> float:
    raise RuntimeError("reward bug")


def length_bonus(completion: str, answer: str) -> float:
    return len(completion) / 100
