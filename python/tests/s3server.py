"""An S3-compatible server for the object-storage tests: ``s3s-fs`` (built by
scripts/install-s3s-fs.sh into target/s3s-fs) on 127.0.0.1, on a port of its own choosing,
storing into a temporary directory, with a fixed test key pair and one bucket. Objects are
uploaded by signed PUTs (AWS Signature Version 4, unsigned payload), so that the server
records their ETags. The same server the Rust tests use (tests/object_store/server.rs)."""

from __future__ import annotations

import atexit
import datetime
import hashlib
import hmac
import http.client
import os
import queue
import re
import subprocess
import threading
import urllib.parse
from pathlib import Path
from typing import Dict, Optional, Tuple

REPO = Path(__file__).resolve().parents[2]
ACCESS_KEY = "npkio-test-access-key"
# Never to appear in an error text or a log line.
SECRET_KEY = "npkio-test-secret-4f1c9a7e"
REGION = "us-east-1"
BUCKET = "npkio-test"
START_TIMEOUT = 120.0


def binary() -> Path:
    """``$NPKIO_S3S_FS``, else target/s3s-fs/bin/s3s-fs in the checkout."""
    env = os.environ.get("NPKIO_S3S_FS")
    return Path(env) if env else REPO / "target" / "s3s-fs" / "bin" / "s3s-fs"


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def sign(method: str, host: str, path: str, headers: Dict[str, str]) -> Dict[str, str]:
    """``headers`` plus the SigV4 ones for a request to ``host`` (path already encoded)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    out = dict(headers)
    out.update({"host": host, "x-amz-date": amz_date, "x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
    signed = sorted((k.lower(), v.strip()) for k, v in out.items()
                    if k.lower() in ("host", "range") or k.lower().startswith("x-amz-"))
    names = ";".join(k for k, _ in signed)
    canonical = "\n".join([method, path, "", "".join(f"{k}:{v}\n" for k, v in signed), names,
                           "UNSIGNED-PAYLOAD"])
    scope = f"{day}/{REGION}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(f"AWS4{SECRET_KEY}".encode(), day)
    for part in (REGION, "s3", "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["authorization"] = (f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, "
                            f"SignedHeaders={names}, Signature={signature}")
    return out


class S3Server:
    """A running s3s-fs with the bucket :data:`BUCKET`; :meth:`stop` kills it."""

    def __init__(self, root: Path) -> None:
        exe = binary()
        if not exe.is_file():
            raise RuntimeError(
                f"the S3 test server is not installed at {exe}: run scripts/install-s3s-fs.sh "
                "(or point NPKIO_S3S_FS at an s3s-fs 0.14.1 binary)"
            )
        env = dict(os.environ, RUST_LOG="s3s_fs=info", NO_COLOR="1")
        self._proc = subprocess.Popen(
            [str(exe), "--host", "127.0.0.1", "--port", "0", "--access-key", ACCESS_KEY,
             "--secret-key", SECRET_KEY, str(root)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
        )
        atexit.register(self.stop)  # not left running by a script that fails before stop()
        found: "queue.Queue[str]" = queue.Queue()
        self.output: list = []

        def drain() -> None:  # for the server's whole life: a full pipe would stall it
            for raw in self._proc.stdout:
                line = raw.decode(errors="replace")
                if len(self.output) < 1000:
                    self.output.append(line)
                m = re.search(r"http://(127\.0\.0\.1:\d+)", line)
                if m:
                    found.put(m.group(1))

        threading.Thread(target=drain, daemon=True).start()
        try:
            self.host = found.get(timeout=START_TIMEOUT)
        except queue.Empty:
            self.stop()
            raise RuntimeError("s3s-fs did not report its address:\n" + "".join(self.output))
        status, body = self.request("PUT", f"/{BUCKET}")
        if status != 200:
            self.stop()
            raise RuntimeError(f"creating the test bucket: {status} {body!r}")

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}"

    def url(self, key: str) -> str:
        return f"s3://{BUCKET}/{key}"

    def env(self, endpoint: Optional[str] = None) -> Dict[str, str]:
        """What a client needs: credentials, region, endpoint, plain HTTP allowed."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": endpoint or self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    def request(self, method: str, path: str, headers: Optional[Dict[str, str]] = None,
                body=None) -> Tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, timeout=START_TIMEOUT)
        try:
            hdrs = sign(method, self.host, path, headers or {})
            if method == "PUT" and body is None:
                hdrs["content-length"] = "0"
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def put(self, key: str, data: bytes) -> None:
        path = f"/{BUCKET}/" + urllib.parse.quote(key, safe="/-_.~")
        status, body = self.request("PUT", path, {"content-length": str(len(data))}, data)
        if status != 200:
            raise RuntimeError(f"PUT {key}: {status} {body!r}")

    def put_file(self, key: str, path: Path) -> None:
        path = Path(path)
        self.put(key, path.read_bytes())

    def put_dir(self, prefix: str, directory: Path) -> None:
        """Every file under ``directory`` as ``prefix/<relative path>``."""
        directory = Path(directory)
        for p in sorted(directory.rglob("*")):
            if p.is_file():
                self.put_file(f"{prefix}/{p.relative_to(directory).as_posix()}", p)

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
