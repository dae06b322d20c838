"""``prunevid serve`` end to end on loopback against the tiny export: OpenAI client equality with
``prunevid run``, bounded load, cancellation, decode time cap, malformed requests, SSRF, metrics.

One in-process server per module (it shares the test process, so the network guard covers the
server's own fetcher); every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from serve_helpers import Canary, LiveServer, chat, data_url, guard  # noqa: E402,F401

QUESTION = "What is it?"
MODES = ("prunevid", "merge", "none")


@pytest.fixture(scope="module")
def media(tmp_path_factory, scene_cut_clip) -> Path:
    root = tmp_path_factory.mktemp("media")
    shutil.copy(scene_cut_clip, root / "clip.mp4")
    return root


@pytest.fixture(scope="module")
def live(tiny_export, media):
    from prunevid.serve.app import ServerState
    from prunevid.serve.engine import Engine
    from prunevid.serve.settings import ServeSettings

    settings = ServeSettings(queue=4, allow_modes=MODES, media_dir=media, max_video_bytes=256 * 1024,
                             max_new_tokens=4000, decode_timeout_s=20, queue_timeout_s=30)
    state = ServerState(Engine(tiny_export), settings)
    server = LiveServer(state)
    yield server
    server.stop()
    assert not state.workdir.exists()  # the server's temp folder is removed at shutdown
    state.engine.close()


@pytest.fixture()
def tuned(live):
    """Change the live server's settings for one test, restored afterwards."""
    state = live.state
    saved = (state.settings, state.engine.step_delay_s, state.policy)

    def tune(step_delay_s: float = 0.0, policy=None, **changes):
        state.settings = replace(state.settings, **changes)
        state.engine.step_delay_s = step_delay_s
        if policy is not None:
            state.policy = policy

    yield tune
    state.settings, state.engine.step_delay_s, state.policy = saved


def file_url(media: Path, name: str = "clip.mp4") -> str:
    return (media / name).resolve().as_uri()


def post(live, body, **kw) -> httpx.Response:
    raw = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(live.url + "/v1/chat/completions", content=raw, headers={"content-type": "application/json"},
                      timeout=kw.pop("timeout", 60), **kw)


