"""What the web UI does, without the UI: choosing priors, checking uploads, running restorations and edits.

Nothing here imports Gradio, so each step can be tested (and reused) on its own. Messages meant for the
page never hold a server path: :func:`scrub_paths` shortens any absolute path to its last component, and
priors are shown by a label, never by the folder they were loaded from.

Every run writes into its own folder under a :class:`RunFolders` root (``input.png``, ``mask.png``,
``result.png``, ``run.json``, ...), from which the page offers the downloads.
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import json
import platform
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

import dgp
from dgp.degradations import DOWNSAMPLE_FACTORS, PRESET_DEGRADATIONS, Identity, parse_degradation
from dgp.imageio import ImageError, load_rgb, pil_to_tensor, tensor_to_pil, to_square
from dgp.manipulate import jitter, morph, save_gif, transfer
from dgp.pipeline import default_schedule, load_inputs, preset_for, restore, run_record
from dgp.priors.checkpoint import CheckpointError
from dgp.priors.registry import (
    DEFAULT_PRIOR,
    PRIOR_FOLDER_FILES,
    Prior,
    PriorError,
    get_spec,
    list_priors,
    load_prior,
    weights_folder,
)
from dgp.reconstruct import DGPReconstructor, Result, StepEvent

MB = 1024 * 1024
DEFAULT_MAX_UPLOAD_MB = 10.0
#: Largest accepted image, in pixels (a small PNG can hold a huge flat image: a decompression bomb).
DEFAULT_MAX_PIXELS = 40_000_000
#: Smallest side of the images shown in the page (small priors' images are enlarged, pixels kept sharp).
DISPLAY_SIZE = 256
READABLE_FORMATS = "PNG, JPEG, WebP, BMP, TIFF or GIF"

TASKS = ("colorize", "inpaint", "super-resolve", "denoise", "chain")
AUTOMATIC = "automatic"

#: ``progress(step, total, description)``.
ProgressFn = Callable[[int, int, str], None]


class UserError(ValueError):
    """Something the user can fix (a bad upload, a missing mask, an unknown class); the message is fit for
    the page and names no server path."""


# ------------------------------------------------------------------------------------------ messages

_ABS_PATH = re.compile(r"(?<![\w.~-])(?:~|[A-Za-z]:)?(?:[/\\][^\s'\"`/\\,;()\[\]<>]+)+[/\\]?")


def scrub_paths(text: str) -> str:
    """``text`` with every absolute path (``/srv/w/G.pth``, ``~/x``) shortened to its last component (``G.pth``)."""

    def last(match: re.Match[str]) -> str:
        parts = [p for p in re.split(r"[/\\]", match.group(0)) if p and p != "~"]
        return parts[-1] if parts else "…"

    return _ABS_PATH.sub(last, text)


def user_message(exc: BaseException) -> str:
    """One line for the page from an exception: its message on one line, paths scrubbed."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    return scrub_paths(message)


# ------------------------------------------------------------------------------------------ uploads


@dataclass(frozen=True)
class UploadLimits:
    """Limits on uploaded files: size in bytes and image size in pixels."""

    max_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * MB)
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {self.max_bytes}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be at least 1, got {self.max_pixels}")

    @classmethod
    def from_mb(cls, max_upload_mb: float, max_pixels: int = DEFAULT_MAX_PIXELS) -> UploadLimits:
        if not max_upload_mb > 0:
            raise ValueError(f"max_upload_mb must be positive, got {max_upload_mb}")
        return cls(max(1, int(max_upload_mb * MB)), max_pixels)

    @property
    def max_mb(self) -> float:
        return self.max_bytes / MB


def _mb(n: float) -> str:
    return f"{n / MB:.1f} MB" if n >= 0.1 * MB else f"{n / 1024:.0f} KB"


def _check_pixels(size: tuple[int, int], what: str, limits: UploadLimits) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise UserError(f"the {what} is empty ({w}x{h} pixels)")
    if w * h > limits.max_pixels:
        raise UserError(f"the {what} is {w}x{h} pixels ({w * h / 1e6:.0f} megapixels); the limit is "
                        f"{limits.max_pixels / 1e6:g} megapixels")


