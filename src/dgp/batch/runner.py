"""Batch restoration of many images: resumable, fault tolerant, the same results on any number of workers.

Division of labour:

* the *driver* (:func:`run_batch`, one process) lists the inputs, loads each image into an observation
  (:func:`prepare`), hands it to a backend, writes every output file atomically and alone appends the
  manifest;
* *workers* hold the prior and a schedule and only restore (:class:`Restorer`): tensors in, tensors out, no
  files, so they need no shared file system and a lost worker leaves nothing half-written; a worker restores
  a chunk of images at once with the batched engine (:func:`auto_batch_size` by default), or one at a time;
* *backends* decide where workers run: in the driver (:class:`InProcessBackend`), in local processes
  (:class:`ProcessBackend`), or on Ray actors (:class:`dgp.batch.ray_backend.RayBackend`).

Each image's seed comes from the run's seed and the image's name through a stable hash and seeds its
degradation's random draws (masks, noise); every image's latent search draws its candidates from the run's
seed, the same for all, so that the batched engine scores them once for a batch
(:func:`dgp.reconstruct.search_latents`). With ``batch_size`` 1 an output does not depend on the order of the
images, on which worker restored it or on how many workers there were; restored in chunks, it depends slightly
(float rounding, amplified by the optimisation) on the images that shared its chunk.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import signal
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing import connection as mp_connection
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from dgp.allocator import keep_freed_memory
from dgp.batch.inputs import BatchInput, find_reference
from dgp.batch.manifest import Manifest, Row
from dgp.defaults import BATCH_TASKS, TASKS
from dgp.degradations import Degradation, parse_degradation
from dgp.imageio import atomic_write, save_image
from dgp.pipeline import default_schedule, finish, load_inputs, preset_for, restore
from dgp.priors.registry import Prior
from dgp.reconstruct import DGPReconstructor, ReconstructionError
from dgp.schedule import Schedule

SETTINGS_NAME = "batch.json"
OUTPUTS_FOLDER = "restored"
#: Test hook: ``NAME:MARKER``. A worker (process or Ray actor, never the driver) that is handed image ``NAME``
#: while the file ``MARKER`` does not exist creates ``MARKER`` and dies at once (``os._exit``): one lost task.
KILL_ONCE_ENV = "DGP_TEST_KILL_ONCE"

AUTO_BATCH_IMAGES = 16  # images a worker restores together at most, unless told otherwise
AUTO_BATCH_BYTES = 2 * 2**30  # and at most this much of tuned generator copies a worker
_SEED_BITS = 62  # room for the offsets that load_inputs adds, within torch's 64-bit seeds


class BatchError(ValueError):
    """A batch run that cannot start, with a one-line message fit for a user."""


def image_seed(base_seed: int, name: str) -> int:
    """The seed of image ``name`` in a run seeded with ``base_seed``: a stable hash of both (BLAKE2b).

    The same on every machine and Python process (unlike ``hash()``), and independent of the other images.
    """
    digest = hashlib.blake2b(f"{base_seed}\x00{name}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - _SEED_BITS)


# ----------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class BatchSettings:
    """The settings that decide a batch's outputs; saved in ``OUT/batch.json`` and checked by a rerun.

    Attributes:
        task: one of :data:`BATCH_TASKS`.
        degradation: degradation chain (e.g. ``"down2+gray"``); ``None``: the task's (``restore`` needs one).
        preset: schedule preset; ``None``: the task's, or the one that fits the degradation.
        prior: prior name or folder (recorded, and compared on a rerun).
        degrade: inputs are clean images, degraded by the run (with each image's seed).
        mask: mask image for the ``mask`` token.
        seed: base seed: the latent search's candidates, the same for every image; each image's seed, for its
            degradation's random draws, is :func:`image_seed` of it and the image's name.
        iterations_scale: multiplies every stage's iterations (``None``: the prior's setting).
        candidates: latent-search candidates (``None``: the prior's setting).
    """

    task: str
    prior: str
    degradation: str | None = None
    preset: str | None = None
    degrade: bool = False
    mask: str | None = None
    seed: int = 0
    iterations_scale: float | None = None
    candidates: int | None = None

    def __post_init__(self) -> None:
        if self.task not in BATCH_TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {', '.join(BATCH_TASKS)}")
        if self.degradation is None:
            if self.task == "restore":
                raise ValueError("task 'restore' needs --degradation (e.g. down2+gray+hole)")
            object.__setattr__(self, "degradation", TASKS[self.task][0])
        if self.preset is None and self.task in TASKS and self.degradation == TASKS[self.task][0]:
            object.__setattr__(self, "preset", TASKS[self.task][1])
        if self.iterations_scale is not None and not (math.isfinite(self.iterations_scale)
                                                      and self.iterations_scale > 0):
            raise ValueError(f"iterations_scale must be > 0, got {self.iterations_scale}")
        if self.candidates is not None and self.candidates < 0:
            raise ValueError(f"candidates must be >= 0, got {self.candidates}")

    def degradation_for(self, prior: Prior, seed: int) -> Degradation:
        """The degradation of one image: random masks drawn from a generator seeded with the image's seed."""
        size = (prior.resolution, prior.resolution)
        return parse_degradation(str(self.degradation), size=size, generator=torch.Generator().manual_seed(seed),
                                 mask_path=self.mask)

    def resolved(self, prior: Prior) -> BatchSettings:
        """These settings with the preset filled in (checks the degradation text on the way)."""
        degradation = self.degradation_for(prior, 0)
        preset = self.preset or preset_for(degradation)
        return BatchSettings(**{**asdict(self), "preset": preset})

    def schedule(self, prior: Prior) -> Schedule:
        return default_schedule(prior, str(self.preset or "reconstruction"), self.iterations_scale,
                                self.candidates)


# ------------------------------------------------------------------------------------------ work records


@dataclass
class WorkItem:
    """One image ready to restore: what the driver sends to a worker.

    Attributes:
        name: the image's name.
        seed: its seed (its degradation's random draws).
        search_seed: the seed of its latent search's candidates (the run's seed).
        observation: ``(1, 3, h, w)`` in [-1, 1].
        reference: clean image ``(1, 3, R, R)`` in [-1, 1] or ``None``.
        degradation: the operator (random masks already drawn).
        attempt: tries of this image in this run, this one included (1-based).
        load_seconds: time the driver spent loading it.
    """

    name: str
    seed: int
    search_seed: int
    observation: Tensor
    reference: Tensor | None
    degradation: Degradation
    attempt: int = 1
    load_seconds: float = 0.0


@dataclass
class WorkResult:
    """What a worker sends back.

    Attributes:
        name: the image's name.
        output: restored image ``(1, 3, R, R)`` in [-1, 1] (``None`` when failed).
        class_id: class used by the restoration.
        metrics: PSNR/SSIM against the reference, when there is one.
        timings: seconds: ``restore`` and its parts (``search``, ``stage1``...).
        error: why it failed, or ``None``.
        retryable: whether another try may succeed (a lost worker, an unexpected error), as opposed to a
            failure that a retry would repeat (an unusable input, a loss that became NaN).
        worker: ``host:pid`` of the worker.
        batch: images restored together with this one by the batched engine (1: on its own).
        threads: torch's intra-op threads in the worker (float rounding, so the result, depends on it).
    """

    name: str
    output: Tensor | None = None
    class_id: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    retryable: bool = False
    worker: str | None = None
    batch: int = 1
    threads: int | None = None


def worker_label() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def lost(item: WorkItem, reason: str) -> WorkResult:
    """The result of a task whose worker went away."""
    return WorkResult(item.name, error=f"worker lost: {reason}", retryable=True)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class Restorer:
    """A worker's job: restore lists of :class:`WorkItem`s with one prior and schedule (loaded once).

    A list of one image is restored by :func:`dgp.pipeline.restore`; a longer one by the batched engine
    (:meth:`dgp.reconstruct.DGPReconstructor.batch`), falling back to one image at a time when the batch fails,
    so that one bad image fails alone.

    Args:
        prior: the prior (moved to ``device``).
        schedule: the schedule of every image.
        device: where to restore (``"cpu"``, ``"cuda"``...).
        kill_once: the :data:`KILL_ONCE_ENV` test hook (``"NAME:MARKER"``), honoured only in worker processes.
    """

    def __init__(self, prior: Prior, schedule: Schedule, device: str = "cpu", kill_once: str | None = None) -> None:
        self.prior = prior.to(device)
        self.schedule = schedule
        self.kill_once = kill_once
        self.label = worker_label()

    def _maybe_die(self, name: str) -> None:
        if not self.kill_once or ":" not in self.kill_once:
            return
        target, marker = self.kill_once.split(":", 1)
        if name == target and not os.path.exists(marker):
            Path(marker).write_text(f"{self.label}\n")
            os._exit(17)

    def __call__(self, items: Sequence[WorkItem]) -> list[WorkResult]:
        for item in items:
            self._maybe_die(item.name)
        results = None
        if len(items) > 1:
            try:
                results = self._batch(items)
            except Exception:  # noqa: BLE001 - retried one at a time, where each image meets its own fate
                pass
        if results is None:
            results = [self._one(item) for item in items]
        for result in results:
            result.threads = torch.get_num_threads()
        return results

    def _one(self, item: WorkItem) -> WorkResult:
        start = time.perf_counter()
        try:
            r = restore(self.prior, item.degradation, self.schedule, observation=item.observation,
                        reference=item.reference, seed=item.search_seed)
        except (ValueError, ReconstructionError) as exc:
            return WorkResult(item.name, error=_one_line(exc), retryable=False, worker=self.label)
        except Exception as exc:  # noqa: BLE001 - anything else may be transient (memory, a device): retry
            return WorkResult(item.name, error=f"{type(exc).__name__}: {_one_line(exc)}", retryable=True,
                              worker=self.label)
        timings = {k: round(v, 4) for k, v in r.result.timings.items()}
        timings["restore"] = round(time.perf_counter() - start, 4)
        return WorkResult(item.name, output=r.output.detach().cpu(), class_id=r.result.class_id,
                          metrics=dict(r.metrics), timings=timings, worker=self.label)

    def _batch(self, items: Sequence[WorkItem]) -> list[WorkResult]:
        start = time.perf_counter()
        results = DGPReconstructor(self.prior, self.schedule).batch(
            [item.observation for item in items], [item.degradation for item in items],
            generators=[torch.Generator().manual_seed(item.search_seed) for item in items])
        seconds = time.perf_counter() - start
        out = []
        for item, result in zip(items, results):
            output, metrics = finish(result, item.degradation, item.reference)
            timings = {k: round(v, 4) for k, v in result.timings.items()}
            timings["restore"] = round(seconds / len(items), 4)  # this image's share of the batch
            out.append(WorkResult(item.name, output=output.detach().cpu(), class_id=result.class_id,
                                  metrics=metrics, timings=timings, worker=self.label, batch=len(items)))
        return out


# -------------------------------------------------------------------------------------------- backends


Done = list[tuple[WorkItem, WorkResult]]


class Backend(Protocol):
    """Where workers run. The driver keeps at most ``slots`` chunks (lists of items, restored together)
    submitted at once."""

    slots: int

    def submit(self, chunk: list[WorkItem]) -> None:
        """Start restoring ``chunk`` (there is a free slot)."""

    def wait(self) -> list[Done]:
        """Block until at least one submitted chunk is finished (or lost); return each as (item, result) pairs."""

    def close(self) -> None:
        """Stop the workers (interrupting any that are busy)."""


class InProcessBackend:
    """Restores in the driver itself, one chunk at a time (``--workers 1``)."""

    slots = 1

    def __init__(self, prior: Prior, schedule: Schedule, device: str = "cpu", threads: int | None = None) -> None:
        self.restorer = Restorer(prior, schedule, device)
        self.threads = threads
        self.queue: list[list[WorkItem]] = []

    def submit(self, chunk: list[WorkItem]) -> None:
        self.queue.append(chunk)

    def wait(self) -> list[Done]:
        chunk = self.queue.pop(0)
        previous = torch.get_num_threads()
        if self.threads is not None:  # for this restoration only: the driver's setting is the caller's
            torch.set_num_threads(self.threads)
        try:
            return [list(zip(chunk, self.restorer(chunk)))]
        finally:
            torch.set_num_threads(previous)

    def close(self) -> None:
        self.queue.clear()


def _worker_main(conn: mp_connection.Connection, payload: bytes, threads: int) -> None:
    """Body of a local worker process: load the prior once, then restore items until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    keep_freed_memory()
    torch.set_num_threads(threads)
    prior, schedule, device, kill_once = pickle.loads(payload)
    restorer = Restorer(prior, schedule, device, kill_once)
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if not data:
            return
        conn.send_bytes(pickle.dumps(restorer(pickle.loads(data)), protocol=pickle.HIGHEST_PROTOCOL))  # a list


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while children are started, so that they are born ignoring it (Python keeps an ignored
    SIGINT ignored), and Ctrl-C on the terminal reaches only the driver."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: nothing to do
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold back Ctrl-C until the block is done (then raise it), so that an output file and its manifest row
    are written together or not at all, and no temporary file is left between creation and cleanup."""
    received: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    except ValueError:  # not the main thread: signals are not ours to handle
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous):
                previous(signal.SIGINT, None)
            elif previous == signal.SIG_DFL:
                raise KeyboardInterrupt


