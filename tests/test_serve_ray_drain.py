"""``prunevid serve --ray`` as a real process: SIGTERM drains through Ray Serve as the single-process
server does (the running answer finishes, readiness and new requests get 503, then exit 0).

Its own module (its own local Ray cluster, in the server process) so that it never overlaps the
cluster of ``test_serve_ray``. Skipped where Ray is not installed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from serve_helpers import chat, free_port, guard, wait_ready  # noqa: E402,F401

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_ray_sigterm_drains_then_exits(tiny_export, scene_cut_clip, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / "server.log", "w+")
    # its own session: on failure the whole tree (driver, raylet, workers) is killed by its group id
    proc = subprocess.Popen([sys.executable, "-m", "prunevid.cli", "serve", "--ray", "--replicas", "1",
                             "--engine-dir", str(tiny_export), "--port", str(port),
                             "--media-dir", str(scene_cut_clip.parent), "--step-delay", "0.3"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_ready(url, proc, within=240)
        lines: list[str] = []
        started = threading.Event()

        def stream():
            body = chat(scene_cut_clip.resolve().as_uri(), max_tokens=12, stream=True)
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as r:
                lines.append(str(r.status_code))
                for line in r.iter_lines():
                    lines.append(line)
                    if '"content": "' in line:
                        started.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert started.wait(120), lines
        proc.send_signal(signal.SIGTERM)
        # the driver asks the ingress to drain: readiness turns 503 within a few seconds
        deadline = time.monotonic() + 20
        while httpx.get(url + "/health/ready", timeout=5).status_code != 503:
            assert time.monotonic() < deadline, "readiness never turned 503"
            time.sleep(0.1)
        assert reader.is_alive(), "the answer ended before the drain could be checked"
        assert httpx.get(url + "/health", timeout=5).status_code == 200
        late = httpx.post(url + "/v1/chat/completions", json=chat(scene_cut_clip.resolve().as_uri()), timeout=10)
        assert late.status_code == 503, late.text
        assert late.json()["error"]["type"] == "server_unavailable" and late.headers["retry-after"] == "1"
        reader.join(120)
        assert lines[0] == "200" and "data: [DONE]" in lines[-2:], lines
        final = [json.loads(x[6:]) for x in lines if x.startswith("data: {") and '"finish_reason": "' in x]
        assert len(final) == 1 and len(final[0]["prunevid"]["token_ids"]) == 12, final
        assert proc.wait(120) == 0
        log.seek(0)
        assert "draining" in log.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        log.close()
