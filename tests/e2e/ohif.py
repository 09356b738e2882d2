"""A real OHIF v3 viewer for tests: the prebuilt dist of the npm package @ohif/app, served on loopback
as a single-page app behind a same-origin proxy to Orthanc's DICOMweb, and a headless Chromium.

The tarball is fetched once with `npm pack` and cached (never committed) under
~/.cache/dicom-ai/ohif-<version>/ (DICOM_AI_TEST_CACHE moves the cache). The viewer's
app-config.js is replaced by one DICOMweb data source with the settings Orthanc's DICOMweb plugin
1.7 needs (see /work/shared/NOTES.md, "Viewers: OHIF v3.13 against Orthanc").
"""

from __future__ import annotations

import logging
import mimetypes
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.conftest import require_binary

log = logging.getLogger(__name__)

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"
NPM_TIMEOUT = 600.0  # a 50 MB tarball from the npm registry
PROXY_TIMEOUT = 60.0
DICOMWEB_ROOT = "/dicom-web"
# Headless Chromium with a software WebGL 2 (Cornerstone3D renders with WebGL).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--use-gl=swiftshader", "--enable-unsafe-swiftshader"]
CONTENT_TYPES = {".wasm": "application/wasm", ".js": "text/javascript", ".mjs": "text/javascript",
                 ".json": "application/json", ".woff2": "font/woff2", ".svg": "image/svg+xml"}
# Request headers passed on to Orthanc, and response headers passed back to the browser.
FORWARDED_REQUEST = ("Accept", "Content-Type")
FORWARDED_RESPONSE = ("Content-Type", "Content-Disposition", "ETag", "Last-Modified")

APP_CONFIG = """window.config = {{
  routerBasename: null,
  extensions: [],
  modes: [],
  customizationService: {{}},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {{
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {{
        friendlyName: 'Orthanc (dicom-ai tests)',
        name: 'orthanc',
        wadoUriRoot: '{root}',
        qidoRoot: '{root}',
        wadoRoot: '{root}',
        qidoSupportsIncludeField: false,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: {{ enabled: true }},
      }},
    }},
  ],
}};
"""


class OhifUnavailable(RuntimeError):
    """The OHIF package could not be fetched or unpacked; the message says what failed."""


def cache_dir() -> Path:
    base = Path(os.environ.get("DICOM_AI_TEST_CACHE") or Path.home() / ".cache" / "dicom-ai")
    return base / f"ohif-{OHIF_VERSION}"


def ohif_dist() -> Path:
    """The built viewer (dist/ of @ohif/app), fetched with `npm pack` on first use and cached."""
    target = cache_dir()
    dist = target / "dist"
    if (dist / "index.html").is_file():
        return dist
    npm = require_binary("npm")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        spec = f"{OHIF_PACKAGE}@{OHIF_VERSION}"
        done = subprocess.run([npm, "pack", spec, "--pack-destination", work], capture_output=True, text=True,
                              timeout=NPM_TIMEOUT, check=False)
        tarballs = list(Path(work).glob("*.tgz"))
        if done.returncode != 0 or len(tarballs) != 1:
            raise OhifUnavailable(f"npm pack {spec} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
        unpacked = Path(work) / "unpacked"
        with tarfile.open(tarballs[0]) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith("package/dist/")]
            if not members:
                raise OhifUnavailable(f"{tarballs[0].name} has no package/dist/: not the prebuilt viewer")
            archive.extractall(unpacked, members=members, filter="data")
        staged = Path(work) / "staged"
        staged.mkdir()
        (unpacked / "package" / "dist").rename(staged / "dist")
        if target.exists():  # a partial earlier attempt
            shutil.rmtree(target)
        staged.rename(target)  # atomic: another test run never sees half a viewer
    log.info("OHIF %s unpacked into %s", OHIF_VERSION, dist)
    return dist


class OhifServer:
    """OHIF's dist as a single-page app on 127.0.0.1, with /dicom-web/ proxied to Orthanc (same origin)."""

    def __init__(self, dist: Path, orthanc_url: str) -> None:
        self.dist = dist.resolve()
        self.orthanc_url = orthanc_url.rstrip("/")
        self.requests: list[str] = []
        self.errors: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                log.debug("ohif server: " + format, *args)

            def do_GET(self) -> None:
                server.handle(self, "GET")

            def do_HEAD(self) -> None:
                server.handle(self, "HEAD")

            def do_POST(self) -> None:
                server.handle(self, "POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.app_config = APP_CONFIG.format(root=f"{self.url}{DICOMWEB_ROOT}").encode()
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="ohif-server", daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def viewer_url(self, study_uid: str) -> str:
        return f"{self.url}/viewer?StudyInstanceUIDs={study_uid}"

    def handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        path = request.path.split("?", 1)[0]
        self.requests.append(f"{method} {request.path}")
        if path.startswith(DICOMWEB_ROOT + "/"):
            self._proxy(request, method)
        elif path == "/app-config.js":
            self._send(request, method, 200, self.app_config, "text/javascript")
        else:
            self._static(request, method, path)

    def _static(self, request: BaseHTTPRequestHandler, method: str, path: str) -> None:
        candidate = (self.dist / path.lstrip("/")).resolve()
        if not candidate.is_relative_to(self.dist) or not candidate.is_file():
            candidate = self.dist / "index.html"  # a single-page app: the viewer routes itself
        kind = CONTENT_TYPES.get(candidate.suffix) or mimetypes.guess_type(candidate.name)[0]
        self._send(request, method, 200, candidate.read_bytes(), kind or "application/octet-stream")

    def _proxy(self, request: BaseHTTPRequestHandler, method: str) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else None
        headers = {name: request.headers[name] for name in FORWARDED_REQUEST if request.headers.get(name)}
        upstream = urllib.request.Request(self.orthanc_url + request.path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(upstream, timeout=PROXY_TIMEOUT) as answer:
                status, payload, reply = answer.status, answer.read(), answer.headers
        except urllib.error.HTTPError as exc:
            status, payload, reply = exc.code, exc.read(), exc.headers
            self.errors.append(f"{method} {request.path} -> HTTP {status}: {payload[:300]!r}")
        except OSError as exc:
            self.errors.append(f"{method} {request.path} -> {exc}")
            self._send(request, method, 502, str(exc).encode(), "text/plain")
            return
        request.send_response(status)
        for name in FORWARDED_RESPONSE:
            if reply.get(name):
                request.send_header(name, reply[name])
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        if method != "HEAD":
            request.wfile.write(payload)

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, method: str, status: int, payload: bytes, kind: str) -> None:
        request.send_response(status)
        request.send_header("Content-Type", kind)
        request.send_header("Content-Length", str(len(payload)))
        request.send_header("Cache-Control", "no-store")
        request.end_headers()
        if method != "HEAD":
            request.wfile.write(payload)
