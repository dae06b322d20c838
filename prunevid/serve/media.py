"""Where a request's video comes from, and how it becomes pixels without hurting the server.

Sources: ``data:video/*;base64,`` (size checked before decoding the base64), ``file://`` only below
``--media-dir`` (after resolving links and ``..``), ``http(s)://`` only with ``--allow-remote-media``.
Remote fetching resolves the host once, refuses unless every address is public (loopback, private,
link-local, metadata, multicast, reserved, unspecified, and the same behind IPv4-mapped IPv6 or the
legacy hex/octal/decimal spellings), dials the checked address (no second lookup to rebind), follows
at most ``max_redirects`` redirects re-checking each hop, and stops reading past the byte cap
whatever the headers say. Decoding runs in :mod:`prunevid.serve.decode_worker`, a subprocess in its own
process group, killed at ``decode_timeout_s``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import os
import signal
import socket
import ssl
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prunevid.serve.protocol import ApiError
from prunevid.serve.settings import ServeSettings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# decode worker exit codes (see prunevid.serve.decode_worker)
EXIT_BAD_VIDEO, EXIT_TOO_LARGE = 3, 4


def too_large(message: str, param: str = "video") -> ApiError:
    return ApiError(413, message, "request_too_large", param, outcome="too_large")


def bad_media(message: str, status: int = 422) -> ApiError:
    return ApiError(status, message, "invalid_media", "video", outcome="bad_media")


def refused(message: str) -> ApiError:
    return ApiError(400, message, "invalid_request_error", "video", outcome="refused_url")


def is_public(address: Address) -> bool:
    """True for a globally routable unicast address (IPv4-mapped IPv6 judged as its IPv4)."""
    if isinstance(address, ipaddress.IPv6Address):
        # an IPv4 address embedded in IPv6 (mapped ::ffff:a.b.c.d, or 6to4 2002:aabb:ccdd::) is judged as itself
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            address = embedded
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified)


def literal_address(host: str) -> Address | None:
    """``host`` as an IP address if it spells one, including the legacy IPv4 forms ``inet_aton``
    accepts (``0x7f000001``, ``2130706433``, ``0177.0.0.1``, ``127.1``); None for a name."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


Resolver = Callable[[str, int], list[str]]


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (one lookup)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


