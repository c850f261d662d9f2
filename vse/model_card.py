"""The model card (README.md) written beside every saved model.

It records what a reader of the Hub page needs to trust a checkpoint: the
architecture, the data it was trained on (with revisions when known), the metrics
it reached and the exact config.  Values are rendered as Markdown text; nothing
is executed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from vse.config import VSEConfig

METRIC_ORDER = (
    "i2t_R@1", "i2t_R@5", "i2t_R@10", "i2t_medr", "i2t_meanr",
    "t2i_R@1", "t2i_R@5", "t2i_R@10", "t2i_medr", "t2i_meanr", "rsum",
)  # fmt: skip

CITATION = """@inproceedings{mithun2018webly,
  title     = {Webly Supervised Joint Embedding for Cross-Modal Image-Text Retrieval},
  author    = {Mithun, Niluthpol Chowdhury and Panda, Rameswar and Papalexakis, Evangelos E. and Roy-Chowdhury, Amit K.},
  booktitle = {Proceedings of the 26th ACM International Conference on Multimedia},
  year      = {2018}
}
@inproceedings{faghri2018vse,
  title     = {VSE++: Improving Visual-Semantic Embeddings with Hard Negatives},
  author    = {Faghri, Fartash and Fleet, David J. and Kiros, Jamie Ryan and Fidler, Sanja},
  booktitle = {BMVC},
  year      = {2018}
}"""


RECALLS = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "rsum")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(source: object) -> bool:
    """A Hub repo id (``owner/name``) rather than a local path."""
    return isinstance(source, str) and bool(HUB_ID.match(source)) and not Path(source).exists()


def card_metadata(card_data: Any, config: VSEConfig, metrics: dict, repo_id: str | None = None) -> Any:
    """Fill a ``huggingface_hub.ModelCardData``: model-index with Recall@K per split, base models, datasets."""
    from huggingface_hub import EvalResult

    sources = [d for d in config.extra.get("datasets") or [] if isinstance(d, dict)]
    card_data.datasets = sorted({d["id"] for d in sources if is_hub_id(d.get("id"))}) or None
    card_data.base_model = [m for m in (config.image_backbone, config.text_model) if is_hub_id(m)
                            and (m != config.text_model or config.text_encoder == "transformer")] or None  # fmt: skip
    card_data.license = config.extra.get("license", "mit")
    card_data.pipeline_tag = "feature-extraction"
    card_data.model_name = repo_id or "vse-model"
    by_role = {d.get("role"): d for d in sources}
    results = []
    for split, values in metrics.items():
        if not isinstance(values, dict) or "rsum" not in values:
            continue
        source = by_role.get(split, {}).get("id")
        name = source if is_hub_id(source) else f"{Path(str(source or split)).name} (local)"
        for key in RECALLS:
            if key in values:
                results.append(
                    EvalResult(
                        task_type="image-text-retrieval",
                        task_name="Image-text retrieval",
                        dataset_type=source if is_hub_id(source) else "custom",
                        dataset_name=name,
                        dataset_split=split,
                        metric_type="recall" if key != "rsum" else "rsum",
                        metric_name=key,
                        metric_value=round(float(values[key]), 2),
                    )  # fmt: skip
                )
    card_data.eval_results = results or None
    return card_data


def _escape_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def metrics_table(metrics: dict[str, dict[str, float]]) -> str:
    """A Markdown table: one row per evaluation split, one column per metric."""
    metrics = {split: values for split, values in metrics.items() if "rsum" in values}
    if not metrics:
        return "No evaluation was recorded for this checkpoint."
    keys = [k for k in METRIC_ORDER if any(k in m for m in metrics.values())]
    lines = ["| split | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for split, values in metrics.items():
        cells = [f"{values[k]:.2f}" if k in values else "" for k in keys]
        lines.append(f"| {_escape_cell(split)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def datasets_section(config: VSEConfig) -> str:
    datasets = config.extra.get("datasets") or []
    if not datasets:
        return "Not recorded."
    lines = []
    for entry in datasets:
        if isinstance(entry, dict):
            details = ", ".join(f"{k}: {_escape_cell(v)}" for k, v in entry.items() if k != "id")
            lines.append(f"- `{_escape_cell(entry.get('id'))}`" + (f" ({details})" if details else ""))
        else:
            lines.append(f"- `{_escape_cell(entry)}`")
    return "\n".join(lines)


def corrections_section(config: VSEConfig) -> str:
    """What human review contributed: the corrections table's fingerprint, votes, reviewers, changes."""
    record = config.extra.get("corrections")
    if not record:
        return "None: trained on the web tags as collected."
    verdicts = ", ".join(f"{k} {v}" for k, v in (record.get("verdicts") or {}).items())
    models = ", ".join(f"`{str(k)[:12]}` ({v} votes)" for k, v in (record.get("queue_models") or {}).items())
    return "\n".join(
        [
            f"- corrections table: `{_escape_cell(record.get('fingerprint', ''))[:16]}` ({verdicts})",
            f"- votes: {record.get('votes', '?')} by {record.get('reviewers', '?')} reviewers on "
            f"{record.get('reviewed_images', '?')} images; review queue ranked by {models or 'unknown'}",
            f"- applied to the web data: {record.get('removed', 0)} tags removed, {record.get('added', 0)} added, "
            f"{record.get('confirmed', 0)} confirmed on {record.get('images', 0)} images",
        ]
    )


