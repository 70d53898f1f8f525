"""Running independent evaluations on an execution engine: this process, a local pool, Dask or Ray.

A `Work` says how to evaluate one task in a context (`evaluate(context, task)`),
how a worker builds that context once from what it is sent (`setup(shared)`),
and how to build either in the driver (`shared()`, `local()`, called lazily).
`run_tasks` sends the shared part to every worker **once** — a temporary file
for a local process pool, `Client.scatter(..., broadcast=True)` for Dask,
`ray.put` for Ray — submits the tasks, and yields `(key, result)` pairs in the
driver as they finish, with a progress bar.

Engines (`resolve_engine`):

- `backend=None`: the engine of an active `joblib.parallel_config(backend="dask")`
  (its `distributed.Client`) or `parallel_config(backend="ray")` if there is one,
  else joblib's local pool with `n_jobs` workers (`n_jobs=None`: the active
  `parallel_config`'s `n_jobs`, else 1; 1 runs in this process).
- `"loky"`, `"multiprocessing"`, `"threading"`: that joblib backend, `n_jobs` workers.
- `"dask"` or a `distributed.Client`: Dask (`distributed.get_client()` for `"dask"`).
- `"ray"`: Ray (`ray.init()` first to join a cluster; else Ray starts a local one).

Workers import kerasprune (and the modules that define the metric and any
custom layers): install the same environment on every machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import cloudpickle

from kerasprune.errors import PruningError

log = logging.getLogger(__name__)

_LOCAL_JOBLIB = ("LokyBackend", "MultiprocessingBackend", "ThreadingBackend", "SequentialBackend")
_INSTALL = 'install the engine: pip install "kerasprune[cluster]" (or "dask[distributed]", "ray")'


@dataclass(frozen=True)
class Work:
    """What an engine runs: module-level functions (workers import them by name) and lazy builders.

    Attributes:
        evaluate: `(context, task) -> result`, run once per task.
        setup: `shared -> context`, run once per worker process.
        shared: Builds the picklable object every worker receives once (called only
            when the engine has workers).
        local: Builds the context in this process (for in-process execution).
    """

    evaluate: Callable[[Any, Any], Any]
    setup: Callable[[Any], Any]
    shared: Callable[[], Any]
    local: Callable[[], Any]


@dataclass(frozen=True)
class Engine:
    """A resolved execution engine (see `resolve_engine`).

    Attributes:
        kind: `"serial"`, `"joblib"`, `"dask"` or `"ray"`.
        n_jobs: Workers of a joblib pool (None for the others).
        joblib_backend: Name of the joblib backend, None for the active one.
        client: The `distributed.Client` (Dask only).
    """

    kind: str
    n_jobs: int | None = None
    joblib_backend: str | None = None
    client: Any = None

    def describe(self) -> str:
        if self.kind == "joblib":
            return f"joblib ({self.joblib_backend or 'active backend'}, n_jobs={self.n_jobs})"
        if self.kind == "dask":
            return f"dask ({self.client.scheduler.address if self.client is not None else '?'})"
        return self.kind


def resolve_engine(backend: Any = None, n_jobs: int | None = None) -> Engine:
    """The engine for a `backend=` / `n_jobs=` pair (see the module docs).

    Args:
        backend: None (an active joblib `parallel_config` for Dask/Ray, else the
            local pool), `"loky"`, `"multiprocessing"`, `"threading"`,
            `"sequential"`, `"dask"`, a `distributed.Client`, or `"ray"`.
        n_jobs: Workers of a local pool (`-1`: one per CPU; None: the active
            `parallel_config`'s, else 1). Ignored, with a warning, by Dask and Ray.

    Returns:
        An `Engine`; `kind == "serial"` runs in this process.

    Raises:
        PruningError: an unknown backend, an engine that is not installed, or
            `backend="dask"` with no Dask client to use.

    Example:
        >>> engine = kerasprune.parallel.resolve_engine(distributed.Client("tcp://host:8786"))
    """
    if n_jobs is not None and (not isinstance(n_jobs, int) or isinstance(n_jobs, bool) or n_jobs == 0):
        raise PruningError(f"n_jobs must be a non-zero integer or None. Received: n_jobs={n_jobs!r}")
    if backend is None:
        active = _active_joblib_backend()
        name = type(active).__name__
        if name == "DaskDistributedBackend":
            return _cluster(Engine("dask", client=active.client), n_jobs, "joblib.parallel_config(backend='dask')")
        if name == "RayBackend":
            return _cluster(Engine("ray"), n_jobs, "joblib.parallel_config(backend='ray')")
        return _local(None, n_jobs)
    if isinstance(backend, str):
        key = backend.lower()
        if key in ("loky", "multiprocessing", "threading", "sequential"):
            return _local(key, n_jobs)
        if key == "dask":
            return _cluster(Engine("dask", client=_dask_client()), n_jobs, "backend='dask'")
        if key == "ray":
            _import("ray")
            return _cluster(Engine("ray"), n_jobs, "backend='ray'")
    elif type(backend).__name__ == "Client" and type(backend).__module__.startswith("distributed"):
        return _cluster(Engine("dask", client=backend), n_jobs, "a Dask client")
    raise PruningError(
        "backend must be None, 'loky', 'multiprocessing', 'threading', 'dask', 'ray' or a "
        f"distributed.Client. Received: backend={backend!r}"
    )


def run_tasks(
    work: Work,
    tasks: Mapping[str, Any],
    engine: Engine,
    *,
    progress: bool = True,
    description: str = "evaluating",
) -> Iterator[tuple[str, Any]]:
    """Evaluate every task on `engine`; yields `(key, result)` in the driver as each one finishes.

    The order of the results is the order in which they finish. The first failing
    task raises its exception here; pending tasks are then cancelled.

    Args:
        work: What to run (`Work`); its `evaluate` and `setup` must be importable
            module-level functions.
        tasks: Task key -> the task's argument (small: sent with each task).
        engine: From `resolve_engine`.
        progress: Show a rich progress bar on stderr.
        description: Label of the bar and of the `INFO` log lines (every tenth).

    Returns:
        An iterator of `(key, result)` pairs.

    Example:
        >>> for key, value in run_tasks(work, tasks, resolve_engine("dask")):
        ...     store.put(key, value)
    """
    if not tasks:
        return
    from rich.console import Console
    from rich.progress import Progress

    kind = engine.kind
    if kind == "joblib" and len(tasks) == 1:
        kind = "serial"  # one task: a pool would only add its start-up
    log.info("%s: %d tasks on %s", description, len(tasks), engine.describe() if kind != "serial" else "serial")
    step = max(1, len(tasks) // 10)
    with Progress(disable=not progress, transient=True, console=Console(stderr=True)) as bar:
        job = bar.add_task(description, total=len(tasks))
        runner = {"serial": _serial, "joblib": _joblib, "dask": _dask, "ray": _ray}[kind]
        for done, (key, result) in enumerate(runner(work, tasks, engine), start=1):
            bar.advance(job)
            if done % step == 0 or done == len(tasks):
                log.info("%s: %d/%d done", description, done, len(tasks))
            yield key, result


# -- engines -------------------------------------------------------------------------


def _serial(work, tasks, engine):
    context = work.local()
    for key, task in tasks.items():
        yield key, work.evaluate(context, task)


def _joblib(work, tasks, engine):
    from joblib import Parallel, delayed, parallel_config

    payload = _dumps(work.shared())
    token = _token(payload)
    config = parallel_config(backend=engine.joblib_backend) if engine.joblib_backend else contextlib.nullcontext()
    with config, tempfile.TemporaryDirectory(prefix="kerasprune-") as tmp:
        active = type(_active_joblib_backend()).__name__
        if active in _LOCAL_JOBLIB:
            source: Any = _File(os.path.join(tmp, "shared.pkl"))
            with open(source.path, "wb") as f:  # read once per worker process
                f.write(payload)
        else:  # a joblib backend of another kind may run elsewhere: no shared file system
            log.warning("joblib backend %s: the shared data is sent with every task", active)
            source = payload
        calls = (delayed(_call)(token, source, work.setup, work.evaluate, key, t) for key, t in tasks.items())
        yield from Parallel(n_jobs=engine.n_jobs, return_as="generator_unordered")(calls)


def _dask(work, tasks, engine):
    from distributed import as_completed

    client = engine.client
    payload = _dumps(work.shared())
    token = _token(payload)
    shared = client.scatter(payload, broadcast=True, hash=False)  # once, to every worker
    futures = [
        client.submit(_call, token, shared, work.setup, work.evaluate, key, t, pure=False)
        for key, t in tasks.items()
    ]
    try:
        for future in as_completed(futures):
            yield future.result()
    finally:
        client.cancel([*futures, shared])


def _ray(work, tasks, engine):
    ray = _import("ray")
    payload = _dumps(work.shared())
    token = _token(payload)
    shared = ray.put(payload)  # in the object store once; each worker process reads it once
    remote = ray.remote(_call)
    pending = [remote.remote(token, shared, work.setup, work.evaluate, key, t) for key, t in tasks.items()]
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        for ref in pending:
            ray.cancel(ref)


# -- in the workers ------------------------------------------------------------------

_CONTEXTS: dict[str, Any] = {}
_STATS = {"setups": 0, "tasks": 0}
_LOCK = threading.Lock()


def worker_stats() -> dict[str, int]:
    """What this process did as a worker: contexts built (`setups`) and tasks run (`tasks`).

    Run it on the workers (e.g. `client.run(kerasprune.parallel.worker_stats)`) to
    check that each received and rebuilt the shared model once.
    """
    with _LOCK:
        return dict(_STATS)


@dataclass(frozen=True)
class _File:
    path: str


def _call(token: str, source: Any, setup: Callable, evaluate: Callable, key: str, task: Any):
    """Runs in a worker: build the context once per process (per token), then evaluate one task."""
    with _LOCK:
        if token not in _CONTEXTS:
            if isinstance(source, _File):
                with open(source.path, "rb") as f:
                    source = f.read()
            _CONTEXTS.clear()  # one scan at a time per worker: drop the previous model
            _CONTEXTS[token] = setup(cloudpickle.loads(source))
            _STATS["setups"] += 1
        context = _CONTEXTS[token]
        _STATS["tasks"] += 1
    return key, evaluate(context, task)


# -- helpers -------------------------------------------------------------------------


def _dumps(shared: Any) -> bytes:
    return cloudpickle.dumps(shared)


def _token(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()[:16]


def _active_joblib_backend():
    from joblib.parallel import get_active_backend

    return get_active_backend()[0]


def _local(name: str | None, n_jobs: int | None) -> Engine:
    from joblib import effective_n_jobs, parallel_config

    if n_jobs is None:
        with parallel_config(backend=name) if name else contextlib.nullcontext():
            n_jobs = effective_n_jobs(None)
    if n_jobs == 1 or name == "sequential":
        return Engine("serial")
    return Engine("joblib", n_jobs=n_jobs, joblib_backend=name)


def _cluster(engine: Engine, n_jobs: int | None, source: str) -> Engine:
    if n_jobs not in (None, 1, -1):
        log.warning("n_jobs=%s is ignored with %s: the cluster's workers decide the parallelism", n_jobs, source)
    return engine


def _dask_client():
    _import("distributed")
    from distributed import get_client

    try:
        return get_client()
    except ValueError:
        raise PruningError(
            "backend='dask' needs a running Dask client: create one first, e.g. "
            "`client = distributed.Client(scheduler_address)`, or pass backend=client"
        ) from None


def _import(name: str):
    try:
        return __import__(name)
    except ImportError:
        raise PruningError(f"backend '{name}' is not installed; {_INSTALL}") from None
