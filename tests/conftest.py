"""Fixtures shared across the test folders."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory) -> Path:
    """One ``output_dir`` for the session's ``r1ray train`` runs of the builtin model (the demo e2e runs, the Ray
    job runs): the base model of a recipe is pre-trained under ``<output_dir>/_builtin`` once, by the first run
    that needs it. Each run has a name, and so a run folder, of its own."""
    return tmp_path_factory.mktemp("runs")
