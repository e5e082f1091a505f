"""Ray backend of ``dgp batch``: long-lived actors that hold the prior and restore the images sent to them.

The driver puts the loaded prior into Ray's object store once; each actor takes it at start (and again after a
restart), so worker nodes need ``dgp`` installed but neither the prior's files nor the images: observations go
out and restored tensors come back, and the driver alone writes files and the manifest.

Faults: actors are restarted by Ray when their process dies (``max_restarts=-1``), while Ray itself does not
retry their tasks (``max_task_retries=0``): a task whose actor died comes back to the driver as lost, and the
driver decides, counting, whether to send the image again (``--retries``). An actor that lost a task gets no
new work before it answers again.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

import torch

from dgp.allocator import keep_freed_memory
from dgp.batch.runner import BatchError, Done, Restorer, WorkItem, WorkResult, lost
from dgp.priors.registry import Prior
from dgp.schedule import Schedule

INSTALL_HINT = "pip install 'dgp[distributed]'"


def import_ray() -> Any:
    """The ``ray`` module, or a :class:`BatchError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise BatchError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


class RayWorker:
    """The actor: a :class:`~dgp.batch.runner.Restorer` that lives as long as the run.

    The prior travels as a reference wrapped in a list, so that Ray hands over the reference instead of the
    object: the actor fetches the prior on its first call, and again after a restart (the driver keeps it
    alive). The object store hands out read-only zero-copy buffers, so the actor keeps a private copy.
    """

    def __init__(self, schedule: Schedule, device: str, threads: int, kill_once: str | None) -> None:
        keep_freed_memory()
        torch.set_num_threads(threads)
        self.schedule, self.device, self.kill_once = schedule, device, kill_once
        self.restorer: Restorer | None = None

    def _restorer(self, prior_ref: list[Any]) -> Restorer:
        if self.restorer is None:
            import ray

            prior = copy.deepcopy(ray.get(prior_ref[0]))
            self.restorer = Restorer(prior, self.schedule, self.device, self.kill_once)
        return self.restorer

    def ready(self, prior_ref: list[Any]) -> str:
        """Load the prior (if not yet) and say who this is."""
        return self._restorer(prior_ref).label

    def restore(self, prior_ref: list[Any], chunk: list[WorkItem]) -> list[WorkResult]:
        return self._restorer(prior_ref)(chunk)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


class RayBackend:
    """Restore on Ray actors (see the module doc).

    Args:
        prior: the loaded prior (CPU).
        schedule: the schedule of every image.
        address: a running cluster (``"auto"``, ``"HOST:6379"``, ``"ray://HOST:10001"``); ``None`` starts a local
            Ray instance that ends with the run. When Ray is already initialised in this process, that session is
            used as it is.
        actors: number of actors (``None``: one per CPU, or per GPU for a CUDA device, of the cluster; never more
            than the cluster has).
        device: where the actors restore; ``"cuda"`` gives each actor one GPU.
        num_cpus: CPUs of a local instance (default: ``actors`` times ``threads``, else all of this machine's).
        threads: torch threads of each actor, which reserves as many of the cluster's CPUs.
        kill_once: the ``DGP_TEST_KILL_ONCE`` test hook, handed to the actors.
    """

    def __init__(self, prior: Prior, schedule: Schedule, *, address: str | None = None, actors: int | None = None,
                 device: str = "cpu", num_cpus: int | None = None, threads: int = 1,
                 kill_once: str | None = None) -> None:
        ray = import_ray()
        self.ray = ray
        self.owns_session = False
        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                       "logging_level": logging.ERROR}
            try:
                if address is None:
                    ray.init(address="local", num_cpus=num_cpus or (actors or 0) * threads or os.cpu_count() or 1,
                             **options)
                else:
                    ray.init(address=address, **options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                hint = ("; if the cluster uses token authentication (the default of `ray start` since Ray 2.59), "
                        "set RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN, or ~/.ray/auth_token)"
                        if address and not os.environ.get("RAY_AUTH_MODE") else "")
                raise BatchError(f"cannot start or reach {where}: {_first_line(exc)}{hint}") from None
            self.owns_session = True
        self.actors: list[Any] = []
        try:
            self._start_actors(prior, schedule, actors, device, threads, kill_once)
        except BaseException:
            self.close()
            raise
        self.free: list[Any] = list(self.actors)
        self.running: dict[Any, tuple[list[WorkItem], Any]] = {}  # task ref -> (chunk, actor)
        self.recovering: dict[Any, Any] = {}  # ready() ref -> actor that lost a task
        self.backlog: list[list[WorkItem]] = []

    def _start_actors(self, prior: Prior, schedule: Schedule, actors: int | None, device: str, threads: int,
                      kill_once: str | None) -> None:
        ray = self.ray
        gpu = torch.device(device).type == "cuda"
        unit = "GPU" if gpu else "CPU"
        capacity = int(ray.cluster_resources().get(unit, 0))
        if capacity < 1:
            raise BatchError(f"the Ray cluster has no {unit}; start nodes with `ray start` (see the README)")
        cpus = 1 if gpu else threads  # the CPUs each actor reserves
        if capacity < cpus:
            raise BatchError(f"the Ray cluster has {capacity} CPUs, fewer than the {threads} threads asked for "
                             "each worker")
        count = min(actors or capacity // cpus, capacity // cpus)
        actor_class = ray.remote(num_cpus=cpus, num_gpus=1 if gpu else 0, max_restarts=-1,
                                 max_task_retries=0)(RayWorker)
        self.prior_ref = ray.put(prior)  # kept alive for the actors' restarts
        self.actors = [actor_class.remote(schedule, device, threads, kill_once) for _ in range(count)]
        try:
            ray.get([actor.ready.remote([self.prior_ref]) for actor in self.actors])
        except ray.exceptions.RayError as exc:
            raise BatchError(f"the Ray workers could not start: {_first_line(exc)}") from None
        self.slots = count

    def _dispatch(self) -> None:
        while self.backlog and self.free:
            chunk, actor = self.backlog.pop(0), self.free.pop(0)
            self.running[actor.restore.remote([self.prior_ref], chunk)] = (chunk, actor)

    def submit(self, chunk: list[WorkItem]) -> None:
        self.backlog.append(chunk)
        self._dispatch()

    def wait(self) -> list[Done]:
        ray = self.ray
        done: list[Done] = []
        while not done and (self.running or self.backlog):
            refs = list(self.running) + list(self.recovering)
            if not refs:
                raise BatchError("every Ray worker has died; see the Ray logs (`ray logs`)")
            ready, _ = ray.wait(refs, num_returns=1)
            for ref in ready:
                if ref in self.recovering:
                    actor = self.recovering.pop(ref)
                    try:
                        ray.get(ref)
                        self.free.append(actor)
                    except ray.exceptions.RayError:
                        pass  # dead for good (its restarts exhausted or its start failed): drop it
                    continue
                chunk, actor = self.running.pop(ref)
                try:
                    done.append(list(zip(chunk, ray.get(ref))))
                    self.free.append(actor)
                except ray.exceptions.RayError as exc:
                    reason = f"{type(exc).__name__}: {_first_line(exc)}"
                    done.append([(item, lost(item, reason)) for item in chunk])
                    self.recovering[actor.ready.remote([self.prior_ref])] = actor
            self._dispatch()
        return done

    def close(self) -> None:
        ray = self.ray
        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors = []
        if self.owns_session and ray.is_initialized():
            ray.shutdown()
            self.owns_session = False
