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
            if state.warm_up_error is not None:
                self.should_exit = True  # the engine could not warm up: nothing to serve
            if self.drain_started is not None:
                waited = time.monotonic() - self.drain_started
                if state.admission.idle or waited > state.settings.drain_timeout_s:
                    self.should_exit = True
            return await super().on_tick(counter)

    config = uvicorn.Config(app, host=state.settings.host, port=state.settings.port, log_level="warning",
                            access_log=False, lifespan="on", timeout_graceful_shutdown=5)
    return DrainingServer(config)


def listen(host: str, port: int):
    """The listening socket, bound before anything is loaded: an address in use or a host that does
    not resolve is a one-line :class:`ConfigError` at once, not an uvicorn log line after warm-up."""
    import socket

    from prunevid.errors import ConfigError

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def serve(engine_dir, settings, echo=print) -> None:
    """Bind the port, load the export (typed errors surface as one line), then serve until drained;
    ``/health`` answers during the warm-up, ``/health/ready`` once it is done."""
    from prunevid.errors import ConfigError

    try:
        import uvicorn  # noqa: F401 - checked here, used by make_server

        from prunevid.serve.app import ServerState, build_app
    except ImportError as exc:
        raise ConfigError(f"prunevid serve needs {exc.name or 'fastapi and uvicorn'}: "
                          "pip install 'prunevid[serve]'") from None
    from prunevid.serve.engine import Engine

    sock = listen(settings.host, settings.port)
    try:
        engine = Engine(engine_dir, threads=settings.threads, step_delay_s=settings.step_delay_s)
        try:
            state = ServerState(engine, settings)
            server = make_server(state, build_app(state))
            port = sock.getsockname()[1]
            echo(f"prunevid serve: {state.model} ({engine.mode}; modes {', '.join(state.modes)}) on "
                 f"http://{settings.host}:{port} (queue {settings.queue}); warming up")
            server.run(sockets=[sock])
        finally:
            engine.close()
    finally:
        sock.close()
    if state.warm_up_error is not None:
        raise ConfigError(f"the export could not warm up: {type(state.warm_up_error).__name__}: "
                          f"{state.warm_up_error}")
