"""The restoration-quality benchmark: DGP against its baselines and ablations on held-out images.

Data flow: image folder -> balanced image list -> per task, the observations (and, for the adversarial
defense, PGD-attacked images) -> each method, through :func:`dgp.pipeline.finish` (colorization keeps the
input's lightness; inpainting is scored inside the hole) -> one record per image, cached on disk -> tables,
JSON and example figures.

Every method sees the same images, observations and per-image seeds. The per-image records are written to
``OUT/cache/<task>/<method>/`` as they finish (a JSON record and the output PNG), so an interrupted run
continues where it stopped; the cache is tied to the settings that change results (``OUT/cache/settings.json``).

Tasks (:data:`TASKS`): colorization, inpainting with the centre hole, x4 super-resolution (both SR presets),
denoising at sigma 0.1 and 0.2, adversarial defense (PGD L-inf on a classifier) and plain reconstruction.
Methods (:data:`METHODS`): DGP, DGP with the ``sr-mse`` preset (SR only), latent-only GAN inversion, the DGP
ablations (MSE distance only, all blocks at once, no latent search), DGP with a random generator, Deep Image
Prior, and the classical methods that fit a task (the input itself, bicubic, OpenCV Telea / Navier-Stokes
inpainting, non-local means).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing
import platform
import shutil
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from dgp.allocator import keep_freed_memory
from dgp.attacks import pgd_linf
from dgp.baselines import Reconstructor
from dgp.baselines.classical import (BicubicUpsampling, NonLocalMeans, ObservationBaseline, OpenCVInpainting,
                                     ClassicalMethod)
from dgp.baselines.dip import DeepImagePrior, DIPConfig
from dgp.baselines.inversion import ABLATIONS, GANInversion, ablation, random_generator_prior
from dgp.batch.runner import AUTO_BATCH_IMAGES, auto_batch_size
from dgp.classifier import Classifier, card_class_names
from dgp.data import ImageFolder
from dgp.defaults import QUICK, QUICK_ABLATION_TASKS
from dgp.degradations import Degradation, parse_degradation
from dgp.imageio import atomic_write, load_image, pil_to_tensor, save_image, tensor_to_pil
from dgp.pipeline import default_schedule, finish
from dgp.priors.registry import Prior
from dgp.reconstruct import Callback, DGPReconstructor

TaskKind = Literal["restoration", "colorization", "defense"]


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark task.

    Attributes:
        name: key in :data:`TASKS` and in file names.
        degradation: textual degradation (:func:`dgp.degradations.parse_degradation`).
        preset: DGP schedule preset of the task.
        title: heading of its table.
        kind: ``restoration`` (PSNR/SSIM), ``colorization`` (PSNR/SSIM and classifier top-1) or ``defense``
            (classifier top-1 on attacked images, reconstructed).
        note: how it is scored, for the table's caption.
    """

    name: str
    degradation: str
    preset: str
    title: str
    kind: TaskKind = "restoration"
    note: str = ""


TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("colorization", "gray", "colorization", "Colorization", "colorization",
             "PSNR/SSIM of the output with the input's lightness kept (Lab merge), against the colour original; "
             "top-1: the classifier's accuracy on the outputs."),
    TaskSpec("inpainting", "hole", "inpainting", "Inpainting (centre hole)", "restoration",
             "PSNR/SSIM inside the hole only (the centred square of side R/3)."),
    TaskSpec("sr4", "down4", "sr", "Super-resolution x4", "restoration",
             "Observation: antialiased bicubic downsampling by 4; PSNR/SSIM of the full image."),
    TaskSpec("denoise0.1", "noise0.1", "denoising", "Denoising, sigma 0.1", "restoration",
             "Additive Gaussian noise, sigma 0.1 on the [0, 1] scale (25.5 levels), clipped."),
    TaskSpec("denoise0.2", "noise0.2", "denoising", "Denoising, sigma 0.2", "restoration",
             "Additive Gaussian noise, sigma 0.2 on the [0, 1] scale (51 levels), clipped."),
    TaskSpec("defense", "id", "reconstruction", "Adversarial defense", "defense",
             "PGD L-inf attack on the classifier; top-1 of the classifier on each method's reconstruction of the "
             "attacked image (the GAN methods search the class themselves); PSNR/SSIM against the clean image."),
    TaskSpec("reconstruction", "id", "reconstruction", "Reconstruction (GAN inversion)", "restoration",
             "No degradation: how well each method reproduces the image."),
)}


@dataclass(frozen=True)
class MethodSpec:
    """A method of the benchmark: its name, a title for tables, and its family."""

    name: str
    title: str
    family: Literal["dgp", "ablation", "baseline", "classical"]


