"""The seeded training loop.

Validation is a callable from the caller (``model -> score``, higher is better; the pipelines pass
N-way one-shot accuracy on held-out groups); the best model is kept; early stopping, warm-up plus cosine learning-rate schedule; a checkpoint every few
steps lets a killed run resume exactly (every batch and augmentation is a function of the seed
and the step); curves are written as CSV and PNG. With ``ema_decay`` the model validated and kept
is an exponential moving average of the weights (and BatchNorm statistics), via
``torch.optim.swa_utils.AveragedModel``; the history then also shows the raw weights' score.
With ``teachers`` (model files) a prototypical run is distilled: see :mod:`oneshot.embedder.distill`.
With ``look_alike_classes`` a block of each batch is a class and its nearest classes under the
current weights (hard-class mining): see :mod:`oneshot.embedder.look_alikes`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from oneshot.atomic import atomic_path
from oneshot.data.augment import AugmentConfig, augment
from oneshot.embedder.artifact import load_model, save_model
from oneshot.embedder.dataset import LabelledImages
from oneshot.embedder.distill import distillation_loss, teacher_vectors
from oneshot.embedder.encode import default_device
from oneshot.embedder.hardware import machine
from oneshot.embedder.init import initialise_from, recalibrate_batchnorm
from oneshot.embedder.look_alikes import nearest_classes, representative_rows
from oneshot.embedder.losses import (
    ContrastiveLoss,
    NormalizedSoftmaxLoss,
    PrototypicalLoss,
    SiameseBCELoss,
    TripletLoss,
    WithProxies,
)
from oneshot.embedder.matching import match_loss
from oneshot.embedder.model import Embedder, embed_batch, embed_batch_with_local
from oneshot.embedder.precision import PRECISION_SPELLINGS, TRAINING_PRECISIONS, training_precision
from oneshot.embedder.preprocess import Recipe
from oneshot.embedder.samplers import EpisodeSampler, PairSampler, PKSampler
from oneshot.errors import CorruptFileError, InvalidInputError

log = logging.getLogger(__name__)
OBJECTIVES = ("siamese", "contrastive", "triplet", "prototypical", "normsoftmax")
PAIR_OBJECTIVES = ("siamese", "contrastive")
PRECISIONS = TRAINING_PRECISIONS
#: bfloat16 against float32 training steps where bfloat16 is emulated: 9.0x (the block net), 9.3x and 9.2x (the
#: residual nets) on a 2-core AMD EPYC with AVX2 only (``benchmarks/results/train_step_speed_avx2.json``).
EMULATED_BFLOAT16_SLOWDOWN = "about 9 times"
_INTEGER_OPTIONS = ("steps", "cycles", "warmup_steps", "classes_per_batch", "items_per_class", "k_shot", "classes_per_group",
                    "pairs", "val_every", "val_way", "val_episodes", "patience", "checkpoint_every", "seed",
                    "look_alike_classes", "look_alike_every", "match_dim", "match_tap")
_BOOLEAN_OPTIONS = ("every_support", "within_group", "same_group_negatives", "rotations", "reflections",
                    "small_groups", "match_position", "match_detach")


@dataclass
class TrainConfig:
    """Everything that decides a training run. ``None`` options fall back to the objective's default."""

    objective: str = "prototypical"
    mining: str = "hard"
    margin: float | None = None
    backbone: str = "conv4"
    backbone_options: dict = field(default_factory=dict)
    dim: int | None = 128
    recipe: dict = field(default_factory=lambda: Recipe(size=28).to_dict())
    steps: int = 3000
    cycles: int = 1
    lr: float = 2e-3
    weight_decay: float = 5e-4
    warmup_steps: int = 100
    classes_per_batch: int = 60
    items_per_class: int = 2
    k_shot: int = 1
    every_support: bool = False
    within_group: bool = False
    classes_per_group: int = 0
    small_groups: bool = False
    look_alike_classes: int = 0
    look_alike_every: int = 500
    pairs: int = 128
    same_group_negatives: bool = True
    rotations: bool = True
    reflections: bool = False
    augment: dict = field(default_factory=lambda: AugmentConfig().to_dict())
    val_every: int = 250
    val_way: int = 20
    val_episodes: int = 400
    patience: int = 0
    checkpoint_every: int = 250
    seed: int = 0
    max_seconds: float = 0.0
    ema_decay: float = 0.0
    teachers: list = field(default_factory=list)
    distill_weight: float = 0.5
    distill_temperature: float = 4.0
    precision: str = "fp32"
    match_dim: int = 0
    match_weight: float = 1.0
    match_position: bool = False
    match_tap: int = 2
    match_detach: bool = False
    proxy_weight: float = 0.0

    def __post_init__(self):
        for name in _INTEGER_OPTIONS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInputError(f"training option {name} must be an integer, got {value!r}")
        for name in ("lr", "weight_decay", "max_seconds", "match_weight", "proxy_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise InvalidInputError(f"training option {name} must be a non-negative number, got {value!r}")
        if not 0 <= self.ema_decay < 1:
            raise InvalidInputError(f"training option ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if isinstance(self.precision, str) and self.precision in PRECISION_SPELLINGS:  # "float32", "bfloat16" too
            self.precision = training_precision(self.precision)
        if self.precision not in PRECISIONS:
            raise InvalidInputError(f"training option precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.objective not in OBJECTIVES:
            raise InvalidInputError(f"unknown objective {self.objective!r}; known: {', '.join(OBJECTIVES)}")
        if self.steps < 1 or self.val_every < 1 or self.checkpoint_every < 1:
            raise InvalidInputError("steps, val_every and checkpoint_every must be positive")
        if not 1 <= self.cycles <= self.steps:
            raise InvalidInputError(f"training option cycles must be in [1, steps], got {self.cycles!r}")
        if not isinstance(self.teachers, list) or not all(isinstance(t, str) and t for t in self.teachers):
            raise InvalidInputError(f"training option teachers must be a list of model paths, got {self.teachers!r}")
        for name in _BOOLEAN_OPTIONS:
            if not isinstance(getattr(self, name), bool):
                raise InvalidInputError(f"training option {name} must be true or false, got {getattr(self, name)!r}")
        if self.classes_per_group < 0 or (self.classes_per_group and self.within_group):
            raise InvalidInputError(f"training option classes_per_group must be >= 0 (0: off) and needs within_group "
                                    f"off, got {self.classes_per_group!r}")
        if self.small_groups and not self.classes_per_group:
            raise InvalidInputError("training option small_groups needs classes_per_group (blocks) to be on")
        if self.look_alike_classes and not 2 <= self.look_alike_classes < self.classes_per_batch:
            raise InvalidInputError(f"training option look_alike_classes must be 0 (off) or in [2, classes_per_batch), "
                                    f"got {self.look_alike_classes!r}")
        if self.look_alike_every < 1:
            raise InvalidInputError(f"training option look_alike_every must be positive, got {self.look_alike_every!r}")
        for option, used in (("every_support", self.every_support), ("classes_per_group", self.classes_per_group),
                             ("look_alike_classes", self.look_alike_classes), ("match_dim", self.match_dim),
                             ("distillation from teachers", self.teachers), ("proxy_weight", self.proxy_weight)):
            if used and self.objective != "prototypical":
                raise InvalidInputError(f"{option} needs the prototypical objective, not {self.objective!r}")
        if isinstance(self.distill_weight, bool) or not isinstance(self.distill_weight, (int, float)) \
                or not 0 <= self.distill_weight <= 1:
            raise InvalidInputError(f"training option distill_weight must be in [0, 1], got {self.distill_weight!r}")
        if isinstance(self.distill_temperature, bool) or not isinstance(self.distill_temperature, (int, float)) \
                or self.distill_temperature <= 0:
            raise InvalidInputError(f"training option distill_temperature must be positive, got {self.distill_temperature!r}")
        if self.match_dim < 0:
            raise InvalidInputError(f"training option match_dim must be >= 0 (0: no map matcher), got {self.match_dim!r}")
        if (self.match_position or self.match_tap != 2 or self.match_detach) and not self.match_dim:
            raise InvalidInputError("training options match_position, match_tap and match_detach need a map matcher "
                                    "(match_dim > 0)")
        Recipe.from_dict(self.recipe)
        self.augment = AugmentConfig.from_dict(self.augment).to_dict()  # every key: a partial dict means the defaults

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        if set(config) - known:
            raise InvalidInputError(f"unknown training options {sorted(set(config) - known)}; known: {sorted(known)}")
        return cls(**config)


def build_model(config: TrainConfig) -> Embedder:
    head = "siamese" if config.objective == "siamese" else "normalized"
    return Embedder(config.backbone, config.dim, head, Recipe.from_dict(config.recipe), config.backbone_options,
                    config.match_dim or None, config.match_position, config.match_tap)


def build_loss(config: TrainConfig, model: Embedder, n_classes: int) -> torch.nn.Module:
    margin = config.margin
    if config.objective == "siamese":
        return SiameseBCELoss(model.head.pair_logit)
    if config.objective == "contrastive":
        return ContrastiveLoss(1.0 if margin is None else margin)
    if config.objective == "triplet":
        return TripletLoss(0.2 if margin is None else margin, config.mining)
    if config.objective == "prototypical":
        episodic = PrototypicalLoss(config.k_shot, every_support=config.every_support)
        if not config.proxy_weight:
            return episodic
        return WithProxies(episodic, NormalizedSoftmaxLoss(n_classes, model.dim), config.proxy_weight)
    return NormalizedSoftmaxLoss(n_classes, model.dim, margin=0.1 if margin is None else margin)


def build_sampler(config: TrainConfig, labels: np.ndarray, groups: np.ndarray):
    if config.objective in PAIR_OBJECTIVES:
        return PairSampler(labels, groups, config.pairs, config.same_group_negatives, config.seed)
    if config.objective == "prototypical":
        return EpisodeSampler(labels, groups, config.classes_per_batch, config.k_shot,
                              config.items_per_class - config.k_shot, config.within_group, config.seed,
                              config.classes_per_group, config.small_groups, config.look_alike_classes)
    return PKSampler(labels, config.classes_per_batch, config.items_per_class, config.seed)


def training_memory_format(device: torch.device) -> torch.memory_format:
    """``channels_last`` on the CPU (oneDNN's convolutions, batch norm and pooling run about a third
    faster on (N, H, W, C) batches than on (N, C, H, W)), else the default layout."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


@contextlib.contextmanager
def step_random(seed: int, device: torch.device):
    """Inside: torch's global random draws (the forward pass's, e.g. stochastic depth) a function of
    ``seed`` alone, so a resumed run repeats them; the global state is restored afterwards."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def warn_if_bfloat16_is_emulated(precision: str, native: bool | None, device: torch.device) -> bool:
    """Log a warning, and return True, when training in ``bf16`` on a ``device`` without native bfloat16
    (``native`` False, as :func:`~oneshot.embedder.hardware.native_bfloat16` says; None: unknown, no
    claim): there autocast emulates it, many times slower than float32
    (``benchmarks/results/train_step_speed_avx2.json``)."""
    if precision != "bf16" or native is not False:
        return False
    log.warning("training in bfloat16 on %s, which has no native bfloat16 (AVX512-BF16 or AMX on a CPU): it is emulated "
                "there, and a step ran %s slower than in float32 on a 2-core AVX2 CPU; give --precision fp32 (or "
                "\"precision\": \"fp32\" in the config) unless the run must repeat a bfloat16 one", device,
                EMULATED_BFLOAT16_SLOWDOWN)
    return True


def batch_loss(model: Embedder, loss_fn: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
               config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch (N, C, H, W) with labels (N,) -> (vectors (N, D), loss): the episode loss, plus
    the map matcher's (times ``match_weight``) for a model with one; backbone in ``config.precision``."""
    if model.matcher is None:
        embeddings = embed_batch(model, images, config.precision)
        return embeddings, loss_fn(embeddings, labels)
    embeddings, local = embed_batch_with_local(model, images, config.precision, config.match_detach)
    loss = loss_fn(embeddings, labels) + config.match_weight * match_loss(
        model.matcher, embeddings, local, labels, config.k_shot, config.every_support)
    return embeddings, loss


def inference_embedder(model: Embedder, device: torch.device, memory_format: torch.memory_format, precision: str):
    """images -> vectors under ``model`` in inference mode (batch-norm running statistics), as
    :func:`embed_batch` computes them, restoring the model's training mode afterwards."""
    def embed(images: torch.Tensor) -> torch.Tensor:
        was_training = model.training
        model.eval()
        try:
            return embed_batch(model, images.to(device).contiguous(memory_format=memory_format), precision)
        finally:
            model.train(was_training)
    return embed


def cycle_ends(config: TrainConfig) -> list[int]:
    """The steps after which each learning-rate cycle ends: ``config.cycles`` equal parts of
    ``config.steps``, the last ending at ``config.steps``."""
    return [round(config.steps * (c + 1) / config.cycles) for c in range(config.cycles)]


def _schedule(config: TrainConfig):
    """Warm-up then cosine decay over ``config.steps``; with ``config.cycles > 1``, cosine decay over
    each cycle, restarting at the full rate (warm restarts, whose low points are the snapshots of a
    snapshot ensemble). The clock never moves the schedule, so a run that the step count ends is the
    same run on any machine; a time limit only stops it early (the kept model is the best validated one)."""
    ends = cycle_ends(config)

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        cycle = next((c for c, end in enumerate(ends) if step < end), len(ends) - 1)
        start = max(config.warmup_steps, ends[cycle - 1] if cycle else 0)
        progress = (step - start) / max(1, ends[cycle] - start)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def weight_average(model: Embedder, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``model``'s weights and buffers, its decay ramped up as
    ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates so early steps do not pin it to the start."""
    def average(averaged: torch.Tensor, current: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
        weight = min(decay, (1 + float(updates)) / (10 + float(updates)))
        return averaged * weight + current * (1 - weight)

    return torch.optim.swa_utils.AveragedModel(model, avg_fn=average, use_buffers=True)


def _validate(validate: Callable[[Embedder], float] | None, model: Embedder) -> float | None:
    """Score the model with the caller's validation (``None``: no validation); leaves it in train mode."""
    if validate is None:
        return None
    try:
        return float(validate(model))
    finally:
        model.train()


@dataclass
class TrainResult:
    model: Embedder
    history: pd.DataFrame
    best_accuracy: float
    best_step: int
    seconds: float
    model_path: Path


def _atomic_torch_save(state: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def write_curves(history: pd.DataFrame, out_dir: Path) -> None:
    """history.csv and curves.png (loss and validation accuracy against step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with atomic_path(out_dir / "history.csv") as tmp:
        history.to_csv(tmp, index=False)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot(history["step"], history["loss"])
    ax_loss.set(xlabel="step", ylabel="training loss", title="loss")
    val = history.dropna(subset=["val_accuracy"])
    ax_acc.plot(val["step"], val["val_accuracy"], marker="o")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="validation one-shot")
    fig.tight_layout()
    with atomic_path(out_dir / "curves.png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


CHECKPOINT_KEYS = ("config", "model", "loss", "optimizer", "scheduler", "state")


def _filled(config: dict) -> dict:
    """A checkpoint's config with options added since it was written at their defaults."""
    try:
        return TrainConfig.from_dict(config).to_dict()
    except (InvalidInputError, TypeError):
        return config


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict:
    """Read a training checkpoint without running any code from it.

    ``torch.load(weights_only=True)`` only rebuilds tensors and plain containers: a crafted pickle
    (one that would call a function while loading) is refused, as is any file that is not one of
    our checkpoints.

    Raises:
        CorruptFileError: naming the file, when it is truncated, not a checkpoint, or unsafe.
    """
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # UnpicklingError, RuntimeError (zip), EOFError, ...: all mean "not ours"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CorruptFileError(f"{path}: not a oneshot training checkpoint, or an unsafe or damaged one "
                               f"({first}); use --no-resume or another --out") from error
    if not isinstance(saved, dict) or any(key not in saved for key in CHECKPOINT_KEYS):
        raise CorruptFileError(f"{path}: not a oneshot training checkpoint (expected keys {list(CHECKPOINT_KEYS)}); "
                               "use --no-resume or another --out")
    return saved


def train(config: TrainConfig, train_set: LabelledImages, validate: Callable[[Embedder], float] | None,
          out_dir: str | os.PathLike,
          resume: bool = True, device: str | None = None, show_progress: bool | None = None,
          info: dict | None = None, init: Embedder | None = None) -> TrainResult:
    """Train an embedder; returns the best model (by validation score, else the last).

    The loop knows nothing of how validation is done: ``validate(model) -> float`` (higher is
    better) comes from the caller, e.g. :class:`oneshot.pipelines.evaluation.validation.OneShotValidation`.

    Writes into ``out_dir``: ``model.safetensors`` (+ ``.json``), ``checkpoint.pt`` (for resume),
    ``history.csv``, ``curves.png`` and ``config.json``; with ``config.cycles > 1``, also
    ``snapshot1.safetensors``... (the model at the end of each learning-rate cycle).

    Args:
        resume: continue from ``out_dir/checkpoint.pt`` when it exists (same config required).
        info: extra facts stored in the model file (e.g. the command line).
        init: a model whose weights start the run (fine-tuning; see :mod:`oneshot.embedder.init`),
            its BatchNorm statistics re-estimated on ``train_set``'s images before step 0.
    The run stops at ``config.steps`` or, with ``config.max_seconds``, once that much time passed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device) if device else default_device()
    running_on = machine(device)  # recorded in the model file below (the last part's machine, when resumed)
    warn_if_bfloat16_is_emulated(config.precision, running_on["native_bfloat16"], device)
    torch.manual_seed(config.seed)
    model = build_model(config)
    if init is not None:
        initialise_from(model, init)
    memory_format = training_memory_format(device)
    model = model.to(device, memory_format=memory_format)
    labels, groups = train_set.virtual_labels()
    loss_fn = build_loss(config, model, int(labels.max()) + 1).to(device)
    sampler = build_sampler(config, labels, groups)
    params = list(model.parameters()) + [p for p in loss_fn.parameters() if not any(p is q for q in model.parameters())]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config))
    augment_config = AugmentConfig.from_dict(config.augment)
    checkpoint_path, model_path = out_dir / "checkpoint.pt", out_dir / "model.safetensors"
    state = {"step": 0, "history": [], "best_accuracy": -1.0, "best_step": -1, "seconds": 0.0, "stale": 0}
    saved = None
    if resume and checkpoint_path.exists():
        saved = load_checkpoint(checkpoint_path, device)
        if _filled(saved["config"]) != config.to_dict():
            raise InvalidInputError(f"{checkpoint_path}: made with a different training config; use another --out or --no-resume")
        try:
            model.load_state_dict(saved["model"])
            loss_fn.load_state_dict(saved["loss"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
        except (RuntimeError, ValueError, KeyError, TypeError) as error:
            raise CorruptFileError(f"{checkpoint_path}: does not fit this model ({error}); use --no-resume") from error
        state = saved["state"]
        log.info("resumed from %s at step %d", checkpoint_path, state["step"])
    with atomic_path(out_dir / "config.json") as tmp:
        tmp.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    info = {**(info or {}), "machine": running_on}
    fresh_start = init is not None and state["step"] == 0 and not state["history"]  # not a resume
    if fresh_start:
        state["recalibrated"] = recalibrate_batchnorm(model, train_set.images, config.seed)
    if state.get("recalibrated"):  # kept in the checkpoint, so a resumed run's model says it too
        info["batchnorm_recalibrated_on"] = f"{state['recalibrated']} training images (AdaBN, before step 0)"
    averaged = weight_average(model, config.ema_decay) if config.ema_decay else None
    if averaged is not None and saved is not None:
        try:
            averaged.load_state_dict(saved["averaged"])
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise CorruptFileError(f"{checkpoint_path}: has no weight average for this model ({error}); "
                                   "use --no-resume") from error
    kept = averaged.module if averaged is not None else model  # what is validated and saved
    teacher = None
    if config.teachers:
        clock = time.perf_counter()
        teacher, info["distilled_from"] = teacher_vectors(config.teachers, train_set, model.recipe, device)
        info["teacher_seconds"] = round(time.perf_counter() - clock, 1)  # before step 0, not in the training clock
        info["distillation"] = {"weight": config.distill_weight, "temperature": config.distill_temperature}

    def save_best(accuracy: float | None) -> None:
        details = {**info, "train_config": config.to_dict(), "seed": config.seed, "step": state["step"],
                   "seconds_at_step": round(state["seconds"], 1), "val_accuracy": accuracy}
        save_model(kept, model_path, details)

    pairs = config.objective in PAIR_OBJECTIVES
    pair_ids = torch.arange(2 * config.pairs) % config.pairs if pairs else None
    started = time.perf_counter() - state["seconds"]
    bar = tqdm(total=config.steps, initial=state["step"], desc="train", unit="step",
               disable=not (show_progress if show_progress is not None else os.isatty(2)))
    if fresh_start:
        # the starting model is a candidate too: fine-tuning never ends below where it started, and
        # a step replaces it only when it beats it by more than the validation noise
        accuracy = _validate(validate, model)
        noise = getattr(validate, "last_noise", None)
        state["history"].append({"step": 0, "loss": float("nan"), "val_accuracy": accuracy,
                                 "lr": 0.0, "seconds": 0.0, "val_noise": noise})
        state["best_accuracy"], state["best_step"] = accuracy if accuracy is not None else -1.0, 0
        state["start_bar"] = (accuracy + noise) if accuracy is not None and noise is not None else None
        start_classes = getattr(validate, "last_per_class", None)
        state["start_per_class"] = None if start_classes is None else [float(v) for v in start_classes]
        info["val_noise"] = noise
        info["start_accuracy"] = accuracy
        save_best(accuracy)
    if config.look_alike_classes:
        embed_now = inference_embedder(model, device, memory_format, config.precision)
        representatives = representative_rows(sampler.index.rows)
        if state.get("look_alikes") is not None:  # the table of the last refresh, as the killed run had it
            sampler.neighbours = state["look_alikes"].cpu().numpy()
    model.train()
    running = state.setdefault("running", [])  # losses since the last validation, kept across resumes
    while state["step"] < config.steps and not state.get("stopped"):
        step = state["step"]
        if config.look_alike_classes and step and step % config.look_alike_every == 0:
            clock = time.perf_counter()
            table = nearest_classes(embed_now, train_set, representatives, config.look_alike_classes - 1)
            log.info("step %d: look-alike classes of %d classes in %.1f s", step, len(table),
                     time.perf_counter() - clock)
            state["look_alikes"], state["look_alikes_step"] = torch.from_numpy(table), step
            sampler.neighbours = table
        rows = sampler.batch(step)
        images = train_set.fetch(rows)
        step_seed = config.seed * 1_000_003 + step  # every random draw of the step derives from it
        generator = torch.Generator().manual_seed(step_seed)
        images = augment(images, augment_config, generator, pair_ids)
        images = images.to(device).contiguous(memory_format=memory_format)
        batch_labels = torch.from_numpy(labels[rows]).to(device)
        with step_random(2**32 + step_seed, device):  # stochastic depth's draws, apart from the augmentation's
            embeddings, loss = batch_loss(model, loss_fn, images, batch_labels, config)
        if teacher is not None:
            episodic = getattr(loss_fn, "episodic", loss_fn)
            soft = distillation_loss(episodic, embeddings, teacher[torch.from_numpy(rows).to(device)], batch_labels,
                                     config.distill_temperature)
            loss = (1 - config.distill_weight) * loss + config.distill_weight * soft
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if averaged is not None:
            averaged.update_parameters(model)
        running.append(loss.item())
        state["step"] = step = step + 1
        state["seconds"] = time.perf_counter() - started
        bar.update(1)
        last = step == config.steps or bool(config.max_seconds and state["seconds"] >= config.max_seconds)
        if last and step < config.steps:
            log.info("time limit: stopping at step %d after %.0f s", step, state["seconds"])
            state["stopped"] = True
        if step % config.val_every == 0 or last:
            raw_accuracy = _validate(validate, model) if averaged is not None else None
            accuracy = _validate(validate, kept)
            noise = getattr(validate, "last_noise", None)
            beats_start = True
            if state.get("start_per_class") is not None and hasattr(validate, "paired_noise"):
                # paired over the held-out classes: the gain must exceed its spread across them
                noise = validate.paired_noise(state["start_per_class"])
                beats_start = validate.paired_gain(state["start_per_class"]) > noise
            elif state.get("start_bar") is not None and accuracy is not None:
                beats_start = accuracy > state["start_bar"]
            state["history"].append({"step": step, "loss": float(np.mean(running)), "val_accuracy": accuracy,
                                     "lr": scheduler.get_last_lr()[0], "seconds": round(state["seconds"], 1),
                                     "val_noise": noise,
                                     **({"val_accuracy_raw": raw_accuracy} if averaged is not None else {})})
            running = state["running"] = []
            bar.set_postfix(loss=f"{state['history'][-1]['loss']:.3f}", val=accuracy)
            if accuracy is None or (accuracy > state["best_accuracy"] and beats_start):
                state["best_accuracy"], state["best_step"], state["stale"] = accuracy or 0.0, step, 0
                save_best(accuracy)
            else:
                state["stale"] += 1
            write_curves(pd.DataFrame(state["history"]), out_dir)
            if config.patience and state["stale"] >= config.patience:
                log.info("early stop at step %d: no improvement in %d validations", step, config.patience)
                state["stopped"] = last = True
        if config.cycles > 1 and step in cycle_ends(config):
            cycle = cycle_ends(config).index(step) + 1
            save_model(kept, out_dir / f"snapshot{cycle}.safetensors",
                       {**info, "train_config": config.to_dict(), "seed": config.seed, "step": step,
                        "snapshot": f"end of learning-rate cycle {cycle} of {config.cycles}"})
        if step % config.checkpoint_every == 0 or last:
            _atomic_torch_save({"config": config.to_dict(), "model": model.state_dict(), "loss": loss_fn.state_dict(),
                                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                "state": state, "averaged": averaged.state_dict() if averaged is not None else None},
                               checkpoint_path)
    bar.close()
    best = load_model(model_path, device=device)
    if best.info.get("steps_run") != state["step"]:  # record the whole run's length in the kept model
        save_model(best, model_path, {**best.info, "steps_run": state["step"], "train_seconds": round(state["seconds"], 1)})
    return TrainResult(best, pd.DataFrame(state["history"]), state["best_accuracy"], state["best_step"],
                       state["seconds"], model_path)
