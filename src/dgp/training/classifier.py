"""Training the CIFAR-style :class:`~dgp.classifier.Classifier` on an image folder, fast on a CPU.

The recipe is that of the fast CIFAR-10 trainers (airbench / hlb-CIFAR10): frozen patch-whitening stem,
Nesterov SGD with a high, triangular learning rate (linear warm-up then linear decay to zero), a larger learning
rate for BatchNorm shifts, decoupled-style weight decay, label smoothing, random crops (reflect padding) and
horizontal flips, a few epochs at batch size 512, channels-last tensors.

A run lives in one folder: ``checkpoint.pt`` (everything needed to resume, written atomically),
``log.jsonl`` (one line per step, and one per epoch with the test accuracy when a test folder is given), and,
after :func:`export_classifier`, a classifier folder (``model.safetensors`` + ``card.json``).

Randomness is explicit: weights come from a generator seeded with ``seed``; each epoch's order, crops and flips
come from a generator seeded with ``(seed, epoch)``, so a run resumed mid-epoch replays exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dgp.classifier import Classifier, ClassifierConfig, accuracy_by_class, predict_logits, save_classifier
from dgp.data import ImageFolder
from dgp.imageio import atomic_write


@dataclass(frozen=True)
class ClassifierTrainConfig:
    """Settings of a classifier training run (saved in the checkpoint and the card).

    Attributes:
        widths: channels of the three conv groups.
        epochs: passes over the training set (the learning-rate schedule spans all of them).
        batch_size: images per step (the last partial batch of an epoch is dropped).
        lr: peak learning rate of Nesterov SGD on the mean loss for 512 images per step; the rate used is
            scaled linearly with the batch size actually used.
        momentum: SGD momentum.
        weight_decay: SGD weight decay (BatchNorm shifts get ``weight_decay / bias_lr_scale``, so that every
            parameter decays by the same fraction per step).
        bias_lr_scale: learning-rate multiplier for BatchNorm shifts.
        label_smoothing: cross-entropy label smoothing.
        warmup: fraction of the steps spent warming up linearly from ``lr_start`` x ``lr`` to ``lr``;
            the rest decays linearly to zero.
        lr_start: starting fraction of the warm-up.
        crop_padding: random-crop translation in pixels (reflect padding); 0 disables it.
        flip: random horizontal flips.
        whiten_images: training images used to compute the whitening stem.
        seed: seed of every random draw.
        checkpoint_minutes: wall minutes between checkpoints (also written at each epoch's end).
    """

    widths: tuple[int, int, int] = (32, 128, 128)
    epochs: int = 10
    batch_size: int = 512
    lr: float = 0.75
    momentum: float = 0.85
    weight_decay: float = 1.33e-3
    bias_lr_scale: float = 64.0
    label_smoothing: float = 0.2
    warmup: float = 0.2
    lr_start: float = 0.2
    crop_padding: int = 2
    flip: bool = True
    whiten_images: int = 5000
    seed: int = 0
    checkpoint_minutes: float = 5.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        for name in ("epochs", "batch_size", "whiten_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if len(self.widths) != 3 or min(self.widths) < 1:
            raise ValueError(f"widths must be three positive channel counts, got {list(self.widths)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup must be in [0, 1), got {self.warmup}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def lr_factor(self, step: int, total: int) -> float:
        """Learning-rate multiplier for (0-based) ``step`` of ``total``: triangular schedule."""
        peak = max(1, int(self.warmup * total))
        if step < peak:
            return self.lr_start + (1.0 - self.lr_start) * step / peak
        return max(0.0, 1.0 - (step - peak) / max(1, total - peak))


@dataclass
class ClassifierEvent:
    """What a callback receives after each step (``test_accuracy`` only after an evaluated epoch's last step)."""

    step: int
    total: int
    epoch: float
    losses: dict[str, float]
    elapsed: float
    cpu_seconds: float
    test_accuracy: float | None = None


@dataclass
class ClassifierTraining:
    """The live state of a run: model, optimiser, progress and time spent (wall and process CPU)."""

    config: ClassifierTrainConfig
    class_names: list[str]
    n_train: int
    model: Classifier
    optimizer: torch.optim.Optimizer
    step: int = 0
    elapsed: float = 0.0
    cpu_seconds: float = 0.0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.n_train // self.batch_size)

    @property
    def batch_size(self) -> int:
        return min(self.config.batch_size, self.n_train)

    @property
    def total_steps(self) -> int:
        return self.config.epochs * self.steps_per_epoch

    @classmethod
    def create(cls, config: ClassifierTrainConfig, class_names: list[str], n_train: int,
               device: torch.device) -> ClassifierTraining:
        gen = torch.Generator().manual_seed(config.seed)
        model = Classifier(ClassifierConfig(n_classes=len(class_names), widths=config.widths), generator=gen)
        model = model.to(device).to(memory_format=torch.channels_last)
        return cls(config, class_names, n_train, model,
                   _optimizer(model, config, min(config.batch_size, n_train)))

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "class_names": self.class_names,
            "n_train": self.n_train,
            "architecture": self.model.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "elapsed": self.elapsed,
            "cpu_seconds": self.cpu_seconds,
            "history": json.dumps(self.history),
        }

    @classmethod
    def from_checkpoint(cls, path: Path, device: torch.device) -> ClassifierTraining:
        state = torch.load(path, map_location=device, weights_only=True)
        config = ClassifierTrainConfig(**state["config"])
        model = Classifier(ClassifierConfig.from_dict(state["architecture"]))
        model.load_state_dict(state["model"])
        model = model.to(device).to(memory_format=torch.channels_last)
        optimizer = _optimizer(model, config, min(config.batch_size, int(state["n_train"])))
        optimizer.load_state_dict(state["optimizer"])
        return cls(config, list(state["class_names"]), int(state["n_train"]), model, optimizer,
                   int(state["step"]), float(state["elapsed"]), float(state["cpu_seconds"]),
                   json.loads(state["history"]))

    def save(self, path: Path) -> None:
        atomic_write(path, lambda tmp: torch.save(self.state_dict(), tmp))


def _optimizer(model: Classifier, config: ClassifierTrainConfig, batch_size: int) -> torch.optim.SGD:
    lr = config.lr * batch_size / 512
    biases = [p for n, p in model.named_parameters() if p.requires_grad and ".norm" in n]
    others = [p for n, p in model.named_parameters() if p.requires_grad and ".norm" not in n]
    groups = [
        {"params": biases, "lr": lr * config.bias_lr_scale, "base_lr": lr * config.bias_lr_scale,
         "weight_decay": config.weight_decay / config.bias_lr_scale},
        {"params": others, "lr": lr, "base_lr": lr, "weight_decay": config.weight_decay},
    ]
    return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, nesterov=True)