def open_upload(source: str | Path | Image.Image | None, what: str = "image",
                limits: UploadLimits | None = None) -> Image.Image:
    """Read an uploaded image (a file path, or a PIL image decoded by the page) as 8-bit RGB.

    Raises :class:`UserError` for nothing uploaded, a file over the size limit, too many pixels, or a file
    that is not a readable image; the messages name no path.
    """
    limits = limits or UploadLimits()
    if source is None or (isinstance(source, str) and not source):
        raise UserError(f"no {what} uploaded yet")
    if isinstance(source, Image.Image):
        _check_pixels(source.size, what, limits)
        if source.mode in ("RGBA", "LA", "P"):
            rgba = source.convert("RGBA")
            return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        return source.convert("RGB")
    path = Path(source)
    not_image = UserError(f"the {what} is not an image that can be read (use {READABLE_FORMATS})")
    try:
        n_bytes = path.stat().st_size
    except OSError:
        raise UserError(f"the uploaded {what} could not be found; upload it again") from None
    if n_bytes > limits.max_bytes:
        raise UserError(f"the {what} file is {_mb(n_bytes)}; the limit is {_mb(limits.max_bytes)}")
    try:
        with Image.open(path) as im:  # reads the header only
            size = im.size
    except Image.DecompressionBombError:
        raise UserError(f"the {what} has too many pixels; the limit is {limits.max_pixels / 1e6:g} "
                        "megapixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise not_image from None
    _check_pixels(size, what, limits)
    try:
        return load_rgb(path)
    except ImageError:
        raise not_image from None


def check_mask_size(mask_size: tuple[int, int], image_size: tuple[int, int], what: str = "mask",
                    tolerance: float = 0.02) -> None:
    """Refuse a mask whose aspect ratio differs from the image's (sizes are ``(width, height)``).

    A mask of another size but the same aspect ratio is scaled to the image (within ``tolerance``, relative).
    """
    (mw, mh), (iw, ih) = mask_size, image_size
    if abs(mw * ih - mh * iw) > tolerance * mh * iw:
        raise UserError(f"the {what} is {mw}x{mh} pixels but the image is {iw}x{ih}: the mask must have the "
                        "image's size (or at least its aspect ratio)")


def painted_mask(layers: Sequence[Image.Image | np.ndarray] | None, image_size: tuple[int, int]
                 ) -> Image.Image | None:
    """The mask painted on the image: white (missing) wherever a layer has paint, black elsewhere.

    Args:
        layers: the editor's paint layers (RGBA; paint = non-zero alpha).
        image_size: ``(width, height)`` of the image painted on.

    Returns:
        an ``L`` image of the first layer's size, or ``None`` when nothing is painted.

    Raises:
        UserError: a layer whose aspect ratio differs from the image's.
    """
    painted: np.ndarray | None = None
    for layer in layers or ():
        im = layer if isinstance(layer, Image.Image) else Image.fromarray(np.asarray(layer))
        check_mask_size(im.size, image_size, "painted mask")
        if im.mode not in ("RGBA", "LA", "PA"):
            continue  # a layer without alpha holds no strokes
        alpha = im.convert("RGBA").getchannel("A")
        if painted is not None and alpha.size != (painted.shape[1], painted.shape[0]):
            alpha = alpha.resize((painted.shape[1], painted.shape[0]), Image.Resampling.NEAREST)
        strokes = np.asarray(alpha) > 0
        painted = strokes if painted is None else painted | strokes
    if painted is None or not painted.any():
        return None
    return Image.fromarray(painted.astype(np.uint8) * 255, "L")


def image_digest(im: Image.Image) -> str:
    """A short content hash of an image (mode, size and pixels)."""
    h = hashlib.sha1(f"{im.mode}{im.size}".encode())
    h.update(im.tobytes())
    return h.hexdigest()[:16]


def for_display(x: torch.Tensor | Image.Image, size: int = DISPLAY_SIZE) -> Image.Image:
    """An image for the page: enlarged with nearest-neighbour to at least ``size`` pixels (sharp pixels)."""
    im = tensor_to_pil(x) if isinstance(x, torch.Tensor) else x
    side = max(im.size)
    if side >= size:
        return im
    scale = -(-size // side)
    return im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)


# ------------------------------------------------------------------------------------------ priors


@dataclass(frozen=True)
class PriorOption:
    """A prior the page offers: ``label`` is shown; ``source`` (a registry name or a folder) never is."""

    label: str
    source: str
    kind: str  # "packaged", "released" or "folder"


class PriorUnavailable(UserError):
    """A prior that cannot be loaded (files missing or unreadable); the message names no path."""


class PriorCatalog:
    """The priors the page offers, loaded on demand and kept (the last ``cache_size`` used) in memory.

    Offered, in order: the priors named in ``priors`` (registry names or prior folders; the first is the
    initial choice), the packaged priors, the released priors whose files are in ``weights_dir`` (default:
    ``$DGP_WEIGHTS``) and the prior folders directly inside ``weights_dir``.
    """

    def __init__(self, priors: Sequence[str | Path] = (DEFAULT_PRIOR,), weights_dir: str | Path | None = None,
                 device: str | torch.device = "cpu", cache_size: int = 1) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1, got {cache_size}")
        self.weights_dir = weights_folder(weights_dir)
        self.device = torch.device(device)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Prior] = OrderedDict()
        self._lock = threading.Lock()
        self.options: list[PriorOption] = []
        for entry in list(priors) or [DEFAULT_PRIOR]:
            self._add(*self._classify(str(entry)))
        for spec in list_priors():
            if spec.kind == "packaged":
                self._add(spec.name, spec.name, "packaged")
        if self.weights_dir is not None and self.weights_dir.is_dir():
            for spec in list_priors():
                if spec.kind == "released" and not spec.missing_files(self.weights_dir):
                    self._add(spec.name, spec.name, "released")
            for sub in sorted(p for p in self.weights_dir.iterdir() if p.is_dir()):
                if all((sub / f).is_file() for f in PRIOR_FOLDER_FILES):
                    self._add(sub.name, str(sub), "folder")

    @staticmethod
    def _classify(entry: str) -> tuple[str, str, str]:
        try:
            spec = get_spec(entry)
        except PriorError:
            path = Path(entry).expanduser()
            return path.resolve().name or entry, str(path), "folder"
        return spec.name, spec.name, spec.kind

    def _add(self, label: str, source: str, kind: str) -> None:
        if any(o.source == source for o in self.options):
            return
        taken = {o.label for o in self.options}
        unique = label
        for n in itertools.count(2):
            if unique not in taken:
                break
            unique = f"{label} ({n})"
        self.options.append(PriorOption(unique, source, kind))

    @property
    def labels(self) -> list[str]:
        return [o.label for o in self.options]

    @property
    def default(self) -> str:
        return self.options[0].label

    def option(self, label: str) -> PriorOption:
        for o in self.options:
            if o.label == label:
                return o
        raise UserError(f"unknown prior {label!r}; choose one of {', '.join(self.labels)}")

    def load(self, label: str) -> Prior:
        """The prior shown as ``label``; :class:`PriorUnavailable` (no paths in it) when it cannot load."""
        option = self.option(label)
        with self._lock:
            if label in self._cache:
                self._cache.move_to_end(label)
                return self._cache[label]
            try:
                prior = load_prior(option.source, weights=self.weights_dir, device=self.device)
            except (PriorError, CheckpointError, OSError, ValueError) as exc:
                raise PriorUnavailable(f"prior {label} is not available: {user_message(exc)}") from None
            prior.G.eval()
            prior.D.eval()
            self._cache[label] = prior
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return prior

    def describe(self, label: str) -> tuple[bool, str]:
        """``(available, one line for the page)``: the prior's size and classes, or why it cannot load."""
        try:
            prior = self.load(label)
        except UserError as exc:
            hint = ("start the server with --prior FOLDER (a prior folder) or --weights DIR (released weights) "
                    "to offer others")
            return False, f"{exc}. Choose another prior, or {hint}."
        names = prior.class_names
        shown = ", ".join(names[:10]) + (f", … ({len(names)} in all)" if len(names) > 10 else "")
        return True, (f"prior {label}: {prior.resolution}x{prior.resolution} pixels, {prior.n_classes} classes "
                      f"({shown})")


