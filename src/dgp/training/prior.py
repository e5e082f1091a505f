"""Training a class-conditional BigGAN prior on an image folder (hinge loss, spectral norm, EMA of G).

The run lives in one output folder: ``checkpoint.pt`` (everything needed to resume), ``log.jsonl`` (losses),
``samples/`` (grids from the EMA generator at fixed latents) and, after :func:`export_prior`, a prior folder
with ``G_ema.safetensors``, ``D.safetensors`` and ``card.json``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dgp.data import ImageFolder
from dgp.imageio import atomic_write, save_grid
from dgp.priors.biggan import BigGANConfig, Discriminator, Generator
from dgp.priors.checkpoint import save_prior


@dataclass(frozen=True)
class PriorTrainConfig:
    """Settings of a prior training run (saved in the checkpoint and the model card)."""

    resolution: int = 32
    G_ch: int = 16
    D_ch: int = 16
    dim_z: int = 128
    shared_dim: int = 128
    G_attn: str = "16"
    D_attn: str = "16"
    batch_size: int = 64
    steps: int = 6000
    n_dis: int = 2
    lr_G: float = 2e-4
    lr_D: float = 2e-4
    ema_decay: float = 0.999
    ema_start: int = 500
    seed: int = 0
    sample_every: int = 250
    checkpoint_minutes: float = 5.0
    flip: bool = True

    def __post_init__(self) -> None:
        for name in ("batch_size", "steps", "n_dis", "sample_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

    def biggan(self, n_classes: int) -> BigGANConfig:
        return BigGANConfig(resolution=self.resolution, G_ch=self.G_ch, D_ch=self.D_ch, dim_z=self.dim_z,
                            shared_dim=self.shared_dim, n_classes=n_classes, G_attn=self.G_attn,
                            D_attn=self.D_attn)


@dataclass
class TrainEvent:
    """What a callback receives after each generator step."""

    step: int
    total: int
    losses: dict[str, float]
    elapsed: float


@dataclass
class PriorTraining:
    """The live state of a run: models, optimisers, random generator, progress."""

    config: PriorTrainConfig
    class_names: list[str]
    G: Generator
    D: Discriminator
    G_ema: Generator
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    rng: torch.Generator
    step: int = 0
    elapsed: float = 0.0

    @classmethod
    def create(cls, config: PriorTrainConfig, class_names: list[str], device: torch.device) -> PriorTraining:
        arch = config.biggan(len(class_names))
        with torch.random.fork_rng(devices=[]):  # module initialisation draws from the global generator
            torch.manual_seed(config.seed)
            G, D = Generator(arch).to(device), Discriminator(arch).to(device)
        G_ema = copy.deepcopy(G).eval()
        for p in G_ema.parameters():
            p.requires_grad_(False)
        opt_G = torch.optim.Adam(G.parameters(), lr=config.lr_G, betas=(0.0, 0.999), eps=1e-8)
        opt_D = torch.optim.Adam(D.parameters(), lr=config.lr_D, betas=(0.0, 0.999), eps=1e-8)
        rng = torch.Generator(device="cpu").manual_seed(config.seed)
        return cls(config, class_names, G, D, G_ema, opt_G, opt_D, rng)

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": dataclasses.asdict(self.config),
            "class_names": self.class_names,
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "rng": self.rng.get_state(),
            "step": self.step,
            "elapsed": self.elapsed,
        }

    @classmethod
    def from_checkpoint(cls, path: Path, device: torch.device) -> PriorTraining:
        state = torch.load(path, map_location=device, weights_only=True)
        run = cls.create(PriorTrainConfig(**state["config"]), list(state["class_names"]), device)
        run.G.load_state_dict(state["G"])
        run.D.load_state_dict(state["D"])
        run.G_ema.load_state_dict(state["G_ema"])
        run.opt_G.load_state_dict(state["opt_G"])
        run.opt_D.load_state_dict(state["opt_D"])
        run.rng.set_state(state["rng"].cpu())
        run.step, run.elapsed = int(state["step"]), float(state["elapsed"])
        return run

    def save(self, path: Path) -> None:
        atomic_write(path, lambda tmp: torch.save(self.state_dict(), tmp))


def _batch(images: Tensor, labels: Tensor, size: int, rng: torch.Generator, flip: bool,
           device: torch.device) -> tuple[Tensor, Tensor]:
    idx = torch.randint(0, images.shape[0], (size,), generator=rng)
    x = images[idx].to(device=device, dtype=torch.float32) / 127.5 - 1.0
    if flip:
        mask = torch.rand(size, generator=rng) < 0.5
        x = torch.where(mask.view(-1, 1, 1, 1).to(device), x.flip(3), x)
    return x.contiguous(memory_format=torch.channels_last), labels[idx].to(device)


@torch.no_grad()
def _ema_update(ema: Generator, model: Generator, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1.0 - decay)
    for (name, be), bm in zip(ema.named_buffers(), model.buffers()):
        if not name.endswith(("u0", "sv0")):
            be.copy_(bm)


def train_prior(
    data_dir: str | Path,
    out_dir: str | Path,
    config: PriorTrainConfig | None = None,
    resume: bool = False,
    device: str | torch.device = "cpu",
    callback: Callable[[TrainEvent], None] | None = None,
    max_seconds: float | None = None,
) -> PriorTraining:
    """Train (or resume) a BigGAN prior on ``data_dir`` into ``out_dir``.

    Args:
        data_dir: image folder, one sub-folder per class (a flat folder gives an unconditional prior).
        out_dir: run folder; must not hold a checkpoint unless ``resume``.
        config: run settings (ignored when resuming: the checkpoint's are used, except ``steps``).
        resume: continue from ``out_dir/checkpoint.pt``.
        max_seconds: stop (after saving) once this much wall time has passed in this call.

    Returns:
        The final :class:`PriorTraining` state (also saved to ``out_dir/checkpoint.pt``).
    """
    device = torch.device(device)
    out = Path(out_dir)
    ckpt = out / "checkpoint.pt"
    folder = ImageFolder.scan(data_dir)
    if resume:
        if not ckpt.is_file():
            raise FileNotFoundError(f"nothing to resume: {ckpt} does not exist")
        run = PriorTraining.from_checkpoint(ckpt, device)
        if config is not None and config.steps != run.config.steps:
            run.config = dataclasses.replace(run.config, steps=config.steps)
        if run.class_names != folder.class_names:
            raise ValueError(f"the checkpoint was trained on classes {run.class_names}, "
                             f"{data_dir} has {folder.class_names}")
    else:
        if ckpt.exists():
            raise FileExistsError(f"{ckpt} exists: pass --resume to continue it, or choose another folder")
        run = PriorTraining.create(config or PriorTrainConfig(), folder.class_names, device)
    cfg = run.config
    out.mkdir(parents=True, exist_ok=True)
    (out / "samples").mkdir(exist_ok=True)
    images, labels = folder.load(cfg.resolution)

    n_classes = len(folder.class_names)
    fixed_rng = torch.Generator().manual_seed(cfg.seed + 1)
    per_class = max(1, 64 // n_classes)
    fixed_y = torch.arange(n_classes).repeat_interleave(per_class).to(device)
    fixed_z = torch.randn(fixed_y.shape[0], run.G.dim_z, generator=fixed_rng).to(device)

    G, D = run.G.to(memory_format=torch.channels_last), run.D.to(memory_format=torch.channels_last)
    G.train()
    D.train()
    start = time.monotonic()
    started_elapsed = run.elapsed
    last_save = start
    log = (out / "log.jsonl").open("a")
    try:
        while run.step < cfg.steps:
            for _ in range(cfg.n_dis):
                x, y = _batch(images, labels, cfg.batch_size, run.rng, cfg.flip, device)
                z = torch.randn(cfg.batch_size, G.dim_z, generator=run.rng).to(device)
                yf = torch.randint(0, n_classes, (cfg.batch_size,), generator=run.rng).to(device)
                with torch.no_grad():
                    fake = G(z, G.shared(yf))
                d_real, _ = D(x, y)
                d_fake, _ = D(fake, yf)
                loss_real = F.relu(1.0 - d_real).mean()
                loss_fake = F.relu(1.0 + d_fake).mean()
                run.opt_D.zero_grad(set_to_none=True)
                (loss_real + loss_fake).backward()
                run.opt_D.step()
            z = torch.randn(cfg.batch_size, G.dim_z, generator=run.rng).to(device)
            yf = torch.randint(0, n_classes, (cfg.batch_size,), generator=run.rng).to(device)
            loss_G = -D(G(z, G.shared(yf)), yf)[0].mean()
            run.opt_G.zero_grad(set_to_none=True)
            loss_G.backward()
            run.opt_G.step()
            run.step += 1
            decay = cfg.ema_decay if run.step > cfg.ema_start else 0.0
            _ema_update(run.G_ema, G, decay)

            now = time.monotonic()
            run.elapsed = started_elapsed + (now - start)
            losses = {"D_real": loss_real.item(), "D_fake": loss_fake.item(), "G": loss_G.item()}
            log.write(json.dumps({"step": run.step, **losses, "elapsed": round(run.elapsed, 1)}) + "\n")
            if callback is not None:
                callback(TrainEvent(run.step, cfg.steps, losses, run.elapsed))
            if run.step % cfg.sample_every == 0 or run.step == cfg.steps:
                log.flush()
                # the EMA weights lag behind G, so G's running batch-norm statistics do not fit them:
                # sample from a copy with its own statistics, as the exported prior will be
                shown = copy.deepcopy(run.G_ema)
                recalibrate_batch_norm(shown, n_classes, batches=4, batch_size=64, seed=cfg.seed)
                with torch.no_grad():
                    grid = shown(fixed_z, shown.shared(fixed_y))
                save_grid(grid, out / "samples" / f"step_{run.step:07d}.png", nrow=per_class)
            out_of_time = max_seconds is not None and now - start >= max_seconds
            if now - last_save >= cfg.checkpoint_minutes * 60 or run.step == cfg.steps or out_of_time:
                run.save(ckpt)
                last_save = now
            if out_of_time:
                break
    finally:
        log.close()
    if run.step == cfg.steps or not ckpt.exists():
        run.save(ckpt)
    return run


@torch.no_grad()
def recalibrate_batch_norm(G: Generator, n_classes: int, batches: int = 40, batch_size: int = 100,
                           seed: int = 0) -> None:
    """Re-estimate G's stored batch-norm statistics from its own samples ("standing statistics").

    Each batch's statistics are taken whole (momentum 1) and averaged over ``batches`` batches of random
    latents and classes; G is left in eval mode.
    """
    rng = torch.Generator().manual_seed(seed)
    device = next(G.parameters()).device
    norms = [m for m in G.modules() if hasattr(m, "stored_mean")]
    sums = [(torch.zeros_like(m.stored_mean), torch.zeros_like(m.stored_var)) for m in norms]
    for m in norms:
        m.momentum = 1.0
    G.train()
    try:
        for _ in range(batches):
            z = torch.randn(batch_size, G.dim_z, generator=rng).to(device)
            y = torch.randint(0, n_classes, (batch_size,), generator=rng).to(device)
            G(z, G.shared(y))
            for (sm, sv), m in zip(sums, norms):
                sm += m.stored_mean
                sv += m.stored_var
    finally:
        for m in norms:
            m.momentum = 0.1
        G.eval()
    for (sm, sv), m in zip(sums, norms):
        m.stored_mean.copy_(sm / batches)
        m.stored_var.copy_(sv / batches)


def default_presets(resolution: int) -> dict[str, Any]:
    """Preset scaling for a prior of this resolution, written into its card.

    The released presets (1,000-1,400 iterations, 500 candidates) were tuned for 128-256 px ImageNet priors on a
    GPU. A 32 px prior has three generator blocks, so most of the schedule's progressive stages already tune
    every block; a quarter of the iterations and 200 candidates keep a restoration interactive on a CPU.
    """
    if resolution <= 32:
        # generator learning rates x16 for the restoration presets whose released rates are 5e-5 and below
        # (chosen on CIFAR-10 training images with benchmarks/tune_lr.py; colorization and sr-mse did not gain)
        return {"iterations_scale": 0.25, "n_candidates": 200,
                "lr_G_scale": {"sr": 16.0, "inpainting": 16.0, "denoising": 16.0, "reconstruction": 16.0}}
    if resolution <= 64:
        return {"iterations_scale": 0.5, "n_candidates": 300}
    return {"iterations_scale": 1.0, "n_candidates": 500}


def export_prior(run: PriorTraining, out_dir: str | Path, data: str, extra_card: dict[str, Any] | None = None,
                 recalibrate: bool = True) -> Path:
    """Write ``G_ema.safetensors``, ``D.safetensors`` and ``card.json`` of ``run`` into ``out_dir``."""
    G_ema = copy.deepcopy(run.G_ema).to(memory_format=torch.contiguous_format)
    if recalibrate:
        recalibrate_batch_norm(G_ema, len(run.class_names), seed=run.config.seed)
    card = {
        "architecture": run.config.biggan(len(run.class_names)).to_dict(),
        "class_names": run.class_names,
        "data": data,
        "presets": default_presets(run.config.resolution),
        "training": {**dataclasses.asdict(run.config), "steps_done": run.step,
                     "seconds": round(run.elapsed, 1), "batch_norm_recalibrated": recalibrate},
        **(extra_card or {}),
    }
    D = copy.deepcopy(run.D).to(memory_format=torch.contiguous_format).eval()
    return save_prior(out_dir, G_ema, D, card)
