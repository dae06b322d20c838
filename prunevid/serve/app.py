"""The HTTP routes: ``POST /v1/chat/completions``, ``GET /v1/models``, ``/health``, ``/health/ready``,
``/metrics``, ``/version``.

One chat request, in order: 503 if not ready or draining; a ticket (429 when ``1 + queue`` are in);
the body read under ``max_request_bytes`` (413); parsed (400); the video obtained and decoded (400,
413, 415, 422, 504); the generation slot (429 after ``queue_timeout_s``); only then a 200, streamed
(SSE) or whole. Every refusal is the OpenAI envelope ``{"error": {...}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from prunevid.serve import protocol
from prunevid.serve.admission import Admission, Ticket
from prunevid.serve.engine import Engine
from prunevid.serve.media import DecodeJob, UrlPolicy, decode, obtain
from prunevid.serve.metrics import Metrics
from prunevid.serve.protocol import ApiError
from prunevid.serve.settings import ServeSettings


@dataclass
class ServerState:
    """What the routes share: the engine, the limits, the queue and whether the server takes requests."""

    engine: Engine
    settings: ServeSettings
    policy: UrlPolicy = field(default_factory=UrlPolicy)
    ready: bool = False
    draining: bool = False
    workdir: Path | None = None
    slots: int = 1  # answers generated at once (Ray: one per engine replica)
    warm_up_error: BaseException | None = None

    def __post_init__(self) -> None:
        from prunevid import __version__

        from prunevid import spec

        s, facts = self.settings, self.engine.facts
        self.facts = facts
        self.model = s.served_model_name or facts.name
        self.modes = tuple(s.allow_modes) or (facts.mode,)
        self.admission = Admission(s.queue, self.slots)
        self.metrics = Metrics(self.admission, {"version": __version__, "mode": facts.mode,
                                                "backend": facts.backend})
        self.metrics.load_seconds.set(self.engine.load_seconds)
        self.job = DecodeJob(Path(facts.root) / spec.PREPROCESSOR_FILE, facts.image_size, facts.frames)


def json_response(status: int, body: dict, headers: dict | None = None):
    return JSONResponse(body, status_code=status, headers=headers)


def error_response(err: ApiError):
    return json_response(err.status, err.body(), err.headers)


async def read_body(request, cap: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``cap`` bytes, header or not."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise ApiError(413, f"the request body is over the {cap}-byte limit", "request_too_large",
                       outcome="too_large")
    chunks, size = [], 0
    async for piece in request.stream():
        size += len(piece)
        if size > cap:
            raise ApiError(413, f"the request body is over the {cap}-byte limit", "request_too_large",
                           outcome="too_large")
        chunks.append(piece)
    return b"".join(chunks)


async def prepare_pixels(state: ServerState, url: str) -> np.ndarray:
    """Fetch/locate and decode the video; every temporary file is removed before returning."""
    path, owned = await obtain(url, state.workdir, state.settings, state.policy)
    if owned:
        out = path.with_suffix(".npy")
    else:
        fd, name = tempfile.mkstemp(suffix=".npy", dir=state.workdir)
        os.close(fd)  # only the name is wanted: the decode worker writes the file
        out = Path(name)
    try:
        await decode(path, out, state.job, state.settings)
        return np.load(out)  # [T, 3, S, S] float32
    finally:
        out.unlink(missing_ok=True)
        if owned:
            path.unlink(missing_ok=True)


async def _warm_up(state: ServerState) -> None:
    """Warm the engine up, then mark the server ready; a failure is kept in ``state.warm_up_error``
    (the single-process server then stops with it)."""
    t0 = time.perf_counter()
    try:
        await state.engine.ready()
    except Exception as exc:  # noqa: BLE001 - reported by the server loop, not lost in a task
        logging.getLogger("prunevid.serve").exception("warm-up failed")
        state.warm_up_error = exc
        return
    state.metrics.load_seconds.set(state.engine.load_seconds + time.perf_counter() - t0)
    state.ready = True


def build_app(state: ServerState):
    """The ASGI app (FastAPI, so Ray Serve can mount it as an ingress)."""
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        state.workdir = Path(tempfile.mkdtemp(prefix="prunevid-serve-"))
        warming = asyncio.ensure_future(_warm_up(state))  # /health answers meanwhile; readiness is 503
        try:
            yield
        finally:
            state.ready = False
            warming.cancel()
            shutil.rmtree(state.workdir, ignore_errors=True)  # our own folder: every request's temp files

    app = FastAPI(title="prunevid", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc):  # unknown route, wrong method: the same envelope
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return json_response(exc.status_code, protocol.error_body(exc.status_code, str(exc.detail), kind),
                             getattr(exc, "headers", None))

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/health/ready")
    async def ready():
        if state.ready and not state.draining:
            return {"status": "ready"}
        reason = "draining" if state.draining else "warm-up failed" if state.warm_up_error else "starting"
        return json_response(503, protocol.error_body(503, f"not ready: {reason}", "server_unavailable"))

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/version")
    async def version():
        from prunevid import __version__

        return {"version": __version__}

    @app.get("/v1/models")
    async def models():
        facts = state.facts
        card = {"id": state.model, "object": "model", "created": 0, "owned_by": "prunevid",
                "max_model_len": facts.max_positions,
                "prunevid": {"frames": facts.frames, "export_mode": facts.mode,
                             "allowed_modes": list(state.modes), "backend": facts.backend,
                             "queue": state.settings.queue}}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        arrival = time.perf_counter()
        if not state.ready or state.draining:
            state.metrics.outcome("rejected_draining")
            err = ApiError(503, "the server is " + ("draining" if state.draining else "starting"),
                           "server_unavailable", headers={"Retry-After": "1"})
            return error_response(err)
        ticket: Ticket | None = None
        handed_over = False
        try:
            ticket = state.admission.enter()
            raw = await read_body(request, state.settings.max_request_bytes)
            req = protocol.parse_chat(protocol.parse_json(raw), frames=state.facts.frames,
                                      max_new_tokens=state.settings.max_new_tokens, allowed_modes=state.modes,
                                      model=state.model)
            _check_prompt(state, req)
            t_media = time.perf_counter()
            pixels = await prepare_pixels(state, req.video)
            media_s = time.perf_counter() - t_media
            state.metrics.media_time.observe(media_s)
            await ticket.run(state.settings.queue_timeout_s)
            queue_s = time.perf_counter() - arrival - media_s
            state.metrics.queue_time.observe(queue_s)
            timing = {"arrival": arrival, "queue_ms": round(queue_s * 1e3, 3), "media_ms": round(media_s * 1e3, 3)}
            gen = state.engine.start(pixels, req.question, req.mode, req.max_tokens,
                                     on_done=lambda result: _done(state, ticket, gen, result, timing))
            handed_over = True  # the generation thread gives the slot back when it stops
            if req.stream:
                return StreamingResponse(_sse(state, req, gen, timing), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache"})
            return await _whole(state, request, gen, timing)
        except ApiError as err:
            state.metrics.outcome(err.outcome)
            return error_response(err)
        except asyncio.CancelledError:
            if not handed_over:  # after the hand-over, _done records the outcome
                state.metrics.outcome("cancelled")
            raise
        except Exception as exc:  # a bug: logged with its traceback, answered in the envelope
            logging.getLogger("prunevid.serve").exception("request failed")
            state.metrics.outcome("error")
            return error_response(_as_api_error(exc))
        finally:
            if ticket is not None and not handed_over:
                ticket.done()

    return app


def _check_prompt(state: ServerState, req: protocol.ChatRequest) -> None:
    from prunevid.errors import PruneVidError

    try:
        state.engine.check(req.question, req.max_tokens, req.mode)
    except PruneVidError as exc:
        raise ApiError(400, str(exc), param="max_tokens") from None


def _as_api_error(error: BaseException) -> ApiError:
    """An engine failure as an HTTP error: typed ones keep their status, a request's own fault (a
    prompt that does not fit once the video is merged, a bad mode or video) is a 400
    (:func:`protocol.user_error`), anything else (a broken export included) is a 500."""
    if isinstance(error, ApiError):
        return error
    user = protocol.user_error(error)
    if user is not None:
        return user
    return ApiError(500, f"engine error: {type(error).__name__}: {error}", "engine_error", outcome="error")


def _done(state: ServerState, ticket: Ticket, gen, result, timing: dict) -> None:
    """The generation stopped (whether or not its client still reads): free the slot, record the
    outcome and the metrics."""
    ticket.done()
    if isinstance(result, BaseException):
        state.metrics.outcome(_as_api_error(result).outcome)
        return
    state.metrics.outcome({"stop": "ok", "length": "length"}.get(result["finish_reason"], "cancelled"))
    ttft = None if gen.first_at is None else gen.first_at - timing["arrival"]
    state.metrics.answered(result, ttft, time.perf_counter() - timing["arrival"])


def _server_ms(gen, timing: dict) -> dict:
    """The server's own timings of one answer, in milliseconds."""
    ttft = None if gen.first_at is None else round((gen.first_at - timing["arrival"]) * 1e3, 3)
    return {"queue_ms": timing["queue_ms"], "media_ms": timing["media_ms"], "ttft_ms": ttft,
            "e2e_ms": round((time.perf_counter() - timing["arrival"]) * 1e3, 3)}


