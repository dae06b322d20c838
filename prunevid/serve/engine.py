"""The loaded export and its one generation thread.

:class:`Engine` owns a :class:`prunevid.runtime.pipeline.RuntimePipeline` and a single worker thread
(the KV cache is per answer, the sessions are shared; answers run one at a time). :meth:`Engine.start`
runs one answer and hands its tokens to the event loop as they come; the answer stops within one
decode step once its cancel event is set. Also used by the Ray Serve engine replicas.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ExportFacts:
    """What the HTTP side needs to know of an export (plain data: crosses to a Ray ingress)."""

    name: str
    root: str  # the export folder (the decode worker reads its preprocessor config)
    frames: int
    image_size: int
    mode: str
    max_positions: int
    backend: str


def facts_of(artifact, backend: str) -> ExportFacts:
    """The :class:`ExportFacts` of an opened export (``prunevid.runtime.artifact.open_artifact``)."""
    g = artifact.geometry
    return ExportFacts(Path(artifact.root).name, str(artifact.root), g.frames, g.image_size, artifact.prune["mode"],
                       artifact.manifest["model"]["max_position_embeddings"], backend)


@dataclass
class Event:
    """One item of :meth:`Generation.events`: a token (``token``, ``text``) or the end (``answer`` or ``error``)."""

    token: int | None = None
    text: str = ""
    answer: dict | None = None  # Answer.to_json() plus "finish_reason"
    error: BaseException | None = None
    at: float = 0.0  # perf_counter when it happened


class Engine:
    """One export, loaded once; answers one request at a time in its own thread."""

    def __init__(self, engine_dir: str | Path, threads: int = 0, step_delay_s: float = 0.0):
        from prunevid.runtime.pipeline import RuntimePipeline

        t0 = time.perf_counter()
        self.pipeline = RuntimePipeline(engine_dir, threads=threads)
        self.load_seconds = time.perf_counter() - t0
        self.step_delay_s = step_delay_s
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="prunevid-generate")
        self.closed = False

    @property
    def facts(self) -> ExportFacts:
        return facts_of(self.pipeline.artifact, f"onnxruntime-{self.pipeline.backend.device}")

    @property
    def mode(self) -> str:
        return self.pipeline.mode

    async def ready(self) -> None:
        """Warm up in the generation thread (the server is ready after this)."""
        await asyncio.get_running_loop().run_in_executor(self.executor, self.warm_up)

    def warm_up(self) -> None:
        """One short answer on blank pixels, so the first request does not pay first-run costs."""
        g = self.pipeline.geometry
        pixels = np.zeros((g.frames, 3, g.image_size, g.image_size), self.pipeline.float_type)  # [T, 3, S, S]
        self.pipeline.generate(pixels, "warm up", max_new_tokens=2)

    def check(self, question: str, max_tokens: int, mode: str | None) -> None:
        """Raise the pipeline's typed error when the prompt cannot fit (before any video work)."""
        self.pipeline.check_prompt(question, None, max_tokens, mode or self.mode)

    def answer(self, pixels: np.ndarray, question: str, mode: str | None, max_tokens: int,
               on_token=None, cancel: threading.Event | None = None) -> dict:
        """Blocking: the answer's ``to_json()`` plus ``finish_reason`` (stop | length | cancelled)."""
        def hook(token: int) -> None:
            if self.step_delay_s:
                time.sleep(self.step_delay_s)  # fault injection: a slow decode step
            if on_token is not None:
                on_token(token)

        result = self.pipeline.generate(pixels.astype(self.pipeline.float_type, copy=False), question, mode=mode,
                                        max_new_tokens=max_tokens, on_token=hook,
                                        cancel=cancel.is_set if cancel is not None else None)
        out = result.to_json()
        ids, eos = result.token_ids, self.pipeline.tokenizer.eos_id
        if ids and ids[-1] == eos:
            out["finish_reason"] = "stop"
        elif cancel is not None and cancel.is_set() and len(ids) < max_tokens:
            out["finish_reason"] = "cancelled"
        else:
            out["finish_reason"] = "length"
        return out

    def start(self, pixels: np.ndarray, question: str, mode: str | None, max_tokens: int,
              on_done=None) -> Generation:
        """Submit one answer to the generation thread now; read it with :meth:`Generation.events`.
        ``on_done(answer dict or exception)`` runs on the event loop once the thread has stopped, whether
        or not anyone reads."""
        return Generation(self, pixels, question, mode, max_tokens, on_done)

    def close(self) -> None:
        self.closed = True
        self.executor.shutdown(wait=True, cancel_futures=True)


class Generation:
    """One answer in flight: tokens flow from the generation thread to the event loop through a queue."""

    def __init__(self, engine: Engine, pixels: np.ndarray, question: str, mode: str | None, max_tokens: int,
                 on_done=None):
        from prunevid.runtime.text import TextDeltas

        loop = asyncio.get_running_loop()
        self.cancel = threading.Event()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.first_at: float | None = None  # perf_counter of the first token
        deltas = TextDeltas(engine.pipeline.tokenizer)

        def on_token(token: int) -> None:
            now = time.perf_counter()
            self.first_at = self.first_at or now
            loop.call_soon_threadsafe(self.queue.put_nowait, Event(token=token, text=deltas.add(token), at=now))

        def finished(future) -> None:
            error = future.exception()
            if on_done is not None:
                on_done(error if error is not None else future.result())
            if error is not None:
                self.queue.put_nowait(Event(error=error, at=time.perf_counter()))
            else:
                self.queue.put_nowait(Event(text=deltas.flush(), answer=future.result(), at=time.perf_counter()))

        self.future = loop.run_in_executor(engine.executor, engine.answer, pixels, question, mode, max_tokens,
                                           on_token, self.cancel)
        self.future.add_done_callback(finished)

    async def events(self) -> AsyncIterator[Event]:
        """Tokens as they are generated, then one final event (``answer`` or ``error``). Leaving the
        loop early cancels the answer: the thread stops within one decode step."""
        try:
            while True:
                event = await self.queue.get()
                yield event
                if event.answer is not None or event.error is not None:
                    return
        finally:
            self.cancel.set()

