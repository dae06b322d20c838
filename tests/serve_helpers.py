"""Helpers of the serve tests: a loopback-only network guard, an in-process server, a canary HTTP server."""

from __future__ import annotations

import base64
import http.server
import ipaddress
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Names the guard resolves without DNS; anything else fails the test.
FAKE_DNS = {"localhost": ["127.0.0.1", "::1"], "metadata.google.internal": ["169.254.169.254"],
            "intranet.test": ["10.1.2.3"], "mixed.test": ["93.184.216.34", "192.168.0.7"],
            "public.test": ["93.184.216.34"]}


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


@dataclass
class NetGuard:
    """Records (and blocks) every connection to a non-loopback address and every real DNS lookup."""

    violations: list[str] = field(default_factory=list)

    def install(self, monkeypatch) -> None:
        real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

        def check(sock, address):
            host = address[0] if isinstance(address, tuple) else str(address)
            if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(host):
                self.violations.append(f"connect to {address}")
                raise ConnectionRefusedError(f"test guard: connection to non-loopback {address} blocked")

        def connect(sock, address):
            check(sock, address)
            return real_connect(sock, address)

        def connect_ex(sock, address):
            check(sock, address)
            return real_connect_ex(sock, address)

        real_getaddrinfo = socket.getaddrinfo

        def getaddrinfo(host, port, *args, **kwargs):
            name = host.decode() if isinstance(host, bytes) else host
            if name is None or _is_loopback(str(name)) or _literal(str(name)):
                return real_getaddrinfo(host, port, *args, **kwargs)
            if name not in FAKE_DNS:
                self.violations.append(f"DNS lookup of {name}")
                raise socket.gaierror(f"test guard: no DNS for {name}")
            out = []
            for addr in FAKE_DNS[name]:
                family = socket.AF_INET6 if ":" in addr else socket.AF_INET
                sockaddr = (addr, port or 0, 0, 0) if family == socket.AF_INET6 else (addr, port or 0)
                out.append((family, socket.SOCK_STREAM, 6, "", sockaddr))
            return out

        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def _literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def guard(monkeypatch):
    """Fail the test if anything connects to a non-loopback address or asks real DNS (import this
    fixture into a test module to make it autouse there)."""
    g = NetGuard()
    g.install(monkeypatch)
    yield g
    assert g.violations == [], g.violations


class LiveServer:
    """The app on 127.0.0.1 (ephemeral port) in a thread of the test process, so the guard covers it."""

    def __init__(self, state):
        import uvicorn

        from prunevid.serve.app import build_app

        self.state = state
        # the asyncio loop, not uvloop: uvloop dials through libuv, past the guard's socket.connect
        config = uvicorn.Config(build_app(state), host="127.0.0.1", port=0, log_level="warning", lifespan="on",
                                access_log=False, loop="asyncio")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not (self.server.started and state.ready):
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.05)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def free_port() -> int:
    """A loopback port nothing listens on (at the time of asking)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc, within: float, exited=None) -> None:
    """Poll ``url``'s readiness until 200; fail if ``proc`` exits first (``exited()`` says why) or
    after ``within`` seconds."""
    import httpx

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        assert proc.poll() is None, exited() if exited else f"the server exited with {proc.returncode}"
        try:
            if httpx.get(url + "/health/ready", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server was not ready in time")


def chat(video_url: str, question: str = "What is it?", **extra) -> dict:
    """A chat request body with one video part and one text part."""
    return {"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": video_url}},
                                                      {"type": "text", "text": question}]}], **extra}


def data_url(path: Path, media_type: str = "video/mp4") -> str:
    return f"data:{media_type};base64," + base64.b64encode(Path(path).read_bytes()).decode()


def self_signed(host: str, folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for ``host`` (as its subject alternative name) and its key, as PEM
    files in ``folder``: (certificate, key)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / f"{host}.crt", folder / f"{host}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Canary:
    """A loopback HTTP server that counts hits: serves a clip, redirects, trickles, and oversends.
    With ``tls`` (certificate, key) it speaks https and records the SNI names clients sent."""

    def __init__(self, clip: Path, tls: tuple[Path, Path] | None = None):
        hits = self.hits = []
        self.sni: list[str | None] = []
        body = Path(clip).read_bytes()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                hits.append(self.path)
                if self.path == "/clip.mp4":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif self.path.startswith("/redirect?to="):
                    self.send_response(302)
                    self.send_header("Location", self.path.split("=", 1)[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path == "/loop":
                    self.send_response(302)
                    self.send_header("Location", "/loop")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path == "/huge":  # no Content-Length: the cap must hold while reading
                    self.send_response(200)
                    self.end_headers()
                    try:
                        for _ in range(4096):
                            self.wfile.write(b"\0" * 65536)
                    except OSError:
                        pass
                elif self.path == "/slow":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    try:
                        for _ in range(100):
                            self.wfile.write(b"\0")
                            self.wfile.flush()
                            time.sleep(0.1)
                    except OSError:
                        pass
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            context.sni_callback = lambda _sock, name, _ctx: self.sni.append(name)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