METHODS: dict[str, MethodSpec] = {m.name: m for m in (
    MethodSpec("dgp", "DGP", "dgp"),
    MethodSpec("dgp-sr-mse", "DGP, sr-mse preset", "dgp"),
    MethodSpec("gan-inversion", "GAN inversion (latent only)", "baseline"),
    MethodSpec("dgp-mse-only", "DGP, MSE distance only", "ablation"),
    MethodSpec("dgp-all-blocks", "DGP, all blocks at once", "ablation"),
    MethodSpec("dgp-no-search", "DGP, no latent search", "ablation"),
    MethodSpec("random-g", "DGP with a random G", "ablation"),
    MethodSpec("dip", "Deep Image Prior", "baseline"),
    MethodSpec("input", "input (no restoration)", "classical"),
    MethodSpec("bicubic", "bicubic upsampling", "classical"),
    MethodSpec("telea", "Telea inpainting (OpenCV)", "classical"),
    MethodSpec("navier-stokes", "Navier-Stokes inpainting (OpenCV)", "classical"),
    MethodSpec("nl-means", "non-local means (OpenCV)", "classical"),
)}


@dataclass(frozen=True)
class BenchSettings:
    """Settings of a benchmark run.

    Attributes:
        n: number of images, balanced over classes.
        seed: base seed (image choice, noise, attacks, latent search, DIP).
        iterations_scale: multiplies every DGP stage's iterations; ``None``: the prior card's setting.
        candidates: latent-search candidates; ``None``: the prior card's setting.
        dip_iterations: Deep Image Prior's steps.
        pgd_eps: PGD radius on the [0, 1] scale.
        pgd_steps: PGD steps.
        quick: the quick setting (labels the report; fewer images and iterations come from :data:`QUICK`).
        examples: images shown in each task's figure.
    """

    n: int = 200
    seed: int = 0
    iterations_scale: float | None = None
    candidates: int | None = None
    dip_iterations: int = 300
    pgd_eps: float = 8 / 255
    pgd_steps: int = 10
    quick: bool = False
    examples: int = 4

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.iterations_scale is not None and not self.iterations_scale > 0:
            raise ValueError(f"iterations_scale must be > 0, got {self.iterations_scale}")
        if self.candidates is not None and self.candidates < 0:
            raise ValueError(f"candidates must be >= 0, got {self.candidates}")
        if self.dip_iterations < 1:
            raise ValueError(f"dip_iterations must be >= 1, got {self.dip_iterations}")
        if not 0 <= self.pgd_eps <= 1 or self.pgd_steps < 0:
            raise ValueError(f"need 0 <= pgd_eps <= 1 and pgd_steps >= 0, got {self.pgd_eps}, {self.pgd_steps}")
        if self.examples < 0:
            raise ValueError(f"examples must be >= 0, got {self.examples}")

    @classmethod
    def quick_setting(cls, **overrides: Any) -> BenchSettings:
        """The ``--quick`` setting; keyword arguments that are not ``None`` replace its values."""
        values = {**QUICK, **{k: v for k, v in overrides.items() if v is not None}}
        return cls(quick=True, **values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def cache_key(self) -> dict[str, Any]:
        """The settings a cached per-image record depends on (not ``n``, ``examples`` or ``quick``)."""
        d = self.to_dict()
        for k in ("n", "examples", "quick"):
            d.pop(k)
        return d


@dataclass
class BenchEvent:
    """Progress of a run, for a callback: ``done`` of ``total`` images of ``method`` on ``task`` finished
    (``done == 0``: the method starts); ``cached`` when the last one came from the cache; ``overall_done`` of
    ``overall_total`` restorations of the whole run."""

    task: str
    method: str
    done: int
    total: int
    cached: bool = False
    seconds: float = 0.0
    overall_done: int = 0
    overall_total: int = 0


ProgressFn = Callable[[BenchEvent], None]


# ---------------------------------------------------------------------------------------------- images


def select_images(folder: ImageFolder, n: int, seed: int = 0) -> ImageFolder:
    """``n`` images balanced over classes: a seeded random draw of ``ceil(n / classes)`` per class, taken round
    robin over the classes (so any prefix is balanced too)."""
    per_class = math.ceil(n / len(folder.class_names))
    chosen = folder.subset(per_class, rng=np.random.default_rng(seed))
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(chosen.labels):
        by_class.setdefault(label, []).append(i)
    order: list[int] = []
    for rank in range(per_class):
        order += [idx[rank] for _, idx in sorted(by_class.items()) if rank < len(idx)]
    order = order[:n]
    return ImageFolder(folder.root, [chosen.files[i] for i in order], [chosen.labels[i] for i in order],
                       folder.class_names)


def image_key(folder: ImageFolder, index: int) -> str:
    """The image's path relative to the data folder, with ``/`` separators."""
    path = folder.files[index]
    try:
        return path.relative_to(folder.root).as_posix()
    except ValueError:
        return path.name


def image_seed(base: int, key: str) -> int:
    """A per-image seed that depends only on the base seed and the image's path (stable when ``n`` changes)."""
    return (base * 1_000_003 + zlib.crc32(key.encode())) % 2**31


def fingerprint(card: dict[str, Any] | None) -> str:
    """Short hash of a model card (identifies a prior or classifier snapshot)."""
    return hashlib.sha256(json.dumps(card or {}, sort_keys=True, default=str).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------- methods


def applicable(method: str, task: TaskSpec, degradation: Degradation, resolution: int) -> bool:
    """Whether ``method`` runs on ``task``."""
    if method == "dgp-sr-mse":
        return task.preset == "sr"
    if method == "input":
        return task.name != "reconstruction"
    classical = _classical(method, resolution)
    if classical is not None:
        return classical.supports(degradation)
    return method in METHODS


def _classical(method: str, resolution: int) -> ClassicalMethod | None:
    factories: dict[str, Callable[[], ClassicalMethod]] = {
        "input": lambda: ObservationBaseline(resolution),
        "bicubic": lambda: BicubicUpsampling(resolution),
        "telea": lambda: OpenCVInpainting(resolution, "telea"),
        "navier-stokes": lambda: OpenCVInpainting(resolution, "ns"),
        "nl-means": lambda: NonLocalMeans(resolution),
    }
    return factories[method]() if method in factories else None


def default_methods(task: TaskSpec, quick: bool) -> list[str]:
    """Every method, less the ablations and the random generator outside :data:`QUICK_ABLATION_TASKS` in the
    quick setting."""
    return [m for m, spec in METHODS.items()
            if not (quick and spec.family == "ablation" and task.name not in QUICK_ABLATION_TASKS)]


def build_method(method: str, task: TaskSpec, prior: Prior, settings: BenchSettings,
                 random_prior: Prior | None = None, callbacks: Sequence[Callback] = ()) -> Reconstructor:
    """The reconstructor of ``method`` for ``task``: DGP schedules come from the task's preset scaled by the
    settings (:func:`dgp.pipeline.default_schedule`)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")

    def schedule(preset: str = task.preset):
        return default_schedule(prior, preset, settings.iterations_scale, settings.candidates)

    if method == "dgp":
        return DGPReconstructor(prior, schedule(), callbacks)
    if method == "dgp-sr-mse":
        return DGPReconstructor(prior, schedule("sr-mse"), callbacks)
    if method == "gan-inversion":
        return GANInversion(prior, schedule(), callbacks)
    if method in ABLATIONS:
        return ablation(method, prior, schedule(), callbacks)
    if method == "random-g":
        return DGPReconstructor(random_prior or random_generator_prior(prior, settings.seed), schedule(), callbacks)
    if method == "dip":
        return DeepImagePrior(prior.resolution, DIPConfig(iterations=settings.dip_iterations), callbacks,
                              device=prior.device)
    classical = _classical(method, prior.resolution)
    assert classical is not None
    return classical


# ----------------------------------------------------------------------------------------------- runner


@dataclass
class Summary:
    """Mean and spread of one method's figures on one task (``None`` where not measured)."""

    images: int
    psnr: float | None = None
    psnr_std: float | None = None
    ssim: float | None = None
    ssim_std: float | None = None
    top1: float | None = None
    correct: int | None = None
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}


def summarize(records: Sequence[dict[str, Any]]) -> Summary:
    """Mean ± population std of PSNR/SSIM (finite values), top-1 and mean seconds over per-image records."""
    def stats(key: str) -> tuple[float | None, float | None]:
        values = np.array([r[key] for r in records if r.get(key) is not None and math.isfinite(r[key])])
        return (float(values.mean()), float(values.std())) if len(values) else (None, None)

    psnr_mean, psnr_std = stats("psnr")
    ssim_mean, ssim_std = stats("ssim")
    hits = [r["top1"] for r in records if r.get("top1") is not None]
    secs = [r["seconds"] for r in records if r.get("seconds") is not None]
    return Summary(len(records), psnr_mean, psnr_std, ssim_mean, ssim_std,
                   float(np.mean(hits)) if hits else None, int(sum(hits)) if hits else None,
                   float(np.mean(secs)) if secs else None)


@dataclass
class BenchResult:
    """What a run produced: per-image records and summaries, per task then method."""

    records: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    summaries: dict[str, dict[str, Summary]] = field(default_factory=dict)
    references: dict[str, dict[str, Summary]] = field(default_factory=dict)
    computed: int = 0
    cached: int = 0


class QualityBench:
    """Runs the benchmark into an output folder and writes its report.

    Args:
        prior: the GAN prior (for DGP and the GAN baselines).
        classifier: scores top-1 and is attacked in the defense task; ``None`` leaves top-1 out (and needs the
            defense task left out too).
        data: the image folder (class sub-folders).
        output: the output folder (created; an existing one is resumed).
        settings: see :class:`BenchSettings`.
        tasks: task names (default: all of :data:`TASKS`).
        methods: method names (default: :func:`default_methods` per task); a method that does not fit a task is
            skipped there.
        progress: called with a :class:`BenchEvent` as images finish.
        step_callbacks: passed to the iterative methods (per-step progress).
        classifier_card: the classifier's card (class names, to map the data's classes; its fingerprint keys the
            cache).
        info: extra facts for the report (command line, names of the prior and classifier ...).
        overwrite: drop a cache made with other settings instead of refusing to run.
        batch_size: images the GAN methods (DGP, its ablations, GAN inversion) restore at once with the batched
            engine; ``None``: :func:`dgp.batch.auto_batch_size` of the images left to compute (at most 16). With
            1 each image is restored alone; with more, a result depends slightly (float rounding, amplified by
            the optimisation) on the images that shared its batch. The other methods go one image at a time.
    """

    def __init__(self, prior: Prior, classifier: Classifier | None, data: ImageFolder, output: str | Path,
                 settings: BenchSettings, tasks: Sequence[str] | None = None, methods: Sequence[str] | None = None,
                 progress: ProgressFn | None = None, step_callbacks: Sequence[Callback] = (),
                 classifier_card: dict[str, Any] | None = None, info: dict[str, Any] | None = None,
                 overwrite: bool = False, batch_size: int | None = None) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.prior, self.classifier, self.settings = prior, classifier, settings
        self.batch_size = batch_size
        self.output = Path(output)
        self.tasks = list(tasks) if tasks else list(TASKS)
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
        self.methods = list(methods) if methods else None
        unknown = [m for m in self.methods or [] if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
        self.progress = progress
        self.step_callbacks = list(step_callbacks)
        self.classifier_card = classifier_card or {}
        self.info = dict(info or {})
        self.overwrite = overwrite
        self.data = data
        self.images = select_images(data, settings.n, settings.seed)
        self.keys = [image_key(self.images, i) for i in range(len(self.images.files))]
        self.prior_ids = self._class_map(list(prior.class_names))
        self.classifier_ids: list[int] | None = None
        if classifier is not None:
            self.classifier_ids = self._class_map(card_class_names(self.classifier_card, classifier.config.n_classes))
            if self.classifier_ids is None:
                raise ValueError(f"the classifier's classes do not cover the data's classes "
                                 f"{self.images.class_names}")
        if "defense" in self.tasks and classifier is None:
            raise ValueError("the defense task needs a classifier (leave it out of the tasks, or give one)")

    def _class_map(self, names: list[str]) -> list[int] | None:
        """Folder class index -> model class id by name (``None`` when some folder class is unknown)."""
        if not all(n in names for n in self.images.class_names):
            return None
        return [names.index(n) for n in self.images.class_names]

    # --- cache ---------------------------------------------------------------------------------------

    def _cache_identity(self) -> dict[str, Any]:
        return {"settings": self.settings.cache_key(), "prior": fingerprint(self.prior.card),
                "classifier": fingerprint(self.classifier_card) if self.classifier is not None else None,
                "resolution": self.prior.resolution}

    def _open_cache(self) -> Path:
        cache = self.output / "cache"
        identity = self._cache_identity()
        path = cache / "settings.json"
        if path.is_file():
            old = json.loads(path.read_text())
            if old != identity:
                if not self.overwrite:
                    diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
                    raise ValueError(f"{self.output} holds results made with other settings ({', '.join(diff)} "
                                     "differ); use another output folder or --overwrite to start afresh")
                shutil.rmtree(cache)
        cache.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(identity, indent=2) + "\n"))
        return cache

    @staticmethod
    def _entry(cache: Path, task: str, method: str, key: str) -> Path:
        return cache / task / method / key.replace("/", "__").rsplit(".", 1)[0]

    # --- run -----------------------------------------------------------------------------------------

    def plan(self) -> dict[str, list[str]]:
        """The methods that will run on each task, in order."""
        R = self.prior.resolution
        out = {}
        for task_name in self.tasks:
            task = TASKS[task_name]
            degradation = parse_degradation(task.degradation, size=(R, R))
            out[task_name] = [m for m in (self.methods or default_methods(task, self.settings.quick))
                              if applicable(m, task, degradation, R)]
        return out

    def compute_missing(self, task_name: str, method: str) -> int:
        """Compute and cache every image of ``method`` on ``task_name`` that the cache lacks (no report);
        returns how many were computed. Used by the worker processes of :meth:`run`."""
        R = self.prior.resolution
        task = TASKS[task_name]
        degradation = parse_degradation(task.degradation, size=(R, R))
        cache = self.output / "cache"
        missing = [i for i, key in enumerate(self.keys)
                   if not self._entry(cache, task_name, method, key).with_suffix(".json").is_file()]
        if not missing:
            return 0
        clean = torch.cat([load_image(f, R) for f in self.images.files])
        observations = self._observations(task, degradation, clean)
        random_prior = random_generator_prior(self.prior, self.settings.seed) if method == "random-g" else None
        runner = build_method(method, task, self.prior, self.settings, random_prior, self.step_callbacks)
        for _ in self._restore(runner, task, method, degradation, observations, clean, missing, cache):
            pass
        return len(missing)

    def _compute_in_parallel(self, plan: dict[str, list[str]], workers: int) -> int:
        """Fill the cache with ``workers`` processes, one (task, method) pair at a time each, the costliest
        pairs first; torch's threads are shared out between them. Returns the number of restorations made."""
        pairs = sorted(((t, m) for t, ms in plan.items() for m in ms), key=lambda p: -_method_cost(*p))
        threads = max(1, torch.get_num_threads() // workers)
        payload = {"prior": self.prior, "classifier": self.classifier, "data": self.data, "output": self.output,
                   "settings": self.settings, "classifier_card": self.classifier_card,
                   "batch_size": self.batch_size}
        total, done, computed = len(pairs) * len(self.keys), 0, 0
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(_compute_pair, payload, t, m, threads) for t, m in pairs]
            for future in as_completed(futures):
                task_name, method, made = future.result()
                computed += made
                done += len(self.keys)
                self._emit(BenchEvent(task_name, method, 0, len(self.keys), overall_done=done - len(self.keys),
                                      overall_total=total))
                self._emit(BenchEvent(task_name, method, len(self.keys), len(self.keys), made == 0,
                                      overall_done=done, overall_total=total))
        return computed

    def run(self, workers: int = 1) -> BenchResult:
        """Run every missing (task, method, image), then write the report; returns the records.

        With ``workers > 1`` the missing results are first computed by that many processes (CPU), then the
        report is written from the cache as usual.
        """
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        start = time.perf_counter()
        cache = self._open_cache()
        self._write_image_list()
        parallel = self._compute_in_parallel(self.plan(), workers) if workers > 1 else 0
        R = self.prior.resolution
        clean = torch.cat([load_image(f, R) for f in self.images.files])
        result = BenchResult()
        clean_logits = self._logits(clean)
        random_prior = random_generator_prior(self.prior, self.settings.seed)
        plan = self.plan()
        overall_total = sum(len(m) for m in plan.values()) * len(self.keys)
        overall = 0
        for task_name, methods in plan.items():
            task = TASKS[task_name]
            degradation = parse_degradation(task.degradation, size=(R, R))
            observations = self._observations(task, degradation, clean)
            result.records[task_name] = {}
            result.references[task_name] = self._references(task, clean, observations, clean_logits)
            for method in methods:
                runner = build_method(method, task, self.prior, self.settings, random_prior, self.step_callbacks)
                records: list[dict[str, Any] | None] = [None] * len(self.keys)
                self._emit(BenchEvent(task_name, method, 0, len(self.keys), overall_done=overall,
                                      overall_total=overall_total))
                done = 0
                missing = []
                for i, key in enumerate(self.keys):  # the cached records first, then the rest as they finish
                    record_path = self._entry(cache, task_name, method, key).with_suffix(".json")
                    if not record_path.is_file():
                        missing.append(i)
                        continue
                    records[i] = json.loads(record_path.read_text())
                    result.cached += 1
                    done, overall = done + 1, overall + 1
                    self._emit(BenchEvent(task_name, method, done, len(self.keys), True, records[i]["seconds"],
                                          overall, overall_total))
                for i, record in self._restore(runner, task, method, degradation, observations, clean, missing,
                                               cache):
                    records[i] = record
                    result.computed += 1
                    done, overall = done + 1, overall + 1
                    self._emit(BenchEvent(task_name, method, done, len(self.keys), False, record["seconds"],
                                          overall, overall_total))
                result.records[task_name][method] = [r for r in records if r is not None]
            result.summaries[task_name] = {m: summarize(r) for m, r in result.records[task_name].items()}
        result.computed, result.cached = result.computed + parallel, result.cached - parallel
        self.info.setdefault("seconds", round(time.perf_counter() - start, 1))
        self.info.setdefault("workers", workers)
        write_report(self, result)
        return result

    def _emit(self, event: BenchEvent) -> None:
        if self.progress is not None:
            self.progress(event)

    def _logits(self, images: Tensor) -> Tensor | None:
        if self.classifier is None:
            return None
        device = next(self.classifier.parameters()).device
        with torch.no_grad():
            return self.classifier.eval()(images.to(device)).cpu()

    def _label(self, index: int, ids: list[int] | None) -> int | None:
        return None if ids is None else ids[self.images.labels[index]]

    def _observations(self, task: TaskSpec, degradation: Degradation, clean: Tensor) -> list[Tensor]:
        """Observations ``(1, 3, h, w)`` of the first ``len(clean)`` images: degraded with per-image seeded noise,
        or PGD-attacked."""
        out = []
        for i, key in enumerate(self.keys[:len(clean)]):
            generator = torch.Generator().manual_seed(image_seed(self.settings.seed, key) + 7919)
            if task.kind == "defense":
                assert self.classifier is not None
                label = torch.tensor([self._label(i, self.classifier_ids)])
                out.append(pgd_linf(self.classifier, clean[i:i + 1], label, eps=self.settings.pgd_eps,
                                    steps=self.settings.pgd_steps, generator=generator))
            else:
                out.append(degradation.observe(clean[i:i + 1], generator=generator))
        return out

    def _references(self, task: TaskSpec, clean: Tensor, observations: list[Tensor],
                    clean_logits: Tensor | None) -> dict[str, Summary]:
        """Rows that are not methods: the classifier on the original (clean) images."""
        if task.kind == "restoration" or clean_logits is None:
            return {}
        hits = [int(int(clean_logits[i].argmax()) == self._label(i, self.classifier_ids))
                for i in range(len(self.keys))]
        return {"original": Summary(len(hits), top1=float(np.mean(hits)), correct=int(sum(hits)))}

    def _restore(self, runner: Reconstructor, task: TaskSpec, method: str, degradation: Degradation,
                 observations: list[Tensor], clean: Tensor, indices: list[int],
                 cache: Path) -> Iterator[tuple[int, dict[str, Any]]]:
        """Restore the images ``indices`` with ``runner``, cache each record and output, and yield ``(index,
        record)`` as they finish: in batches of :attr:`batch_size` where the runner has a batched engine
        (``batch``), else one at a time. Each image keeps its own seed and class, batched or not."""
        batched = hasattr(runner, "batch")
        if not batched:
            size = 1
        elif self.batch_size is not None:
            size = self.batch_size
        else:
            size = auto_batch_size(self.prior, len(indices), 1)
        for start in range(0, len(indices), size):
            chunk = indices[start:start + size]
            seeds = [image_seed(self.settings.seed, self.keys[i]) for i in chunk]
            classes = [None if task.kind == "defense" else self._label(i, self.prior_ids) for i in chunk]
            generators = [torch.Generator().manual_seed(seed) for seed in seeds]
            began = time.perf_counter()
            if batched:  # a batch of one runs the single-image path
                outcomes = runner.batch([observations[i] for i in chunk], degradation,  # type: ignore[attr-defined]
                                        classes, generators)
            else:
                outcomes = [runner(observations[chunk[0]], degradation, classes[0], generators[0])]
            seconds = (time.perf_counter() - began) / len(chunk)  # each image's share of its batch
            for i, seed, outcome in zip(chunk, seeds, outcomes):
                entry = self._entry(cache, task.name, method, self.keys[i])
                yield i, self._record(outcome, task, method, degradation, clean[i:i + 1], i, seed, seconds,
                                      len(chunk), entry)

    def _record(self, outcome: Any, task: TaskSpec, method: str, degradation: Degradation, reference: Tensor,
                index: int, seed: int, seconds: float, batch: int, entry: Path) -> dict[str, Any]:
        """Score one restoration, write its output and record (atomically) and return the record."""
        output, metrics = finish(outcome, degradation, reference)
        record: dict[str, Any] = {"task": task.name, "method": method, "image": self.keys[index],
                                  "label": self.images.labels[index], "seed": seed, "seconds": round(seconds, 3),
                                  "batch": batch, "psnr": metrics["psnr"], "ssim": metrics["ssim"],
                                  "class_id": getattr(outcome, "class_id", None)}
        if task.kind != "restoration" and self.classifier is not None:
            logits = self._logits(output)
            assert logits is not None
            record["prediction"] = int(logits[0].argmax())
            record["top1"] = int(record["prediction"] == self._label(index, self.classifier_ids))
        if not math.isfinite(record["psnr"]):
            record["psnr"] = None  # identical images (JSON has no infinity)
        save_image(output, entry.with_suffix(".png"))
        atomic_write(entry.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(record) + "\n"))
        return record

    def _write_image_list(self) -> None:
        lines = [f"{key}\t{self.images.class_names[label]}" for key, label in zip(self.keys, self.images.labels)]
        text = f"# {len(lines)} images of {self.images.root} (path, class)\n" + "\n".join(lines) + "\n"
        atomic_write(self.output / "images.txt", lambda tmp: Path(tmp).write_text(text))