class _Worker:
    def __init__(self, process: Any, conn: mp_connection.Connection) -> None:
        self.process = process
        self.conn = conn
        self.chunk: list[WorkItem] | None = None


def _process_context() -> Any:
    """``forkserver`` where there is one (a clean single-threaded server that has imported torch and dgp once,
    so workers start in a fraction of a second, also when one is replaced), else ``spawn``."""
    import multiprocessing

    if "forkserver" in multiprocessing.get_all_start_methods():
        context = get_context("forkserver")
        context.set_forkserver_preload(["dgp.batch.runner"])
        return context
    return get_context("spawn")


class ProcessBackend:
    """``workers`` long-lived local processes, each holding the prior.

    A worker that dies loses only the image it was restoring (reported as lost, so the driver retries it) and
    is replaced by a fresh one when next needed.
    """

    def __init__(self, prior: Prior, schedule: Schedule, workers: int, device: str = "cpu",
                 threads: int | None = None, kill_once: str | None = None) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.slots = workers
        self.threads = threads or max(1, torch.get_num_threads() // workers)
        self.payload = pickle.dumps((prior, schedule, device, kill_once), protocol=pickle.HIGHEST_PROTOCOL)
        self.context = _process_context()
        self.workers: list[_Worker | None] = [None] * workers

    def _start(self) -> _Worker:
        parent, child = self.context.Pipe(duplex=True)
        process = self.context.Process(target=_worker_main, args=(child, self.payload, self.threads),
                                       daemon=True, name="dgp-batch-worker")
        with _sigint_ignored():
            process.start()
        child.close()
        return _Worker(process, parent)

    def submit(self, chunk: list[WorkItem]) -> None:
        for index, worker in enumerate(self.workers):
            if worker is None:
                worker = self.workers[index] = self._start()
            if worker.chunk is None:
                worker.chunk = chunk
                try:
                    worker.conn.send_bytes(pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL))
                except OSError:  # it died while idle; the next wait() reports the item lost
                    pass
                return
        raise RuntimeError("no free worker")

    def _retire(self, index: int) -> None:
        worker = self.workers[index]
        self.workers[index] = None
        if worker is None:
            return
        worker.conn.close()
        worker.process.join(timeout=5)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(timeout=5)

    def wait(self) -> list[Done]:
        busy = [(i, w) for i, w in enumerate(self.workers) if w is not None and w.chunk is not None]
        if not busy:
            return []
        handles = [w.conn for _, w in busy] + [w.process.sentinel for _, w in busy]
        ready = set(mp_connection.wait(handles))
        done: list[Done] = []
        for index, worker in busy:
            if worker.conn not in ready and worker.process.sentinel not in ready:
                continue
            chunk = worker.chunk
            assert chunk is not None
            try:
                if not worker.conn.poll():
                    raise EOFError
                results = pickle.loads(worker.conn.recv_bytes())
            except (EOFError, OSError):
                worker.process.join(timeout=5)
                code = worker.process.exitcode
                self._retire(index)
                done.append([(item, lost(item, f"local worker exited with status {code}")) for item in chunk])
                continue
            worker.chunk = None
            done.append(list(zip(chunk, results)))
        return done

    def close(self) -> None:
        for index, worker in enumerate(self.workers):
            if worker is None:
                continue
            if worker.chunk is None:
                try:
                    worker.conn.send_bytes(b"")
                except OSError:
                    pass
            else:
                worker.process.terminate()
            self._retire(index)