def default_iterations_scale(prior: Prior) -> float:
    """The prior's own iterations scale (its card's ``presets.iterations_scale``; 1 when it has none)."""
    presets = prior.card.get("presets", {}) if isinstance(prior.card, dict) else {}
    return float(presets.get("iterations_scale", 1.0))


def resolve_class(prior: Prior, spec: str | int | None) -> int | None:
    """``None`` for automatic (chosen by the latent search), else the class id of a name or an id."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", AUTOMATIC)):
        return None
    try:
        return prior.class_id(spec)
    except ValueError as exc:
        raise UserError(user_message(exc)) from None


# ------------------------------------------------------------------------------------------ run folders


class RunFolders:
    """One folder per run under a root (a fresh temporary folder by default); the oldest are removed."""

    def __init__(self, root: str | Path | None = None, keep: int = 64) -> None:
        self.owned = root is None
        self.root = Path(tempfile.mkdtemp(prefix="dgp-web-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if self.owned:
            atexit.register(self.cleanup)
        self.keep = keep
        self._count = itertools.count()
        self._lock = threading.Lock()

    def new(self, kind: str) -> Path:
        with self._lock:
            folder = self.root / f"{next(self._count):05d}-{kind}-{secrets.token_hex(4)}"
            folder.mkdir()
            runs = sorted(p for p in self.root.iterdir() if p.is_dir())
            for old in runs[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        return folder

    def cleanup(self) -> None:
        """Remove the root when this object created it."""
        if self.owned:
            shutil.rmtree(self.root, ignore_errors=True)


def _environment(prior: Prior) -> dict[str, Any]:
    return {"dgp": dgp.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": str(prior.device), "interface": "web"}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def step_progress(progress: ProgressFn | None, label: str = "") -> list[Callable[[StepEvent], None]]:
    """Engine callbacks that report each step to ``progress`` (none when ``progress`` is ``None``)."""
    if progress is None:
        return []
    prefix = f"{label}: " if label else ""

    def callback(event: StepEvent) -> None:
        if event.stage < 0:
            progress(event.step, event.total, f"{prefix}latent search")
        else:
            progress(event.step, event.total, f"{prefix}stage {event.stage + 1}/{event.num_stages}")

    return [callback]


# ------------------------------------------------------------------------------------------ restore


@dataclass
class RestoreRequest:
    """What the Restore tab sends.

    Attributes:
        task: one of :data:`TASKS`.
        image: the uploaded image (decoded, any mode) or its file.
        painted: the editor's paint layers (strokes mark missing pixels), or ``None``.
        mask: an uploaded mask file (white = missing), or ``None``; it wins over painted strokes.
        reference: an uploaded clean image to score against, or ``None``.
        factor: super-resolution factor (2, 4 or 8).
        sigma: denoising sigma on the [0, 1] scale.
        chain: degradation chain for the ``chain`` task (``"gray+mask"``, ``"down2+gray+hole"``, ...).
        class_spec: class name or id, or ``"automatic"``.
        iterations_scale: multiplies every stage's iterations (``None``: the prior's own).
        seed: random seed.
        degrade: the upload is clean: make the observation from it (a demo; it also becomes the reference).
    """

    task: str
    image: str | Path | Image.Image | None
    painted: Sequence[Image.Image | np.ndarray] | None = None
    mask: str | Path | None = None
    reference: str | Path | None = None
    factor: int = 4
    sigma: float = 0.1
    chain: str = ""
    class_spec: str | None = AUTOMATIC
    iterations_scale: float | None = None
    seed: int = 0
    degrade: bool = False


@dataclass
class RestoreOutput:
    """What the Restore tab shows: images for the page, scores, files to download and notes."""

    input_image: Image.Image
    observation_image: Image.Image
    result_image: Image.Image
    metrics: dict[str, float]
    summary: str
    files: list[Path]
    folder: Path
    record: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def degradation_text(task: str, factor: int = 4, sigma: float = 0.1, chain: str = "") -> str:
    """The degradation of a task as :func:`dgp.degradations.parse_degradation` text."""
    if task == "colorize":
        return "gray"
    if task == "inpaint":
        return "mask"
    if task == "super-resolve":
        factor = int(factor)
        if factor not in DOWNSAMPLE_FACTORS:
            raise UserError(f"the super-resolution factor must be one of {DOWNSAMPLE_FACTORS}, got {factor}")
        return f"down{factor}"
    if task == "denoise":
        sigma = float(sigma)
        if not 0.0 < sigma <= 1.0:
            raise UserError(f"sigma must be in (0, 1], got {sigma:g}")
        return f"noise{sigma:g}"
    if task == "chain":
        text = (chain or "").strip().lower()
        if not text:
            raise UserError("type a degradation chain, e.g. gray+mask or down2+gray+hole")
        return text
    raise UserError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def _needs_mask(text: str) -> bool:
    text = PRESET_DEGRADATIONS.get(text, text)
    return "mask" in (t.strip() for t in text.split("+"))


def _metrics_line(metrics: dict[str, float]) -> str:
    if not metrics:
        return ""
    return (f"PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f} (observation "
            f"{metrics['observation_psnr']:.2f} dB, {metrics['observation_ssim']:.3f})")


def run_restore(prior: Prior, prior_label: str, request: RestoreRequest, folder: Path,
                limits: UploadLimits | None = None, progress: ProgressFn | None = None) -> RestoreOutput:
    """Check the uploads, restore, and write ``result.png``, ``observation.png`` and ``run.json`` to ``folder``.

    Raises:
        UserError: a bad upload, a missing or misfitting mask, an unknown class, a bad chain.
    """
    limits = limits or UploadLimits()
    notes: list[str] = []
    image = open_upload(request.image, "image", limits)
    text = degradation_text(request.task, request.factor, request.sigma, request.chain)
    needs_mask = _needs_mask(text)
    strokes = painted_mask(request.painted, image.size)
    mask_source = None
    if needs_mask:
        if request.mask is not None:
            mask_im = open_upload(request.mask, "mask", limits)
            check_mask_size(mask_im.size, image.size, "mask")
            mask_source = "uploaded"
            if strokes is not None:
                notes.append("the painted strokes were ignored: the uploaded mask is used")
        elif strokes is not None:
            mask_im, mask_source = strokes, "painted"
        else:
            raise UserError("paint the missing region on the image with the brush, or upload a mask image "
                            "(white = missing)")
        mask_im.save(folder / "mask.png")
    elif strokes is not None or request.mask is not None:
        notes.append("the mask is used only for inpainting (or a chain with a 'mask' token); it was ignored")

    if min(image.size) < prior.resolution and not request.degrade and request.task != "super-resolve":
        notes.append(f"the image is smaller than the prior's {prior.resolution}x{prior.resolution} pixels "
                     "and was enlarged")
    if image.width != image.height:
        notes.append("the image was centre-cropped to a square")
    image.save(folder / "input.png")
    reference_path = None
    if request.reference is not None:
        open_upload(request.reference, "reference image", limits).save(folder / "reference.png")
        reference_path = folder / "reference.png"

    size = (prior.resolution, prior.resolution)
    seed = int(request.seed)
    try:
        degradation = parse_degradation(text, size=size, generator=torch.Generator().manual_seed(seed),
                                        mask_path=folder / "mask.png" if needs_mask else None)
        preset = preset_for(degradation)
        schedule = default_schedule(prior, preset, request.iterations_scale)
    except ValueError as exc:
        raise UserError(user_message(exc)) from None
    class_id = resolve_class(prior, request.class_spec)
    try:
        observation, reference = load_inputs(prior, degradation, folder / "input.png", degrade=request.degrade,
                                             reference=reference_path, seed=seed)
    except ValueError as exc:
        raise UserError(user_message(exc)) from None

    restoration = restore(prior, degradation, schedule, observation=observation, reference=reference,
                          class_id=class_id, seed=seed, callbacks=step_progress(progress, request.task))
    result = restoration.result
    class_name = prior.class_names[result.class_id]
    hole = degradation.hole_mask(size)
    record = run_record(restoration, command=request.task, interface="web", degradation=degradation.name,
                        degrade=request.degrade, mask=mask_source,
                        missing_fraction=0.0 if hole is None else round(float(hole.mean()), 4),
                        reference="uploaded" if reference_path else ("input" if request.degrade else None),
                        prior=prior_label, class_name=class_name, seed=seed, preset=preset,
                        iterations_scale=request.iterations_scale, schedule=schedule.to_dict(),
                        environment=_environment(prior))
    tensor_to_pil(restoration.output).save(folder / "result.png")
    tensor_to_pil(restoration.observation).save(folder / "observation.png")
    _write_json(folder / "run.json", record)
    summary = (f"Done: {request.task} ({degradation.name}) in {restoration.seconds:.1f} s, class "
               f"{class_name!r} ({result.class_id})")
    if restoration.metrics:
        summary += f"; {_metrics_line(restoration.metrics)}"
    return RestoreOutput(
        input_image=for_display(to_square(image, prior.resolution)),
        observation_image=for_display(restoration.observation),
        result_image=for_display(restoration.output),
        metrics=dict(restoration.metrics), summary=summary,
        files=[folder / "result.png", folder / "run.json"], folder=folder, record=record, notes=notes,
    )


# ------------------------------------------------------------------------------------------ edits


class ReconstructionCache:
    """The last few reconstructions made for editing, so that moving a slider does not reconstruct again."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._items: OrderedDict[tuple[Any, ...], Result] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> Result | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key: tuple[Any, ...], result: Result) -> None:
        with self._lock:
            self._items[key] = result
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


