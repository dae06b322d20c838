"""Run the app under uvicorn with a draining SIGTERM: readiness turns 503 and new requests get 503
while admitted ones finish; the process then exits 0 (a second signal, or ``drain_timeout_s``, stops
at once)."""

from __future__ import annotations

import signal
import time


def make_server(state, app):
    """A uvicorn server for ``app`` whose first SIGTERM/SIGINT drains ``state`` instead of stopping."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        drain_started: float | None = None

        def handle_exit(self, sig, frame) -> None:
            if self.drain_started is None and state.ready:
                self.drain_started = time.monotonic()
                state.draining = True
                return
            self.should_exit = True  # second signal, or nothing to drain: stop now
            if sig == signal.SIGINT and self.drain_started is not None:
                self.force_exit = True

        async def on_tick(self, counter: int) -> bool:
            if self.drain_started is not None:
                waited = time.monotonic() - self.drain_started
                if state.admission.idle or waited > state.settings.drain_timeout_s:
                    self.should_exit = True
            return await super().on_tick(counter)

    config = uvicorn.Config(app, host=state.settings.host, port=state.settings.port, log_level="warning",
                            access_log=False, lifespan="on", timeout_graceful_shutdown=5)
    return DrainingServer(config)


def serve(engine_dir, settings, echo=print) -> None:
    """Load the export (typed errors surface as one line), then serve until drained."""
    from prunevid.serve.app import ServerState, build_app
    from prunevid.serve.engine import Engine

    engine = Engine(engine_dir, threads=settings.threads, step_delay_s=settings.step_delay_s)
    state = ServerState(engine, settings)
    server = make_server(state, build_app(state))
    echo(f"prunevid serve: {state.model} ({engine.mode}; modes {', '.join(state.modes)}) on "
         f"http://{settings.host}:{settings.port} (queue {settings.queue})")
    try:
        server.run()
    finally:
        engine.close()