# ------------------------------------------------------------------------------------------------ driver


@dataclass
class BatchEvent:
    """Progress of a run, for a progress bar or a log (the library itself never prints).

    Attributes:
        kind: ``"start"`` (once, ``total`` images to do, at most ``batch_size`` at once on each of ``workers``
            workers), ``"row"`` (an image finished: ``row``) or ``"retry"`` (an image will be tried again:
            ``name``, ``message``).
        total: images to restore in this run.
        done: images finished in this run so far.
    """

    kind: Literal["start", "row", "retry"]
    total: int
    done: int
    row: Row | None = None
    name: str | None = None
    message: str = ""
    batch_size: int = 1
    workers: int = 1


@dataclass
class BatchSummary:
    """The outcome of a run.

    Attributes:
        inputs: images given.
        ok: restored in this run.
        failed: failed in this run (their rows say why).
        skipped: already restored by an earlier run.
        retried: extra tries after lost workers or unexpected errors.
        seconds: wall time of this run (inputs listed to last row written).
        metrics: mean of each metric over every restored image of the input that has it (this run's and
            earlier ones).
        failed_names: names of the images that failed in this run.
    """

    inputs: int
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    retried: int = 0
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    failed_names: list[str] = field(default_factory=list)

    @property
    def images_per_minute(self) -> float:
        processed = self.ok + self.failed
        return 60.0 * processed / self.seconds if self.seconds > 0 and processed else 0.0


