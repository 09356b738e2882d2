"""Where models run: in this process (local, the default) or on Ray actors (executor: ray).

The pipeline asks an executor for a model's card side (`front`: gate and image selection) and
for its predictions. `LocalExecutor` runs the registry's loaded models here. `RayExecutor` keeps
one actor per model per Ray node with the weights loaded, and sends it only the prepared input
(`ModelInputs.batch`, a float32 array): the DICOM files, the database and the spool stay on this
node, which reads the pixels, prepares them, and turns the outputs into findings and heatmaps.

Ray is compute only. A lost actor, worker process or node is retried on another actor a bounded
number of times; then `ExecutorLost` is raised and the pipeline queues the study again (it is
never lost, and its result UIDs are the same when it is processed once more).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from dicom_ai.crashpoints import crash_point
from dicom_ai.infer.card import ModelError
from dicom_ai.infer.registry import ModelRegistry

if TYPE_CHECKING:  # torch comes with the runner, on first use: the pipeline module is imported where no model runs
    import numpy as np

    from dicom_ai.config import Settings
    from dicom_ai.domain import ImageResult, Instance
    from dicom_ai.infer.runner import HeatmapPolicy, LoadedModel, ModelFront, ModelOutputs

log = logging.getLogger(__name__)

RAY_NAMESPACE = "dicom-ai"
RAY_ATTEMPTS = 3  # tries of one forward pass on live actors before the study goes back to the queue
RAY_ACTOR_START_S = 300.0  # an actor that has not loaded its model by then (no free CPU, a stuck node) is lost
RAY_NODES_REFRESH_S = 30.0  # how often the executor looks for Ray nodes that joined (and gives them actors)
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024  # a local Ray's object store: prepared inputs are a few MB


class ExecutorError(Exception):
    """The executor the settings name cannot start (Ray not installed, its cluster unreachable)."""


class ExecutorLost(Exception):
    """The compute a study needs went away (a Ray actor, worker or node died): process it again later."""


class InferenceExecutor(Protocol):
    """Runs models for the pipeline; the front is what the pipeline gates and selects images with."""

    def front(self, model_name: str) -> ModelFront: ...

    def predict(self, model_name: str, instances: Sequence[Instance], heatmaps: HeatmapPolicy) -> list[ImageResult]: ...

    def close(self) -> None: ...


class LocalExecutor:
    """The models in this process (the registry loads each once and keeps it)."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def front(self, model_name: str) -> ModelFront:
        return self.registry.get(model_name)

    def predict(self, model_name: str, instances: Sequence[Instance], heatmaps: HeatmapPolicy) -> list[ImageResult]:
        return self.registry.get(model_name).predict(instances, heatmaps=heatmaps)

    def close(self) -> None:
        pass


def start_local_ray() -> str:
    """Start a Ray on this machine for this process (the driver) and return its address (GCS host:port).

    The supervised node (dicom_ai/procs/) calls it once, before its workers start, and hands them the
    address in RAY_ADDRESS: every worker then joins the same Ray instead of starting one each."""
    try:
        import ray
    except ImportError as exc:
        raise ExecutorError("executor 'ray' needs Ray: pip install -e '.[ray]' (make install does)") from exc
    context: Any = ray.init(namespace=RAY_NAMESPACE, include_dashboard=False, log_to_driver=False,
                            object_store_memory=LOCAL_OBJECT_STORE_BYTES)
    info = context.address_info
    log.info("Ray: no ray_address; started a local Ray at %s (logs in %s/logs)",
             info.get("gcs_address"), info.get("session_dir"))
    return str(info.get("gcs_address"))


def make_executor(settings: Settings, registry: ModelRegistry) -> InferenceExecutor:
    """The executor the settings name."""
    if settings.executor == "ray":
        return RayExecutor(registry, address=settings.ray_address, actor_cpus=settings.ray_actor_cpus)
    return LocalExecutor(registry)


