"""The model card (README.md) written beside every saved model.

It records what a reader of the Hub page needs to trust a checkpoint: the
architecture, the data it was trained on (with revisions when known), the metrics
it reached and the exact config.  Values are rendered as Markdown text; nothing
is executed.
"""

from __future__ import annotations

import json
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