def prepare(item: BatchInput, settings: BatchSettings, prior: Prior, reference: Path | None) -> WorkItem:
    """Load one image into a :class:`WorkItem` (raises :class:`~dgp.imageio.ImageError` for a bad file)."""
    start = time.perf_counter()
    seed = image_seed(settings.seed, item.name)
    degradation = settings.degradation_for(prior, seed)
    observation, ref = load_inputs(prior, degradation, item.path, degrade=settings.degrade, reference=reference,
                                   seed=seed)
    return WorkItem(item.name, seed, settings.seed, observation, ref, degradation,
                    load_seconds=time.perf_counter() - start)


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold ``folder/.lock`` so that two runs never write one output folder at once."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX: no lock
        yield
        return
    with open(folder / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise BatchError(f"another dgp batch is writing to {folder}") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_settings(folder: Path, settings: BatchSettings, extra: dict[str, Any]) -> None:
    """Record the settings in ``batch.json``, or check that they match those of the run that made ``folder``."""
    path = folder / SETTINGS_NAME
    wanted = asdict(settings)
    if path.is_file():
        try:
            recorded = json.loads(path.read_text()).get("settings", {})
        except ValueError:
            raise BatchError(f"{path} is not valid JSON; remove it or choose another output folder") from None
        changed = [f"{k}: {recorded.get(k)!r} -> {v!r}" for k, v in wanted.items() if recorded.get(k) != v]
        if changed:
            raise BatchError(f"{folder} holds a batch run with other settings ({'; '.join(changed)}); rerun with "
                             "the same settings to resume it, or choose another output folder")
        return
    record = {"settings": wanted, **extra}
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2) + "\n"))