def _method_cost(task: str, method: str) -> int:
    """Rough relative cost of a (task, method) pair, to start the longest first."""
    family = METHODS[method].family
    return {"dgp": 3, "ablation": 3, "baseline": 2 if method != "dip" else 1}.get(family, 0) + (task == "colorization")


def _compute_pair(payload: dict[str, Any], task: str, method: str, threads: int) -> tuple[str, str, int]:
    """Worker process: rebuild the bench for one pair and fill its part of the cache."""
    keep_freed_memory()
    torch.set_num_threads(threads)
    bench = QualityBench(payload["prior"], payload["classifier"], payload["data"], payload["output"],
                         payload["settings"], tasks=[task], methods=[method],
                         classifier_card=payload["classifier_card"], batch_size=payload["batch_size"])
    return task, method, bench.compute_missing(task, method)


# ---------------------------------------------------------------------------------------------- report


def _fmt(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def _top1(s: Summary) -> str:
    return "–" if s.top1 is None else f"{100 * s.top1:.0f}% ({s.correct}/{s.images})"


def task_table(task: TaskSpec, summaries: dict[str, Summary], references: dict[str, Summary]) -> str:
    """The Markdown table of one task."""
    hole = " in the hole" if task.name == "inpainting" else ""
    rows: list[str] = []
    if task.kind == "restoration":
        rows += [f"| method | PSNR{hole} (dB) | SSIM{hole} | s / image | images |", "| --- | --- | --- | --- | --- |"]
        for m, s in summaries.items():
            rows.append(f"| {METHODS[m].title} | {_fmt(s.psnr, s.psnr_std, 2)} | {_fmt(s.ssim, s.ssim_std, 3)} | "
                        f"{_fmt(s.seconds, None, 1)} | {s.images} |")
        return "\n".join(rows)
    if task.kind == "colorization":
        rows += ["| method | PSNR (dB) | SSIM | top-1 | s / image | images |", "| --- | --- | --- | --- | --- | --- |"]
        if "original" in references:
            r = references["original"]
            rows.append(f"| original colour images | – | – | {_top1(r)} | – | {r.images} |")
        for m, s in summaries.items():
            title = "grayscale input" if m == "input" else METHODS[m].title
            rows.append(f"| {title} | {_fmt(s.psnr, s.psnr_std, 2)} | {_fmt(s.ssim, s.ssim_std, 3)} | {_top1(s)} | "
                        f"{_fmt(s.seconds, None, 1)} | {s.images} |")
        return "\n".join(rows)
    rows += ["| method | top-1 | PSNR vs clean (dB) | SSIM vs clean | s / image | images |",
             "| --- | --- | --- | --- | --- | --- |"]
    if "original" in references:
        r = references["original"]
        rows.append(f"| clean images (no attack) | {_top1(r)} | – | – | – | {r.images} |")
    for m, s in summaries.items():
        title = "attacked images (no defense)" if m == "input" else METHODS[m].title
        rows.append(f"| {title} | {_top1(s)} | {_fmt(s.psnr, s.psnr_std, 2)} | {_fmt(s.ssim, s.ssim_std, 3)} | "
                    f"{_fmt(s.seconds, None, 1)} | {s.images} |")
    return "\n".join(rows)


def _setting_line(bench: QualityBench) -> str:
    s = bench.settings
    card = bench.prior.card.get("presets", {}) if isinstance(bench.prior.card, dict) else {}
    scale = s.iterations_scale if s.iterations_scale is not None else card.get("iterations_scale", 1.0)
    cands = s.candidates if s.candidates is not None else card.get("n_candidates", "the presets'")
    label = (f"**QUICK setting** (few images, ablations on {', '.join(QUICK_ABLATION_TASKS)} only; not the paper's "
             "budgets)") if s.quick else "full setting"
    lr = card.get("lr_G_scale")
    lr_text = f", generator learning rates scaled as the prior card says ({json.dumps(lr)})" if lr else ""
    return (f"{label}: {len(bench.keys)} images, DGP iterations x{scale} of the presets{lr_text}, {cands} "
            f"latent-search candidates, Deep Image Prior {s.dip_iterations} steps, PGD eps {s.pgd_eps * 255:.0f}/255 "
            f"with {s.pgd_steps} steps, seed {s.seed}")


def environment() -> dict[str, Any]:
    """Machine facts for the report."""
    import os

    import dgp
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "dgp": dgp.__version__,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def write_report(bench: QualityBench, result: BenchResult) -> None:
    """Write ``README.md`` (index with every table), ``<task>.md``, ``<task>.png`` and ``results.json``."""
    out = bench.output
    env = environment()
    setting = _setting_line(bench)
    sections = []
    for task_name, summaries in result.summaries.items():
        task = TASKS[task_name]
        table = task_table(task, summaries, result.references.get(task_name, {}))
        figure = f"{task_name}.png"
        if bench.settings.examples > 0:
            save_figure(bench, task_name, list(summaries), out / figure)
        body = f"{task.note}\n\n{table}\n" + (f"\n![examples: {task.title}]({figure})\n"
                                               if bench.settings.examples > 0 else "")
        page = f"# {task.title}\n\n{setting}.\n\n{body}"
        atomic_write(out / f"{task_name}.md", lambda tmp, page=page: Path(tmp).write_text(page))
        sections.append(f"## {task.title}\n\n[{task_name}.md]({task_name}.md) · degradation `{task.degradation}` · "
                        f"DGP preset `{task.preset}`\n\n{body}")
    command = bench.info.get("command", "")
    lines = [
        "# Restoration quality: DGP against baselines",
        "",
        f"{setting}.",
        "",
        f"- Command: `{command}`" if command else "- Command: (run from Python)",
        f"- Prior: `{bench.info.get('prior', bench.prior.name)}` (card fingerprint {fingerprint(bench.prior.card)})",
        f"- Classifier: `{bench.info.get('classifier', '–')}`" + (
            f" (card fingerprint {fingerprint(bench.classifier_card)})" if bench.classifier is not None else ""),
        f"- Data: `{bench.info.get('data', bench.images.root)}`, {len(bench.keys)} images balanced over "
        f"{len(bench.images.class_names)} classes (list: [images.txt](images.txt)); the GAN methods are given the "
        "true class except in the defense task, where they search it",
        f"- Machine: {env['platform']}, {env['cpu_count']} CPU cores, torch {env['torch']} with "
        f"{env['torch_threads']} thread(s)" + (f" shared by {bench.info['workers']} worker processes"
                                               if bench.info.get("workers", 1) > 1 else "") +
        f", Python {env['python']}, dgp {env['dgp']}; {env['date']}",
        f"- This run computed {result.computed} and reused {result.cached} cached per-image results in "
        f"{bench.info.get('seconds', 0):.0f} s; s / image is the wall time of one restoration when it was computed"
        + (", every image restored alone" if bench.batch_size == 1 else
           " (a batch's over its images, where the GAN methods restored several at once, at most "
           f"{bench.batch_size or AUTO_BATCH_IMAGES} a batch)"),
        "- Figures: mean ± standard deviation over images; per-image figures in [results.json](results.json); each "
        "figure's columns are the observation, every method, and the ground truth",
        "",
        *sections,
    ]
    atomic_write(out / "README.md", lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    data = {
        "settings": bench.settings.to_dict(), "info": bench.info, "environment": env,
        "prior": {"name": bench.prior.name, "fingerprint": fingerprint(bench.prior.card)},
        "images": [{"path": k, "class": bench.images.class_names[c]} for k, c in zip(bench.keys, bench.images.labels)],
        "summary": {t: {**{m: s.to_dict() for m, s in ss.items()},
                        **{f"reference:{m}": s.to_dict() for m, s in result.references.get(t, {}).items()}}
                    for t, ss in result.summaries.items()},
        "records": [r for task in result.records.values() for recs in task.values() for r in recs],
    }
    atomic_write(out / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1) + "\n"))


