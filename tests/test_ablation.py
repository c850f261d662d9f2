"""The ablation script end to end on a tiny corpus: equal budgets, sample statistics, paired differences."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training import ablation
from vse.testing.shapes import make_shapes_dataset

pytestmark = pytest.mark.slow


def test_ablation_report_on_a_tiny_corpus(tmp_path):
    make_shapes_dataset(tmp_path / "data" / "shapes")
    docs = tmp_path / "docs"
    argv = ["--corpus", "shapes", "--seeds", "2", "--steps", "8", "--rows", "paper", "default", "--noise", "0", "0.5",
            "--data-root", str(tmp_path / "data"), "--cache-root", str(tmp_path / "cache"),
            "--root", str(tmp_path / "runs"), "--docs", str(docs)]  # fmt: skip
    assert ablation.main(argv) == 0
    report = (docs / "RESULTS.md").read_text()
    for label in ("1. VSE++ baseline", "2. the paper", "9. **default**", "every seed positive", "| 50% |"):
        assert label in report
    assert (docs / "robustness_shapes.png").stat().st_size > 1000
    runs = json.loads((docs / "ablation_runs.json").read_text())["shapes"]
    rows = runs["rows"]
    assert set(rows) == {"baseline", "paper", "default"} and all(len(r) == 2 for r in rows.values())
    assert {run["steps"] for row in rows.values() for run in row} == {8}  # the same budget for every row
    assert rows["default"][0]["estimator_steps"] > 0 and rows["baseline"][0]["estimator_steps"] == 0
    assert set(runs["noise"]["default"]) == {"0.0", "0.5"}
    noisy = runs["noise"]["default"]["0.5"]
    assert all(run["suspicion"]["auc_injected"] is not None for run in noisy)  # known noise is scored
    # The paired differences in the report are the per-seed differences of the runs.
    diffs = [a["test"]["rsum"] - b["test"]["rsum"] for a, b in zip(rows["default"], rows["baseline"], strict=True)]
    assert f"{np.mean(diffs):.1f} ± {np.std(diffs, ddof=1):.1f}" in report


def test_the_recipes_robustness_curve_goes_on_a_model_card():
    from training.ablation import recipe_robustness
    from vse import VSEConfig
    from vse.model_card import robustness_section

    runs = lambda *values: [{"test": {"rsum": v}} for v in values]  # noqa: E731
    raw = {"corpus": {"noise": {"default": {"0.5": runs(90.0, 94.0), "0.0": runs(100.0, 102.0, 104.0)}}}}
    curve = recipe_robustness(raw, "corpus")
    assert curve == {"0%": "102.0 ± 2.0 (3 seeds)", "50%": "92.0 ± 2.8 (2 seeds)"}  # ordered by level
    config = VSEConfig(extra={"robustness": curve, "robustness_source": "The recipe, not this checkpoint."})
    section = robustness_section(config)
    assert "| 50% | 92.0 ± 2.8 (2 seeds) |" in section and section.endswith("not this checkpoint.")