def reconstruct_upload(prior: Prior, prior_label: str, image: Image.Image, *, class_spec: str | None,
                       iterations_scale: float | None, seed: int, preset: str,
                       cache: ReconstructionCache | None = None, progress: ProgressFn | None = None,
                       label: str = "reconstruction") -> Result:
    """Reconstruct an (already checked) upload with the prior, for editing; reuses ``cache`` when it can."""
    return reconstruct_uploads(prior, prior_label, [image], class_specs=[class_spec],
                               iterations_scale=iterations_scale, seed=seed, preset=preset, cache=cache,
                               progress=progress, label=label)[0]


def reconstruct_uploads(prior: Prior, prior_label: str, images: list[Image.Image], *,
                        class_specs: list[str | None], iterations_scale: float | None, seed: int, preset: str,
                        cache: ReconstructionCache | None = None, progress: ProgressFn | None = None,
                        label: str = "reconstruction") -> list[Result]:
    """Reconstruct (already checked) uploads, each from ``seed``, for editing: those ``cache`` lacks together
    through the batched engine (whose progress follows the first of them)."""
    schedule = default_schedule(prior, preset, iterations_scale)
    class_ids = [resolve_class(prior, spec) for spec in class_specs]
    keys = [(prior_label, image_digest(image), class_id, schedule.to_dict().__repr__(), int(seed))
            for image, class_id in zip(images, class_ids)]
    results = [cache.get(key) if cache is not None else None for key in keys]
    todo = [i for i, result in enumerate(results) if result is None]
    if todo:
        observations = [pil_to_tensor(to_square(images[i], prior.resolution)) for i in todo]
        generators = [torch.Generator().manual_seed(int(seed)) for _ in todo]
        made = DGPReconstructor(prior, schedule, step_progress(progress, label)).batch(
            observations, Identity(), [class_ids[i] for i in todo], generators)  # one image: the single path
        for i, result in zip(todo, made):
            results[i] = result
            if cache is not None:
                cache.put(keys[i], result)
    return [result for result in results if result is not None]


