"""A run's PNG curves: the whole figure, and each panel cut from it (the panel's own title, axes and legend)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from cluster.stages.evaluate import EvalResult
from cluster.stages.report import plot_run

PANELS = ("accuracy", "response_length", "long_share", "reward", "kl")


def test_each_panel_png_is_its_own_rectangle_of_the_whole_figure(tmp_path):
    rows = [
        {"step": s, "reward/accuracy": s / 10, "reward/mean": s / 5, "reward/format": 0.5, "kl": 1e-3 * s,
         "response_length/mean": 20.0 + s, "response/long_share": 0.1 * s}
        for s in range(1, 6)
    ]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    evals = [
        EvalResult(step=s, accuracy=a, greedy_accuracy=a, format_rate=0.5, response_length=22.0, long_share=0.3)
        for s, a in ((0, 0.1), (5, 0.4))
    ]
    path = plot_run(tmp_path, evals)
    whole = np.asarray(Image.open(path).convert("RGB"))
    assert whole.shape[:2] == (770, 1650)  # 15 x 7 inches at 110 dpi
    corners = set()
    for name in PANELS:
        panel = np.asarray(Image.open(tmp_path / "plots" / f"{name}.png").convert("RGB"))
        h, w = panel.shape[:2]
        assert 250 < h < 770 and 400 < w < 1650, (name, panel.shape)
        assert panel.std() > 10, f"{name}.png is blank"
        # the whole panel (title, tick labels, axis label, legend) with a margin: its edges are background
        edges = np.concatenate([panel[0], panel[-1], panel[:, 0], panel[:, -1]])
        assert (edges == 255).all(), f"{name}.png is cut inside its panel"
        corner = _find(whole, panel)
        assert corner is not None, f"{name}.png is not a rectangle of curves.png"
        corners.add(corner)
    assert len(corners) == len(PANELS)  # five different places


def _find(whole: np.ndarray, panel: np.ndarray) -> tuple[int, int] | None:
    """Where ``panel`` lies in ``whole`` pixel for pixel (top left corner), by its middle row's bytes."""
    h, w = panel.shape[:2]
    middle = panel[h // 2].tobytes()
    for y in range(h // 2, whole.shape[0] - (h - h // 2) + 1):
        line, start = whole[y].tobytes(), 0
        while (at := line.find(middle, start)) >= 0:
            x, top = at // 3, y - h // 2
            if at % 3 == 0 and np.array_equal(whole[top : top + h, x : x + w], panel):
                return top, x
            start = at + 1
    return None