def _references(inputs: Sequence[BatchInput], folder: Path | None) -> dict[str, Path | None]:
    if folder is None:
        return {item.name: None for item in inputs}
    if not folder.is_dir():
        raise BatchError(f"references folder not found: {folder}")
    refs = {item.name: find_reference(folder, item) for item in inputs}
    missing = [name for name, ref in refs.items() if ref is None]
    if missing:
        listed = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise BatchError(f"no reference in {folder} for {listed}")
    return refs


def _mean_metrics(rows: Sequence[Row]) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                sums.setdefault(key, []).append(float(value))
    return {key: sum(values) / len(values) for key, values in sums.items()}


BackendFactory = Callable[[Prior, Schedule], Backend]


def make_backend(workers: int = 1, ray_address: str | None = None, *, use_ray: bool = False, device: str = "cpu",
                 num_cpus: int | None = None, threads: int | None = None,
                 kill_once: str | None = None) -> BackendFactory:
    """A factory for the backend that ``--workers`` and ``--ray`` ask for.

    Args:
        workers: local: 1 restores in the driver, more start that many processes; Ray: actors to start
            (``0``: one per CPU, or per GPU with a CUDA device, of the cluster).
        ray_address: Ray cluster to connect to (``None`` with ``use_ray``: start a local Ray instance).
        use_ray: run on Ray.
        device: where workers restore.
        num_cpus: CPUs of a local Ray instance (default: ``workers``, else all).
        threads: torch threads of each worker (default: this process's threads in the driver, shared out
            among local worker processes, 1 for Ray actors). Results are the same for the same threads per
            worker whatever the number of workers; another thread count can change them slightly (float
            rounding), which the optimisation amplifies.
        kill_once: the :data:`KILL_ONCE_ENV` test hook.
    """
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    if use_ray:
        def ray_factory(prior: Prior, schedule: Schedule) -> Backend:
            from dgp.batch.ray_backend import RayBackend

            return RayBackend(prior, schedule, address=ray_address, actors=workers or None, device=device,
                              num_cpus=num_cpus, threads=threads or 1, kill_once=kill_once)

        return ray_factory
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if workers == 1:
        return lambda prior, schedule: InProcessBackend(prior, schedule, device, threads)
    return lambda prior, schedule: ProcessBackend(prior, schedule, workers, device, threads, kill_once=kill_once)


