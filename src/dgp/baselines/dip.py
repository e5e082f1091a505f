"""Deep Image Prior (Ulyanov, Vedaldi and Lempitsky, CVPR 2018), sized for small images on a CPU.

An encoder-decoder with skip connections maps a fixed noise tensor to an image; its weights are fitted to one
degraded observation through the same degradation operator as DGP uses,
``lift(phi(net(noise)))`` against ``lift(observation)`` under the MSE, with Adam. The structure of the network
and the image it settles on early act as the prior. Following the DIP code, the input is jittered by a little
fresh noise at every step (``reg_noise_std``) and the output is an exponential moving average of the outputs
along the way (``ema``), which damps the late fitting of noise. There is no early stopping on the ground
truth: the iteration count is fixed in :class:`DIPConfig`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgp.baselines import BaselineResult, check_observation
from dgp.reconstruct import Callback, StepEvent

if TYPE_CHECKING:
    from dgp.degradations import Degradation


@dataclass(frozen=True)
class DIPConfig:
    """Settings of a Deep Image Prior fit.

    The defaults suit 32-pixel images: three levels of 32 channels, 300 steps (on CIFAR-10 test images, 300
    steps gave the best mean PSNR of 150/300/500 for denoising at sigma 0.1 and inpainting, and nearly the best
    for x4 super-resolution; at sigma 0.2 fewer steps would be better, as DIP starts fitting the noise).

    Attributes:
        iterations: Adam steps.
        lr: Adam learning rate.
        input_channels: channels of the fixed noise input.
        down_channels: encoder channels per level, shallow to deep; its length is the depth (each level halves
            the size, so a 32-pixel image allows up to 5 levels).
        up_channels: decoder channels per level (same length as ``down_channels``).
        skip_channels: channels of each skip connection (0: none at that level).
        input_noise: the input is uniform in ``[0, input_noise)``, as DIP's ``get_noise(..., 'u', 1/10)``.
        reg_noise_std: standard deviation of the fresh noise added to the input at every step (0: none).
        ema: weight of the running average of outputs (0: return the last output).
    """

    iterations: int = 300
    lr: float = 0.01
    input_channels: int = 32
    down_channels: tuple[int, ...] = (32, 32, 32)
    up_channels: tuple[int, ...] = (32, 32, 32)
    skip_channels: tuple[int, ...] = (4, 4, 4)
    input_noise: float = 0.1
    reg_noise_std: float = 1.0 / 30.0
    ema: float = 0.99

    def __post_init__(self) -> None:
        for name in ("down_channels", "up_channels", "skip_channels"):
            object.__setattr__(self, name, tuple(int(c) for c in getattr(self, name)))
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.input_channels < 1:
            raise ValueError(f"input_channels must be >= 1, got {self.input_channels}")
        depth = len(self.down_channels)
        if depth < 1 or len(self.up_channels) != depth or len(self.skip_channels) != depth:
            raise ValueError("down_channels, up_channels and skip_channels need the same length (>= 1), got "
                             f"{list(self.down_channels)}, {list(self.up_channels)}, {list(self.skip_channels)}")
        if min(self.down_channels + self.up_channels) < 1 or min(self.skip_channels) < 0:
            raise ValueError("channel counts must be positive (skip channels may be 0)")
        if self.input_noise <= 0 or self.reg_noise_std < 0:
            raise ValueError(f"need input_noise > 0 and reg_noise_std >= 0, got {self.input_noise}, "
                             f"{self.reg_noise_std}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def conv_bn_act(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Reflection-padded convolution, batch norm, LeakyReLU(0.2): DIP's ``conv -> bn -> act``."""
    pad = (kernel - 1) // 2
    layers: list[nn.Module] = [nn.ReflectionPad2d(pad)] if pad else []
    layers += [nn.Conv2d(c_in, c_out, kernel, stride=stride), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers)