def metric(live, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(live.url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise KeyError(name)


def idle(live, within: float = 10.0) -> float:
    """Seconds until no request is in (bounded); fails if it never happens."""
    t0 = time.monotonic()
    while not live.state.admission.idle:
        assert time.monotonic() - t0 < within, "the slot or a ticket leaked"
        time.sleep(0.01)
    return time.monotonic() - t0


# --- OpenAI client equality with `prunevid run` --------------------------------------------------

@pytest.fixture(scope="module")
def run_answers(tiny_export, media):
    """``prunevid run --engine-dir --json`` per mode, through the real command."""
    from click.testing import CliRunner

    from prunevid.cli import cli

    out = {}
    for mode in MODES:
        result = CliRunner().invoke(cli, ["run", "--engine-dir", str(tiny_export), "--video", str(media / "clip.mp4"),
                                          "--question", QUESTION, "--max-new-tokens", "12", "--json", "--mode", mode])
        assert result.exit_code == 0, result.output
        out[mode] = json.loads(result.output)
    return out


@pytest.mark.parametrize("mode", MODES)
def test_openai_client_equals_prunevid_run(live, media, run_answers, mode):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    expected = run_answers[mode]
    content = [{"type": "video_url", "video_url": {"url": file_url(media)}}, {"type": "text", "text": QUESTION}]
    extra = {"prunevid": {"mode": mode}}
    whole = client.chat.completions.create(model=live.state.model, messages=[{"role": "user", "content": content}],
                                           max_tokens=12, extra_body=extra)
    facts = whole.model_extra["prunevid"]
    assert facts["token_ids"] == expected["token_ids"]
    assert whole.choices[0].message.content == expected["answer"]
    assert facts["visual_tokens"] == expected["visual_tokens"]
    assert facts["settings"]["mode"] == mode
    assert whole.usage.prompt_tokens == expected["prompt_tokens"]["prefill"]
    assert whole.usage.completion_tokens == len(expected["token_ids"])

    chunks = list(client.chat.completions.create(model=live.state.model, messages=[{"role": "user", "content": content}],
                                                 max_tokens=12, stream=True, stream_options={"include_usage": True},
                                                 extra_body=extra))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == expected["answer"]
    assert len(final) == 1 and final[0].model_extra["prunevid"]["token_ids"] == expected["token_ids"]
    assert final[0].choices[0].finish_reason == ("stop" if expected["token_ids"][-1] == live.state.engine.pipeline.tokenizer.eos_id else "length")
    assert chunks[-1].usage.completion_tokens == len(expected["token_ids"])


def test_models_health_and_metrics(live):
    card = httpx.get(live.url + "/v1/models", timeout=10).json()["data"][0]
    assert card["id"] == live.state.model and card["prunevid"]["frames"] == 16
    assert card["prunevid"]["allowed_modes"] == list(MODES)
    assert httpx.get(live.url + "/health", timeout=10).status_code == 200
    assert httpx.get(live.url + "/health/ready", timeout=10).status_code == 200
    assert metric(live, "prunevid_requests_running") == 0
    assert metric(live, "prunevid_model_load_seconds") > 0
    for method, path, status in (("GET", "/v1/chat/completions", 405), ("GET", "/v2/nothing", 404)):
        r = httpx.request(method, live.url + path, timeout=10)
        assert r.status_code == status and r.json()["error"]["code"] == status


def test_answer_updates_token_metrics(live, media):
    before = metric(live, "prunevid_visual_tokens_total", stage="kept")
    gen_before = metric(live, "prunevid_generation_tokens_total")
    r = post(live, chat(file_url(media), max_tokens=3))
    assert r.status_code == 200, r.text
    facts = r.json()["prunevid"]
    assert metric(live, "prunevid_visual_tokens_total", stage="kept") - before == facts["visual_tokens"]["kept"]
    assert metric(live, "prunevid_generation_tokens_total") - gen_before == len(facts["token_ids"])
    assert facts["server_ms"]["ttft_ms"] > 0 and facts["server_ms"]["e2e_ms"] >= facts["server_ms"]["ttft_ms"]


# --- load, cancellation, time caps -----------------------------------------------------------------

async def _burst(url: str, body: dict, n: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n + 4)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return await asyncio.gather(*(client.post(url + "/v1/chat/completions", json=body) for _ in range(n)))


def test_32_concurrent_requests_against_queue_4(live, media, tuned):
    # every admitted request spends 1.5 s in its decode worker, so all 32 arrive while 5 are in
    tuned(step_delay_s=0.01, decode_delay_s=1.5)
    ok_before = metric(live, "prunevid_requests_total", outcome="length") + metric(live, "prunevid_requests_total", outcome="ok")
    body = chat(file_url(media), max_tokens=4)
    responses = asyncio.run(_burst(live.url, body, 32))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) == 5 and codes.count(429) == 27, codes
    for r in responses:
        if r.status_code == 429:
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"]["type"] == "server_overloaded" and r.json()["error"]["code"] == 429
    assert live.state.admission.peak <= 5
    idle(live)
    assert list(live.state.workdir.iterdir()) == []  # no temporary file left
    done = metric(live, "prunevid_requests_total", outcome="length") + metric(live, "prunevid_requests_total", outcome="ok")
    assert done - ok_before == 5
    tuned(step_delay_s=0.0, decode_delay_s=0.0)
    second = asyncio.run(_burst(live.url, body, 5))  # the second burst fits the queue: all answered
    assert [r.status_code for r in second] == [200] * 5
    assert len({json.dumps(r.json()["prunevid"]["token_ids"]) for r in second}) == 1
    idle(live)


def test_stream_disconnect_frees_the_slot_within_one_step(live, media, tuned):
    step = 0.25
    tuned(step_delay_s=step)
    cancelled = metric(live, "prunevid_requests_total", outcome="cancelled")
    generated = metric(live, "prunevid_generation_tokens_total")
    body = chat(file_url(media), max_tokens=200, stream=True)
    received = 0
    with httpx.stream("POST", live.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if '"content": "' in line and '"role"' not in line:
                received += 1
                break
    freed = idle(live, within=10)
    assert freed < 3.0, f"slot freed {freed:.2f} s after the disconnect"
    # counted, not timed (the machine may be loaded): once the client left, at most the step in
    # flight and the one that noticed ran (+1: the first delta may wait for a second token to complete
    # a character)
    extra = metric(live, "prunevid_generation_tokens_total") - generated - received
    assert 0 <= extra <= 4, extra
    assert metric(live, "prunevid_requests_total", outcome="cancelled") == cancelled + 1


def test_non_streaming_disconnect_cancels(live, media, tuned):
    step = 0.25
    tuned(step_delay_s=step)
    cancelled = metric(live, "prunevid_requests_total", outcome="cancelled")
    gen_before = metric(live, "prunevid_generation_tokens_total")
    with pytest.raises(httpx.ReadTimeout):
        post(live, chat(file_url(media), max_tokens=200), timeout=2.5)
    freed = idle(live, within=10)
    assert freed < 3.0, f"slot freed {freed:.2f} s after the client left"
    assert metric(live, "prunevid_requests_total", outcome="cancelled") == cancelled + 1
    assert metric(live, "prunevid_generation_tokens_total") - gen_before < 200


def _decode_children() -> list[int]:
    me, out = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == me and b"decode_worker" in cmd:
            out.append(int(stat.parent.name))
    return out


def test_a_decode_that_never_ends_is_killed_at_the_time_cap(live, media, tuned):
    tuned(decode_delay_s=120, decode_timeout_s=1.0)
    t0 = time.monotonic()
    r = post(live, chat(file_url(media), max_tokens=2))
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
    assert time.monotonic() - t0 < 6
    assert _decode_children() == []
    idle(live)
    assert httpx.get(live.url + "/health/ready", timeout=10).status_code == 200


def _ts_remux(src: Path, segment: Path) -> Path:
    """An MPEG-TS remux of ``src`` (a playlist's segment)."""
    import av

    with av.open(str(src)) as inp, av.open(str(segment), "w", format="mpegts") as dst:
        stream = inp.streams.video[0]
        out = dst.add_stream_from_template(stream)
        for packet in inp.demux(stream):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    return segment


@pytest.mark.parametrize("kind", ["hls-vod", "hls-live", "ffconcat"])
def test_a_playlist_under_the_media_dir_is_refused_without_reading_what_it_lists(live, media, tuned, tmp_path,
                                                                                 kind):
    """--media-dir confines file:// URLs to that folder; a playlist placed there would make FFmpeg read
    the files it lists, wherever they are (before the decode worker's container allow-list, FFmpeg's
    HLS demuxer decoded all 48 frames of a segment outside the folder, and a live playlist decoded
    for ever). Now the worker opens self-contained containers only: 422, and the listed file is never
    opened (its access time is checked on a file only this test reads)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    segment = _ts_remux(media / "clip.mp4", outside / "secret-0.ts")
    clip = outside / "secret.mp4"
    clip.write_bytes((media / "clip.mp4").read_bytes())
    lines = {"hls-vod": f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{segment}\n#EXT-X-ENDLIST\n",
             "hls-live": f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:2.0,\n{segment}\n",
             "ffconcat": f"ffconcat version 1.0\nfile '{clip}'\n"}
    name = {"hls-vod": "vod.m3u8", "hls-live": "live.m3u8", "ffconcat": "list.ffconcat"}[kind]
    (media / name).write_text(lines[kind])
    listed = segment if kind.startswith("hls") else clip
    os.utime(listed, (1_000_000, 1_000_000))  # an access time no read can leave
    tuned(decode_timeout_s=20.0)
    r = post(live, chat(file_url(media, name), max_tokens=2))
    assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_media", r.text
    assert "self-contained container" in r.json()["error"]["message"]
    assert listed.stat().st_atime == 1_000_000  # never opened for reading
    assert _decode_children() == []
    idle(live)
    assert post(live, chat(file_url(media), max_tokens=2)).status_code == 200


def test_duration_and_frame_size_caps_refuse_before_decoding(live, media, tuned):
    tuned(max_video_seconds=0.5)
    r = post(live, chat(file_url(media), max_tokens=2))
    assert r.status_code == 413 and "s limit" in r.json()["error"]["message"], r.text
    tuned(max_frame_pixels=32 * 32)
    r = post(live, chat(file_url(media), max_tokens=2))
    assert r.status_code == 413 and "pixel limit" in r.json()["error"]["message"], r.text
    idle(live)


# --- malformed requests ------------------------------------------------------------------------------

def _cases(media: Path, tmp: Path) -> list[tuple[str, object, int]]:
    clip = file_url(media)
    video = {"type": "video_url", "video_url": {"url": clip}}
    text = {"type": "text", "text": QUESTION}

    def msg(*parts, **extra):
        return {"messages": [{"role": "user", "content": list(parts)}], **extra}

    corrupt = tmp / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(4000))
    truncated = tmp / "truncated.mp4"
    truncated.write_bytes((media / "clip.mp4").read_bytes()[:600])
    big = media / "big.mp4"
    big.write_bytes(b"\0" * (300 * 1024))
    outside = tmp / "outside.mp4"
    shutil.copy(media / "clip.mp4", outside)
    shutil.copy(media / "clip.mp4", media.parent / "beside.mp4")
    link = media / "escape.mp4"
    if not link.exists():
        link.symlink_to(outside)
    fifo = media / "pipe.mp4"  # a reader of a FIFO would wait for ever: refused as not a regular file
    if not fifo.exists():
        os.mkfifo(fifo)
    return [
        ("bad JSON", b"{not json", 400),
        ("JSON array", [1, 2], 400),
        ("no messages", {"max_tokens": 3}, 400),
        ("empty messages", {"messages": []}, 400),
        ("messages not a list", {"messages": "hi"}, 400),
        ("two messages", {"messages": [msg(video, text)["messages"][0]] * 2}, 400),
        ("system role", {"messages": [{"role": "system", "content": [video, text]}]}, 400),
        ("string content, no video", {"messages": [{"role": "user", "content": "hi"}]}, 400),
        ("empty content", msg(), 400),
        ("part not an object", msg("video", text), 400),
        ("unknown part type", msg(video, text, {"type": "hologram"}), 400),
        ("image part", msg(video, text, {"type": "image_url", "image_url": {"url": clip}}), 400),
        ("two videos", msg(video, video, text), 400),
        ("no video", msg(text), 400),
        ("empty question", msg(video, {"type": "text", "text": "   "}), 400),
        ("video_url without url", msg({"type": "video_url", "video_url": {}}, text), 400),
        ("input_video without data", msg({"type": "input_video", "input_video": {}}, text), 400),
        ("max_tokens 0", msg(video, text, max_tokens=0), 400),
        ("max_tokens over the cap", msg(video, text, max_tokens=10**6), 400),
        ("max_tokens a string", msg(video, text, max_tokens="5"), 400),
        ("stream not a bool", msg(video, text, stream="yes"), 400),
        ("n = 2", msg(video, text, n=2), 400),
        ("temperature 0.7", msg(video, text, temperature=0.7), 400),
        ("tools", msg(video, text, tools=[{"type": "function"}]), 400),
        ("unknown mode", msg(video, text, prunevid={"mode": "fast"}), 400),
        ("prunevid not an object", msg(video, text, prunevid="merge"), 400),
        ("unknown prunevid field", msg(video, text, prunevid={"mode": "merge", "tau": 0.1}), 400),
        ("wrong num_frames", msg(video, text, num_frames=8), 400),
        ("wrong media_io_kwargs frames", msg(video, text, media_io_kwargs={"video": {"num_frames": 32}}), 400),
        ("unknown model", msg(video, text, model="gpt-video"), 404),
        ("prompt over the context", msg(video, text, max_tokens=3990, prunevid={"mode": "none"}), 400),
        ("data URL not base64", chat("data:video/mp4,AAAA"), 400),
        ("data URL bad base64", chat("data:video/mp4;base64,@@@@"), 400),
        ("data URL of an image", chat("data:image/png;base64,AAAA"), 415),
        ("empty data URL", chat("data:video/mp4;base64,"), 422),
        ("oversize base64", chat("data:video/mp4;base64," + "A" * (300 * 1024 * 4 // 3)), 413),
        ("body over the cap", chat(clip, padding="x" * (600 * 1024)), 413),
        ("corrupt video", chat(data_url(corrupt)), 422),
        ("truncated video", chat(data_url(truncated)), 422),
        ("file over the cap", chat(file_url(media, "big.mp4")), 413),
        ("file outside the media folder", chat(outside.resolve().as_uri()), 400),
        ("file through ..", chat(media.resolve().as_uri() + "/../beside.mp4"), 400),
        ("symlink escaping the media folder", chat(media.resolve().as_uri() + "/escape.mp4"), 400),
        ("missing file", chat(file_url(media, "nope.mp4")), 404),
        ("FIFO in the media folder", chat(file_url(media, "pipe.mp4")), 400),
        ("ftp scheme", chat("ftp://example.com/clip.mp4"), 400),
        ("no scheme", chat("clip.mp4"), 400),
        ("http while remote media is off", chat("http://public.test/clip.mp4"), 400),
    ]


def test_malformed_requests_get_the_right_4xx(live, media, tmp_path):
    cases = _cases(media, tmp_path)
    assert len(cases) >= 30
    for name, body, status in cases:
        r = post(live, body)
        assert r.status_code == status, (name, r.status_code, r.text)
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["code"] == status, name
        assert "\n" not in err["message"] and err["message"], name
    idle(live)
    assert list(live.state.workdir.iterdir()) == []
    assert httpx.get(live.url + "/health/ready", timeout=10).status_code == 200
    assert post(live, chat(file_url(media), max_tokens=2)).status_code == 200


# --- remote media: SSRF ----------------------------------------------------------------------------

REFUSED_URLS = [
    "http://127.0.0.1:{port}/clip.mp4", "http://localhost:{port}/clip.mp4", "http://0x7f000001:{port}/clip.mp4",
    "http://2130706433:{port}/clip.mp4", "http://0177.0.0.1:{port}/clip.mp4", "http://127.1:{port}/clip.mp4",
    "http://[::1]:{port}/clip.mp4", "http://[::ffff:127.0.0.1]:{port}/clip.mp4",
    "http://169.254.169.254/latest/meta-data/", "http://metadata.google.internal/computeMetadata/v1/",
    "http://10.0.0.1/clip.mp4", "http://172.16.5.4/clip.mp4", "http://192.168.1.1/clip.mp4",
    "http://100.64.0.1/clip.mp4", "http://0.0.0.0:{port}/clip.mp4", "http://[fe80::1]/clip.mp4",
    "http://[fc00::1]/clip.mp4", "http://224.0.0.1/clip.mp4", "http://intranet.test/clip.mp4",
    "http://mixed.test/clip.mp4", "http://user:pw@public.test/clip.mp4", "gopher://127.0.0.1:{port}/",
]


@pytest.fixture()
def canary(media):
    c = Canary(media / "clip.mp4")
    yield c
    c.stop()


def test_refused_urls_never_connect(live, tuned, canary):
    tuned(allow_remote_media=True)
    for url in REFUSED_URLS:
        r = post(live, chat(url.format(port=canary.port), max_tokens=2))
        assert r.status_code == 400, (url, r.text)
        assert r.json()["error"]["param"] == "video"
    assert canary.hits == []  # nothing reached the loopback canary either


def _loopback_only(address) -> bool:
    return str(address) == "127.0.0.1"


def test_remote_fetch_rechecks_every_redirect_and_caps_bytes(live, tuned, canary, run_answers):
    from prunevid.serve.media import UrlPolicy

    tuned(allow_remote_media=True, policy=UrlPolicy(allow_address=_loopback_only), fetch_timeout_s=2.0,
          max_redirects=3)
    base = f"http://127.0.0.1:{canary.port}"
    r = post(live, chat(base + "/clip.mp4", max_tokens=12, prunevid={"mode": "prunevid"}))
    assert r.status_code == 200, r.text
    assert r.json()["prunevid"]["token_ids"] == run_answers["prunevid"]["token_ids"]
    r = post(live, chat(base + "/redirect?to=/clip.mp4", max_tokens=2))
    assert r.status_code == 200, r.text
    canary.hits.clear()
    for target in ("http://169.254.169.254/", f"http://[::1]:{canary.port}/clip.mp4", "http://10.0.0.1/",
                   f"http://localhost:{canary.port}/clip.mp4", "file:///etc/passwd"):
        r = post(live, chat(f"{base}/redirect?to={target}", max_tokens=2))
        assert r.status_code == 400, (target, r.text)
    assert all(h.startswith("/redirect") for h in canary.hits)  # the refused hop was never dialled
    assert post(live, chat(base + "/loop")).status_code == 422
    assert post(live, chat(base + "/huge")).status_code == 413
    assert post(live, chat(base + "/missing")).status_code == 422
    t0 = time.monotonic()
    assert post(live, chat(base + "/slow")).status_code == 504
    assert time.monotonic() - t0 < 6
    idle(live)
    assert list(live.state.workdir.iterdir()) == []


def test_https_dials_the_pinned_address_and_verifies_the_url_host(live, tuned, media, tmp_path, run_answers):
    """https through the pinned-IP path: the name resolves (test resolver) to the loopback canary, the
    fetcher dials that address, sends the URL's host as SNI and checks the certificate against it."""
    import ssl

    from serve_helpers import self_signed

    from prunevid.serve.media import UrlPolicy

    cert, key = self_signed("media.test", tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    canary = Canary(media / "clip.mp4", tls=(cert, key))
    lookups = []

    def resolver(host, port):
        lookups.append((host, port))
        return ["127.0.0.1"]

    try:
        tuned(allow_remote_media=True, fetch_timeout_s=5.0,
              policy=UrlPolicy(allow_address=_loopback_only, resolver=resolver, verify=trust))
        r = post(live, chat(f"https://media.test:{canary.port}/clip.mp4", max_tokens=12, prunevid={"mode": "prunevid"}))
        assert r.status_code == 200, r.text
        assert r.json()["prunevid"]["token_ids"] == run_answers["prunevid"]["token_ids"]
        assert canary.sni == ["media.test"] and canary.hits == ["/clip.mp4"]
        assert lookups == [("media.test", canary.port)]
        # the same certificate presented for another name: refused before any request is sent
        r = post(live, chat(f"https://other.test:{canary.port}/clip.mp4", max_tokens=2))
        assert r.status_code == 422, r.text
        message = r.json()["error"]["message"]
        assert message.startswith("the TLS certificate of other.test is refused") and "other.test" in message, message
        assert canary.sni[-1] == "other.test" and canary.hits == ["/clip.mp4"]
        # the right name, but a certificate nobody trusts (the default verification): refused too
        tuned(allow_remote_media=True, fetch_timeout_s=5.0,
              policy=UrlPolicy(allow_address=_loopback_only, resolver=resolver))
        r = post(live, chat(f"https://media.test:{canary.port}/clip.mp4", max_tokens=2))
        assert r.status_code == 422 and "certificate" in r.json()["error"]["message"], r.text
        assert canary.hits == ["/clip.mp4"]
        # without the test hook, loopback stays refused over https as well: nothing is dialled
        tuned(allow_remote_media=True, policy=UrlPolicy(resolver=resolver, verify=trust))
        r = post(live, chat(f"https://media.test:{canary.port}/clip.mp4", max_tokens=2))
        assert r.status_code == 400 and "non-public" in r.json()["error"]["message"], r.text
        assert len(canary.sni) == 3
    finally:
        canary.stop()
    idle(live)
    assert list(live.state.workdir.iterdir()) == []


def test_the_guard_blocks_non_loopback_connections(guard):
    import socket

    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("10.255.255.1", 80))
    with pytest.raises(OSError):
        socket.getaddrinfo("example.com", 80)
    assert len(guard.violations) == 2
    guard.violations.clear()


# --- property-based fuzz -------------------------------------------------------------------------

def test_fuzzed_requests_never_get_a_5xx(live, media):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scalars = st.none() | st.booleans() | st.integers(-5, 5000) | st.floats(allow_nan=False, allow_infinity=False, width=32) | st.text(max_size=8)
    json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                               | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
    urls = st.sampled_from([file_url(media), "data:video/mp4;base64,AAAA", "http://127.0.0.1/x", "", "file:///etc",
                            "data:,", "x"]) | st.text(max_size=12)
    part = st.one_of(
        st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=10) | json_values}),
        st.fixed_dictionaries({"type": st.sampled_from(["video_url", "video", "input_video", "image_url"]),
                               "video_url": st.fixed_dictionaries({"url": urls}) | json_values,
                               "video": urls, "input_video": st.fixed_dictionaries({"data": st.text(max_size=8)})}),
        json_values)
    message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]) | json_values,
                                     "content": st.lists(part, max_size=3) | json_values})
    body = st.fixed_dictionaries({"messages": st.lists(message, max_size=2) | json_values},
                                 optional={"max_tokens": json_values, "stream": json_values, "n": json_values,
                                           "temperature": json_values, "prunevid": json_values,
                                           "num_frames": json_values, "stream_options": json_values,
                                           "media_io_kwargs": json_values, "model": json_values})

    with httpx.Client(base_url=live.url, timeout=60) as client:
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(body)
        def check(data):
            data.setdefault("max_tokens", 2)  # keep any valid example short
            if isinstance(data["max_tokens"], int) and not isinstance(data["max_tokens"], bool):
                data["max_tokens"] = min(max(data["max_tokens"], 1), 4)
            r = client.post("/v1/chat/completions", json=data)
            assert r.status_code < 500, r.text
            if r.status_code != 200:
                assert r.json()["error"]["code"] == r.status_code

        check()
    idle(live)