async def _whole(state, request, gen, timing):
    """Non-streaming: generate while watching for the client leaving (then cancel within one step)."""
    cancel = gen.cancel
    texts, answer = [], None
    events = gen.events()

    async def watch():
        while not cancel.is_set():
            if await request.is_disconnected():
                cancel.set()
                return
            await asyncio.sleep(0.05)

    watcher = asyncio.ensure_future(watch())
    try:
        async for event in events:
            if event.error is not None:
                return error_response(_as_api_error(event.error))
            texts.append(event.text)
            answer = event.answer
    finally:
        watcher.cancel()
        await events.aclose()
    finish = "length" if answer["finish_reason"] == "cancelled" else answer["finish_reason"]
    body = protocol.completion(protocol.new_id(), state.model, "".join(texts), finish, answer,
                               _server_ms(gen, timing))
    return json_response(200, body)


async def _sse(state, req, gen, timing):
    """Streaming: role chunk, one chunk per text delta, the final chunk (finish_reason and the prunevid
    facts), the usage chunk when asked, ``[DONE]``. Leaving early cancels the answer."""
    cid, model = protocol.new_id(), state.model
    events = gen.events()
    try:
        yield protocol.sse(protocol.chunk(cid, model, {"role": "assistant", "content": ""}))
        async for event in events:
            if event.error is not None:
                yield protocol.sse(_as_api_error(event.error).body())
                break
            if event.text:
                yield protocol.sse(protocol.chunk(cid, model, {"content": event.text}))
            if event.answer is not None:
                answer = event.answer
                yield protocol.sse(protocol.chunk(cid, model, {}, answer["finish_reason"],
                                                  prunevid=protocol.facts(answer, _server_ms(gen, timing))))
                if req.include_usage:
                    yield protocol.sse(protocol.usage_chunk(cid, model, answer))
        yield protocol.sse("[DONE]")
    finally:
        gen.cancel.set()  # the client left (or all was sent): stop generating within one step
        await events.aclose()