def auto_batch_size(prior: Prior, images: int, workers: int) -> int:
    """How many images a worker restores together when no batch size is given.

    The images are shared out evenly in chunks, at least one per worker, of at most ``AUTO_BATCH_IMAGES`` and
    at most as many as keep the tuned copies of the generator (weights, gradients and Adam's two moments: 16
    bytes a parameter) under ``AUTO_BATCH_BYTES``: 16 images of the shipped prior (6 MiB an image), one of a
    128-pixel ImageNet BigGAN (1.05 GiB an image).

    Args:
        prior: the prior the run restores with.
        images: the images left to restore (at least 0).
        workers: how many workers restore side by side (at least 1).
    """
    per_image = 16 * sum(p.numel() for p in prior.G.parameters())
    cap = max(1, min(AUTO_BATCH_IMAGES, AUTO_BATCH_BYTES // max(1, per_image)))
    chunks = max(workers, math.ceil(images / cap))
    return max(1, math.ceil(images / chunks))


def run_batch(inputs: Sequence[BatchInput], output: str | Path, settings: BatchSettings, prior: Prior, *,
              backend: BackendFactory | None = None, references: str | Path | None = None, retries: int = 2,
              batch_size: int | None = None, environment: dict[str, Any] | None = None,
              on_event: Callable[[BatchEvent], None] | None = None) -> BatchSummary:
    """Restore every image of ``inputs`` into ``output``, resuming an earlier run there.

    Layout of ``output``: ``restored/<name>.png`` (written atomically), ``manifest.jsonl`` (one row per image,
    see :class:`~dgp.batch.manifest.Row`), ``batch.json`` (the settings; a rerun must match them).

    Images restored earlier (an ``ok`` row whose file exists) are skipped; failed ones are tried again. An
    image that cannot be loaded or restored becomes a failed row and the run goes on. A lost worker (or an
    unexpected error) sends the image to a worker again, at most ``retries`` more times.

    Args:
        inputs: the images (:func:`dgp.batch.inputs.list_inputs`).
        output: output folder (created).
        settings: what to do to each image.
        prior: the loaded prior (on the CPU; workers move it to their device).
        backend: where to restore (:func:`make_backend`; default: in this process).
        references: folder of clean images with the inputs' names, to score against.
        retries: extra tries for an image whose worker was lost.
        batch_size: images a worker restores together with the batched engine; ``None`` (the default):
            :func:`auto_batch_size`. With 1 every output is independent of the order of the images and of the
            workers; with more, each output depends on the images that shared its batch (the batched engine
            matches one-at-a-time restoration only within float tolerance, which long schedules amplify).
        environment: recorded in ``batch.json`` by the first run.
        on_event: progress callback.

    Raises:
        BatchError: the folder holds a run with other settings, is in use, or references are missing.
    """
    start = time.perf_counter()
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    settings = settings.resolved(prior)
    notify = on_event or (lambda event: None)
    refs = _references(inputs, Path(references) if references is not None else None)
    summary = BatchSummary(inputs=len(inputs))
    with _locked(out):
        _check_settings(out, settings, {"environment": environment or {}})
        manifest = Manifest(out)
        rows = manifest.compact()
        todo = [item for item in inputs if not _done(rows.get(item.name), out)]
        summary.skipped = len(inputs) - len(todo)
        if not todo:
            notify(BatchEvent("start", 0, 0))
        else:  # _drive announces the start, with the batch size
            _drive(todo, out, settings, prior, backend or make_backend(), refs, retries, batch_size, rows,
                   manifest, summary, notify)
        rows = manifest.compact()
    finished = [rows[item.name] for item in inputs if item.name in rows and rows[item.name].status == "ok"]
    summary.metrics = _mean_metrics(finished)
    summary.seconds = time.perf_counter() - start
    return summary


def _done(row: Row | None, out: Path) -> bool:
    return row is not None and row.status == "ok" and row.output is not None and (out / row.output).is_file()


def _drive(todo: list[BatchInput], out: Path, settings: BatchSettings, prior: Prior, factory: BackendFactory,
           refs: dict[str, Path | None], retries: int, batch_size: int | None, previous: dict[str, Row],
           manifest: Manifest, summary: BatchSummary, notify: Callable[[BatchEvent], None]) -> None:
    total = len(todo)
    pending = iter(todo)
    by_name = {item.name: item for item in todo}
    again: list[WorkItem] = []  # items to resubmit after a lost worker
    in_flight = 0  # chunks submitted and not yet back
    done = 0

    def record(row: Row) -> None:  # called with Ctrl-C held back
        nonlocal done
        manifest.append(row)
        done += 1
        if row.status == "ok":
            summary.ok += 1
        else:
            summary.failed += 1
            summary.failed_names.append(row.name)
        notify(BatchEvent("row", total, done, row=row))

    def base_attempts(name: str) -> int:
        old = previous.get(name)
        return old.attempt if old is not None else 0

    backend = factory(prior, settings.schedule(prior))
    if batch_size is None:
        batch_size = auto_batch_size(prior, total, backend.slots)
    notify(BatchEvent("start", total, 0, batch_size=batch_size, workers=backend.slots))
    try:
        while True:
            while in_flight < backend.slots:
                chunk: list[WorkItem] = []
                while len(chunk) < batch_size and again:
                    chunk.append(again.pop(0))
                while len(chunk) < batch_size:
                    item = next(pending, None)
                    if item is None:
                        break
                    try:
                        chunk.append(prepare(item, settings, prior, refs[item.name]))
                    except Exception as exc:  # noqa: BLE001 - an unusable input is one failed row, not the end
                        with _sigint_deferred():
                            record(Row(item.name, "failed", str(item.path), error=_one_line(exc),
                                       seed=image_seed(settings.seed, item.name),
                                       attempt=base_attempts(item.name) + 1))
                if not chunk:
                    break
                backend.submit(chunk)
                in_flight += 1
            if in_flight == 0:
                break
            for pairs in backend.wait():
                in_flight -= 1
                for work, result in pairs:
                    item = by_name[work.name]
                    if result.error is not None and result.retryable and work.attempt <= retries:
                        summary.retried += 1
                        notify(BatchEvent("retry", total, done, name=work.name, message=result.error))
                        work.attempt += 1
                        again.append(work)
                        continue
                    with _sigint_deferred():
                        record(_finish(out, item, work, result, base_attempts(item.name) + work.attempt))
    finally:
        backend.close()


def _finish(out: Path, item: BatchInput, work: WorkItem, result: WorkResult, attempt: int) -> Row:
    """Write a finished image's output (atomically) and make its manifest row."""
    timings = {"load": round(work.load_seconds, 4), **result.timings}
    row = Row(item.name, "failed", str(item.path), seed=work.seed, class_id=result.class_id, timings=timings,
              error=result.error, attempt=attempt, worker=result.worker, batch=result.batch,
              threads=result.threads)
    if result.error is not None or result.output is None:
        row.error = row.error or "the worker returned no image"
        return row
    relative = f"{OUTPUTS_FOLDER}/{item.output_name}"
    start = time.perf_counter()
    try:
        save_image(result.output, out / relative)
    except (OSError, ValueError) as exc:
        row.error = f"cannot write {relative}: {_one_line(exc)}"
        return row
    timings["write"] = round(time.perf_counter() - start, 4)
    row.status, row.output, row.metrics = "ok", relative, {k: float(v) for k, v in result.metrics.items()}
    return row