# --- review fixes: descriptor leak, overflow after merging -----------------------------------------

def test_file_url_requests_leak_no_descriptors(live, media):
    from prunevid.serve.app import prepare_pixels

    async def many(n: int) -> None:
        for _ in range(n):
            pixels = await prepare_pixels(live.state, file_url(media))
            assert pixels.shape[0] == live.state.facts.frames

    asyncio.run(many(3))  # warm: lazily opened files (libraries, the pool) are counted before
    before = len(os.listdir("/proc/self/fd"))
    asyncio.run(many(20))
    assert len(os.listdir("/proc/self/fd")) - before < 5


@pytest.mark.parametrize("stream", [False, True])
def test_context_overflow_found_after_merging_is_a_400(live, media, stream):
    ctx = live.state.facts.max_positions
    body = chat(file_url(media), mode="prunevid", max_tokens=ctx - 100, stream=stream)
    r = post(live, body)
    if stream:  # the 200 was sent before the merge: the error is the last event before [DONE]
        assert r.status_code == 200
        events = [json.loads(x[6:]) for x in r.text.split("\n\n") if x.startswith("data: {")]
        error = events[-1]["error"]
    else:
        assert r.status_code == 400, r.text
        error = r.json()["error"]
    assert error["code"] == 400 and error["param"] == "max_tokens" and error["type"] == "invalid_request_error"
    assert "exceeds the model's context" in error["message"]
    idle(live)
    ok = post(live, chat(file_url(media), mode="prunevid", max_tokens=4))
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] is not None
    assert httpx.get(live.url + "/health/ready", timeout=10).status_code == 200


def test_health_answers_during_warm_up_and_ready_after(tiny_export):
    import threading

    import uvicorn

    from prunevid.serve.app import ServerState, build_app
    from prunevid.serve.engine import Engine
    from prunevid.serve.settings import ServeSettings

    engine, release = Engine(tiny_export), threading.Event()
    warm_up = engine.warm_up
    engine.warm_up = lambda: (release.wait(30), warm_up())  # a warm-up that lasts until the test says
    state = ServerState(engine, ServeSettings())
    server = uvicorn.Server(uvicorn.Config(build_app(state), host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="on", access_log=False, loop="asyncio"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.05)
        url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        assert httpx.get(url + "/health", timeout=10).json() == {"status": "ok"}
        starting = httpx.get(url + "/health/ready", timeout=10)
        assert starting.status_code == 503 and "starting" in starting.json()["error"]["message"]
        assert httpx.post(url + "/v1/chat/completions", json={}, timeout=10).status_code == 503
        release.set()
        while not state.ready:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert httpx.get(url + "/health/ready", timeout=10).json() == {"status": "ready"}
    finally:
        release.set()
        server.should_exit = True
        thread.join(15)
        engine.close()