# ---------------------------------------------------------------------------------------------- figures

_SCALE = 3


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=11)
    except TypeError:  # pragma: no cover - Pillow < 10.1
        return ImageFont.load_default()


def save_figure(bench: QualityBench, task_name: str, methods: list[str], path: Path) -> None:
    """Example rows of one task: observation, each method's output (from the cache), ground truth."""
    R = bench.prior.resolution
    task = TASKS[task_name]
    count = min(bench.settings.examples, len(bench.keys))
    degradation = parse_degradation(task.degradation, size=(R, R))
    clean = [load_image(bench.images.files[i], R) for i in range(count)]
    observations = bench._observations(task, degradation, torch.cat(clean)) if count else []
    cache = bench.output / "cache"
    headers = ["observation", *methods, "ground truth"]
    rows: list[list[Tensor]] = []
    for i in range(count):
        obs = observations[i]
        shown = F.interpolate(obs, size=(R, R), mode="nearest") if obs.shape[-1] != R else obs
        cells = [shown]
        for m in methods:
            png = QualityBench._entry(cache, task_name, m, bench.keys[i]).with_suffix(".png")
            cells.append(pil_to_tensor(Image.open(png).convert("RGB")) if png.is_file() else torch.ones(1, 3, R, R))
        cells.append(clean[i])
        rows.append(cells)
    cell, pad, header = R * _SCALE, 4, 30
    width = len(headers) * (cell + pad) + pad
    canvas = Image.new("RGB", (width, header + count * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font()
    for j, name in enumerate(headers):
        x = pad + j * (cell + pad)
        words = name if len(name) <= 15 else name[:15] + "\n" + name[15:]
        draw.multiline_text((x, 2), words, fill="black", font=font, spacing=1)
    for i, cells in enumerate(rows):
        for j, img in enumerate(cells):
            tile = tensor_to_pil(img).resize((cell, cell), Image.Resampling.NEAREST)
            canvas.paste(tile, (pad + j * (cell + pad), header + pad + i * (cell + pad)))
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))


__all__ = ["BenchEvent", "BenchResult", "BenchSettings", "METHODS", "MethodSpec", "QUICK", "QUICK_ABLATION_TASKS",
           "QualityBench", "Summary", "TASKS", "TaskSpec", "applicable", "build_method", "default_methods",
           "environment", "fingerprint", "image_key", "image_seed", "save_figure", "select_images", "summarize",
           "task_table", "write_report"]