class SkipLevel(nn.Module):
    """One level of the skip network: ``(B, C_in, H, W) -> (B, C_up, H, W)``.

    A strided encoder (``down``) halves the size, the deeper level (or nothing, at the bottom) runs at half size,
    bilinear upsampling restores it; the skip branch (1x1) sees the input at full size; their concatenation is
    normalised and decoded (``up``: a 3x3 then a 1x1 convolution).
    """

    def __init__(self, c_in: int, c_down: int, c_up: int, c_skip: int, deeper: nn.Module | None,
                 deeper_out: int) -> None:
        super().__init__()
        self.down = nn.Sequential(conv_bn_act(c_in, c_down, 3, stride=2), conv_bn_act(c_down, c_down, 3))
        self.deeper = deeper
        self.skip = conv_bn_act(c_in, c_skip, 1) if c_skip else None
        merged = c_skip + (deeper_out if deeper is not None else c_down)
        self.up = nn.Sequential(nn.BatchNorm2d(merged), conv_bn_act(merged, c_up, 3), conv_bn_act(c_up, c_up, 1))

    def forward(self, x: Tensor) -> Tensor:
        h = self.down(x)
        if self.deeper is not None:
            h = self.deeper(h)
        h = F.interpolate(h, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.skip is not None:
            h = torch.cat([self.skip(x), h], dim=1)
        return self.up(h)


class SkipNet(nn.Module):
    """DIP's encoder-decoder with skip connections: noise ``(1, C_in, H, W)`` -> image ``(1, 3, H, W)`` in [-1, 1].

    ``H`` and ``W`` must be divisible by ``2**depth``. The last layer is a 1x1 convolution and a sigmoid, mapped to
    [-1, 1].
    """

    def __init__(self, config: DIPConfig) -> None:
        super().__init__()
        self.depth = len(config.down_channels)
        level: nn.Module | None = None
        deeper_out = 0
        for i in reversed(range(self.depth)):
            c_in = config.input_channels if i == 0 else config.down_channels[i - 1]
            level = SkipLevel(c_in, config.down_channels[i], config.up_channels[i], config.skip_channels[i],
                              level, deeper_out)
            deeper_out = config.up_channels[i]
        assert level is not None
        self.body = level
        self.head = nn.Conv2d(config.up_channels[0], 3, 1)

    def forward(self, noise: Tensor) -> Tensor:
        h, w = noise.shape[-2:]
        if h % 2**self.depth or w % 2**self.depth:
            raise ValueError(f"input size {h}x{w} is not divisible by 2**depth = {2**self.depth}")
        return torch.sigmoid(self.head(self.body(noise))) * 2.0 - 1.0


def _seed_from(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=generator))


class DeepImagePrior:
    """Deep Image Prior with DGP's reconstructor signature.

    Args:
        resolution: side ``R`` of the restored image (the clean image's size).
        config: the fit's settings.
        callbacks: called after every step with a :class:`dgp.reconstruct.StepEvent` (one stage).
        device: where the network runs.
    """

    def __init__(self, resolution: int, config: DIPConfig | None = None, callbacks: Sequence[Callback] = (),
                 device: str | torch.device = "cpu") -> None:
        self.resolution = int(resolution)
        self.config = config or DIPConfig()
        self.callbacks = list(callbacks)
        self.device = torch.device(device)
        if self.resolution % 2 ** len(self.config.down_channels):
            raise ValueError(f"resolution {self.resolution} is not divisible by 2**{len(self.config.down_channels)};"
                             " use fewer levels")

    def __call__(self, observation: Tensor, degradation: Degradation, class_id: int | None = None,
                 generator: torch.Generator | None = None) -> BaselineResult:
        """Fit the network to ``observation`` ``(1, 3, h, w)`` in [-1, 1]; ``class_id`` is ignored.

        ``generator`` (CPU; default seeded with 0) draws the input noise, the weights' initialisation and the
        per-step input jitter, so a run is repeatable.
        """
        cfg, size = self.config, (self.resolution, self.resolution)
        check_observation(observation, degradation, size)
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        start = time.perf_counter()
        degradation = degradation.to(self.device)
        observation = observation.to(self.device)
        with torch.random.fork_rng(devices=[]):  # module initialisation draws from the global generator
            torch.manual_seed(_seed_from(generator))
            net = SkipNet(cfg).to(self.device).train()
        noise = (torch.rand(1, cfg.input_channels, *size, generator=generator) * cfg.input_noise).to(self.device)
        with torch.no_grad():
            target = degradation.lift(observation, size)
        optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        average: Tensor | None = None
        history: list[dict[str, float]] = []
        for step in range(cfg.iterations):
            optimizer.zero_grad(set_to_none=True)
            net_input = noise
            if cfg.reg_noise_std > 0:
                jitter = torch.randn(noise.shape, generator=generator).to(self.device)
                net_input = noise + cfg.reg_noise_std * jitter
            out = net(net_input)
            loss = F.mse_loss(degradation.lift(degradation(out), size), target)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                out = out.detach()
                average = out if average is None or cfg.ema == 0 else cfg.ema * average + (1 - cfg.ema) * out
            losses = {"loss": float(loss.detach()) / 4.0}  # MSE on the [0, 1] scale, as DGP logs it
            history.append(losses)
            for cb in self.callbacks:
                cb(StepEvent(0, 1, step + 1, cfg.iterations, losses, out))
        assert average is not None
        return BaselineResult(image=average.cpu(), observation=observation.detach().cpu(),
                              target=target.detach().cpu(), history=history,
                              timings={"fit": time.perf_counter() - start})


__all__ = ["DIPConfig", "DeepImagePrior", "SkipNet", "SkipLevel", "conv_bn_act"]