@dataclass
class EditOutput:
    """Images for a gallery (with captions), files to download and a summary line."""

    gallery: list[tuple[Image.Image, str]]
    summary: str
    files: list[Path]
    frames: list[Image.Image] = field(default_factory=list)
    gif: Path | None = None


def run_jitter(prior: Prior, prior_label: str, image: Image.Image, *, sigma: float, count: int,
               class_spec: str | None, iterations_scale: float | None, seed: int, folder: Path,
               cache: ReconstructionCache | None = None, progress: ProgressFn | None = None) -> EditOutput:
    """Reconstruct ``image`` and render ``count`` variations ``z + sigma * eps`` around it."""
    if not 0.0 <= float(sigma) <= 5.0:
        raise UserError(f"sigma must be in [0, 5], got {sigma:g}")
    if not 1 <= int(count) <= 64:
        raise UserError(f"the number of variations must be in 1..64, got {count}")
    start = time.perf_counter()
    result = reconstruct_upload(prior, prior_label, image, class_spec=class_spec, iterations_scale=iterations_scale,
                                seed=seed, preset="manipulation", cache=cache, progress=progress)
    images = jitter(prior, result, [float(sigma)], int(count), torch.Generator().manual_seed(int(seed) + 1))
    tensor_to_pil(result.image).save(folder / "reconstruction.png")
    for i, im in enumerate(images):
        tensor_to_pil(im).save(folder / f"jitter_{i:02d}.png")
    name = prior.class_names[result.class_id]
    gallery = [(for_display(result.image), f"reconstruction ({name})")]
    gallery += [(for_display(im), f"σ = {float(sigma):g} #{i + 1}") for i, im in enumerate(images)]
    summary = (f"Done: jitter, {count} variations at sigma {float(sigma):g} around the reconstruction "
               f"(class {name!r}) in {time.perf_counter() - start:.1f} s")
    return EditOutput(gallery, summary, [folder / "reconstruction.png"] +
                      [folder / f"jitter_{i:02d}.png" for i in range(len(images))])