class ModelActor:
    """A Ray actor holding one loaded model (the weights come from models_dir on the actor's node)."""

    def __init__(self, models_dir: str, name: str, fast_path: bool, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self._model: LoadedModel | None = None
        self._error = ""
        try:
            self._model = ModelRegistry(Path(models_dir), fast_path=fast_path).get(name)
        except Exception as exc:  # reported by ready(): a model that cannot load is the model's failure, not Ray's
            self._error = f"on Ray node {_node_ip()}: {exc}"

    def ready(self) -> tuple[str, str, str, int]:
        """(version, device UID, error, pid): the caller checks it runs the weights its results will name."""
        if self._model is None:
            return "", "", self._error, os.getpid()
        return self._model.info.version, self._model.info.device_uid, "", os.getpid()

    def run(self, batch: np.ndarray, heatmaps: HeatmapPolicy, slice_count: int | None) -> ModelOutputs:
        assert self._model is not None  # ready() said so before any run
        crash_point("ray.actor_run")
        return self._model.run(batch, heatmaps, slice_count)


def _node_ip() -> str:
    import ray

    return str(ray.util.get_node_ip_address())


class _Actor:
    """An actor handle, the Ray node it lives on, and the passes in flight on it."""

    def __init__(self, handle: Any, node_id: str, pid: int) -> None:
        self.handle = handle
        self.node_id = node_id
        self.pid = pid
        self.busy = 0


class RayExecutor:
    """Models on Ray actors, one per model per Ray node with at least `actor_cpus` CPUs."""

    def __init__(self, registry: ModelRegistry, *, address: str | None = None, actor_cpus: int = 1) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ExecutorError("executor 'ray' needs Ray: pip install -e '.[ray]' (make install does)") from exc

        self.registry = registry
        self.actor_cpus = actor_cpus
        self._ray = ray
        self._lock = threading.Lock()
        self._starting = threading.Lock()
        self._actors: dict[str, list[_Actor]] = {}
        self._checked: dict[str, float] = {}
        self._started_ray = False
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS") or None
            if address:
                try:
                    ray.init(address=address, namespace=RAY_NAMESPACE, log_to_driver=False)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise ExecutorError(f"config key 'ray_address' ({address}): cannot join a Ray cluster there: "
                                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
                log.info("Ray: joined the cluster at %s (%d node(s))", address, len(self._alive_nodes()))
            else:
                start_local_ray()
            self._started_ray = True
        self._remote: Any = ray.remote(ModelActor)

    def front(self, model_name: str) -> ModelFront:
        return self.registry.front(model_name)

    def predict(self, model_name: str, instances: Sequence[Instance], heatmaps: HeatmapPolicy) -> list[ImageResult]:
        front = self.registry.front(model_name)
        results: list[ImageResult] = []
        for inputs in front.inputs(instances, heatmaps):
            batch = self._ray.put(inputs.batch)  # once, whatever the retries
            results.extend(front.results(inputs, self._run(model_name, batch, heatmaps, inputs.slice_count)))
        return results

    def actor_pids(self, model_name: str) -> list[int]:
        """The worker processes of a model's actors (tests kill one to check a study survives it)."""
        return [actor.pid for actor in self._live_actors(model_name)]

    def close(self) -> None:
        with self._lock:
            for actor in itertools.chain.from_iterable(self._actors.values()):
                self._ray.kill(actor.handle)
            self._actors.clear()
        if self._started_ray:
            self._ray.shutdown()

    # one forward pass, retried on other actors when one is lost ------------------------------

    def _run(self, model_name: str, batch: Any, heatmaps: HeatmapPolicy, slice_count: int | None) -> ModelOutputs:
        exceptions = self._ray.exceptions
        failures: list[str] = []
        for _attempt in range(RAY_ATTEMPTS):
            actor = self._pick(model_name)
            try:
                outputs: ModelOutputs = self._ray.get(actor.handle.run.remote(batch, heatmaps, slice_count))
                return outputs
            except exceptions.RayTaskError as exc:  # the model itself failed: the same on any actor
                cause = getattr(exc, "cause", None) or exc
                raise ModelError(f"model {model_name} on Ray node {actor.node_id[:8]}: {cause}") from exc
            except exceptions.RayError as exc:  # the actor, its worker process, its node or the object is gone
                failures.append(f"{type(exc).__name__} on node {actor.node_id[:8]}")
                log.warning("Ray: model %s lost its actor (pid %d on node %s): %s; trying another",
                            model_name, actor.pid, actor.node_id[:8], type(exc).__name__)
                self._drop(model_name, actor)
            finally:
                with self._lock:
                    actor.busy -= 1
        raise ExecutorLost(f"model {model_name}: {RAY_ATTEMPTS} Ray attempts lost ({'; '.join(failures)})")

    def _pick(self, model_name: str) -> _Actor:
        actors = self._live_actors(model_name)
        with self._lock:
            actor = min(actors, key=lambda a: a.busy)
            actor.busy += 1
            return actor

    def _drop(self, model_name: str, actor: _Actor) -> None:
        with self._lock:
            live = self._actors.get(model_name, [])
            if actor in live:  # the others take the retry now; its node gets a new one at the next look
                live.remove(actor)
        try:
            self._ray.kill(actor.handle)
        except Exception:  # already gone with its node
            pass

    # actors: one per model per node ----------------------------------------------------------

    def _live_actors(self, model_name: str) -> list[_Actor]:
        with self._lock:
            actors = list(self._actors.get(model_name, []))
            fresh = time.monotonic() - self._checked.get(model_name, -RAY_NODES_REFRESH_S) < RAY_NODES_REFRESH_S
        if actors and fresh:
            return actors
        with self._starting:  # one caller starts a model's actors; the others wait and take them
            return self._refresh(model_name)

    def _refresh(self, model_name: str) -> list[_Actor]:
        with self._lock:
            actors = list(self._actors.get(model_name, []))
            fresh = time.monotonic() - self._checked.get(model_name, -RAY_NODES_REFRESH_S) < RAY_NODES_REFRESH_S
        if actors and fresh:  # another caller did it while this one waited
            return actors
        nodes = self._alive_nodes()
        with self._lock:
            actors = [a for a in self._actors.get(model_name, []) if a.node_id in nodes]
            missing = [n for n in nodes if n not in {a.node_id for a in actors}]
        started = self._start(model_name, missing)
        with self._lock:
            actors.extend(a for a in started if a is not None)
            self._actors[model_name] = actors
            self._checked[model_name] = time.monotonic()
        if not actors:
            raise ExecutorLost(f"model {model_name}: no Ray node with {self.actor_cpus} free CPU(s) runs it "
                               f"({len(nodes)} node(s) alive)")
        return actors

    def _alive_nodes(self) -> list[str]:
        return [node["NodeID"] for node in self._ray.nodes()
                if node.get("Alive") and node.get("Resources", {}).get("CPU", 0) >= self.actor_cpus]

    def _start(self, model_name: str, node_ids: list[str]) -> list[_Actor | None]:
        """An actor on each node, all loading at once; None where one did not start in time."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        front = self.registry.front(model_name)
        models_dir = str(self.registry.models_dir.resolve())
        handles: list[Any] = [self._remote.options(
            num_cpus=self.actor_cpus, max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        ).remote(models_dir, model_name, self.registry.fast_path, self.actor_cpus) for node_id in node_ids]
        readies = [handle.ready.remote() for handle in handles]
        started: list[_Actor | None] = []
        problem: ModelError | None = None
        for node_id, handle, ready in zip(node_ids, handles, readies):
            try:
                version, device_uid, error, pid = self._ray.get(ready, timeout=RAY_ACTOR_START_S)
            except self._ray.exceptions.RayError as exc:  # GetTimeoutError too: no free CPU, or the node died
                log.warning("Ray: model %s could not start on node %s: %s", model_name, node_id[:8], type(exc).__name__)
                self._ray.kill(handle)
                started.append(None)
                continue
            if not error and (version, device_uid) != (front.info.version, front.info.device_uid):
                error = (f"model {model_name} on Ray node {node_id[:8]} is version {version} (device UID {device_uid}), "
                         f"not {front.info.version} ({front.info.device_uid}) as here: install the same model folder "
                         "on every Ray node")
            if error:
                self._ray.kill(handle)
                problem = problem or ModelError(error)
                started.append(None)
                continue
            log.info("Ray: model %s %s loaded by pid %d on node %s (%d CPU(s))", model_name, version, pid,
                     node_id[:8], self.actor_cpus)
            started.append(_Actor(handle, node_id, pid))
        if problem is not None:  # the model itself is wrong somewhere: not a loss to retry
            for actor in started:
                if actor is not None:
                    self._ray.kill(actor.handle)
            raise problem
        return started