@dataclass(frozen=True)
class UrlPolicy:
    """What a remote URL may point at. ``allow_address`` is :func:`is_public` outside tests.

    https: the fetcher dials the checked address but sends the URL's host name as SNI and verifies the
    certificate against that name (``verify``: True for the system's CAs, or an ``ssl.SSLContext``)."""

    allowed_domains: tuple[str, ...] = ()
    allow_address: Callable[[Address], bool] = is_public
    resolver: Resolver = system_resolver
    verify: bool | ssl.SSLContext = True

    def check(self, url: str) -> tuple[urllib.parse.SplitResult, str]:
        """Parse and check ``url``; return it split, and the one address to dial. Raises 400."""
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise refused(f"bad URL: {exc}") from None
        if parts.scheme not in ("http", "https"):
            raise refused(f"scheme {parts.scheme!r} is not allowed for remote media")
        if parts.username is not None or parts.password is not None:
            raise refused("credentials in media URLs are refused")
        host = (parts.hostname or "").rstrip(".").lower()
        if not host:
            raise refused("the media URL has no host")
        if self.allowed_domains and not any(host == d or host.endswith("." + d) for d in self.allowed_domains):
            raise refused(f"host {host} is not in --allowed-media-domains")
        literal = literal_address(host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                addresses = [ipaddress.ip_address(a.split("%")[0]) for a in self.resolver(host, port)]
            except (OSError, UnicodeError, ValueError) as exc:
                raise refused(f"cannot resolve {host}: {exc}") from None
            if not addresses:
                raise refused(f"cannot resolve {host}")
        blocked = [a for a in addresses if not self.allow_address(a)]
        if blocked:
            raise refused(f"media host {host} resolves to a non-public address ({blocked[0]}); refused")
        return parts, str(addresses[0])


async def fetch_remote(url: str, dest: Path, settings: ServeSettings, policy: UrlPolicy) -> None:
    """Download ``url`` into ``dest`` under every check of :class:`UrlPolicy` and the byte cap."""
    import httpx

    deadline = time.monotonic() + settings.fetch_timeout_s
    timeout = httpx.Timeout(settings.fetch_timeout_s)
    async with httpx.AsyncClient(follow_redirects=False, timeout=timeout, trust_env=False,
                                 verify=policy.verify) as client:
        for _hop in range(settings.max_redirects + 1):
            parts, address = await asyncio.to_thread(policy.check, url)  # the lookup blocks: not on the loop
            netloc = f"[{address}]" if ":" in address else address
            if parts.port:
                netloc += f":{parts.port}"
            pinned = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
            host_header = parts.hostname + (f":{parts.port}" if parts.port else "")
            request = client.build_request("GET", pinned, headers={"Host": host_header},
                                           extensions={"sni_hostname": parts.hostname})
            try:
                response = await asyncio.wait_for(client.send(request, stream=True),
                                                  max(deadline - time.monotonic(), 0.001))
            except (asyncio.TimeoutError, httpx.TimeoutException):
                raise ApiError(504, f"fetching {parts.hostname} timed out", "timeout", "video",
                               outcome="timeout") from None
            except httpx.HTTPError as exc:
                bad_cert = _cert_error(exc)
                if bad_cert is not None:  # checked against the URL's host name, not the dialled address
                    raise bad_media(f"the TLS certificate of {parts.hostname} is refused: {bad_cert}") from None
                raise bad_media(f"cannot fetch the video from {parts.hostname}: {exc}") from None
            try:
                if response.is_redirect:
                    location = response.headers.get("location")
                    if not location:
                        raise bad_media("a redirect without a Location header")
                    url = urllib.parse.urljoin(url, location)
                    continue
                if response.status_code != 200:
                    raise bad_media(f"the media server answered HTTP {response.status_code}")
                await _save_capped(response, dest, settings.max_video_bytes, deadline)
                return
            finally:
                await response.aclose()
        raise bad_media(f"more than {settings.max_redirects} redirects")


def _cert_error(exc: BaseException) -> str | None:
    """The reason of a certificate verification failure in ``exc``'s causes, or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ssl.SSLCertVerificationError):
            return exc.verify_message or str(exc)
        exc = exc.__cause__ or exc.__context__
    return None


async def _save_capped(response, dest: Path, cap: int, deadline: float) -> None:
    """Stream the body to ``dest``, refusing (413) as soon as it passes ``cap`` bytes."""
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise too_large(f"the remote video is {int(declared)} bytes, over the {cap}-byte limit")
    size = 0
    with open(dest, "wb") as out:
        chunks = response.aiter_bytes()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ApiError(504, "fetching the video timed out", "timeout", "video", outcome="timeout")
            try:
                piece = await asyncio.wait_for(chunks.__anext__(), left)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise ApiError(504, "fetching the video timed out", "timeout", "video", outcome="timeout") from None
            size += len(piece)
            if size > cap:
                raise too_large(f"the remote video is over the {cap}-byte limit")
            out.write(piece)
    if size == 0:
        raise bad_media("the remote video is empty")


def save_data_url(url: str, dest: Path, cap: int) -> None:
    """Decode a ``data:video/...;base64,`` URL into ``dest``; the size is checked before decoding."""
    header, sep, payload = url.partition(",")
    if not sep:
        raise refused("a data: URL needs a comma before its payload")
    media_type, *params = header[len("data:"):].split(";")
    if "base64" not in params:
        raise refused("only base64 data: URLs are accepted")
    if media_type and not (media_type.startswith("video/") or media_type == "application/octet-stream"):
        raise ApiError(415, f"a data: URL of type {media_type} is not a video", "invalid_media", "video",
                       outcome="bad_media")
    if len(payload) * 3 // 4 > cap:
        raise too_large(f"the video is over the {cap}-byte limit")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise refused("the data: URL payload is not valid base64") from None
    if not data:
        raise bad_media("the video is empty")
    dest.write_bytes(data)


def local_file(url: str, media_dir: Path | None, cap: int) -> Path:
    """The file a ``file://`` URL names, only if it resolves to a regular file below ``media_dir``."""
    if media_dir is None:
        raise refused("file:// URLs are refused: the server was started without --media-dir")
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise refused("file:// URLs must name a local path")
    root = Path(media_dir).resolve()
    raw = Path(urllib.parse.unquote(parts.path))
    try:
        path = (raw if raw.is_absolute() else root / raw).resolve()  # links and .. resolved
    except (OSError, RuntimeError, ValueError):
        raise refused(f"cannot resolve {raw}") from None
    if not path.is_relative_to(root):  # checked before existence: nothing is revealed outside the root
        raise refused(f"{raw} is outside the media folder")
    if not path.exists():
        raise ApiError(404, f"no such media file: {raw}", "not_found_error", "video", outcome="bad_media")
    if not path.is_file():
        raise refused(f"{raw} is not a regular file")
    if path.stat().st_size > cap:
        raise too_large(f"{raw} is over the {cap}-byte limit")
    return path


async def obtain(url: str, workdir: Path, settings: ServeSettings, policy: UrlPolicy) -> tuple[Path, bool]:
    """The request's video as a local path, and whether it is a temporary file of ours to delete.

    The temporary file is created in ``workdir`` before anything is written; on any failure it is
    removed here."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "file":
        return local_file(url, settings.media_dir, settings.max_video_bytes), False
    if scheme not in ("data", "http", "https"):
        raise refused(f"unsupported media URL scheme {scheme!r}: use data:, file:// or http(s)://")
    if scheme != "data" and not settings.allow_remote_media:
        raise refused("remote media URLs are refused: the server was started without --allow-remote-media")
    fd, name = tempfile.mkstemp(suffix=".video", dir=workdir)
    os.close(fd)
    dest = Path(name)
    try:
        if scheme == "data":
            save_data_url(url, dest, settings.max_video_bytes)
        else:
            await fetch_remote(url, dest, settings, policy)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return dest, True


@dataclass(frozen=True)
class DecodeJob:
    """What the decode worker needs from the export."""

    preprocessor: Path
    image_size: int
    frames: int


async def decode(video: Path, out: Path, job: DecodeJob, settings: ServeSettings) -> None:
    """Run the decode worker on ``video``, writing pixel_values ``[T, 3, S, S]`` to ``out`` (.npy).

    The worker is killed with its whole process group at ``decode_timeout_s`` (504)."""
    args = [sys.executable, "-m", "prunevid.serve.decode_worker", str(video), str(out), str(job.preprocessor),
            str(job.image_size), str(job.frames), str(settings.max_video_seconds), str(settings.max_frame_pixels),
            str(settings.decode_delay_s)]
    proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                                                start_new_session=True)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), settings.decode_timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(504, f"decoding the video took longer than {settings.decode_timeout_s:g} s", "timeout",
                       "video", outcome="timeout") from None
    finally:
        if proc.returncode is None:  # timed out or cancelled: kill the group, reap the child
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()
    message = (err or b"").decode(errors="replace").strip().splitlines()
    message = message[-1] if message else f"decode worker exited with status {proc.returncode}"
    if proc.returncode == EXIT_TOO_LARGE:
        raise too_large(message)
    if proc.returncode == EXIT_BAD_VIDEO:
        raise bad_media(message)
    if proc.returncode != 0:
        raise ApiError(500, f"the decode worker failed: {message}", "engine_error", outcome="error")
