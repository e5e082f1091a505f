"""BigGAN generator and discriminator as architecture tables, compatible with the DGP release.

The module layout and every state-dict key follow BigGAN-PyTorch (``shared``, ``linear``, ``blocks.I.J``,
``output_layer``), so the released DGP checkpoints (``G_ema_128.pth``, ``D_128.pth``, ...) load unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dgp.priors.layers import (
    Attention,
    BatchNorm,
    DBlock,
    GBlock,
    SNConv2d,
    SNEmbedding,
    SNLinear,
    grouped_spectral_norm,
)

RESOLUTIONS = (32, 64, 128, 256, 512)

# Generator tables: channel multipliers of the block inputs/outputs and the resolution each block outputs.
_G_TABLE: dict[int, tuple[list[int], list[int], list[int]]] = {
    32: ([4, 4, 4], [4, 4, 4], [8, 16, 32]),
    64: ([16, 16, 8, 4], [16, 8, 4, 2], [8, 16, 32, 64]),
    128: ([16, 16, 8, 4, 2], [16, 8, 4, 2, 1], [8, 16, 32, 64, 128]),
    256: ([16, 16, 8, 8, 4, 2], [16, 8, 8, 4, 2, 1], [8, 16, 32, 64, 128, 256]),
    512: ([16, 16, 8, 8, 4, 2, 1], [16, 8, 8, 4, 2, 1, 1], [8, 16, 32, 64, 128, 256, 512]),
}

# Discriminator tables: input channels (0 = RGB), output multipliers, downsampling, output resolution.
_D_TABLE: dict[int, tuple[list[int], list[int], list[bool], list[int]]] = {
    32: ([0, 4, 4, 4], [4, 4, 4, 4], [True, True, False, False], [16, 16, 16, 16]),
    64: ([0, 1, 2, 4, 8], [1, 2, 4, 8, 16], [True] * 4 + [False], [32, 16, 8, 4, 4]),
    128: ([0, 1, 2, 4, 8, 16], [1, 2, 4, 8, 16, 16], [True] * 5 + [False], [64, 32, 16, 8, 4, 4]),
    256: ([0, 1, 2, 4, 8, 8, 16], [1, 2, 4, 8, 8, 16, 16], [True] * 6 + [False], [128, 64, 32, 16, 8, 4, 4]),
    512: ([0, 1, 1, 2, 4, 8, 8, 16], [1, 1, 2, 4, 8, 8, 16, 16], [True] * 7 + [False],
          [256, 128, 64, 32, 16, 8, 4, 4]),
}

# Keys of an original BigGAN/DGP config that we accept but that do not change the architecture, with the
# only value we support (None: any value).
_IGNORED_KEYS: dict[str, Any] = {
    "G_shared": True,
    "num_G_SVs": 1,
    "num_G_SV_itrs": 1,
    "num_D_SVs": 1,
    "num_D_SV_itrs": 1,
    "G_init": None,
    "D_init": None,
    "skip_init": None,
}


def _parse_attn(spec: str) -> set[int]:
    return {int(item) for item in spec.split("_") if item.strip()} if spec else set()


@dataclass(frozen=True)
class BigGANConfig:
    """Architecture settings of a BigGAN pair, named as in BigGAN-PyTorch.

    Attributes:
        resolution: output side in pixels, one of 32, 64, 128, 256, 512.
        G_ch, D_ch: channel width multipliers.
        dim_z: requested latent size; with ``hier`` it is rounded down to a multiple of the number of chunks
            (see :attr:`Generator.dim_z`).
        shared_dim: size of the shared class embedding.
        hier: split z into one chunk per block plus one for the first linear layer.
        n_classes: number of classes (1 for an unconditional prior).
        G_attn, D_attn: resolutions with self-attention, ``_``-separated (``"64"``, ``"32_64"``, ``""``).
        bottom_width: spatial side of the first feature map.
        BN_eps, SN_eps: batch-norm and spectral-norm epsilons.
    """

    resolution: int = 128
    G_ch: int = 96
    D_ch: int = 96
    dim_z: int = 120
    shared_dim: int = 128
    hier: bool = True
    n_classes: int = 1000
    G_attn: str = "64"
    D_attn: str = "64"
    bottom_width: int = 4
    BN_eps: float = 1e-5
    SN_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {self.resolution}")
        for name in ("G_ch", "D_ch", "dim_z", "shared_dim", "n_classes", "bottom_width"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("G_attn", "D_attn"):
            try:
                _parse_attn(getattr(self, name))
            except ValueError:
                raise ValueError(f"{name} must be resolutions joined by '_', got {getattr(self, name)!r}") from None
        if self.hier and self.dim_z // (len(_G_TABLE[self.resolution][0]) + 1) < 1:
            raise ValueError(f"dim_z={self.dim_z} is too small to split into chunks")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BigGANConfig:
        """Build from a dict in our or BigGAN-PyTorch's naming; unknown or unsupported settings are errors."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - set(_IGNORED_KEYS))
        if unknown:
            raise ValueError(f"unknown BigGAN settings: {', '.join(unknown)}")
        for key, supported in _IGNORED_KEYS.items():
            if key in data and supported is not None and data[key] != supported:
                raise ValueError(f"unsupported BigGAN setting {key}={data[key]!r} (only {supported!r})")
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Generator(nn.Module):
    """BigGAN generator ``G(z, y)``.

    ``forward(z, y)`` takes ``z`` ``(B, dim_z)`` and the class embedding ``y = G.shared(class_ids)``
    ``(B, shared_dim)`` (embeddings, not ids, so that classes can be interpolated) and returns images
    ``(B, 3, resolution, resolution)`` in [-1, 1].
    """

    def __init__(self, config: BigGANConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        in_mult, out_mult, res = _G_TABLE[c.resolution]
        attn = _parse_attn(c.G_attn)
        self.num_slots = len(in_mult) + 1 if c.hier else 1
        self.z_chunk_size = c.dim_z // self.num_slots if c.hier else 0
        self.dim_z = self.z_chunk_size * self.num_slots if c.hier else c.dim_z
        self.bottom_width = c.bottom_width
        cond_dim = c.shared_dim + self.z_chunk_size

        self.shared = nn.Embedding(c.n_classes, c.shared_dim)
        first_in = self.dim_z // self.num_slots
        self.linear = SNLinear(first_in, in_mult[0] * c.G_ch * c.bottom_width**2, eps=c.SN_eps)
        blocks = []
        for i in range(len(in_mult)):
            stage: list[nn.Module] = [GBlock(in_mult[i] * c.G_ch, out_mult[i] * c.G_ch, cond_dim, upsample=True,
                                             bn_eps=c.BN_eps, sn_eps=c.SN_eps)]
            if res[i] in attn:
                stage.append(Attention(out_mult[i] * c.G_ch, eps=c.SN_eps))
            blocks.append(nn.ModuleList(stage))
        self.blocks = nn.ModuleList(blocks)
        self.output_layer = nn.Sequential(
            BatchNorm(out_mult[-1] * c.G_ch), nn.ReLU(), SNConv2d(out_mult[-1] * c.G_ch, 3, eps=c.SN_eps)
        )
        init_orthogonal(self)

    @property
    def num_groups(self) -> int:
        """Number of parameter groups: the first linear layer, one per resolution block, the output layer."""
        return len(self.blocks) + 2

    def group_modules(self, index: int, with_embedding: bool = False) -> list[nn.Module]:
        """Modules of parameter group ``index`` (0 = shallowest)."""
        if index == 0:
            return [self.linear, self.shared] if with_embedding else [self.linear]
        if 1 <= index <= len(self.blocks):
            return [self.blocks[index - 1]]
        if index == len(self.blocks) + 1:
            return [self.output_layer]
        raise IndexError(f"parameter group {index} out of range 0..{self.num_groups - 1}")

    def param_groups(self, with_embedding: bool = False) -> list[list[nn.Parameter]]:
        """Trainable parameters grouped from shallow to deep (see :meth:`group_modules`)."""
        return [[p for m in self.group_modules(i, with_embedding) for p in m.parameters()]
                for i in range(self.num_groups)]

    def reset_instance_norm(self, ready: bool = False) -> None:
        """Forget the instance-norm affine so that the next ``use_in=True`` pass matches it anew, or, with
        ``ready``, declare the stored ``inN`` affine valid (after loading a tuned state)."""
        for stage in self.blocks:
            stage[0].in_ready = ready

    def forward(self, z: Tensor, y: Tensor, use_in: bool = False) -> Tensor:
        with grouped_spectral_norm(self):
            return self._forward(z, y, use_in)

    def _forward(self, z: Tensor, y: Tensor, use_in: bool) -> Tensor:
        if self.config.hier:
            chunks = torch.split(z, self.z_chunk_size, dim=1)
            z = chunks[0]
            conds = [torch.cat([y, chunk], dim=1) for chunk in chunks[1:]]
        else:
            conds = [y] * len(self.blocks)
        h = self.linear(z).reshape(z.shape[0], -1, self.bottom_width, self.bottom_width)
        for stage, cond in zip(self.blocks, conds):
            h = stage[0](h, cond, use_in)
            for extra in stage[1:]:
                h = extra(h)
        return torch.tanh(self.output_layer(h))


class Discriminator(nn.Module):
    """BigGAN projection discriminator.

    ``forward(x, y=None)`` takes images ``(B, 3, R, R)`` in [-1, 1] and optional class ids ``(B,)`` and returns
    ``(logit (B, 1), features)``; features are every block's output (attention blocks included), in order,
    then the globally sum-pooled ReLU feature ``(B, C)``. The class projection is added only when ``y`` is given.
    """

    def __init__(self, config: BigGANConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        in_mult, out_mult, down, res = _D_TABLE[c.resolution]
        attn = _parse_attn(c.D_attn)
        blocks = []
        for i in range(len(out_mult)):
            in_ch = 3 if in_mult[i] == 0 else in_mult[i] * c.D_ch
            stage: list[nn.Module] = [DBlock(in_ch, out_mult[i] * c.D_ch, downsample=down[i], preactivation=i > 0,
                                             sn_eps=c.SN_eps)]
            if res[i] in attn:
                stage.append(Attention(out_mult[i] * c.D_ch, eps=c.SN_eps))
            blocks.append(nn.ModuleList(stage))
        self.blocks = nn.ModuleList(blocks)
        self.linear = SNLinear(out_mult[-1] * c.D_ch, 1, eps=c.SN_eps)
        self.embed = SNEmbedding(c.n_classes, out_mult[-1] * c.D_ch, eps=c.SN_eps)
        init_orthogonal(self)

    @property
    def num_features(self) -> int:
        """Length of the feature list returned by :meth:`forward`."""
        return sum(len(stage) for stage in self.blocks) + 1

    def forward(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        features = []
        h = x
        for stage in self.blocks:
            for block in stage:
                h = block(h)
                features.append(h)
        pooled = torch.relu(h).sum(dim=(2, 3))
        features.append(pooled)
        out = self.linear(pooled)
        if y is not None:
            out = out + (self.embed(y) * pooled).sum(dim=1, keepdim=True)
        return out, features


def init_orthogonal(module: nn.Module) -> None:
    """BigGAN's initialisation: orthogonal weights for every conv, linear and embedding layer."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
            nn.init.orthogonal_(m.weight)
