"""``prunevid serve --ray`` on a local Ray cluster bound to 127.0.0.1: the same API through an ingress and
2 engine replicas, backpressure end to end, and a replica killed mid-answer.

Skipped where Ray is not installed (the ``[ray]`` extra; ``[dev]`` includes it so CI runs these). A
local cluster needs about a minute and over 1 GB here. Ray talks to itself over gRPC in C++, which
the Python-level network guard cannot see; ``_node_ip_address`` keeps it on loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from serve_helpers import chat, free_port, guard  # noqa: E402,F401

pytestmark = pytest.mark.slow




_OLDER_WORKDIRS: set[Path] = set()


def _workdirs() -> set[Path]:
    """The serve apps' temporary folders (``prunevid-serve-*``) in the temporary directory."""
    return set(Path(tempfile.gettempdir()).glob("prunevid-serve-*"))


@pytest.fixture(scope="module")
def cluster(tiny_export, scene_cut_clip):
    from ray import serve

    from prunevid.serve import ray_app
    from prunevid.serve.settings import ServeSettings

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _node_ip_address="127.0.0.1")
    port = free_port()
    _OLDER_WORKDIRS.update(_workdirs())  # another run's leftovers are not this cluster's
    settings = ServeSettings(port=port, queue=1, media_dir=scene_cut_clip.parent, step_delay_s=0.2)
    try:
        ray_app.run(str(tiny_export), settings, replicas=2, gpus_per_replica=0.0, block=False)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the Ray app did not become ready"
            time.sleep(0.5)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


def _body(clip, tokens=6, **extra):
    return chat(clip.resolve().as_uri(), max_tokens=tokens, **extra)


async def _burst(url, body, n):
    async with httpx.AsyncClient(timeout=120) as client:
        return await asyncio.gather(*(client.post(url + "/v1/chat/completions", json=body) for _ in range(n)))


def test_ray_answer_equals_the_single_process_one(cluster, scene_cut_clip, tiny_export):
    from click.testing import CliRunner

    from prunevid.cli import cli

    run = CliRunner().invoke(cli, ["run", "--engine-dir", str(tiny_export), "--video", str(scene_cut_clip),
                                   "--question", "What is it?", "--max-new-tokens", "6", "--json"])
    r = httpx.post(cluster + "/v1/chat/completions", json=_body(scene_cut_clip), timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["prunevid"]["token_ids"] == json.loads(run.output)["token_ids"]


def test_ray_burst_gives_answers_and_429s_then_serves_again(cluster, scene_cut_clip):
    from ray import serve

    from prunevid.serve.ray_app import INGRESS, INGRESS_APP

    responses = asyncio.run(_burst(cluster, _body(scene_cut_clip), 32))
    codes = [r.status_code for r in responses]
    # 2 replicas x (1 running + queue 1) = the ingress admits 4; the rest are 429, none 5xx
    others = [r.text for r in responses if r.status_code not in (200, 429)]
    assert codes.count(200) >= 2 and codes.count(429) >= 24 and not others, (codes, others)
    for r in responses:
        if r.status_code == 429:
            assert r.json()["error"]["type"] == "server_overloaded" and "retry-after" in r.headers
    # no leaked slot (every admitted request finished) and no leaked temporary file in the ingress
    ingress = serve.get_deployment_handle(INGRESS, app_name=INGRESS_APP)
    assert ingress.in_flight.remote().result(timeout_s=30) == 0
    workdirs = _workdirs() - _OLDER_WORKDIRS  # the ingress's own folder
    assert workdirs and [p for d in workdirs for p in d.iterdir()] == [], workdirs
    again = asyncio.run(_burst(cluster, _body(scene_cut_clip), 2))
    assert [r.status_code for r in again] == [200, 200]


def test_killing_the_busy_replica_gives_503_then_service_resumes(cluster, scene_cut_clip):
    from ray import serve

    handle = serve.get_deployment_handle("PrunevidEngine", app_name="prunevid-engine")
    pids = {handle.describe.remote().result()["pid"] for _ in range(6)}
    assert len(pids) == 2

    async def slow_then_kill():
        async with httpx.AsyncClient(timeout=120) as client:
            task = asyncio.ensure_future(client.post(cluster + "/v1/chat/completions",
                                                     json=_body(scene_cut_clip, tokens=60)))
            await asyncio.sleep(4.0)  # the answer is generating (0.2 s per token)
            busy = [pid for pid in pids if _generating(pid)]
            for pid in busy or pids:
                os.kill(pid, signal.SIGKILL)
            return await task

    r = asyncio.run(slow_then_kill())
    assert r.status_code == 503, r.text
    assert r.json()["error"]["type"] == "server_unavailable"
    deadline = time.monotonic() + 60
    while True:
        r = httpx.post(cluster + "/v1/chat/completions", json=_body(scene_cut_clip, tokens=2), timeout=120)
        if r.status_code == 200:
            break
        assert r.status_code in (429, 503) and time.monotonic() < deadline, r.text
        time.sleep(1)


def _generating(pid: int) -> bool:
    """Whether process ``pid`` is busy (its CPU time grows over 0.3 s)."""
    def cpu():
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    try:
        before = cpu()
        time.sleep(0.3)
        return cpu() > before
    except OSError:
        return False
