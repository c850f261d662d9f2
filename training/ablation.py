"""The ablation: the paper's rows and this project's, on two corpora, written to docs/RESULTS.md.

    python -m training.ablation --corpus openclipart --corpus emoji [--seeds 5] [--reuse]

Every row is the default config (``configs/offline_default.yaml``) or the paper's
(``configs/paper_two_stage.yaml``) with a few overrides; a corpus changes only the
data paths (``data/<corpus>/{captions,web}``, built by ``python -m
training.build_demo --data-only`` and ``python -m training.emoji_corpus``).  Each
row is trained with every seed (in ``runs/ablation/<corpus>/<row>/seed<k>``), and
the test metrics of the model each run selected by validation rsum are reported
as mean ± sample standard deviation, with per-seed differences against the
VSE++ baseline.  A robustness curve retrains the web rows with injected tag
noise (``data.web_tag_noise``).  ``--reuse`` keeps finished runs.

Fairness: every row gets the same number of optimisation steps and the same
number of pairs per step (``Budget``); model selection uses validation only.
The noise-aware rows also train small cross-fitting models before the main run
(``training.suspicion``); those steps are reported beside the budget.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.config import TrainConfig
from training.configuration import ConfigError, load_config
from training.sources import SourceError
from training.train import ResumeError, run_training
from vse.cli import USER_ERRORS, add_debug_flag, run_cli

log = logging.getLogger("training.ablation")
# Refused input of a run, reported as one line (vse.cli.run_cli).
CLI_ERRORS = (*USER_ERRORS, ConfigError, SourceError, ResumeError)
METRICS = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "rsum")
NOISE_LEVELS = (0.0, 0.25, 0.5, 0.75)
DEFAULT_CONFIG = "configs/offline_default.yaml"
PAPER_CONFIG = "configs/paper_two_stage.yaml"


@dataclass(frozen=True)
class Budget:
    """Optimisation steps and pairs per step that every row gets."""

    steps: int = 800
    steps_per_epoch: int = 20
    pairs_per_step: int = 256

    def one_stage(self) -> list[str]:
        return [f"--stage1.optim.epochs={self.steps // self.steps_per_epoch}",
                f"--stage1.optim.steps_per_epoch={self.steps_per_epoch}"]  # fmt: skip

    def two_stages(self) -> list[str]:
        half = self.steps // self.steps_per_epoch // 2
        return [f"--stage1.optim.epochs={half}", f"--stage1.optim.steps_per_epoch={self.steps_per_epoch}",
                f"--stage2.optim.epochs={half}", f"--stage2.optim.steps_per_epoch={self.steps_per_epoch}",
                f"--stage2.optim.lr_decay_epochs={half}"]  # fmt: skip


@dataclass
class Row:
    key: str
    label: str
    config: str
    overrides: list[str]
    noise_curve: bool = False  # retrained at every injected noise level
    runs: list[dict] = field(default_factory=list)


def table_rows(budget: Budget) -> list[Row]:
    """The rows, each with the budget's steps and pairs per step."""
    pairs, half = budget.pairs_per_step, budget.pairs_per_step // 2
    clean_only = ["--stage1.include_web=false", "--stage1.pseudo_tags=false", "--stage1.verified_tags=false",
                  "--stage2.enabled=false", f"--stage1.optim.batch_size={pairs}"]  # fmt: skip
    hinge = ["--stage1.loss.kind=hinge"]
    joint = [f"--stage1.optim.batch_size={half}", f"--web.batch_size={half}"]
    paper = [*budget.two_stages(), f"--stage1.optim.batch_size={half}", f"--stage2.optim.batch_size={pairs}"]
    return [
        Row("baseline", "1. VSE++ baseline: clean captions only (hinge)", DEFAULT_CONFIG,
            [*clean_only, *hinge, *budget.one_stage()]),
        Row("paper", "2. the paper: stage one + stage two with the curriculum (hinge, tag lists)", PAPER_CONFIG,
            paper, noise_curve=True),
        Row("paper_flat", "3. the paper without the curriculum", PAPER_CONFIG, [*paper, "--stage2.curriculum=false"]),
        Row("joint_hinge", "4. clean and web pairs jointly in one stage (hinge, tag lists)", DEFAULT_CONFIG,
            [*hinge, *joint, *budget.one_stage(), "--web.unit=list", "--web.noise_aware=false"]),
        Row("clean_infonce", "5. clean captions only, InfoNCE", DEFAULT_CONFIG, [*clean_only, *budget.one_stage()]),
        Row("joint_lists", "6. joint, InfoNCE, tag lists", DEFAULT_CONFIG,
            [*joint, *budget.one_stage(), "--web.unit=list", "--web.noise_aware=false"]),
        Row("joint_tags", "7. joint, InfoNCE, each tag a text", DEFAULT_CONFIG,
            [*joint, *budget.one_stage(), "--web.noise_aware=false"], noise_curve=True),
        Row("replay", "8. two stages with clean replay, InfoNCE, noise-aware tags", DEFAULT_CONFIG,
            [*budget.two_stages(), f"--stage1.optim.batch_size={pairs}", "--stage1.include_web=false",
             "--stage2.enabled=true", f"--stage2.optim.batch_size={half}", "--stage2.replay_clean=1.0",
             "--stage2.curriculum=false", "--stage2.loss.kind=infonce", "--stage2.optim.lr=1e-4"]),
        Row("default", "9. **default**: joint, InfoNCE, noise-aware tags", DEFAULT_CONFIG,
            [*joint, *budget.one_stage()], noise_curve=True),
    ]  # fmt: skip


