"""Scale-out on Ray Serve: an ingress deployment running the same HTTP app (admission, media checks,
decode worker) and N engine replicas (one answer at a time each, a bounded queue, optional GPUs).

    client --HTTP--> PrunevidIngress (prunevid.serve.app with a RemoteEngine; N slots + N x queue)
            --DeploymentHandle, streaming--> PrunevidEngine x N (prunevid.serve.engine.Engine)

Backpressure end to end: a replica queue that is full raises ``BackPressureError`` at the ingress, answered
429 with Retry-After; a replica that dies mid-answer gives its client an OpenAI-shaped 503 (as the last
SSE event when the stream had begun) and Ray starts a new replica. SIGTERM drains as the single-process
server does: the driver tells the ingress (:class:`IngressControl`, through a deployment handle) to
answer 503 to new requests and to readiness, waits until its admitted requests are done
(``drain_timeout_s`` at most; a second signal stops at once), then shuts Serve down. The two are separate Serve
applications (the engine one has no HTTP route). The export folder must be readable at the same path on
every node. Ray is an optional extra (``pip install 'prunevid[ray]'``); nothing else imports this module.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, replace

from prunevid.serve.engine import Event, ExportFacts
from prunevid.serve.protocol import ApiError, user_error

ENGINE, ENGINE_APP, INGRESS, INGRESS_APP = "PrunevidEngine", "prunevid-engine", "PrunevidIngress", "prunevid"

# The ingress replica's ServerState, set by its app builder (one ingress per Ray worker process), so that
# the driver's drain calls (IngressControl) reach the state the HTTP routes use.
_INGRESS_STATE: dict = {}

# Ray errors meaning "that replica is gone" (matched by name: their modules move between Ray versions)
_GONE = {"ActorDiedError", "RayActorError", "ActorUnavailableError", "ReplicaUnavailableError",
         "DeploymentUnavailableError", "WorkerCrashedError", "ActorUnschedulableError"}


def classify(exc: BaseException) -> ApiError:
    """The HTTP answer for an error raised by a replica call."""
    names = {t.__name__ for t in type(exc).__mro__}
    cause = getattr(exc, "cause", None)
    if cause is not None:
        names |= {t.__name__ for t in type(cause).__mro__}
    if "BackPressureError" in names:
        return ApiError(429, "every engine replica is busy; retry later", "server_overloaded",
                        outcome="rejected_queue", headers={"Retry-After": "1"})
    if names & _GONE:
        return ApiError(503, "the engine replica serving this request failed; retry", "server_unavailable",
                        outcome="error", headers={"Retry-After": "1"})
    for error in (cause, exc):  # Ray's RayTaskError carries the replica's own exception as ``cause``
        user = user_error(error) if error is not None else None
        if user is not None:
            return user
    return ApiError(500, f"engine error: {type(exc).__name__}", "engine_error", outcome="error")


class RemoteGeneration:
    """An answer running on a replica, read like :class:`prunevid.serve.engine.Generation`."""

    def __init__(self, handle, pixels, question, mode, max_tokens, on_done):
        self.cancel = threading.Event()
        self.first_at: float | None = None
        self._response = handle.options(stream=True).generate.remote(pixels, question, mode, max_tokens)
        self._on_done = on_done

    async def events(self):
        result: dict | BaseException = ApiError(499, "the client left", outcome="cancelled")
        try:
            async for item in self._response:
                now = time.perf_counter()
                self.first_at = self.first_at or now
                yield Event(token=item["token"], text=item["text"], answer=item["answer"], at=now)
                if item["answer"] is not None:
                    result = item["answer"]
                    return
        except Exception as exc:  # noqa: BLE001 - Ray's error types differ by version: classified by name
            result = classify(exc)
            yield Event(error=result, at=time.perf_counter())
        finally:
            try:
                self._response.cancel()  # a no-op once finished; otherwise the replica's generator is cancelled
            except Exception:  # noqa: BLE001 - Ray's cancel re-raises a call that failed (BackPressureError
                pass  # when the replica queue was full): nothing runs there to cancel
            finally:  # the slot goes back whatever cancel did
                if self._on_done is not None:
                    self._on_done(result)
                    self._on_done = None


class RemoteEngine:
    """The ingress's engine: the export's facts (read from its manifest, no sessions) and a handle."""

    load_seconds = 0.0

    def __init__(self, handle, facts: ExportFacts):
        self.handle, self.facts, self.mode = handle, facts, facts.mode

    async def ready(self) -> None:
        await self.handle.describe.remote()

    def check(self, question: str, max_tokens: int, mode: str | None) -> None:
        """The prompt-fit check runs on the replica (the ingress loads no tokenizer); a failure there
        comes back as a 400 (:func:`classify`)."""

    def start(self, pixels, question, mode, max_tokens, on_done=None) -> RemoteGeneration:
        return RemoteGeneration(self.handle, pixels, question, mode, max_tokens, on_done)


class EngineReplica:
    """One engine replica: the single-process :class:`Engine`, streamed over a deployment handle."""

    def __init__(self, engine_dir: str, threads: int = 0, step_delay_s: float = 0.0):
        from prunevid.serve.engine import Engine

        self.engine = Engine(engine_dir, threads=threads, step_delay_s=step_delay_s)
        self.engine.warm_up()

    def describe(self) -> dict:
        return {**asdict(self.engine.facts), "pid": os.getpid()}

    async def generate(self, pixels, question, mode, max_tokens):
        self.engine.check(question, max_tokens, mode)  # PromptError crosses to the ingress as Ray's cause
        gen = self.engine.start(pixels, question, mode, max_tokens)
        try:
            async for event in gen.events():
                if event.error is not None:
                    raise event.error
                yield {"token": event.token, "text": event.text, "answer": event.answer}
        finally:
            gen.cancel.set()  # cancelled by the ingress or its client: the thread stops within one step

    def check_health(self) -> None:
        if self.engine.closed:
            raise RuntimeError("the engine is closed")


def ingress_builder(engine_dir: str, settings, replicas: int):
    """A function Ray Serve calls on the ingress replica to build the ASGI app."""

    def build():
        from ray import serve

        from prunevid.runtime.artifact import open_artifact
        from prunevid.serve import ray_app  # this closure travels by value: reach the module's own dict
        from prunevid.serve.app import ServerState, build_app
        from prunevid.serve.engine import facts_of

        handle = serve.get_deployment_handle(ENGINE, app_name=ENGINE_APP)
        facts = facts_of(open_artifact(engine_dir, verify=False), "onnxruntime (ray replicas)")
        state = ServerState(RemoteEngine(handle, facts), replace(settings, queue=settings.queue * replicas),
                            slots=replicas)
        ray_app._INGRESS_STATE["state"] = state
        return build_app(state)

    return build


class IngressControl:
    """What the driver may call on the ingress replica through a deployment handle (no HTTP route)."""

    def drain(self) -> int:
        """Stop taking requests (readiness and new chats answer 503); return the requests still in."""
        state = _INGRESS_STATE["state"]
        state.draining = True
        return self.in_flight()

    def in_flight(self) -> int:
        """Requests admitted and not finished (waiting for their video or the slot, or generating)."""
        admission = _INGRESS_STATE["state"].admission
        return admission.waiting + admission.running


def applications(engine_dir: str, settings, replicas: int = 2, gpus_per_replica: float = 0.0,
                 cpus_per_replica: float = 1.0):
    """(engine application, ingress application) for ``serve.run``, engine first."""
    from ray import serve

    engine = serve.deployment(
        name=ENGINE, num_replicas=replicas, max_ongoing_requests=1, max_queued_requests=max(settings.queue, 1),
        ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
        health_check_period_s=2, health_check_timeout_s=10, graceful_shutdown_timeout_s=10,
    )(EngineReplica).bind(str(engine_dir), settings.threads, settings.step_delay_s)
    ingress = serve.deployment(name=INGRESS, num_replicas=1, max_ongoing_requests=1000,
                               ray_actor_options={"num_cpus": 0.25})(
        serve.ingress(ingress_builder(str(engine_dir), settings, replicas))(IngressControl))
    return engine, ingress.bind()


def drain(timeout_s: float, stop_now: threading.Event | None = None, poll_s: float = 0.2) -> int:
    """Drain the running ingress: it refuses new requests with 503 (readiness too) while the admitted
    ones finish; return how many were still in when this gave up (``timeout_s`` or ``stop_now``), 0 if
    none."""
    from ray import serve

    handle = serve.get_deployment_handle(INGRESS, app_name=INGRESS_APP)
    deadline = time.monotonic() + timeout_s
    left = handle.drain.remote().result(timeout_s=30)
    while left and time.monotonic() < deadline and not (stop_now and stop_now.is_set()):
        time.sleep(poll_s)
        left = handle.in_flight.remote().result(timeout_s=30)
    return left


def run(engine_dir, settings, replicas: int, gpus_per_replica: float, echo=print, block: bool = True):
    """Start Ray (local unless RAY_ADDRESS is set), both applications, and wait for SIGTERM/SIGINT."""
    import signal

    from prunevid.errors import ConfigError
    from prunevid.runtime.artifact import open_artifact

    open_artifact(engine_dir)  # a bad export is a one-line error here, not a replica crash loop
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ConfigError("--ray needs Ray Serve: pip install 'prunevid[ray]'") from None
    if not ray.is_initialized():
        # a local cluster stays on loopback when the server does (an open Ray port runs any code sent to it)
        local = {"_node_ip_address": "127.0.0.1"} if settings.host in ("127.0.0.1", "localhost", "::1") else {}
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **local)
    # first SIGTERM/SIGINT: drain (as the single-process server does); a second one: stop at once.
    # Installed before the applications start: the ingress answers as soon as its replica is up, before
    # serve.run returns, and a signal then must drain, not meet Ray's own handler (which kills the driver).
    first, second = threading.Event(), threading.Event()

    def on_signal(*_):
        (second if first.is_set() else first).set()

    if block:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    engine, ingress = applications(engine_dir, settings, replicas, gpus_per_replica)
    serve.run(engine, name=ENGINE_APP, route_prefix=None)
    serve.run(ingress, name=INGRESS_APP, route_prefix="/")
    echo(f"prunevid serve (Ray Serve, {replicas} engine replicas) on http://{settings.host}:{settings.port}")
    if not block:
        return
    try:
        while not first.wait(0.5):  # a bounded wait keeps the main thread able to run the handler
            pass
        echo("prunevid serve: draining (new requests get 503)")
        try:
            left = drain(settings.drain_timeout_s, second)
        except Exception as exc:  # noqa: BLE001 - the ingress is gone or Ray failed: nothing left to drain
            left = 0
            echo(f"prunevid serve: could not drain ({type(exc).__name__}); stopping")
        if left:
            echo(f"prunevid serve: stopping with {left} request(s) unfinished")
    finally:
        serve.shutdown()
        ray.shutdown()