def epoch_plan(n: int, epoch: int, config: ClassifierTrainConfig) -> tuple[Tensor, Tensor, Tensor]:
    """One epoch's random draws: image order ``(n,)``, crop offsets ``(n, 2)`` in ``[0, 2p]``, flips ``(n,)``."""
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch + 1)
    order = torch.randperm(n, generator=gen)
    offsets = torch.randint(0, 2 * config.crop_padding + 1, (n, 2), generator=gen)
    flips = torch.rand(n, generator=gen) < 0.5 if config.flip else torch.zeros(n, dtype=torch.bool)
    return order, offsets, flips


def augment(images: Tensor, offsets: Tensor, flips: Tensor, padding: int) -> Tensor:
    """Crop and flip a batch.

    Args:
        images: ``(B, 3, H, W)`` ``uint8``.
        offsets: ``(B, 2)`` top/left offsets in ``[0, 2 * padding]`` into the reflect-padded image.
        flips: ``(B,)`` bool, mirror horizontally where true.

    Returns:
        ``(B, 3, H, W)`` float images in [-1, 1].
    """
    x = images.float() / 127.5 - 1.0
    b, c, h, w = x.shape
    if padding > 0:
        x = F.pad(x, (padding,) * 4, mode="reflect")
        rows = (offsets[:, 0, None] + torch.arange(h)).view(b, 1, h, 1)
        cols = (offsets[:, 1, None] + torch.arange(w)).view(b, 1, 1, w)
        x = x[torch.arange(b).view(b, 1, 1, 1), torch.arange(c).view(1, c, 1, 1), rows, cols]
    return torch.where(flips.view(b, 1, 1, 1), x.flip(3), x)


