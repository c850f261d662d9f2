"""The benchmark scripts still run end to end (tiny sizes, nothing written to docs/)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "docs" / "PERFORMANCE.md", ROOT / "docs" / "RELIABILITY.md"]


def docs_digest() -> str:
    return hashlib.sha256(b"".join(path.read_bytes() for path in DOCS)).hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize(
    "module, argv",
    [
        ("encoding", ["--images", "8", "--sentences", "40", "--rounds", "2"]),
        ("search", ["--sizes", "2000", "--dim", "32", "--views", "0", "--no-corpora", "--stand-in", "3000"]),
        ("training", ["--sizes", "1000", "2000"]),
        ("cache", ["--sizes", "16", "32"]),
        ("durability", ["--writers", "2", "--votes", "20"]),
        ("hostile", ["--uploads", "2", "--refusals", "5"]),
        ("load", ["--clients", "2", "--seconds", "3"]),
        ("app", ["--gallery-size", "3000", "--queries", "8", "--clients", "2", "--browser-queries", "3"]),
        ("review_progress", ["--gallery-size", "3000", "--reviewed", "0", "500", "--reviews", "5", "--think", "0.05"]),
    ],
)
def test_benchmark_runs_and_prints_its_table(module, argv, capsys):
    import importlib

    before = docs_digest()
    script = importlib.import_module(f"benchmarks.{module}")
    assert script.main([*argv, "--no-report"]) == 0
    printed = capsys.readouterr().out
    assert "error:" not in printed
    assert docs_digest() == before  # --no-report leaves the recorded figures alone


@pytest.mark.slow
def test_conversion_benchmark_converts_a_small_datasets_source_once(tmp_path, capsys):
    from benchmarks import conversion

    before = docs_digest()
    assert conversion.main(["--images", "40", "--workdir", str(tmp_path), "--no-report"]) == 0
    assert "40 images: first start" in capsys.readouterr().out
    assert len(list((tmp_path / "40" / "state" / "datasets").glob("*/gallery-*.parquet"))) >= 1
    assert docs_digest() == before


@pytest.mark.slow
def test_feedback_loop_benchmark_runs_on_a_tiny_corpus(tmp_path):
    """Noise, model 0, the app's queue and random arms through its API, export, retrain: all of it, tiny.

    Then ``--render`` writes the same report again from the results it recorded.
    """
    from benchmarks import feedback_loop
    from vse.testing.shapes import make_shapes_dataset

    make_shapes_dataset(tmp_path / "data" / "shapes")
    before = docs_digest()
    docs = tmp_path / "docs"
    argv = ["--corpus", "shapes", "--seeds", "1", "--fractions", "0.1", "--data-root", str(tmp_path / "data"),
            "--cache-root", str(tmp_path / "cache"), "--work", str(tmp_path / "work"), "--docs", str(docs),
            "--decompose", "--oracle", "--report", "TINY", "--",
            "--stage1.optim.epochs=2", "--stage1.optim.steps_per_epoch=5", "--web.suspicion_steps=5"]  # fmt: skip
    assert feedback_loop.main(argv) == 0
    written = (docs / "TINY.md").read_text()
    assert "## shapes" in written and "queue / random" in written and "majority of three" in written
    assert "every tag judged, nothing added" in written and "the missing tags added, no verdicts" in written
    assert "| oracle: most wrong tags first |" in written and "| mean P(wrong) |" in written  # --oracle's arms
    assert "| sum / √count (the app's) |" in written  # the orders compared on model 0
    assert "| recovers ≥ 50% of the gap (full − none), every seed |" in written  # the targets table
    assert (docs / "tiny_shapes.png").is_file() and (docs / "tiny_runs.json").is_file()
    assert docs_digest() == before
    result = (tmp_path / "work" / "shapes" / "seed0" / "majority10" / "result.json").read_text()
    assert '"reviewers": 3' in result

    (docs / "tiny_shapes.png").unlink()
    assert feedback_loop.main(["--render", "--docs", str(docs), "--report", "TINY"]) == 0
    again = (docs / "TINY.md").read_text()
    note = "\nRendered again from the results that run recorded (`tiny_runs.json`) by " \
           "`python -m benchmarks.feedback_loop --render --report TINY`.\n"  # fmt: skip
    assert note in again and again.replace(note, "", 1) == written
    assert (docs / "tiny_shapes.png").is_file()


def test_render_refuses_a_report_that_is_missing_or_names_no_command(tmp_path):
    from benchmarks import feedback_loop

    with pytest.raises(SystemExit, match="does not exist"):
        feedback_loop.main(["--render", "--docs", str(tmp_path)])
    (tmp_path / "FEEDBACK.md").write_text("# hand-written\n")
    with pytest.raises(SystemExit, match="names no"):
        feedback_loop.main(["--render", "--docs", str(tmp_path)])
    produced = "Produced by `benchmarks/feedback_loop.py` (x86_64, 2 cores):\n\n"
    (tmp_path / "FEEDBACK.md").write_text(produced + "```bash\npython -m benchmarks.feedback_loop --seeds 2\n```\n")
    with pytest.raises(SystemExit, match="feedback_runs.json does not exist"):
        feedback_loop.main(["--render", "--docs", str(tmp_path)])


def _seed(none, full, queue, random, oracle=None, ratio=1.8, auc=0.88):
    arms = {"none": {"test": none}, "full": {"test": full}, "queue10": {"test": queue}, "random10": {"test": random}}
    if oracle is not None:
        arms["oracle10"] = {"test": oracle}
    quality = {"queue10_ratio": ratio, "auc": auc, "overall_wrong": 0.3, "oracle10_wrong": 0.6}
    return {"arms": arms, "quality": quality}


def test_target_checks_match_the_issue_rules_computed_by_hand():
    from benchmarks.feedback_loop import target_checks

    seeds = [
        _seed(100, 110, 106, 102, oracle=107, ratio=2.1, auc=0.90),  # gap 10: queue 60%, 3× random
        _seed(100, 120, 104, 99, oracle=111, ratio=1.9, auc=0.84),  # gap 20: queue 20%; random lost
        _seed(100, 98, 101, 100, oracle=100, ratio=2.2, auc=0.86),  # no gap: nothing to recover
    ]
    recover, beat, wrong, auc = target_checks(seeds)
    # naive: share of the mean gap = mean gain / mean gap; a seed recovers when gap > 0 and gain >= gap / 2
    assert recover.measured.startswith(f"{100 * (11 / 3) / (28 / 3):.0f}% of the mean gap (+9.3)")
    assert (recover.meeting, recover.seeds, recover.met) == (1, 3, False)
    assert recover.oracle == "64% of the mean gap (+9.3); 2 of 3 seeds"  # mean 6 / 9.33; 7 >= 5, 11 >= 10
    # a seed beats random when its gain is positive and at least twice random's
    assert beat.measured == f"{11 / 3:+.1f} against {1 / 3:+.1f}, 11.0×"
    assert (beat.meeting, beat.met) == (3, True)
    assert (wrong.measured, wrong.meeting, wrong.met, wrong.oracle) == ("2.07×", 2, True, "2.00×")
    assert (auc.measured, auc.meeting, auc.met) == ("0.867", 2, True)
    assert target_checks([{"arms": {"none": {"test": 1}, "full": {"test": 2}}, "quality": {}}]) == []


def test_the_oracle_review_order_takes_the_most_wrong_tags_first_then_the_shortest_list():
    from benchmarks.feedback_loop import Truth, oracle_order

    noisy = {"a": ["x", "y", "z"], "b": ["x"], "c": ["x", "y"], "d": ["x", "y", "z", "w"], "e": ["x", "Y", "z"]}
    wrong = {"a": {"y"}, "b": {"x"}, "c": set(), "d": {"x", "y"}, "e": {"x", "y"}}
    truth = Truth(list(noisy), noisy, wrong, {key: [] for key in noisy})
    # naive reference: every order of the rows, the first sorted by (-wrong, tags, row)
    rows = [(-len(wrong[key]), len(set(map(str.lower, noisy[key]))), row) for row, key in enumerate(noisy)]
    assert oracle_order(truth) == [row for *_, row in sorted(rows)] == [4, 3, 1, 0, 2]


@pytest.mark.slow
def test_startup_benchmark_starts_the_app_over_a_small_generated_gallery(tmp_path, capsys):
    """Builds a 300-image gallery with stand-in embeddings, starts app.py twice (index build, then timed)."""
    from benchmarks import startup

    before = docs_digest()
    argv = ["--images", "300", "--starts", "1", "--workdir", str(tmp_path), "--timeout", "300", "--queries", "3",
            "--handler-queries", "4", "--no-report"]  # fmt: skip
    assert startup.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| start 1 |" in printed and "300 images" in printed
    assert "| /search, a session | 3 |" in printed and "| /ping, no session | 3 |" in printed
    assert "| search handler (VSEApp.search) | 12 |" in printed and "| encoding and index search | 12 |" in printed
    assert docs_digest() == before


def test_the_engine_benchmark_runs_and_prints_its_table(capsys):
    from benchmarks import engine

    assert engine.main(["--sizes", "300", "--queries", "5", "--file-points", "5"]) == 0
    printed = capsys.readouterr().out
    assert "| 300 |" in printed and "points/s written" in printed
    assert "(graph) |" in printed or "(no assets/: Qdrant Edge not measured)" in printed  # the engine's HNSW


@pytest.mark.slow
def test_query_precision_benchmark_compares_both_precisions_on_a_tiny_run(tmp_path, capsys, tiny_vit, tiny_bert):
    """A saved model with a frozen transformer text backbone and the test split named by its run's config."""
    import json

    import torch

    from benchmarks import query_precision
    from vse import VSEConfig, VSEModel
    from vse.testing.shapes import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "shapes")
    torch.manual_seed(0)
    config = VSEConfig(image_backbone=str(tiny_vit), image_pooling="cls", text_encoder="transformer",
                       text_model=str(tiny_bert), embed_dim=16)  # fmt: skip
    VSEModel(config).eval().save_pretrained(tmp_path / "run" / "model")
    test = {"path": str(data / "captions"), "split": "test", "text_column": "captions"}
    (tmp_path / "run" / "train_config.json").write_text(json.dumps({"data": {"test": test}}))
    before = docs_digest()
    assert query_precision.main(["--models", str(tmp_path / "run" / "model"), "--queries", "6", "--no-report"]) == 0
    printed = capsys.readouterr().out
    assert "t2i sum fp32" in printed and "int8" in printed and "cosine" in printed
    assert docs_digest() == before
    assert query_precision.main(["--models", str(tmp_path / "nothing-*"), "--no-report"]) == 2


def test_t_quantiles_and_the_mean_interval_match_statistical_tables():
    from benchmarks.common import mean_interval, t975

    # 97.5% quantiles of Student's t (standard tables): exact below 11 degrees of freedom, approximated above
    for dof, quantile in ((1, 12.706), (4, 2.776), (10, 2.228), (12, 2.179), (20, 2.086), (60, 2.000), (120, 1.980)):
        assert t975(dof) == pytest.approx(quantile, rel=1e-3)
    with pytest.raises(ValueError):
        t975(0)
    values = [1.0, 2.0, 6.0]  # mean 3, sample std sqrt(7)
    mean, half = mean_interval(values)
    assert mean == pytest.approx(3.0) and half == pytest.approx(4.303 * 7**0.5 / 3**0.5)
