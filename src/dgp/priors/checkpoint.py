"""Loading and saving BigGAN weights.

Two formats:

* released BigGAN-PyTorch / DGP files (``G_ema_128.pth``, ``D_128.pth``, ...): read with
  ``torch.load(weights_only=True)`` only, so a pickle that tries to run code is refused;
* our own prior folders: ``G_ema.safetensors``, ``D.safetensors`` and ``card.json``.

Key names are the original ones in both. Checking a state dict against a model reports every missing,
unexpected or mis-shaped key; the DGP-only instance-norm affine keys (``blocks.I.0.inN.*``) may be absent.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from dgp.imageio import atomic_write
from dgp.priors.biggan import BigGANConfig, Discriminator, Generator

INSTANCE_NORM_KEY = re.compile(r"^blocks\.\d+\.0\.in[12]\.(weight|bias)$")


class CheckpointError(ValueError):
    """A weights file that cannot be used, with a message that names the file and the problem."""


def _describe(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_dict(expected: Mapping[str, tuple[int, ...]], state: Mapping[str, Any], what: str) -> None:
    """Compare key names and shapes; raise :class:`CheckpointError` naming every difference.

    Args:
        expected: key -> shape the model needs.
        state: key -> tensor (or shape list) found in the file.
        what: how to name the file in messages.
    """
    missing = sorted(k for k in expected if k not in state and not INSTANCE_NORM_KEY.match(k))
    unexpected = sorted(k for k in state if k not in expected)
    mismatched = []
    for k, shape in expected.items():
        if k in state:
            found = tuple(state[k].shape) if hasattr(state[k], "shape") else tuple(state[k])
            if found != tuple(shape):
                mismatched.append(f"{k} (file {list(found)}, model {list(shape)})")
    problems = []
    if missing:
        problems.append(f"missing keys: {_describe(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_describe(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch: {_describe(mismatched, 4)}")
    if problems:
        raise CheckpointError(f"{what} does not fit the model: " + "; ".join(problems))


def model_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def read_torch_file(path: str | Path, mmap: bool = False) -> dict[str, Tensor]:
    """Read a released ``.pth`` state dict safely (``weights_only=True``) onto the CPU.

    Args:
        path: the ``.pth`` file.
        mmap: map the tensors from the file instead of reading them into memory (for checking key names and
            shapes of large files); files in the legacy (pre-zip) format are read normally.

    Raises :class:`CheckpointError` for a missing, truncated or corrupt file, for a pickle that would run code,
    and for a file that does not hold a flat dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        if mmap and zipfile.is_zipfile(path):
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} was refused: it is not a plain tensor file and would run code "
                              f"when loaded ({first})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read {path}: the file is truncated or corrupt ({first})") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return dict(state)


def load_into(model: nn.Module, state: Mapping[str, Tensor], what: str) -> None:
    """Check ``state`` against ``model`` and load it (absent instance-norm keys keep their defaults)."""
    check_state_dict(model_shapes(model), state, what)
    model.load_state_dict(state, strict=False)


def load_released(config: BigGANConfig, g_path: str | Path, d_path: str | Path | None
                  ) -> tuple[Generator, Discriminator | None]:
    """Build a generator (and discriminator) for ``config`` and load released ``.pth`` files into them.

    Models are returned in eval mode on the CPU; move them with ``.to(device)``.
    """
    G = Generator(config)
    load_into(G, read_torch_file(g_path), str(g_path))
    D = None
    if d_path is not None:
        D = Discriminator(config)
        load_into(D, read_torch_file(d_path), str(d_path))
        D.eval()
    return G.eval(), D


def save_prior(folder: str | Path, G: Generator, D: Discriminator | None, card: dict[str, Any]) -> Path:
    """Write a prior folder: ``G_ema.safetensors``, ``D.safetensors`` (when given) and ``card.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    card = {"format": "dgp-prior/1", "architecture": G.config.to_dict(), **card}

    def tensors(model: nn.Module) -> dict[str, Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}

    atomic_write(folder / "G_ema.safetensors", lambda tmp: save_file(tensors(G), tmp))
    if D is not None:
        atomic_write(folder / "D.safetensors", lambda tmp: save_file(tensors(D), tmp))
    atomic_write(folder / "card.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(card, indent=2, sort_keys=False) + "\n"))
    return folder


def read_card(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "card.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a prior folder (no card.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None


def load_prior_folder(folder: str | Path, with_discriminator: bool = True
                      ) -> tuple[Generator, Discriminator | None, dict[str, Any]]:
    """Load one of our prior folders; returns ``(G, D, card)`` in eval mode on the CPU."""
    folder = Path(folder)
    card = read_card(folder)
    try:
        config = BigGANConfig.from_dict(card["architecture"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{folder}/card.json has no valid architecture: {exc}") from None

    def read(name: str) -> dict[str, Tensor]:
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"weights file not found: {path}")
        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read {path}: the file is truncated or corrupt ({exc})") from None

    G = Generator(config)
    load_into(G, read("G_ema.safetensors"), str(folder / "G_ema.safetensors"))
    D = None
    if with_discriminator:
        D = Discriminator(config)
        load_into(D, read("D.safetensors"), str(folder / "D.safetensors"))
        D.eval()
    return G.eval(), D, card