class _Clock:
    """Wall and process-CPU seconds (all threads) spent while running; pause it around evaluation."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        self._t: tuple[float, float] | None = None

    def start(self) -> None:
        self._t = (time.perf_counter(), time.process_time())

    def stop(self) -> None:
        if self._t is not None:
            self.wall += time.perf_counter() - self._t[0]
            self.cpu += time.process_time() - self._t[1]
            self._t = None

    def read(self) -> tuple[float, float]:
        if self._t is None:
            return self.wall, self.cpu
        return self.wall + time.perf_counter() - self._t[0], self.cpu + time.process_time() - self._t[1]


def evaluate(model: Classifier, images: Tensor, labels: Tensor, flip: bool = False) -> tuple[float, list[float]]:
    """Top-1 accuracy (overall, per class) of ``model`` on ``uint8`` images ``(N, 3, R, R)``."""
    logits = predict_logits(model, images, flip=flip)
    return accuracy_by_class(logits, labels, model.config.n_classes)


def load_folder(data_dir: str | Path, resolution: int = 32) -> tuple[ImageFolder, Tensor, Tensor]:
    """Scan and decode an image folder: ``(folder, uint8 images (N, 3, R, R), labels (N,))``."""
    folder = ImageFolder.scan(data_dir)
    images, labels = folder.load(resolution)
    return folder, images, labels


def train_classifier(
    data_dir: str | Path,
    out_dir: str | Path,
    config: ClassifierTrainConfig | None = None,
    resume: bool = False,
    device: str | torch.device = "cpu",
    callback: Callable[[ClassifierEvent], None] | None = None,
    test_dir: str | Path | None = None,
    max_seconds: float | None = None,
) -> ClassifierTraining:
    """Train (or resume) a classifier on ``data_dir`` into ``out_dir``.

    Args:
        data_dir: image folder, one sub-folder per class (at least two classes).
        out_dir: run folder; must not hold a checkpoint unless ``resume``.
        config: run settings; when resuming only ``epochs`` is taken from it (the schedule stretches to match).
        resume: continue from ``out_dir/checkpoint.pt``.
        device: where to train.
        callback: called after every step with a :class:`ClassifierEvent`.
        test_dir: optional labelled folder with the same classes, evaluated after each epoch (not timed).
        max_seconds: stop (after saving) once this much wall time has passed in this call.

    Returns:
        The final :class:`ClassifierTraining` (also saved to ``out_dir/checkpoint.pt``).

    Raises:
        ValueError: missing or unlabelled data folder, class mismatch with the checkpoint or test folder.
        FileExistsError: a checkpoint exists and ``resume`` is false.
        FileNotFoundError: ``resume`` with no checkpoint.
    """
    device = torch.device(device)
    out = Path(out_dir)
    ckpt = out / "checkpoint.pt"
    if resume and not ckpt.is_file():
        raise FileNotFoundError(f"nothing to resume: {ckpt} does not exist")
    if not resume and ckpt.exists():
        raise FileExistsError(f"{ckpt} exists: pass --resume to continue it, or choose another folder")
    load_clock = time.perf_counter()
    folder, images, labels = load_folder(data_dir)
    if not folder.labelled or len(folder.class_names) < 2:
        raise ValueError(f"{data_dir} needs at least two class sub-folders to train a classifier")
    test = None
    if test_dir is not None:
        test_folder, test_images, test_labels = load_folder(test_dir)
        if test_folder.class_names != folder.class_names:
            raise ValueError(f"the test folder has classes {test_folder.class_names}, "
                             f"the training folder {folder.class_names}")
        test = (test_images, test_labels)
    load_seconds = time.perf_counter() - load_clock

    if resume:
        run = ClassifierTraining.from_checkpoint(ckpt, device)
        if run.class_names != folder.class_names:
            raise ValueError(f"the checkpoint was trained on classes {run.class_names}, "
                             f"{data_dir} has {folder.class_names}")
        if run.n_train != images.shape[0]:
            raise ValueError(f"the checkpoint was trained on {run.n_train} images, {data_dir} has {images.shape[0]}")
        if config is not None and config.epochs != run.config.epochs:
            run.config = dataclasses.replace(run.config, epochs=config.epochs)
    else:
        run = ClassifierTraining.create(config or ClassifierTrainConfig(), folder.class_names,
                                        images.shape[0], device)
        gen = torch.Generator().manual_seed(run.config.seed)
        pick = torch.randperm(images.shape[0], generator=gen)[: run.config.whiten_images]
        run.model.init_whitening(images[pick].float() / 127.5 - 1.0)
        run.history.append({"event": "start", "load_seconds": round(load_seconds, 1),
                            "threads": torch.get_num_threads(), "device": str(device)})
    out.mkdir(parents=True, exist_ok=True)
    cfg, model = run.config, run.model
    per_epoch, bs, total = run.steps_per_epoch, run.batch_size, run.total_steps

    clock = _Clock()
    started = time.monotonic()
    last_save = started
    base_wall, base_cpu = run.elapsed, run.cpu_seconds
    model.train()
    log = (out / "log.jsonl").open("a")
    plan_epoch, plan = -1, None
    try:
        while run.step < total:
            clock.start()
            epoch, index = divmod(run.step, per_epoch)
            if epoch != plan_epoch:
                plan_epoch, plan = epoch, epoch_plan(images.shape[0], epoch, cfg)
            order, offsets, flips = plan
            sel = order[index * bs:(index + 1) * bs]
            x = augment(images[sel], offsets[sel], flips[sel], cfg.crop_padding)
            x = x.to(device).contiguous(memory_format=torch.channels_last)
            y = labels[sel].to(device)
            factor = cfg.lr_factor(run.step, total)
            for group in run.optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            run.step += 1
            loss_value = loss.item()
            clock.stop()
            wall, cpu = clock.read()
            run.elapsed, run.cpu_seconds = base_wall + wall, base_cpu + cpu

            record: dict[str, Any] = {"step": run.step, "loss": round(loss_value, 4),
                                      "lr": round(group["lr"], 5)}
            accuracy = None
            epoch_done = run.step % per_epoch == 0
            if epoch_done and test is not None:
                accuracy = evaluate(model, *test)[0]
                model.train()
                record["test_accuracy"] = round(accuracy, 4)
            log.write(json.dumps({**record, "elapsed": round(run.elapsed, 1),
                                  "cpu_seconds": round(run.cpu_seconds, 1)}) + "\n")
            if epoch_done:
                log.flush()
                run.history.append({"epoch": run.step // per_epoch, "step": run.step,
                                    "elapsed": round(run.elapsed, 1), "cpu_seconds": round(run.cpu_seconds, 1),
                                    **({"test_accuracy": round(accuracy, 4)} if accuracy is not None else {})})
            if callback is not None:
                callback(ClassifierEvent(run.step, total, run.step / per_epoch,
                                         {"loss": loss_value, "lr": group["lr"]}, run.elapsed,
                                         run.cpu_seconds, accuracy))
            now = time.monotonic()
            out_of_time = max_seconds is not None and now - started >= max_seconds
            if epoch_done or out_of_time or now - last_save >= cfg.checkpoint_minutes * 60:
                run.save(ckpt)
                last_save = now
            if out_of_time:
                break
    finally:
        log.close()
    if run.step >= total or not ckpt.exists():
        run.save(ckpt)
    return run


def export_classifier(run: ClassifierTraining, out_dir: str | Path, data: str,
                      test_dir: str | Path | None = None, extra_card: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` and ``card.json`` of ``run`` into ``out_dir``.

    When ``test_dir`` is given, the card records top-1 accuracy on it (plain and with flip averaging, overall and
    per class).
    """
    model = Classifier(run.model.config)
    model.load_state_dict(run.model.state_dict())
    model.eval()
    card: dict[str, Any] = {
        "class_names": run.class_names,
        "data": {"train": data, "n_train": run.n_train},
        "training": {
            **run.config.to_dict(),
            "steps_done": run.step,
            "epochs_done": round(run.step / run.steps_per_epoch, 3),
            "wall_seconds": round(run.elapsed, 1),
            "cpu_seconds": round(run.cpu_seconds, 1),
            "cpu_note": "process CPU time summed over all threads (time.process_time), data loading and "
                        "per-epoch evaluation excluded",
            "history": run.history,
            "torch": torch.__version__,
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        },
    }
    if test_dir is not None:
        folder, images, labels = load_folder(test_dir)
        if folder.class_names != run.class_names:
            raise ValueError(f"the test folder has classes {folder.class_names}, the classifier {run.class_names}")
        top1, per_class = evaluate(model, images, labels)
        top1_flip, per_class_flip = evaluate(model, images, labels, flip=True)
        card["accuracy"] = {
            "test_dir": str(test_dir),
            "n_images": int(images.shape[0]),
            "top1": round(top1, 4),
            "top1_flip_average": round(top1_flip, 4),
            "per_class": {n: round(a, 4) for n, a in zip(run.class_names, per_class)},
            "per_class_flip_average": {n: round(a, 4) for n, a in zip(run.class_names, per_class_flip)},
        }
    card.update(extra_card or {})
    return save_classifier(out_dir, model, card)
