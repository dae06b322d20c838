"""Serving benchmark: requests per second and p50/p99 latency of ``prunevid serve`` under a sustained,
bounded load, PruneVid against the plain baseline on one export.

A closed loop of ``--concurrency`` clients sends ``--requests`` chat requests per mode (file:// video,
``--new-tokens`` tokens, EOS disabled so every answer has the same length) to a server on
127.0.0.1 with ``--queue``; a 429 is retried after its Retry-After. Reported per mode: requests/s,
p50/p99 end-to-end latency and time to first token (client side), 429s seen, visual tokens kept.
Modes are measured one after the other on the same loaded export (the request picks the mode).

Usage: python benchmarks/bench_serve.py [--geometry tiny|bench] [--requests 24] [--concurrency 4]
           [--queue 4] [--new-tokens 8] [--out FILE]
Builds the random model and its export once in --cache (default $PRUNEVID_CACHE). Speed is
reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

from common import DEFAULT_CACHE, QUESTION, bench_clip
from measure import machine, model_and_export, write_json

ROOT = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` in [0, 100] of ``values``."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def start_server(export_dir: Path, media: Path, queue: int, threads: int):
    """The app on 127.0.0.1 (ephemeral port) in a thread; returns (uvicorn server, base URL, state)."""
    import uvicorn

    from prunevid.serve.app import ServerState, build_app
    from prunevid.serve.engine import Engine
    from prunevid.serve.settings import ServeSettings

    engine = Engine(export_dir, threads=threads)
    engine.pipeline.tokenizer.eos_id = -1  # fixed answer length
    state = ServerState(engine, ServeSettings(queue=queue, allow_modes=("prunevid", "none"), media_dir=media))
    server = uvicorn.Server(uvicorn.Config(build_app(state), host="127.0.0.1", port=0, log_level="warning",
                                           access_log=False))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 600
    while not (server.started and state.ready):
        if time.monotonic() > deadline:
            raise SystemExit("Error: the server did not start")
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}", state


async def one(client, url: str, body: dict) -> dict:
    """One streamed answer; retried after Retry-After on 429. Client-side e2e and TTFT in seconds."""
    rejected = 0
    while True:
        t0 = time.perf_counter()
        first, final = None, None
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            if r.status_code == 429:
                rejected += 1
                await r.aread()
                await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                continue
            if r.status_code != 200:
                raise SystemExit(f"Error: server answered {r.status_code}: {(await r.aread())[:200]!r}")
            async for line in r.aiter_lines():
                if first is None and '"content": "' in line and '"role"' not in line:
                    first = time.perf_counter()
                if '"finish_reason": "' in line:
                    final = json.loads(line[len("data: "):])
        return {"e2e_s": time.perf_counter() - t0, "ttft_s": (first or time.perf_counter()) - t0,
                "rejected": rejected, "kept": final["prunevid"]["visual_tokens"]["kept"],
                "media_ms": final["prunevid"]["server_ms"]["media_ms"], "engine_ttft_ms": final["prunevid"]["ttft_ms"],
                "tokens": len(final["prunevid"]["token_ids"])}


async def load(url: str, body: dict, requests: int, concurrency: int) -> tuple[list[dict], float]:
    import httpx

    todo = list(range(requests))
    results: list[dict] = []

    async def worker(client):
        while todo:
            todo.pop()
            results.append(await one(client, url, body))

    async with httpx.AsyncClient(timeout=600) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return results, time.perf_counter() - t0


def summary(results: list[dict], wall: float) -> dict:
    e2e = [r["e2e_s"] * 1e3 for r in results]
    ttft = [r["ttft_s"] * 1e3 for r in results]
    return {"requests": len(results), "wall_s": round(wall, 3), "requests_per_s": round(len(results) / wall, 3),
            "e2e_ms": {"p50": round(statistics.median(e2e), 1), "p99": round(percentile(e2e, 99), 1)},
            "ttft_ms": {"p50": round(statistics.median(ttft), 1), "p99": round(percentile(ttft, 99), 1)},
            "server_media_ms_p50": round(statistics.median(r["media_ms"] for r in results), 1),
            "engine_ttft_ms_p50": round(statistics.median(r["engine_ttft_ms"] for r in results), 1),
            "rejected_429": sum(r["rejected"] for r in results), "visual_tokens_kept": results[0]["kept"],
            "tokens_per_answer": results[0]["tokens"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--geometry", choices=["tiny", "bench"], default="tiny")
    parser.add_argument("--requests", type=int, default=24, help="requests per mode")
    parser.add_argument("--concurrency", type=int, default=4, help="clients in the closed loop")
    parser.add_argument("--queue", type=int, default=4, help="server --queue")
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    _, export_dir = model_and_export(args.cache, args.geometry, 10)
    clip = bench_clip(args.cache)
    server, url, state = start_server(export_dir, clip.parent, args.queue, args.threads)
    try:
        out = {"benchmark": "bench_serve", "geometry": args.geometry, "clip": clip.name,
               "machine": {**machine(args.threads, bool(args.threads)), "load_average_1m_at_start": os.getloadavg()[0]},
               "settings": {"requests": args.requests, "concurrency": args.concurrency, "queue": args.queue,
                            "new_tokens": args.new_tokens}, "modes": {}}
        for mode in ("prunevid", "none"):
            body = {"messages": [{"role": "user", "content": [
                {"type": "video_url", "video_url": {"url": clip.resolve().as_uri()}},
                {"type": "text", "text": QUESTION}]}], "max_tokens": args.new_tokens, "stream": True,
                "prunevid": {"mode": mode}}
            asyncio.run(load(url, body, 2, 1))  # warm-up
            results, wall = asyncio.run(load(url, body, args.requests, args.concurrency))
            out["modes"][mode] = summary(results, wall)
            m = out["modes"][mode]
            print(f"{mode:9s} {m['requests_per_s']:7.2f} req/s  e2e p50 {m['e2e_ms']['p50']:8.1f} ms "
                  f"p99 {m['e2e_ms']['p99']:8.1f} ms  TTFT p50 {m['ttft_ms']['p50']:8.1f} ms "
                  f"p99 {m['ttft_ms']['p99']:8.1f} ms  (video {m['server_media_ms_p50']:.0f} ms, engine TTFT "
                  f"{m['engine_ttft_ms_p50']:.0f} ms)  429s {m['rejected_429']}  kept {m['visual_tokens_kept']}")
        pv, base = out["modes"]["prunevid"], out["modes"]["none"]
        out["throughput_ratio"] = round(pv["requests_per_s"] / base["requests_per_s"], 3)
        out["machine"]["load_average_1m_at_end"] = os.getloadavg()[0]
        print(f"PruneVid / baseline throughput: {out['throughput_ratio']:.2f}x "
              f"({args.geometry} geometry, {args.concurrency} clients, queue {args.queue})")
        write_json(args.out or ROOT / "benchmarks" / f"bench-serve-{args.geometry}.json", out)
    finally:
        server.should_exit = True


if __name__ == "__main__":
    sys.exit(main())
