"""Training configuration: one dataclass per concern.

The defaults are the recipe this project's measurements chose on validation
across two corpora (docs/RESULTS.md): one joint stage of clean captions and web
tags, InfoNCE with a learned temperature, each web tag a text of its own weighted
by its cross-fitted probability of being right (the noise-aware web term), Adam
at 4e-4 for 800 steps, batches of 128 captions and 128 web tags, gradient
clipping at 2.  Only data paths change for new data.

The paper's recipe (Mithun et al., ACM MM 2018, on VSE++, Faghri et al., BMVC
2018) is ``configs/paper_two_stage.yaml``: hinge loss with margin 0.2 on the
hardest negative after one warm-up epoch, stage one on captions and pseudo tags
at 2e-4, stage two on whole web tag lists at a tenth of that rate with a
curriculum; a stage-two section's own defaults are the paper's.
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
    # Robustness experiments: inject noise into the web tags (0: the data as it is).
    # "tag": each tag is replaced, with this probability, by a tag drawn from all
    # web tag occurrences (one the image does not have); "list": this share of
    # images get the whole tag list of another random web image.
    web_tag_noise: float = 0.0
    web_tag_noise_kind: str = "tag"

    def __post_init__(self) -> None:
        if not 0.0 <= self.web_tag_noise <= 1.0:
            raise ValueError(f"web_tag_noise must be in [0, 1], got {self.web_tag_noise}")
        if self.web_tag_noise_kind not in NOISE_KINDS:
            raise ValueError(f"web_tag_noise_kind must be one of {NOISE_KINDS}, got {self.web_tag_noise_kind!r}")


NOISE_KINDS = ("tag", "list")
LOSS_KINDS = ("hinge", "infonce")
WEB_UNITS = ("list", "tags")
# accelerate's mixed-precision modes a run may ask for ("no": float32 throughout).
MIXED_PRECISIONS = ("no", "bf16", "fp16")
# Experiment trackers a run may log to besides metrics.jsonl, with the pip
# package each one needs (accelerate drives them; none is installed by default).
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}


@dataclass
class OptimConfig:
    # Adam learning rate.
    lr: float = 2e-4
    # Number of epochs.
    epochs: int = 30
    # Optimisation steps per epoch; 0: one pass over the stage's main pairs
    # (caption pairs in stage one, web pairs in stage two).
    steps_per_epoch: int = 0
    # Multiply the learning rate by lr_decay_factor every lr_decay_epochs epochs (0: never).
    lr_decay_epochs: int = 15
    lr_decay_factor: float = 0.1
    # Main pairs per step (per process; the effective batch is the global batch).
    batch_size: int = 128
    # Clip the gradient norm at this value; 0 disables clipping.
    grad_clip: float = 2.0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.epochs < 0 or self.steps_per_epoch < 0 or self.batch_size < 2:
            raise ValueError("lr must be positive, epochs and steps_per_epoch not negative, batch_size at least 2")


@dataclass
class LossConfig:
    # "infonce": symmetric InfoNCE with a learned temperature (CLIP); "hinge":
    # the bidirectional hinge ranking loss of VSE++ and the paper.
    kind: str = "infonce"
    # Hinge margin alpha.
    margin: float = 0.2
    # Hinge: the hardest negative (VSE++) instead of the sum over negatives (VSE0) ...
    max_violation: bool = True
    # ... after this many warm-up epochs with the sum.
    warmup_epochs: int = 1
    # InfoNCE: initial temperature, learned unless learn_temperature is false.
    temperature: float = 0.07
    learn_temperature: bool = True

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"loss kind must be one of {LOSS_KINDS}, got {self.kind!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


@dataclass
class WebConfig:
    """How noisy web image-tag pairs are used, in whichever stage trains on them."""

    # "tags": each tag is a text of its own, so one wrong tag does not spoil the
    # others; "list": an image's whole tag list is one text (the paper).
    unit: str = "tags"
    # The noise-aware web term: weight every web pair by the probability that it
    # is right (vse.suspicion, cross-fitted by training.suspicion); human verdicts
    # from data.corrections override it. False: every pair counts fully.
    noise_aware: bool = True
    # Web pairs per step when they join clean pairs in a joint stage one (stage
    # two takes its batch from stage2.optim.batch_size).
    batch_size: int = 128
    # Cross-fitting: web images are split into this many folds; each fold is
    # scored by a model trained without it ...
    suspicion_folds: int = 2
    # ... for this many optimisation steps (short: before it fits the noise) ...
    suspicion_steps: int = 160
    # ... in this many rounds (each round's fold models use the previous weights).
    suspicion_rounds: int = 2

    def __post_init__(self) -> None:
        if self.unit not in WEB_UNITS:
            raise ValueError(f"web unit must be one of {WEB_UNITS}, got {self.unit!r}")
        if self.suspicion_folds < 2 or self.suspicion_steps < 1 or self.suspicion_rounds < 1:
            raise ValueError("suspicion_folds must be at least 2, suspicion_steps and suspicion_rounds at least 1")


@dataclass
class StageOneConfig:
    # Run stage one (clean captions + tags).
    enabled: bool = True
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=4e-4, epochs=20, steps_per_epoch=40, lr_decay_epochs=0)
    )
    loss: LossConfig = field(default_factory=LossConfig)
    # Weight lambda of the image-tag terms.
    tag_weight: float = 1.0
    # Add image-tag pairs with pseudo tags derived from each caption (the paper).
    pseudo_tags: bool = False
    # Add human-verified web tags (images reviewed in the app) as clean tag-list
    # pairs (the paper). Off by default: in a joint stage the reviewed tags already
    # train through the web term at full weight (docs/FEEDBACK.md).
    verified_tags: bool = False
    # Also train on the web pairs in this stage (joint one-stage training).
    include_web: bool = True


@dataclass
class StageTwoConfig:
    # Run stage two (web tags), starting from the best stage-one model. Its other
    # defaults are the paper's stage two.
    enabled: bool = False
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-5, epochs=10, lr_decay_epochs=5))
    loss: LossConfig = field(default_factory=lambda: LossConfig(kind="hinge", warmup_epochs=0))
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
class LogConfig:
    """Where a run's records go: always <output_dir>/metrics.jsonl, plus these trackers."""

    # Experiment trackers that also receive every record, through accelerate:
    # any of "tensorboard", "wandb", "trackio" (each needs its pip package; a
    # missing one stops the run at start). Empty: metrics.jsonl only.
    trackers: list[str] = field(default_factory=list)
    # The trackers' project name: the wandb or trackio project, and TensorBoard's
    # folder under <output_dir>/logs.
    project: str = "webly-vse"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.trackers) - set(TRACKER_PACKAGES))
        if unknown:
            raise ValueError(f"unknown trackers {unknown}; choose from {sorted(TRACKER_PACKAGES)}")
        if not self.project.strip():
            raise ValueError("the trackers' project name must not be empty")


