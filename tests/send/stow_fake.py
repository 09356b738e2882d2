"""A fake DICOMweb STOW-RS server over real loopback HTTP: it parses what dicomweb-client sends, keeps
one copy per SOP Instance UID, and answers as a test tells it (refusals, HTTP errors, auth)."""

from __future__ import annotations

import base64
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO

from pydicom import Dataset, dcmread


def _parts(body: bytes, content_type: str) -> list[bytes]:
    boundary = next(p.split("=", 1)[1].strip('"') for p in content_type.split(";") if p.strip().startswith("boundary="))
    chunks = body.split(b"--" + boundary.encode())[1:-1]  # before the first and after the closing delimiter: nothing
    return [chunk.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n") for chunk in chunks]


class FakeStow:
    """Answers POST /dicom-web/studies[/{uid}] like a STOW-RS origin server (PS3.18 10.5)."""

    def __init__(self, user: str | None = None, password: str | None = None, token: str | None = None) -> None:
        self.requests: list[list[str]] = []  # SOP Instance UIDs per request
        self.paths: list[str] = []
        self.stored: Counter[str] = Counter()  # how many times each SOP Instance UID was sent and stored
        self.refuse: dict[str, int] = {}  # SOP Instance UID -> FailureReason
        self.http_errors: list[int] = []  # answer these HTTP statuses to the next requests
        self.auth = f"Basic {base64.b64encode(f'{user}:{password}'.encode()).decode()}" if user else \
            f"Bearer {token}" if token else None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = self.headers.get("Content-Length")
                body = self.rfile.read(int(length)) if length else _read_chunked(self.rfile)
                fake.paths.append(self.path)
                if fake.auth is not None and self.headers.get("Authorization") != fake.auth:
                    return self._answer(401, b"authentication required", "text/plain")
                if fake.http_errors:
                    return self._answer(fake.http_errors.pop(0), b"the archive is busy", "text/plain")
                datasets = [dcmread(BytesIO(part)) for part in _parts(body, self.headers["Content-Type"])]
                fake.requests.append([str(ds.SOPInstanceUID) for ds in datasets])
                answer = Dataset()
                answer.ReferencedSOPSequence = []
                answer.FailedSOPSequence = []
                for ds in datasets:
                    ref = Dataset()
                    ref.ReferencedSOPClassUID = ds.SOPClassUID
                    ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
                    if str(ds.SOPInstanceUID) in fake.refuse:
                        ref.FailureReason = fake.refuse[str(ds.SOPInstanceUID)]
                        answer.FailedSOPSequence.append(ref)
                    else:
                        fake.stored[str(ds.SOPInstanceUID)] += 1
                        answer.ReferencedSOPSequence.append(ref)
                status = 409 if not answer.ReferencedSOPSequence else 202 if answer.FailedSOPSequence else 200
                self._answer(status, json.dumps(answer.to_json_dict()).encode(), "application/dicom+json")

            def _answer(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _read_chunked(stream: object) -> bytes:
    body = bytearray()
    while True:
        size = int(stream.readline().strip(), 16)  # type: ignore[attr-defined]
        if size == 0:
            stream.readline()  # type: ignore[attr-defined]
            return bytes(body)
        body += stream.read(size)  # type: ignore[attr-defined]
        stream.readline()  # type: ignore[attr-defined]
