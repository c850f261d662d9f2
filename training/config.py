"""Training configuration: one dataclass per concern.

Defaults follow VSE++ (Faghri et al., BMVC 2018): Adam, learning rate 2e-4,
margin 0.2, batch 128, gradient clipping at 2, learning rate divided by 10 after
15 epochs, hardest negatives.  Stage two of Mithun et al. (ACM MM 2018) adapts the
stage-one model on web image-tag pairs with a smaller learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vse.config import VSEConfig


@dataclass
class SourceConfig:
    # Hub dataset id, local imagefolder (images + metadata.jsonl), or data files
    # (.parquet/.jsonl/.json/.csv, globs allowed). Empty: not used.
    path: str = ""
    # Split to read; extra_splits are concatenated to it (COCO's "restval").
    split: str = "train"
    extra_splits: list[str] = field(default_factory=list)
    # Keep only rows whose column equals the value, e.g. {"split": "train"}.
    where: dict[str, str] = field(default_factory=dict)
    # Dataset revision (Hub branch, tag or commit) for reproducibility.
    revision: str | None = None
    # Column with the image: an Image feature, or a path/URL string.
    image_column: str = "image"
    # Column with the text: captions (a string or list of strings) or tags (list).
    text_column: str = "captions"
    # Column with a stable image id; default: the image file name, else the row number.
    id_column: str | None = None
    # Root that relative image paths/URLs are resolved against (a folder or URL).
    image_root: str | None = None
    # Stream the source instead of loading it (large web sets).
    streaming: bool = False
    # Use at most this many rows (quick runs and subsets); None: all.
    limit: int | None = None


@dataclass
class DataConfig:
    # Clean image-caption training data.
    captions: SourceConfig = field(default_factory=SourceConfig)
    # Validation split for model selection (captions).
    validation: SourceConfig = field(default_factory=lambda: SourceConfig(split="validation"))
    # Test split reported at the end (captions); optional.
    test: SourceConfig = field(default_factory=lambda: SourceConfig(split="test"))
    # Noisy web image-tag data for stage two (text_column holds the tag list).
    web: SourceConfig = field(default_factory=lambda: SourceConfig(text_column="tags", id_column="id"))
    # Corrections table from the app's feedback export (folder, parquet or Hub id).
    corrections: str | None = None
    # Where backbone features are cached between runs and stages.
    cache_dir: str = "cache"
    # Feature cache shard size in rows.
    cache_shard_size: int = 4096
    # Threads decoding and resizing images while the backbone runs.
    decode_workers: int = 2
    # GRU vocabulary: words seen fewer times in training text become [UNK].
    min_word_frequency: int = 4
    # Robustness experiments: share of web images whose tag list is replaced by
    # the tag list of another, randomly chosen web image (0: the data as it is).
    web_tag_noise: float = 0.0


@dataclass
class OptimConfig:
    # Adam learning rate.
    lr: float = 2e-4
    # Number of epochs.
    epochs: int = 30
    # Multiply the learning rate by lr_decay_factor every lr_decay_epochs epochs.
    lr_decay_epochs: int = 15
    lr_decay_factor: float = 0.1
    # Pairs per batch (per process; the effective batch is the global batch).
    batch_size: int = 128
    # Clip the gradient norm at this value; 0 disables clipping.
    grad_clip: float = 2.0
    # Hinge margin alpha.
    margin: float = 0.2
    # Hardest negatives (VSE++) instead of the sum over negatives (VSE0) ...
    max_violation: bool = True
    # ... after this many warm-up epochs with the sum.
    warmup_epochs: int = 1


@dataclass
class StageOneConfig:
    # Run stage one (clean captions + tags).
    enabled: bool = True
    optim: OptimConfig = field(default_factory=OptimConfig)
    # Weight lambda of the image-tag term.
    tag_weight: float = 1.0
    # Add image-tag pairs with pseudo tags derived from each caption.
    pseudo_tags: bool = True
    # Add human-verified web tags (images reviewed in the app) as clean pairs.
    verified_tags: bool = True
    # Also train on all web pairs in this stage (the one-stage joint baseline).
    include_web: bool = False


@dataclass
class StageTwoConfig:
    # Run stage two (web tags), starting from the stage-one model.
    enabled: bool = True
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=2e-5, epochs=10, lr_decay_epochs=5, warmup_epochs=0)
    )
    # Weight of the image-tag term.
    tag_weight: float = 1.0
    # Curriculum: web pairs ranked easy to hard by the stage-one model's
    # image-tag similarity; epoch e uses the easiest fractions[e] of them
    # (the last value repeats). False: all pairs every epoch.
    curriculum: bool = True
    curriculum_fractions: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])
    # Clean caption pairs replayed per web pair (0: none).
    replay_clean: float = 0.0


@dataclass
class TrainConfig:
    # The model architecture.
    model: VSEConfig = field(default_factory=VSEConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stage1: StageOneConfig = field(default_factory=StageOneConfig)
    stage2: StageTwoConfig = field(default_factory=StageTwoConfig)
    # Start from this saved model (folder or Hub id) instead of a new one.
    init_from: str | None = None
    # Run folder: checkpoints, logs, the final model in <output_dir>/model.
    output_dir: str = "runs/default"
    # Resume from <output_dir>/checkpoint when it exists.
    resume: bool = True
    seed: int = 0
    # Batch size for feature extraction and evaluation.
    eval_batch_size: int = 128
    # Evaluate on the validation split every this many epochs.
    eval_every: int = 1
    # Also log to TensorBoard when it is installed.
    tensorboard: bool = True
    # Show progress bars.
    progress: bool = True