def run_transfer(prior: Prior, prior_label: str, image: Image.Image, *, targets: Sequence[str],
                 class_spec: str | None, iterations_scale: float | None, seed: int, folder: Path,
                 cache: ReconstructionCache | None = None, progress: ProgressFn | None = None) -> EditOutput:
    """Reconstruct ``image`` and render it under each class of ``targets`` (names or ids)."""
    if not targets:
        raise UserError("choose at least one class to transfer to")
    ids = []
    for t in targets:
        c = resolve_class(prior, t)
        if c is None:
            raise UserError("choose classes to transfer to ('automatic' is not a class)")
        ids.append(c)
    start = time.perf_counter()
    result = reconstruct_upload(prior, prior_label, image, class_spec=class_spec, iterations_scale=iterations_scale,
                                seed=seed, preset="manipulation", cache=cache, progress=progress)
    images = transfer(prior, result, ids)
    files = [folder / "reconstruction.png"]
    tensor_to_pil(result.image).save(files[0])
    gallery = [(for_display(result.image), f"reconstruction ({prior.class_names[result.class_id]})")]
    for c, im in zip(ids, images):
        path = folder / f"class_{c:04d}.png"
        tensor_to_pil(im).save(path)
        files.append(path)
        gallery.append((for_display(im), prior.class_names[c]))
    summary = (f"Done: category transfer to {len(ids)} classes in {time.perf_counter() - start:.1f} s")
    return EditOutput(gallery, summary, files)