@dataclass
class TrainConfig:
    # The model architecture.
    model: VSEConfig = field(default_factory=VSEConfig)
    data: DataConfig = field(default_factory=DataConfig)
    web: WebConfig = field(default_factory=WebConfig)
    stage1: StageOneConfig = field(default_factory=StageOneConfig)
    stage2: StageTwoConfig = field(default_factory=StageTwoConfig)
    # Start from this saved model (folder or Hub id) instead of a new one.
    init_from: str | None = None
    # Run folder: checkpoints, logs, the final model in <output_dir>/model.
    output_dir: str = "runs/default"
    # Resume from <output_dir>/checkpoint when it exists (the config must be the
    # checkpoint's, runtime keys aside); false starts the run afresh.
    resume: bool = True
    # Seeds initialisation, batch order, noise injection and cross-fitting folds.
    seed: int = 0
    # Batch size for feature extraction and evaluation.
    eval_batch_size: int = 128
    # Evaluate on the validation split every this many epochs.
    eval_every: int = 1
    # Mixed precision of the training steps (accelerate): "no" (float32), "bf16"
    # (GPUs with bfloat16, and CPUs) or "fp16" (CUDA only, with loss scaling).
    # Weights and optimiser state stay float32 either way. (YAML reads a bare
    # `no` as false, which is taken to mean "no".)
    mixed_precision: str | bool = "no"
    # Records besides metrics.jsonl: experiment trackers.
    log: LogConfig = field(default_factory=LogConfig)
    # Show progress bars.
    progress: bool = True
    # Stop after this many epochs of the whole run (both stages), as if
    # interrupted; 0: run to the end. A later run with resume picks it up.
    stop_after_epochs: int = 0
    # The same after this many optimisation steps of the whole run (suspicion
    # folds not counted), mid-epoch if need be: the checkpoint then holds the
    # position inside the epoch, so the resumed run ends as an uninterrupted one.
    stop_after_steps: int = 0
    # Also checkpoint every this many optimisation steps of the whole run (0:
    # at the end of every epoch only), so that a crash loses at most that many.
    checkpoint_every_steps: int = 0

    def __post_init__(self) -> None:
        if self.mixed_precision is False:
            self.mixed_precision = "no"
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISIONS}, got {self.mixed_precision!r}")
        if min(self.stop_after_epochs, self.stop_after_steps, self.checkpoint_every_steps) < 0:
            raise ValueError("stop_after_epochs, stop_after_steps and checkpoint_every_steps must not be negative")


# Keys that may differ between a checkpoint and the run resuming it: they change
# how a run is executed or shown, not what it computes.
RUNTIME_KEYS = frozenset(
    {
        "resume",
        "progress",
        "log.trackers",
        "log.project",
        "stop_after_epochs",
        "stop_after_steps",
        "checkpoint_every_steps",
        "eval_batch_size",
        "data.cache_dir",
        "data.decode_workers",
    }
)