def data_overrides(corpus: str, data_root: Path, cache_root: Path) -> list[str]:
    """The only overrides that change with the corpus: where its data and caches are."""
    folder = data_root / corpus
    return [f"--data.captions.path={folder / 'captions'}", f"--data.validation.path={folder / 'captions'}",
            f"--data.test.path={folder / 'captions'}", f"--data.web.path={folder / 'web'}",
            f"--data.cache_dir={cache_root / corpus}"]  # fmt: skip


def read_run(folder: Path) -> dict | None:
    """Test metrics, steps, pairs and suspicion reports of a finished run, or None."""
    metrics_path = folder / "model" / "metrics.json"
    if not metrics_path.is_file():
        return None
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["stage"] in ("stage1", "stage2")]
    reports = [r for r in records if r["stage"] == "suspicion"]
    config = json.loads((folder / "train_config.json").read_text())
    metrics = json.loads(metrics_path.read_text())
    return {
        "test": metrics["test"],
        "validation": metrics["validation"],
        "steps": sum(r["steps"] for r in epochs),
        "pairs_per_step": pairs_per_step(config),
        "seconds": sum(r["seconds"] for r in epochs),
        "suspicion": reports[-1] if reports else None,
        "estimator_steps": len(reports) * config["web"]["suspicion_folds"] * config["web"]["suspicion_steps"],
        "selected_stage": json.loads((folder / "model" / "config.json").read_text())["extra"].get("selected_stage"),
    }


def pairs_per_step(config: dict) -> dict[str, int]:
    """Pairs per step of each stage that ran, from a run's train_config.json."""
    out = {}
    s1, s2 = config["stage1"], config["stage2"]
    if s1["enabled"]:
        out["stage1"] = s1["optim"]["batch_size"] * (1 + int(s1["pseudo_tags"])) + (
            config["web"]["batch_size"] if s1["include_web"] else 0
        )
    if s2["enabled"]:
        batch = s2["optim"]["batch_size"]
        out["stage2"] = batch + (
            int(min(batch, max(2, round(batch * s2["replay_clean"])))) if s2["replay_clean"] else 0
        )
    return out


def train_run(config_path: str, overrides: list[str], folder: Path, seed: int, reuse: bool) -> dict:
    if reuse and (existing := read_run(folder)) is not None:
        return existing
    args = [*overrides, f"--output_dir={folder}", f"--seed={seed}", "--resume=false", "--progress=false"]
    config: TrainConfig = load_config(TrainConfig, config_path, args)
    run_training(config)
    return read_run(folder)


