"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

from __future__ import annotations

OUTCOMES = ("ok", "length", "cancelled", "rejected_queue", "rejected_draining", "bad_request", "refused_url",
            "too_large", "bad_media", "timeout", "error")
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """Counters, gauges and histograms named ``prunevid_*``; ``render()`` is the /metrics text."""

    def __init__(self, admission, info: dict[str, str]):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter("prunevid_requests", "Chat requests by outcome", ["outcome"], registry=r)
        for outcome in OUTCOMES:
            self.requests.labels(outcome)
        Gauge("prunevid_requests_running", "Requests holding the generation slot",
              registry=r).set_function(lambda: admission.running)
        Gauge("prunevid_requests_waiting", "Admitted requests not yet generating (media or slot wait)",
              registry=r).set_function(lambda: admission.waiting)
        self.queue_time = Histogram("prunevid_queue_time_seconds", "Arrival to holding the slot, less media work",
                                    registry=r, buckets=_SECONDS)
        self.media_time = Histogram("prunevid_video_prepare_seconds", "Fetch and decode of the request's video",
                                    registry=r, buckets=_SECONDS)
        self.ttft = Histogram("prunevid_time_to_first_token_seconds", "Arrival to the first generated token",
                              registry=r, buckets=_SECONDS)
        self.e2e = Histogram("prunevid_e2e_request_latency_seconds", "Arrival to the last token", registry=r,
                             buckets=_SECONDS)
        self.per_token = Histogram("prunevid_decode_seconds_per_token", "Decode time per generated token",
                                   registry=r, buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1))
        self.visual = Counter("prunevid_visual_tokens", "Visual tokens by stage (encoder in, merged, kept)",
                              ["stage"], registry=r)
        self.retention = Histogram("prunevid_visual_retention_ratio", "Kept / encoder visual tokens per request",
                                   registry=r, buckets=(0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0))
        self.prompt_tokens = Counter("prunevid_prompt_tokens", "Prompt rows that entered the LLM", registry=r)
        self.generation_tokens = Counter("prunevid_generation_tokens", "Generated tokens", registry=r)
        self.load_seconds = Gauge("prunevid_model_load_seconds", "Export load and warm-up time", registry=r)
        Gauge("prunevid_info", "Server facts", list(info), registry=r).labels(**info).set(1)

    def outcome(self, name: str) -> None:
        self.requests.labels(name).inc()

    def answered(self, answer_json: dict, ttft_s: float | None, e2e_s: float) -> None:
        """Record one finished generation (any outcome)."""
        vt = answer_json["visual_tokens"]
        for stage in ("encoder", "merged", "kept"):
            self.visual.labels(stage).inc(vt[stage])
        self.retention.observe(vt["kept"] / max(vt["encoder"], 1))
        n = len(answer_json["token_ids"])
        self.generation_tokens.inc(n)
        self.prompt_tokens.inc(answer_json["prompt_tokens"]["prefill"])
        if n:
            self.per_token.observe(answer_json["timings_ms"]["decode"] / 1e3 / n)
        if ttft_s is not None:
            self.ttft.observe(ttft_s)
        self.e2e.observe(e2e_s)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
