"""``logging.wandb: {mode: offline}`` writes a wandb run directory with the metrics.jsonl rows and the config.

The real wandb client logs through r1ray's MetricsLogger with no account and an unreachable server;
the run's ``.wandb`` file (wandb's record log: a 7-byte header, then 32 KiB blocks of length-prefixed
chunks holding protobuf ``Record`` messages) is read back and compared with metrics.jsonl.
Skips when wandb is not installed (``pip install -e '.[wandb]'``; ``make install`` does).
Run: `pytest tests/unit/test_wandb_logging.py -v`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from cluster.config import load_config
from cluster.errors import DataError
from cluster.runtime.metrics import MetricsLogger, read_jsonl

wandb = pytest.importorskip("wandb", reason="wandb is not installed: pip install -e '.[wandb]'")
from wandb.proto import wandb_internal_pb2  # noqa: E402

BLOCK = 32 * 1024
HEADER = 7  # b":W&B", magic (2 bytes), version (1 byte); each chunk: crc32 (4), length (2), type (1)
FULL, LAST = 1, 4


def wandb_records(path: Path) -> list:
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pos, pending = [], HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if left < HEADER or (length == 0 and kind == 0):  # the rest of a block is padding
            pos += left
            continue
        pending += data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch):
    # No account, and a server nobody listens on: offline mode must need neither.
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    yield
    wandb.teardown()


def test_offline_run_holds_the_metrics_and_the_resolved_config(tmp_path, offline):
    cfg = load_config(None, [f"output_dir={tmp_path}", "logging.wandb={project: r1ray-test, mode: offline}"])
    cfg.run_dir.mkdir(parents=True)
    log = MetricsLogger(
        cfg.run_dir, cfg.name, ray_metrics=False, wandb=cfg.logging.wandb, config=cfg.model_dump(mode="json")
    )
    for step in (1, 2, 3):
        log.log({"step": step, "reward/mean": 0.25 * step, "kl": 0.01 * step, "time/step_s": 1.5})
    log.close()

    (run_file,) = (cfg.run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    history = [
        {key: json.loads(item.value_json) for item in r.history.item if not (key := item_key(item)).startswith("_")}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    assert history == read_jsonl(cfg.run_dir / "metrics.jsonl")
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.project == "r1ray-test" and run.display_name == cfg.name
    config = {item_key(item): json.loads(item.value_json) for item in run.config.update}
    assert config["grpo"]["steps"] == cfg.grpo.steps
    assert config["logging"]["wandb"] == {"project": "r1ray-test", "mode": "offline"}


def test_wandb_mode_is_checked_by_the_config():
    from cluster.errors import ConfigError

    with pytest.raises(ConfigError, match=r"logging.wandb.mode: Input should be 'online' or 'offline'"):
        load_config(None, ["logging.wandb.mode=cloud"])


def test_missing_wandb_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail as if it were not installed
    cfg = load_config(None, [f"output_dir={tmp_path}", "logging.wandb.mode=offline"])
    cfg.run_dir.mkdir(parents=True)
    with pytest.raises(DataError, match=r"wandb is not installed: pip install -e '\.\[wandb\]'"):
        MetricsLogger(cfg.run_dir, cfg.name, ray_metrics=False, wandb=cfg.logging.wandb)