def robustness_section(config: VSEConfig) -> str:
    """The recipe's test rsum against injected tag noise, when the training measured it (``extra["robustness"]``)."""
    curve = config.extra.get("robustness")
    if not curve:
        return "Not measured for this checkpoint (see docs/RESULTS.md of the project for the recipe's curve)."
    lines = ["| web tags replaced | test rsum |", "|---|---|"]
    lines += [f"| {_escape_cell(level)} | {_escape_cell(value)} |" for level, value in curve.items()]
    source = config.extra.get("robustness_source")
    return "\n".join(lines) + (f"\n\n{source}" if source else "")


def render_model_card(card_yaml: str, config: VSEConfig, metrics: dict[str, dict[str, float]], **kwargs: Any) -> str:
    """Full README.md text with YAML front matter."""
    repo_id = kwargs.get("repo_id", "USER/MODEL")
    text_encoder = "GRU over word embeddings" if config.text_encoder == "gru" else f"`{config.text_model}`"
    return f"""---
{card_yaml}
---

# Visual-semantic embedding for image-text retrieval

A joint embedding of images, sentences and tag lists (cosine similarity), trained
with the webly supervised two-stage method of Mithun et al. (ACM MM 2018) on top of
VSE++ (Faghri et al., BMVC 2018).

| part | value |
|---|---|
| image backbone | `{_escape_cell(config.image_backbone)}` ({config.image_pooling} pooling, fine-tuned: {config.finetune_image}) |
| text encoder | {_escape_cell(text_encoder)} (fine-tuned: {config.finetune_text if config.text_encoder == "transformer" else True}) |
| joint dimension | {config.embed_dim} |

## Results

Recall@K in percent, median/mean rank, rsum = sum of the six recalls.

{metrics_table(metrics)}

## Training data

{datasets_section(config)}

## Human corrections

{corrections_section(config)}

## Robustness to tag noise

{robustness_section(config)}

## Usage

```python
from vse import VSEModel

model = VSEModel.from_pretrained("{repo_id}")
images = model.encode_image(["photo.jpg"])
texts = model.encode_text(["a red apple on a table"])
scores = model.similarity(texts, images)
```

## Config

```json
{json.dumps(config.to_dict(), indent=2, sort_keys=True)}
```

## Citation

```bibtex
{CITATION}
```
"""
