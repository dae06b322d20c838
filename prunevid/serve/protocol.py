"""The HTTP contract: a chat request parsed and checked into :class:`ChatRequest`, and the OpenAI-shaped
response, stream chunk and error bodies.

Accepted (OpenAI ``POST /v1/chat/completions`` with the field's video parts): one ``user`` message whose
content holds text parts (the question) and exactly one video as ``{"type": "video_url", "video_url":
{"url": U}}``, ``{"type": "video", "video": U}`` or ``{"type": "input_video", "input_video": {"data": B64}}``;
``max_tokens`` / ``max_completion_tokens``, ``stream``, ``stream_options.include_usage``, ``num_frames``
(only the export's T) and the extension ``"prunevid": {"mode": ...}``. Decoding is greedy: a
``temperature`` other than 0, ``top_p`` other than 1, ``n`` other than 1, ``stop``, ``tools``,
``logprobs`` and images are refused with 400 rather than silently ignored.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

VIDEO_PARTS = ("video_url", "video", "input_video")


class ApiError(Exception):
    """A request the server refuses: HTTP ``status`` and the OpenAI error envelope's fields."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 outcome: str = "bad_request", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type_, param
        self.outcome, self.headers = outcome, headers or {}

    def body(self) -> dict[str, Any]:
        """``{"error": {"message", "type", "param", "code"}}`` with the HTTP status as ``code``."""
        return error_body(self.status, self.message, self.type, self.param)


def error_body(status: int, message: str, type_: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": " ".join(message.split()), "type": type_, "param": param, "code": status}}


def user_error(error: BaseException) -> ApiError | None:
    """The 400 for an engine error that is the request's own fault (a prompt that does not fit once
    the video is merged, a bad mode, a bad video); None for anything else (a broken export is a 500)."""
    from prunevid.errors import ConfigError, PromptError, VideoError, one_line

    for kind, param in ((PromptError, "max_tokens"), (ConfigError, "mode"), (VideoError, "messages")):
        if isinstance(error, kind):
            return ApiError(400, one_line(error), param=param)
    return None


def bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def unsupported(message: str, param: str) -> ApiError:
    return ApiError(400, message, "unsupported_feature", param)


@dataclass(frozen=True)
class ChatRequest:
    """A checked chat request: what the server needs to answer it."""

    video: str  # a URL: data:, file:// or http(s)://
    question: str
    max_tokens: int
    stream: bool = False
    include_usage: bool = False
    mode: str | None = None  # None: the export's mode


def parse_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, else 400."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise bad(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise bad("request body must be a JSON object")
    return data


def _int(data: dict, name: str, low: int, high: int) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"{name} must be an integer, got {json.dumps(value)[:40]}", name)
    if not low <= value <= high:
        raise bad(f"{name} must be in [{low}, {high}], got {value}", name)
    return value


def _flag(data: dict, name: str) -> bool:
    value = data.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad(f"{name} must be true or false", name)
    return value


def _refuse_sampling(data: dict) -> None:
    """Only greedy decoding exists: refuse what would silently change nothing."""
    for name, neutral in (("temperature", 0), ("top_p", 1), ("n", 1)):
        value = data.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(f"{name} must be a number", name)
        if value != neutral:
            raise unsupported(f"decoding is greedy: {name} must be {neutral} or absent, got {value}", name)
    for name in ("stop", "tools", "functions", "logprobs", "top_logprobs", "response_format", "tool_choice"):
        if data.get(name) not in (None, False, [], ""):
            raise unsupported(f"{name} is not supported", name)


def _video_url(part: dict, index: int) -> str:
    kind = part["type"]
    param = f"messages[0].content[{index}]"
    body = part.get(kind)
    if kind == "video_url":
        url = body.get("url") if isinstance(body, dict) else body
    elif kind == "video":
        url = body
    else:  # input_video: raw base64 (llama.cpp)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, str) or not data:
            raise bad("input_video.data must be a non-empty base64 string", param)
        url = "data:video/mp4;base64," + data
    if not isinstance(url, str) or not url:
        raise bad(f"{kind} must carry a non-empty URL string", param)
    return url


