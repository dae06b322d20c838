"""``prunevid serve`` as a real process: readiness, ``prunevid ask``, SIGTERM drain; and the pure parts
(URL policy, request parsing fuzz) without a server."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from serve_helpers import chat, free_port, guard, wait_ready  # noqa: E402,F401

ROOT = Path(__file__).resolve().parents[1]


def test_serve_ask_and_sigterm_drain(tiny_export, scene_cut_clip, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "prunevid.cli", "serve", "--engine-dir", str(tiny_export),
                             "--port", str(port), "--media-dir", str(scene_cut_clip.parent), "--step-delay", "0.15"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_ready(url, proc, within=60, exited=proc.stderr.read)
        # prunevid ask: streamed text equals `prunevid run`
        ask = subprocess.run([sys.executable, "-m", "prunevid.cli", "ask", "--server", url, "--video",
                              str(scene_cut_clip), "--question", "What is it?", "--max-tokens", "5"],
                             capture_output=True, text=True, env=env, timeout=60)
        run = subprocess.run([sys.executable, "-m", "prunevid.cli", "run", "--engine-dir", str(tiny_export), "--video",
                              str(scene_cut_clip), "--question", "What is it?", "--max-new-tokens", "5", "--json"],
                             capture_output=True, text=True, env=env, timeout=60)
        assert ask.returncode == 0 and run.returncode == 0, ask.stderr + run.stderr
        assert ask.stdout == json.loads(run.stdout)["answer"] + "\n"
        refused = subprocess.run([sys.executable, "-m", "prunevid.cli", "ask", "--server", url, "--video",
                                  str(scene_cut_clip), "--question", "x", "--mode", "none"],
                                 capture_output=True, text=True, env=env, timeout=60)
        assert refused.returncode == 1
        assert refused.stderr.startswith("Error: server answered 400: mode") and refused.stderr.count("\n") == 1

        # SIGTERM while an answer streams: it completes, readiness and new requests get 503, exit 0
        lines: list[str] = []
        started = threading.Event()

        def stream():
            body = chat(scene_cut_clip.resolve().as_uri(), max_tokens=12, stream=True)
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
                for line in r.iter_lines():
                    lines.append(line)
                    started.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert started.wait(30)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert httpx.get(url + "/health/ready", timeout=5).status_code == 503
        assert httpx.get(url + "/health", timeout=5).status_code == 200
        late = httpx.post(url + "/v1/chat/completions", json=chat(scene_cut_clip.resolve().as_uri()), timeout=5)
        assert late.status_code == 503 and late.json()["error"]["type"] == "server_unavailable"
        reader.join(30)
        assert lines[-2:] == ["data: [DONE]", ""] or lines[-1] == "data: [DONE]"
        final = [json.loads(x[6:]) for x in lines if x.startswith("data: {") and '"finish_reason": "' in x]
        assert len(final) == 1 and len(final[0]["prunevid"]["token_ids"]) >= 1
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_serve_refuses_a_bad_export_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "prunevid.cli", "serve", "--engine-dir", str(tmp_path / "none")],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1


def test_ask_server_that_is_not_a_url_is_one_line(scene_cut_clip):
    result = subprocess.run([sys.executable, "-m", "prunevid.cli", "ask", "--server", "notaurl",
                             "--video", str(scene_cut_clip), "--question", "x"],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert result.returncode == 1 and result.stderr.startswith("Error: --server must be an http")
    assert result.stderr.count("\n") == 1


def test_negative_max_redirects_is_refused():
    from prunevid.errors import ConfigError
    from prunevid.serve.settings import ServeSettings

    with pytest.raises(ConfigError, match="^the max_redirects setting must be >= 0, got -1$"):
        ServeSettings(max_redirects=-1).check()


def test_ask_unreachable_server_is_one_line(scene_cut_clip):
    port = free_port()  # nothing listens there
    result = subprocess.run([sys.executable, "-m", "prunevid.cli", "ask", "--server", f"http://127.0.0.1:{port}",
                             "--video", str(scene_cut_clip), "--question", "x", "--timeout", "5"],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert result.returncode == 1 and result.stderr.startswith("Error: cannot reach")


# --- URL policy, without a server ---------------------------------------------------------------

@pytest.mark.parametrize("host, public", [
    ("93.184.216.34", True), ("8.8.8.8", True), ("2606:4700::1111", True),
    ("127.0.0.1", False), ("0x7f000001", False), ("2130706433", False), ("0177.0.0.1", False), ("127.1", False),
    ("017700000001", False), ("::1", False), ("::ffff:127.0.0.1", False), ("::ffff:10.0.0.1", False),
    ("169.254.169.254", False), ("10.0.0.1", False), ("172.31.255.255", False), ("192.168.0.1", False),
    ("100.64.0.1", False), ("0.0.0.0", False), ("fe80::1", False), ("fc00::1", False), ("224.0.0.1", False),
    ("255.255.255.255", False), ("240.0.0.1", False), ("::", False),
    # 6to4 embeds an IPv4 address: judged as that address
    ("2002:7f00:1::", False), ("2002:a00:1::", False), ("2002:808:808::", True),
])
def test_literal_addresses_public_or_not(host, public):
    from prunevid.serve.media import is_public, literal_address

    address = literal_address(host)
    assert address is not None
    assert is_public(address) is public


def test_policy_checks_every_resolved_address_and_the_domain_list():
    from prunevid.serve.media import UrlPolicy
    from prunevid.serve.protocol import ApiError

    table = {"cdn.example": ["93.184.216.34"], "split.example": ["93.184.216.34", "10.0.0.9"]}
    policy = UrlPolicy(resolver=lambda host, port: table[host])
    parts, address = policy.check("https://cdn.example/v.mp4")
    assert address == "93.184.216.34" and parts.hostname == "cdn.example"
    with pytest.raises(ApiError, match="non-public"):
        policy.check("https://split.example/v.mp4")
    only = UrlPolicy(allowed_domains=("example",), resolver=lambda host, port: table[host])
    assert only.check("http://cdn.example/")[1] == "93.184.216.34"
    with pytest.raises(ApiError, match="allowed-media-domains"):
        only.check("http://93.184.216.34/")
    for url in ("ftp://cdn.example/", "http://u:p@cdn.example/", "http:///x", "http://[::1/"):
        with pytest.raises(ApiError):
            policy.check(url)
    assert ipaddress.ip_address(address).is_global


# --- request parsing, without a server ------------------------------------------------------------

def test_parse_chat_fuzz_raises_only_api_errors():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from prunevid.serve.protocol import ApiError, ChatRequest, parse_chat

    leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6)
    value = st.recursive(leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["type", "text", "video_url", "url", "video", "role", "content", "mode", "data", "x"]),
        inner, max_size=4), max_leaves=12)
    body = st.dictionaries(st.sampled_from(["messages", "max_tokens", "max_completion_tokens", "stream", "n",
                                            "temperature", "top_p", "prunevid", "num_frames", "media_io_kwargs",
                                            "stream_options", "stop", "model", "tools"]), value, max_size=6)

    @settings(max_examples=150, deadline=None, database=None)
    @given(body)
    def check(data):
        try:
            req = parse_chat(data, frames=16, max_new_tokens=64, allowed_modes=("prunevid",), model="m")
        except ApiError as err:
            assert 400 <= err.status < 500 and err.message
            return
        assert isinstance(req, ChatRequest) and 1 <= req.max_tokens <= 64 and req.question

    check()


def test_parse_chat_accepts_every_video_part_spelling():
    from prunevid.serve.protocol import parse_chat

    text = {"type": "text", "text": " What? "}
    for part, url in (({"type": "video_url", "video_url": {"url": "file:///a.mp4"}}, "file:///a.mp4"),
                      ({"type": "video", "video": "file:///b.mp4"}, "file:///b.mp4"),
                      ({"type": "input_video", "input_video": {"data": "QUJD"}}, "data:video/mp4;base64,QUJD")):
        req = parse_chat({"messages": [{"role": "user", "content": [part, text]}], "max_completion_tokens": 7,
                          "num_frames": 16, "prunevid": {"mode": "merge"}, "stream": True,
                          "stream_options": {"include_usage": True}},
                         frames=16, max_new_tokens=64, allowed_modes=("prunevid", "merge"), model="m")
        assert (req.video, req.question, req.max_tokens, req.mode, req.stream, req.include_usage) == \
            (url, "What?", 7, "merge", True, True)


def test_serve_profiles_and_setting_errors(tmp_path):
    from click.testing import CliRunner

    from prunevid.cli import cli
    from prunevid.serve.settings import MiB, ServeSettings

    jetson = ServeSettings.profile("jetson", queue=2, max_video_bytes=None)
    assert (jetson.queue, jetson.max_video_bytes, jetson.max_new_tokens) == (2, 64 * MiB, 256)
    assert jetson.max_request_bytes == 64 * MiB * 4 // 3 + 64 * 1024
    assert ServeSettings.profile("default").max_video_bytes == 256 * MiB
    for args, message in ((["--allow-modes", "prunevid,fast"], "Error: --allow-modes: fast is not one of"),
                          (["--media-dir", str(tmp_path / "nope")], "is not a folder"),
                          (["--max-video-seconds", "0"], "--max-video-seconds must be > 0"),
                          (["--queue-timeout", "0"], "Error: --queue-timeout must be > 0, got 0.0"),
                          (["--decode-timeout", "-1"], "Error: --decode-timeout must be > 0, got -1.0"),
                          (["--replicas", "3"], "Error: --replicas needs --ray"),
                          (["--gpus-per-replica", "0.5"], "Error: --gpus-per-replica needs --ray")):
        result = CliRunner().invoke(cli, ["serve", "--engine-dir", str(tmp_path), *args])
        assert result.exit_code == 1 and message in result.output, result.output
        assert result.output.count("\n") == 1


def test_ray_classify_maps_replica_errors_without_a_cluster():
    """A replica's errors as the ingress sees them: Ray wraps the replica's exception (``cause``)."""
    from prunevid.errors import ArtifactError, PromptError
    from prunevid.serve.ray_app import EngineReplica, classify

    class RayTaskError(Exception):  # the shape Ray gives: its own type, the replica's exception as .cause
        def __init__(self, cause):
            super().__init__(f"ray::generate()\nTraceback (most recent call last):\n  ...\n{cause!r}")
            self.cause = cause

    class BackPressureError(Exception):
        pass

    class ActorDiedError(Exception):
        pass

    class Refusing:  # an engine whose up-front prompt check refuses, as the replica's would
        def check(self, question, max_tokens, mode):
            raise PromptError("prompt of 300 tokens (20 text + 280 visual) plus 4000 new tokens exceeds the "
                              "model's context of 4096 positions")

    replica = EngineReplica.__new__(EngineReplica)
    replica.engine = Refusing()

    async def first():
        return await replica.generate(None, "What?", "none", 4000).__anext__()

    with pytest.raises(Exception) as raised:  # what the replica raises is what Ray ships as the cause
        asyncio.run(first())
    overflow = raised.value
    err = classify(RayTaskError(overflow))
    assert (err.status, err.param, err.type, err.outcome) == (400, "max_tokens", "invalid_request_error", "bad_request")
    assert err.message == str(overflow)
    assert classify(overflow).status == 400
    busy = classify(BackPressureError("queue full"))
    assert (busy.status, busy.outcome, busy.headers) == (429, "rejected_queue", {"Retry-After": "1"})
    assert classify(RayTaskError(ActorDiedError())).status == 503
    broken = classify(RayTaskError(ArtifactError("graph missing")))
    assert (broken.status, broken.type) == (500, "engine_error")

    exceptions = pytest.importorskip("ray.exceptions")
    real = exceptions.RayTaskError("generate", "Traceback ...", overflow).as_instanceof_cause()
    err = classify(real)
    assert (err.status, err.param, err.message) == (400, "max_tokens", str(overflow))
    from ray.serve.exceptions import BackPressureError as RealBackPressure

    assert classify(RealBackPressure(num_queued_requests=3, max_queued_requests=2)).status == 429


def test_ray_refused_call_is_a_429_and_gives_its_slot_back_although_cancel_raises():
    """Ray's ``DeploymentResponseGenerator.cancel`` re-raises a call's failure (seen in CI: a
    BackPressureError from a full replica queue came out of ``cancel`` in the cleanup, which made the
    answer a 500 and leaked the ingress slot): the client gets the 429 and ``on_done`` still runs."""
    from prunevid.serve.ray_app import RemoteEngine

    class BackPressureError(Exception):
        pass

    refusal = BackPressureError("Request dropped due to backpressure (num_queued_requests=1)")

    class Response:  # iterating raises the refusal, and so does cancel, as Ray 2.60's does
        def __aiter__(self):
            return self

        async def __anext__(self):
            raise refusal

        def cancel(self):
            raise refusal

    class Handle:
        def options(self, **kwargs):
            assert kwargs == {"stream": True}
            return self

        @property
        def generate(self):
            return type("Method", (), {"remote": staticmethod(lambda *args: Response())})()

    done = []
    gen = RemoteEngine(Handle(), facts=type("Facts", (), {"mode": "prunevid"})()).start(
        None, "What?", "prunevid", 4, on_done=done.append)

    async def drain():
        events = gen.events()
        seen = [event async for event in events]
        await events.aclose()
        return seen

    events = asyncio.run(drain())
    assert len(events) == 1 and events[0].error is not None
    err = events[0].error
    assert (err.status, err.type, err.outcome, err.headers) == (429, "server_overloaded", "rejected_queue",
                                                                {"Retry-After": "1"})
    assert done == [err]  # the slot went back, with the outcome the metrics record


def test_serve_without_fastapi_is_one_line(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from prunevid.cli import cli

    monkeypatch.setitem(sys.modules, "fastapi", None)  # `import fastapi` raises ImportError
    monkeypatch.delitem(sys.modules, "prunevid.serve.app", raising=False)
    result = CliRunner().invoke(cli, ["serve", "--engine-dir", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert result.output == "Error: prunevid serve needs fastapi: pip install 'prunevid[serve]'\n"


def test_serve_binds_before_loading_and_a_busy_port_is_one_line(tmp_path):
    from click.testing import CliRunner

    from prunevid.cli import cli

    with socket.create_server(("127.0.0.1", 0)) as held:  # the port is in use: found before the export is read
        port = held.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", "--engine-dir", str(tmp_path / "no-export"), "--port", str(port)])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert result.output.startswith(f"Error: cannot listen on 127.0.0.1:{port}: Address already in use")
    # an address this machine does not have (the guard resolves intranet.test to 10.1.2.3)
    result = CliRunner().invoke(cli, ["serve", "--engine-dir", str(tmp_path), "--host", "intranet.test"])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("Error: cannot listen on intranet.test:8000: ")