def run_morph(prior: Prior, prior_label: str, first: Image.Image, second: Image.Image, *, frames: int,
              class_a: str | None, class_b: str | None, iterations_scale: float | None, seed: int, folder: Path,
              cache: ReconstructionCache | None = None, progress: ProgressFn | None = None) -> EditOutput:
    """Reconstruct both images and interpolate between them: ``frames`` frames and a looping GIF."""
    if not 2 <= int(frames) <= 64:
        raise UserError(f"the number of frames must be in 2..64, got {frames}")
    start = time.perf_counter()
    a, b = reconstruct_uploads(prior, prior_label, [first, second], class_specs=[class_a, class_b],
                               iterations_scale=iterations_scale, seed=seed, preset="morphing", cache=cache,
                               progress=progress, label="both images")
    images = morph(prior, a, b, int(frames))
    gif = folder / "morph.gif"
    save_gif(images, gif)
    shown = [for_display(im) for im in images]
    save_gif(torch.cat([pil_to_tensor(im) for im in shown]), folder / "morph_display.gif")
    gallery = [(im, f"frame {i}") for i, im in enumerate(shown)]
    summary = f"Done: morph, {frames} frames in {time.perf_counter() - start:.1f} s"
    return EditOutput(gallery, summary, [gif], frames=shown, gif=folder / "morph_display.gif")


__all__ = [
    "AUTOMATIC",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_UPLOAD_MB",
    "EditOutput",
    "PriorCatalog",
    "PriorOption",
    "PriorUnavailable",
    "ReconstructionCache",
    "RestoreOutput",
    "RestoreRequest",
    "RunFolders",
    "TASKS",
    "UploadLimits",
    "UserError",
    "check_mask_size",
    "default_iterations_scale",
    "degradation_text",
    "for_display",
    "open_upload",
    "painted_mask",
    "reconstruct_upload",
    "reconstruct_uploads",
    "resolve_class",
    "run_jitter",
    "run_morph",
    "run_restore",
    "run_transfer",
    "scrub_paths",
    "step_progress",
    "user_message",
]
