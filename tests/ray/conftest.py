"""One local Ray cluster for the tests in tests/ray (session scope), on loopback, auth mode explicit."""

import os
from pathlib import Path

import pytest

from cluster.data.builtin_model import save_random_model

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ray_cluster():
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ.pop("RAY_ADDRESS", None)
    import ray

    # Logical CPUs: the actors reserve more than this 2-core machine has; they take turns in practice.
    ray.init(
        address="local",
        num_cpus=16,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT), "RAY_AUTH_MODE": "disabled"}},
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tied_model(tmp_path_factory) -> Path:
    return save_random_model(tmp_path_factory.mktemp("tied"), tie=True, seed=1)


@pytest.fixture(scope="session")
def untied_model(tmp_path_factory) -> Path:
    return save_random_model(tmp_path_factory.mktemp("untied"), tie=False, seed=2)
