"""``prunevid ask``: a thin client of ``prunevid serve`` on the standard library alone."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path


def chat_body(video: Path, question: str, mode: str | None, max_tokens: int, stream: bool) -> dict:
    """The OpenAI chat request for a local clip, sent inline as a base64 data: URL."""
    data = base64.b64encode(Path(video).read_bytes()).decode()
    body = {"messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{data}"}},
        {"type": "text", "text": question}]}], "max_tokens": max_tokens, "stream": stream}
    if mode is not None:
        body["prunevid"] = {"mode": mode}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def ask(server: str, video: Path, question: str, *, mode: str | None = None, max_tokens: int = 64,
        stream: bool = True, timeout: float = 300.0, on_text=None) -> dict:
    """Ask ``server``; stream text to ``on_text``. Returns the completion (non-streaming) or, when
    streaming, ``{"answer", "finish_reason", "usage", "prunevid"}``. Raises :class:`ServerError`."""
    from prunevid.errors import ServerError, VideoError

    if not Path(video).is_file():
        raise VideoError(f"video not found: {video}")
    if urllib.parse.urlsplit(server).scheme not in ("http", "https"):
        raise ServerError(f"--server must be an http:// or https:// URL, got {server!r}")
    payload = json.dumps(chat_body(video, question, mode, max_tokens, stream)).encode()
    request = urllib.request.Request(server.rstrip("/") + "/v1/chat/completions", data=payload,
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if not stream:
                return json.loads(response.read())
            return _read_stream(response, on_text)
    except urllib.error.HTTPError as exc:
        raise ServerError(f"server answered {exc.code}: {_message(exc.read())}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ServerError(f"cannot reach {server}: {getattr(exc, 'reason', exc)}") from None
    except ValueError as exc:  # a reply that is not JSON, or a URL urllib cannot use
        raise ServerError(f"bad exchange with {server}: {exc}") from None


def _message(raw: bytes) -> str:
    try:
        return json.loads(raw)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return raw.decode(errors="replace")[:200]


def _read_stream(response, on_text) -> dict:
    from prunevid.errors import ServerError

    out = {"answer": "", "finish_reason": None, "usage": None, "prunevid": None}
    for raw in response:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            break
        obj = json.loads(data)
        if "error" in obj:
            raise ServerError(f"server failed mid-answer: {obj['error']['message']}")
        if obj.get("usage"):
            out["usage"] = obj["usage"]
        for choice in obj.get("choices", []):
            text = choice.get("delta", {}).get("content")
            if text:
                out["answer"] += text
                if on_text is not None:
                    on_text(text)
            if choice.get("finish_reason"):
                out["finish_reason"] = choice["finish_reason"]
                out["prunevid"] = obj.get("prunevid")
    return out