def _content(messages: Any) -> tuple[str, str]:
    """(video URL, question) from the messages."""
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list", "messages")
    if len(messages) != 1:
        raise unsupported("exactly one user message is supported (the export's template fixes the rest)",
                          "messages")
    message = messages[0]
    if not isinstance(message, dict):
        raise bad("messages[0] must be an object", "messages[0]")
    if message.get("role") != "user":
        raise unsupported(f"the message role must be user, got {json.dumps(message.get('role'))[:40]}",
                          "messages[0].role")
    content = message.get("content")
    if isinstance(content, str):
        raise bad("the message has no video: send a video_url content part", "messages[0].content")
    if not isinstance(content, list) or not content:
        raise bad("messages[0].content must be a non-empty list of parts", "messages[0].content")
    videos, texts = [], []
    for i, part in enumerate(content):
        param = f"messages[0].content[{i}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise bad("every content part must be an object with a type", param)
        kind = part["type"]
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise bad("a text part must carry a text string", param)
            texts.append(part["text"])
        elif kind in VIDEO_PARTS:
            videos.append(_video_url(part, i))
        elif kind in ("image_url", "input_image", "image", "input_audio", "audio"):
            raise unsupported(f"{kind} parts are not supported: send one video", param)
        else:
            raise bad(f"unknown content part type {json.dumps(kind)[:40]}", param)
    if not videos:
        raise bad("the message has no video: send exactly one video_url part", "messages[0].content")
    if len(videos) > 1:
        raise unsupported(f"exactly one video per request, got {len(videos)}", "messages[0].content")
    question = " ".join(t.strip() for t in texts if t.strip())
    if not question:
        raise bad("the question is empty: add a text part", "messages[0].content")
    return videos[0], question


def parse_chat(data: dict[str, Any], *, frames: int, max_new_tokens: int, allowed_modes: tuple[str, ...],
               model: str) -> ChatRequest:
    """Check a decoded request body against the export (``frames``) and the server's limits."""
    if "model" in data and data["model"] is not None and data["model"] != model:
        raise ApiError(404, f"model {json.dumps(data['model'])[:60]} does not exist; this server has {model}",
                       "not_found_error", "model")
    _refuse_sampling(data)
    video, question = _content(data.get("messages"))
    tokens = _int(data, "max_completion_tokens", 1, max_new_tokens)
    if tokens is None:
        tokens = _int(data, "max_tokens", 1, max_new_tokens)
    frame_sources = [data.get("num_frames")]
    io_kwargs = data.get("media_io_kwargs")
    if io_kwargs is not None:
        if not isinstance(io_kwargs, dict) or not isinstance(io_kwargs.get("video", {}), dict):
            raise bad("media_io_kwargs must be an object like {\"video\": {\"num_frames\": T}}", "media_io_kwargs")
        frame_sources.append(io_kwargs.get("video", {}).get("num_frames"))
    for value in frame_sources:
        if value is not None and (isinstance(value, bool) or value != frames):
            raise bad(f"this export samples exactly {frames} frames, got num_frames={json.dumps(value)[:20]}",
                      "num_frames")
    stream = _flag(data, "stream")
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad("stream_options must be an object", "stream_options")
    include_usage = _flag(options or {}, "include_usage")
    ext = data.get("prunevid")
    mode = None
    if ext is not None:
        if not isinstance(ext, dict):
            raise bad("prunevid must be an object like {\"mode\": \"prunevid\"}", "prunevid")
        unknown = sorted(set(ext) - {"mode"})
        if unknown:
            raise bad(f"unknown prunevid field {unknown[0]!r}", f"prunevid.{unknown[0]}")
        mode = ext.get("mode")
        if mode is not None and mode not in allowed_modes:
            raise bad(f"mode {json.dumps(mode)[:30]} is not allowed here; allowed: {', '.join(allowed_modes)}",
                      "prunevid.mode")
    return ChatRequest(video, question, tokens or min(64, max_new_tokens), stream, include_usage, mode)


def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def usage(answer_json: dict[str, Any]) -> dict[str, Any]:
    """OpenAI usage: prompt tokens = rows that entered the LLM (text + visual after merging)."""
    prompt = answer_json["prompt_tokens"]["prefill"]
    completion = len(answer_json["token_ids"])
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"video_tokens": answer_json["visual_tokens"]["merged"], "cached_tokens": 0}}


def completion(cid: str, model: str, text: str, finish: str, answer_json: dict, extra: dict) -> dict[str, Any]:
    """A non-streaming ``chat.completion`` with ``usage`` and the ``prunevid`` facts."""
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": usage(answer_json), "prunevid": facts(answer_json, extra)}


def facts(answer_json: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """What ``run --json`` prints, less the answer text, plus the server's own timings."""
    out = {k: v for k, v in answer_json.items() if k not in ("answer", "finish_reason")}
    out["server_ms"] = extra
    return out


def chunk(cid: str, model: str, delta: dict, finish: str | None = None, **more: Any) -> dict[str, Any]:
    """One ``chat.completion.chunk``."""
    return {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **more}


def usage_chunk(cid: str, model: str, answer_json: dict) -> dict[str, Any]:
    return {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [], "usage": usage(answer_json)}


def sse(obj: dict | str) -> bytes:
    """One server-sent event line."""
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode()