def mean_std(values: list[float], digits: int = 1) -> str:
    """Mean ± sample standard deviation (n - 1)."""
    if len(values) < 2:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def recipe_robustness(raw: dict, corpus: str, row: str = "default") -> dict[str, str]:
    """A row's test rsum at each injected tag-noise level (mean ± sample std over seeds), from ablation_runs.json.

    For a model card: the curve of the recipe the model was trained with, measured
    by the ablation at its own budget, not of the one checkpoint.
    """
    curve = raw[corpus]["noise"][row]
    return {
        f"{float(level):.0%}": f"{mean_std([run['test']['rsum'] for run in runs])} ({len(runs)} seeds)"
        for level, runs in sorted(curve.items(), key=lambda item: float(item[0]))
    }


def results_table(rows: list[Row]) -> str:
    header = "| row | steps (+ estimator) | pairs/step | " + " | ".join(METRICS) + " | validation rsum |"
    lines = [header, "|---" * (len(METRICS) + 4) + "|"]
    for row in rows:
        cells = [mean_std([run["test"][m] for run in row.runs]) for m in METRICS]
        cells.append(mean_std([run["validation"]["rsum"] for run in row.runs]))
        first = row.runs[0]
        extra = f" (+{first['estimator_steps']})" if first["estimator_steps"] else ""
        pairs = " / ".join(str(v) for v in first["pairs_per_step"].values())
        lines.append(f"| {row.label} | {first['steps']}{extra} | {pairs} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired(row: Row, base: Row, key: str = "rsum") -> tuple[list[float], str]:
    diffs = [a["test"][key] - b["test"][key] for a, b in zip(row.runs, base.runs, strict=True)]
    return diffs, ", ".join(f"{d:+.1f}" for d in diffs)


def comparisons(rows: list[Row]) -> str:
    """Each row's rsum against the VSE++ baseline: per-seed differences, their mean ± sample std, relative gain."""
    base = next(row for row in rows if row.key == "baseline")
    lines = [
        "| row | rsum − baseline (mean ± std) | relative | per seed | every seed positive |",
        "|---|---|---|---|---|",
    ]
    base_mean = np.mean([run["test"]["rsum"] for run in base.runs])
    for row in rows:
        if row is base:
            continue
        diffs, per_seed = paired(row, base)
        lines.append(
            f"| {row.label} | {mean_std(diffs)} | {100 * np.mean(diffs) / base_mean:+.1f}% | {per_seed} | "
            f"{'yes' if min(diffs) > 0 else 'no'} |"
        )
    return "\n".join(lines)


def noise_runs(
    rows: list[Row], corpus_args: list[str], root: Path, seeds: list[int], reuse: bool, levels: list[float]
) -> dict[str, dict[float, list[dict]]]:
    """The noise-curve rows retrained at each injected noise level (level 0 is the table's runs)."""
    curves: dict[str, dict[float, list[dict]]] = {}
    for row in rows:
        if not row.noise_curve:
            continue
        curves[row.key] = {0.0: row.runs}
        for noise in [level for level in levels if level > 0]:
            args = [*row.overrides, *corpus_args, f"--data.web_tag_noise={noise}"]
            folder = root / f"{row.key}-noise{int(100 * noise)}"
            curves[row.key][noise] = [train_run(row.config, args, folder / f"seed{s}", s, reuse) for s in seeds]
    return curves


def curve_table(rows: list[Row], curves: dict[str, dict[float, list[dict]]]) -> str:
    base = next(row for row in rows if row.key == "baseline")
    base_rsum = [run["test"]["rsum"] for run in base.runs]
    labels = {row.key: row.label for row in rows}
    header = "| tags replaced | " + " | ".join(labels[k] for k in curves) + " | suspicion AUC (default) |"
    lines = [header, "|---" * (len(curves) + 2) + "|"]
    for noise in sorted(next(iter(curves.values()), {0.0: []})):
        cells = []
        for key in curves:
            values = [run["test"]["rsum"] for run in curves[key][noise]]
            gain = 100 * (np.mean(values) - np.mean(base_rsum)) / np.mean(base_rsum)
            cells.append(f"{mean_std(values)} ({gain:+.0f}%)")
        aucs = [r["suspicion"]["auc_injected"] for r in curves.get("default", {}).get(noise, []) if r["suspicion"]]
        aucs = [a for a in aucs if a is not None]
        lines.append(f"| {int(100 * noise)}% | " + " | ".join(cells) + f" | {mean_std(aucs, 3) if aucs else '–'} |")
    return "\n".join(lines) + f"\n\nBaseline (no web data, unaffected by tag noise): {mean_std(base_rsum)}."


def plot_curves(rows: list[Row], curves: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {row.key: row.label.split(". ", 1)[1].replace("**", "") for row in rows}
    base = next(row for row in rows if row.key == "baseline")
    fig, ax = plt.subplots(figsize=(5.6, 3.6), dpi=120)
    for key, curve in curves.items():
        levels = sorted(curve)
        values = [[run["test"]["rsum"] for run in curve[x]] for x in levels]
        ax.errorbar([100 * x for x in levels], [np.mean(v) for v in values], yerr=[np.std(v, ddof=1) for v in values],
                    marker="o", capsize=3, label=labels[key][:48])  # fmt: skip
    ax.axhline(
        np.mean([run["test"]["rsum"] for run in base.runs]), color="grey", linestyle="--", label="VSE++ baseline"
    )
    ax.set_xlabel("web tags replaced by random ones (%)")
    ax.set_ylabel("test rsum")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def data_summary(corpus_args: list[str]) -> str:
    """Usable rows of each split of a corpus."""
    from training.pipeline import open_source

    data = load_config(TrainConfig, DEFAULT_CONFIG, corpus_args).data
    counts = {
        name: sum(open_source(source, kind).table.usable)
        for name, source, kind in (("train", data.captions, "captions"), ("validation", data.validation, "captions"),
                                   ("test", data.test, "captions"), ("web", data.web, "tags"))
    }  # fmt: skip
    return ", ".join(f"{name} {count}" for name, count in counts.items())


def corpus_section(corpus: str, rows: list[Row], curves: dict, data: str, plot: str) -> str:
    return f"""## {corpus}

Images: {data}.

### Ablation (test split, model selected on validation)

{results_table(rows)}

### Against the VSE++ baseline (paired by seed)

{comparisons(rows)}

### Robustness to injected tag noise

Each web tag replaced, with the given probability, by a random tag occurrence the
image does not have (`data.web_tag_noise`, kind `tag`); the clean captions stay
clean. Test rsum (gain over the baseline); the last column is the AUC of the
default's cross-fitted P(wrong) at finding the replaced tags.

{curve_table(rows, curves)}

![rsum against tag noise, {corpus}]({plot})
"""


def run_corpus(corpus: str, args: argparse.Namespace, budget: Budget) -> tuple[list[Row], dict, str]:
    corpus_args = data_overrides(corpus, Path(args.data_root), Path(args.cache_root))
    root = Path(args.root) / corpus
    seeds = list(range(args.seeds))
    rows = [row for row in table_rows(budget) if row.key == "baseline" or not args.rows or row.key in args.rows]
    for row in rows:
        args_row = [*row.overrides, *corpus_args]
        row.runs = [train_run(row.config, args_row, root / row.key / f"seed{s}", s, args.reuse) for s in seeds]
        log.info("%s %s: rsum %s", corpus, row.label, mean_std([r["test"]["rsum"] for r in row.runs]))
    curves = noise_runs(rows, corpus_args, root, seeds, args.reuse, args.noise)
    return rows, curves, data_summary(corpus_args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.ablation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", action="append", help="a folder under --data-root (repeat); default both")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=Budget.steps, help="optimisation steps of every row")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--cache-root", default="cache")
    parser.add_argument("--root", default="runs/ablation")
    parser.add_argument("--docs", default="docs")
    parser.add_argument("--rows", nargs="*", help="row keys to run (the baseline always runs); default all")
    parser.add_argument("--noise", type=float, nargs="*", default=list(NOISE_LEVELS), help="injected noise levels")
    parser.add_argument("--reuse", action="store_true", help="keep finished runs, only rerun what is missing")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = "python -m training.ablation " + " ".join(argv if argv is not None else sys.argv[1:])
    return run_cli(lambda: run_ablation(args, command.strip()), debug=args.debug, expected=CLI_ERRORS)


def run_ablation(args: argparse.Namespace, command: str) -> int:
    """Every row on every corpus; writes docs/RESULTS.md, its plots and the raw runs."""
    corpora = args.corpus or ["openclipart", "emoji"]
    budget = Budget(steps=args.steps, steps_per_epoch=min(Budget.steps_per_epoch, args.steps // 2))
    docs = Path(args.docs)
    docs.mkdir(exist_ok=True)
    sections, raw, by_corpus = [], {}, {}
    for corpus in corpora:
        rows, curves, data = run_corpus(corpus, args, budget)
        by_corpus[corpus] = rows
        plot = f"robustness_{corpus}.png"
        plot_curves(rows, curves, docs / plot, corpus)
        sections.append(corpus_section(corpus, rows, curves, data, plot))
        raw[corpus] = {"rows": {row.key: row.runs for row in rows},
                       "noise": {k: {str(x): v for x, v in c.items()} for k, c in curves.items()}}  # fmt: skip
    write_report(docs / "RESULTS.md", command, sections, args.seeds, budget, selection_section(by_corpus))
    (docs / "ablation_runs.json").write_text(json.dumps(raw, indent=1, default=float))
    return 0


def selection_section(by_corpus: dict[str, list[Row]]) -> str:
    """Which row validation prefers: mean over corpora of each row's validation rsum relative to the baseline."""
    scores: dict[str, list[float]] = {}
    labels = {}
    for rows in by_corpus.values():
        base = np.mean([run["validation"]["rsum"] for run in next(r for r in rows if r.key == "baseline").runs])
        for row in rows:
            labels[row.key] = row.label.replace("**", "")
            scores.setdefault(row.key, []).append(np.mean([run["validation"]["rsum"] for run in row.runs]) / base - 1)
    ranked = sorted(scores, key=lambda key: -np.mean(scores[key]))
    lines = [
        "| row | " + " | ".join(f"validation gain, {c}" for c in by_corpus) + " | mean |",
        "|---" * (len(by_corpus) + 2) + "|",
    ]
    for key in ranked:
        cells = " | ".join(f"{100 * v:+.1f}%" for v in scores[key])
        lines.append(f"| {labels[key]} | {cells} | {100 * np.mean(scores[key]):+.1f}% |")
    return (f"Validation rsum of each row relative to the VSE++ baseline (test split not used); best first. "
            f"Validation prefers **{labels[ranked[0]]}**.\n\n" + "\n".join(lines))  # fmt: skip


def write_report(
    path: Path, command: str, sections: list[str], seeds: int, budget: Budget, selection: str = ""
) -> None:
    text = f"""# Results: webly supervision on two corpora

Produced by the committed script on a 2-core CPU (no GPU):

```bash
{command}
```

Every number is the mean ± sample standard deviation over {seeds} seeds (0 to
{seeds - 1}) on the **test split**, for the model each run selected by
validation rsum; test images never enter training or any choice. Recall in
percent; rsum sums the six recalls. Every row trains for {budget.steps}
optimisation steps of {budget.pairs_per_step} pairs ("pairs/step" per stage);
the noise-aware rows first train small cross-fitting models ("+ estimator"
steps, `training.suspicion`). The two corpora differ only in their data paths
(`training.ablation.data_overrides`). What the rows are: `training/stages.py`,
`configs/`; what was tried and dropped: `docs/ABLATION_NOTES.md`.

## Choosing the default

{selection}

{chr(10).join(sections)}
"""
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
