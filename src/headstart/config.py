"""Training configuration: one frozen, keyword-only dataclass that round-trips through JSON."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from headstart.errors import HeadstartError, check_choice, did_you_mean

STRATEGIES = ("linear-probe", "partial", "full", "two-stage", "auto")  # auto: measured plan, see planning.py
PRECISIONS = ("auto", "bf16", "fp32")
ENGINES = ("auto", "torch", "openvino")  # inference engines of frozen-backbone features (features/engine.py)
SCHEDULES = ("cosine", "onecycle")
LONG_TEXTS = ("window", "truncate")  # hf: texts longer than the encoder's max length
HARDEN_METHODS = ("teacher", "adversarial")  # defences of --harden (audit/harden.py)
SSL_METHODS = ("auto", "self-training", "label-propagation", "fixmatch")  # of --unlabeled (headstart/semi)
TARGET_METHODS = ("dann", "deep-coral")  # of --target: adapt while training (adapt/objectives.py)
TRACKERS = ("tensorboard", "mlflow")  # experiment tracking of a fit (headstart/track)
DEFAULT_BACKBONE = "timm:tf_efficientnet_lite0"  # offline from its PyPI package


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    strategy: str = field(default="two-stage", metadata={"help": f"one of {STRATEGIES}"})
    freeze_stages: int | None = field(default=None, metadata={
        "help": "partial: the first K backbone stages stay frozen. two-stage: after the head stage, "
                "unfreeze from stage K (default 0 = all)."})
    epochs: int = field(default=8, metadata={"help": "epochs over images when the backbone trains"})
    head_epochs: int = field(default=40, metadata={
        "help": "epochs of head-only training (on cached features: each takes a fraction of a second); "
                "raised so the head gets at least head_min_steps optimizer steps"})
    head_min_steps: int = field(default=500, metadata={
        "help": "a few hundred images make only a few batches per epoch; a linear head on fixed "
                "features needs a few hundred steps to converge, and here they cost milliseconds"})
    batch_size: int = field(default=32, metadata={
        "help": "examples per optimizer step and process (under N processes the global batch is N x this); "
                "head-only stages use at least 128 in all"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate of the new head"})
    backbone_lr_ratio: float = field(default=0.1, metadata={
        "help": "backbone LR = lr x this: pretrained weights move less than the new head"})
    layer_decay: float | None = field(default=None, metadata={
        "help": "each stage below the top trains at this x the LR of the stage above it "
                "(discriminative LRs). Default 0.8 for two-stage, 1.0 otherwise."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW; never applied to biases and norms"})
    label_smoothing: float = field(default=0.1, metadata={"help": "of the training cross-entropy"})
    warmup_frac: float = field(default=0.1, metadata={"help": "fraction of each stage's steps spent warming up"})
    schedule: str = field(default="cosine", metadata={"help": f"one of {SCHEDULES}"})
    augment: bool = field(default=True, metadata={
        "help": "random flip + resized crop while the backbone trains (head-only stages use cached features)"})
    train_size: int | None = field(default=None, metadata={
        "help": "images: while the backbone trains, feed it crops resized to this side (e.g. 160) instead of the "
                "model's input size; validation, prediction and cached features stay at the input size. "
                "(224/160)^2 = 2x fewer pixels a step (benchmarks/bench_finetune_speed.py); CNNs with global "
                "pooling take any size. None = the input size"})
    val_fraction: float = field(default=0.2, metadata={"help": "held out per class when no validation set is given"})
    patience: int = field(default=5, metadata={"help": "early stopping: epochs without validation improvement"})
    dropout: float = field(default=0.0, metadata={"help": "before the new head"})
    train_bn: bool = field(default=False, metadata={
        "help": "update the running statistics of BatchNorm layers that are being fine-tuned; False keeps "
                "every BN in inference mode (Keras' advice for small datasets). Frozen BN never updates."})
    seed: int = field(default=0, metadata={"help": "seeds the split, initialisation, sample order and augmentation"})
    precision: str = field(default="auto", metadata={"help": f"one of {PRECISIONS}; auto = bf16 where the CPU/GPU supports it"})
    engine: str = field(default="auto", metadata={
        "help": f"one of {ENGINES}: what runs frozen-backbone features, prediction and the stage profile on a CPU. "
                "auto = OpenVINO for image backbones from 256 images on when it is installed (else the torch "
                "fast path); $HEADSTART_ENGINE sets it where this is auto"})
    strict: bool = field(default=False, metadata={"help": "fail on an unreadable image or text row instead of skipping it (skipped ones are listed in the run)"})
    long_texts: str = field(default="window", metadata={
        "help": f"one of {LONG_TEXTS}: hf: text backbones given training texts longer than their max length "
                "encode them in up to 8 overlapping windows, mean-pooled over every token ('window'; off when "
                "no training text is longer), or keep the first max-length tokens ('truncate')"})
    use_feature_cache: bool = field(default=True, metadata={
        "flag": "feature-cache",
        "help": "cache frozen-backbone features on disk ($HEADSTART_CACHE) and frozen-prefix outputs in memory"})
    cut_stage: int | None = field(default=None, metadata={
        "help": "keep backbone stages 0..K and drop the ones above (their pooled features did not help; "
                "see `headstart plan`); None keeps every stage. strategy 'auto' sets it from the plan."})
    baselines: bool = field(default=True, metadata={
        "help": "after the fit, compare with a linear probe and a model without pretraining on the same split "
                "(images: a small net trained from scratch for the same wall time; texts: TF-IDF + logistic "
                "regression), and warn when transfer did not help"})
    baseline_seconds: float | None = field(default=None, metadata={
        "help": "wall-time budget of the from-scratch model; None = the transfer model's training time"})
    harden: bool = field(default=False, metadata={
        "help": "fine-tune with a defence against inherited adversarial weaknesses (harden_method); "
                "`headstart audit` measures what it bought. Images, strategies that train the backbone"})
    harden_method: str = field(default="teacher", metadata={
        "help": f"one of {HARDEN_METHODS}: 'teacher' trains on each image's teacher-only perturbation (computed "
                "once on the public base weights; targets inheritance, about the cost of plain fine-tuning), "
                "'adversarial' on white-box PGD examples of the model itself (an extra pass per step)"})
    harden_eps: float = field(default=8.0, metadata={
        "help": "L-inf budget of the hardening perturbations, in 1/255 steps of a [0, 1] pixel (8 = 8/255)"})
    harden_steps: int | None = field(default=None, metadata={
        "help": "attack steps per perturbation; default 5 for 'teacher' (run once), 1 for 'adversarial' "
                "(every step: FGSM with a random start)"})
    harden_mix: float = field(default=0.5, metadata={
        "help": "share of each batch replaced by its perturbed copy while the backbone trains"})
    ssl_method: str = field(default="auto", metadata={
        "help": f"one of {SSL_METHODS}: how --unlabeled examples train the head on the run's embeddings. "
                "'self-training' pseudo-labels the most confident share of each predicted class, more each "
                "round; 'label-propagation' spreads the labels over a nearest-neighbour graph; 'auto' tries "
                "both and keeps the best on validation, or the supervised head when neither beats it; 'fixmatch' "
                "trains the backbone on the pool while it fine-tunes (images; strategies that train the backbone)"})
    ssl_threshold: float = field(default=0.5, metadata={
        "help": "--unlabeled: the least confidence a pseudo-label may have (softmax, or propagated label share)"})
    ssl_rounds: int = field(default=5, metadata={
        "help": "self-training rounds; round r pseudo-labels the r/rounds most confident share of each class"})
    ssl_neighbors: int = field(default=10, metadata={"help": "label-propagation: neighbours per example"})
    fixmatch_threshold: float = field(default=0.95, metadata={
        "help": "fixmatch: the least confidence on the weak view for its prediction to label the strong view"})
    fixmatch_ratio: int = field(default=1, metadata={
        "help": "fixmatch: unlabelled images per labelled one in each step (the paper's 7 costs 7x on a CPU)"})
    ssl_pool_max: int = field(default=10000, metadata={
        "help": "fixmatch: at most this many pool images, drawn with the seed, are decoded and kept in memory "
                "(150 kB each at 224 px)"})
    target_method: str = field(default="dann", metadata={
        "help": f"one of {TARGET_METHODS}: how --target examples shape the backbone while it trains. 'dann' "
                "trains a domain discriminator through a reversed gradient, 'deep-coral' matches the two "
                "domains' covariances of the class logits. Strategies that train the backbone"})
    target_weight: float = field(default=1.0, metadata={
        "help": "--target: weight of the alignment loss beside the source cross-entropy"})
    target_keep: str = field(default="vote", metadata={
        "help": "--target: 'vote' keeps the adapted model only when the label-free scores say it beats the "
                "source-only one (the head stage, on the pretrained features), else that one; 'adapted' always "
                "keeps the adapted model"})
    target_max: int = field(default=5000, metadata={
        "help": "--target: at most this many target examples, drawn with the seed, are read and kept in memory"})
    track: str | None = field(default=None, metadata={
        "help": f"log the fit to one of {TRACKERS}: options, per-epoch metrics, final metrics and baselines, "
                "the run folder (pip install 'headstart[track]')"})
    track_uri: str | None = field(default=None, metadata={
        "help": "where --track logs: a TensorBoard log directory (default RUN/tensorboard) or an MLflow tracking "
                "URI (default $MLFLOW_TRACKING_URI, else MLflow's local default)"})

    def __post_init__(self):
        check_choice("strategy", self.strategy, STRATEGIES)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("engine", self.engine, ENGINES)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("long_texts", self.long_texts, LONG_TEXTS)
        check_choice("harden_method", self.harden_method, HARDEN_METHODS)
        check_choice("ssl_method", self.ssl_method, SSL_METHODS)
        check_choice("target_method", self.target_method, TARGET_METHODS)
        check_choice("target_keep", self.target_keep, ("vote", "adapted"))
        if self.train_size is not None and not 32 <= self.train_size <= 1024:
            raise HeadstartError(f"train_size is a side in pixels in [32, 1024]; got {self.train_size} (None trains "
                                 "at the model's input size).")
        if not self.target_weight > 0:
            raise HeadstartError(f"target_weight must be > 0; got {self.target_weight} (train without --target "
                                 "for no alignment).")
        _positive("target_max", self.target_max)
        if not 0.0 <= self.ssl_threshold < 1.0:
            raise HeadstartError(f"ssl_threshold is a confidence in [0, 1); got {self.ssl_threshold}.")
        _positive("ssl_rounds", self.ssl_rounds)
        _positive("ssl_neighbors", self.ssl_neighbors)
        _positive("fixmatch_ratio", self.fixmatch_ratio)
        _positive("ssl_pool_max", self.ssl_pool_max)
        if not 0.0 < self.fixmatch_threshold < 1.0:
            raise HeadstartError(f"fixmatch_threshold is a confidence in (0, 1); got {self.fixmatch_threshold}.")
        self._check_harden()
        if self.track is not None:
            check_choice("track", self.track, TRACKERS)
        if self.track_uri is not None and self.track is None:
            raise HeadstartError(f"track_uri={self.track_uri!r} was given without track: add --track tensorboard "
                                 "or --track mlflow.")
        _positive("epochs", self.epochs, allow_zero=True)
        _positive("head_epochs", self.head_epochs, allow_zero=True)
        _positive("batch_size", self.batch_size)
        _positive("lr", self.lr)
        if not 0.0 < self.backbone_lr_ratio <= 10:
            raise HeadstartError(f"backbone_lr_ratio must be in (0, 10]; got {self.backbone_lr_ratio}.")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise HeadstartError(f"layer_decay must be in (0, 1]; got {self.layer_decay}.")
        if not 0.0 <= self.val_fraction < 1.0:
            raise HeadstartError(f"val_fraction must be in [0, 1); got {self.val_fraction}.")
        if self.cut_stage is not None and self.cut_stage < 0:
            raise HeadstartError(f"cut_stage must be >= 0; got {self.cut_stage}.")
        if self.baseline_seconds is not None and self.baseline_seconds <= 0:
            raise HeadstartError(f"baseline_seconds must be > 0; got {self.baseline_seconds}.")
        if self.freeze_stages is not None and self.freeze_stages < 0:
            raise HeadstartError(f"freeze_stages must be >= 0; got {self.freeze_stages}.")
        if self.strategy == "partial" and self.freeze_stages is None:
            raise HeadstartError("strategy 'partial' needs freeze_stages (CLI: --freeze-stages K), "
                                 "the number of leading backbone stages to keep frozen.")
        if self.strategy == "linear-probe" and self.head_epochs == 0:
            raise HeadstartError("strategy 'linear-probe' trains only the head: head_epochs must be > 0.")

    def _check_harden(self) -> None:
        if not 0.5 <= self.harden_eps <= 64:
            hint = (f" It looks like a [0, 1] value: pass {self.harden_eps * 255:.0f} for {self.harden_eps * 255:.0f}/255."
                    if 0 < self.harden_eps < 0.5 else "")
            raise HeadstartError(f"harden_eps is in 1/255 pixel steps and must be in [0.5, 64]; got "
                                 f"{self.harden_eps}.{hint}")
        if not 0.0 < self.harden_mix <= 1.0:
            raise HeadstartError(f"harden_mix must be in (0, 1]; got {self.harden_mix}.")
        if self.harden_steps is not None and self.harden_steps < 1:
            raise HeadstartError(f"harden_steps must be >= 1; got {self.harden_steps}.")
        if self.harden and self.strategy in ("linear-probe", "auto"):
            why = ("trains only the head on the frozen backbone's features, which are the teacher's own"
                   if self.strategy == "linear-probe" else "may keep a linear probe or a from-scratch model")
            raise HeadstartError(f"--harden changes how the backbone fine-tunes, and strategy {self.strategy!r} {why}: "
                                 "use --strategy two-stage (or full, partial) with --harden.")

    @property
    def effective_layer_decay(self) -> float:
        if self.layer_decay is not None:
            return self.layer_decay
        return 0.8 if self.strategy == "two-stage" else 1.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:

            raise HeadstartError(f"Unknown training option {unknown[0]!r}." + did_you_mean(unknown[0], names))
        return cls(**d)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def _positive(name: str, value, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise HeadstartError(f"The {name!r} parameter must be {bound}; got {value!r} instead.")
