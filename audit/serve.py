"""``audit serve``: an ONNX file behind a KServe v2 / Open Inference Protocol HTTP server (ONNX Runtime inside).

A small but complete v2 server (health, server and model metadata, readiness, inference with JSON or binary
tensor data), threaded, standard library only. Device makers can put an artifact on the network the way Triton or
KServe would and audit it with ``engine = "remote"``; the project's tests use it as the real server on loopback
(Seldon MLServer would downgrade protobuf here). The ONNX file's custom metadata (``audit.*``: head,
preprocessing) and its sha256 are passed on as string ``parameters`` of the model metadata.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from audit.engines.ort import OnnxRuntimeEngine
from audit.engines.remote import BINARY_HEADER, decode_tensors, encode_tensors, v2_type

ROUTE = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<rest>/ready|/infer)?$")
MAX_BODY = 1 << 30  # 1 GiB of request body at most


class ServedModel:
    """One ONNX artifact as a v2 model."""

    def __init__(self, path: Path, name: str, version: str = "1", threads: int = 0) -> None:
        self.engine = OnnxRuntimeEngine(path, threads=threads)
        self.name, self.version = name, version

    def metadata(self) -> dict[str, Any]:
        spec = self.engine.input_spec
        outputs = self.engine.session.get_outputs()
        out_types = {o.name: o.type for o in outputs}
        return {"name": self.name, "versions": [self.version], "platform": "onnxruntime_onnx",
                "inputs": [{"name": spec.name, "datatype": v2_type(spec.dtype),
                            "shape": [-1 if d is None else d for d in spec.shape]}],
                "outputs": [{"name": o.name, "datatype": _ort_v2(out_types[o.name]),
                             "shape": [d if isinstance(d, int) and d > 0 else -1 for d in o.shape]} for o in outputs],
                "parameters": {**{k: str(v) for k, v in self.engine.metadata.items()}, "sha256": self.engine.sha256}}


def _ort_v2(ort_type: str) -> str:
    return {"tensor(float)": "FP32", "tensor(float16)": "FP16", "tensor(double)": "FP64", "tensor(int64)": "INT64",
            "tensor(int32)": "INT32", "tensor(uint8)": "UINT8", "tensor(bool)": "BOOL"}.get(ort_type, "BYTES")


def make_server(models: list[ServedModel], host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """A threaded v2 HTTP server for ``models`` (not started: call ``serve_forever``)."""
    by_name = {m.name: m for m in models}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as two writes: no delayed-ACK stall
        server_version = "ct-robustness-audit-v2"

        def log_message(self, *args: Any) -> None:  # quiet: one line per request is noise in a campaign
            pass

        def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            for k, v in (headers or {"Content-Type": "application/json"}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, obj: Any) -> None:
            self._send(code, json.dumps(obj).encode())

        def _model(self, match: re.Match) -> ServedModel | None:
            model = by_name.get(match["name"])
            if model is None or (match["version"] not in (None, model.version)):
                self._json(404, {"error": f"unknown model {match['name']!r}" +
                                 (f" version {match['version']}" if match["version"] else "")})
                return None
            return model

        def do_GET(self) -> None:  # http.server's naming
            path = self.path.split("?", 1)[0]
            if path in ("/v2/health/live", "/v2/health/ready"):
                return self._json(200, {"live": True} if path.endswith("live") else {"ready": True})
            if path == "/v2":
                return self._json(200, {"name": "ct-robustness-audit", "version": "1",
                                        "extensions": ["binary_tensor_data"]})
            match = ROUTE.match(path)
            if match is None or match["rest"] == "/infer":
                return self._json(404, {"error": f"no route {path}"})
            model = self._model(match)
            if model is not None:
                self._json(200, {"name": model.name, "ready": True} if match["rest"] else model.metadata())

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            match = ROUTE.match(path)
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                return self._json(413, {"error": f"request body of {length} bytes is over the limit"})
            raw = self.rfile.read(length)
            if match is None or match["rest"] != "/infer":
                return self._json(404, {"error": f"no route {path}"})
            model = self._model(match)
            if model is None:
                return
            try:
                body, tensors = decode_tensors(raw, self.headers.get(BINARY_HEADER), "inputs")
                spec = model.engine.input_spec
                if list(tensors) != [spec.name]:
                    raise ValueError(f"expected one input '{spec.name}', got {list(tensors)}")
                requested = body.get("outputs") or []
                binary = any((o.get("parameters") or {}).get("binary_data") for o in requested) or \
                    bool((body.get("parameters") or {}).get("binary_data_output"))
                names = [o["name"] for o in requested] or list(model.engine.output_names)
                batch = tensors[spec.name]
                outputs = model.engine.run(batch)
                unknown = [n for n in names if n not in outputs]
                if unknown:
                    raise ValueError(f"unknown output(s) {unknown}")
            except Exception as exc:  # noqa: BLE001 - any bad request is a 400 with the reason, never a crash
                return self._json(400, {"error": " ".join(str(exc).split())[:500]})
            head = {"model_name": model.name, "model_version": model.version, "id": body.get("id", "")}
            reply, headers = encode_tensors([(n, np.asarray(outputs[n])) for n in names], head, "outputs", binary)
            self._send(200, reply, headers)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def serve_in_thread(models: list[ServedModel], host: str = "127.0.0.1", port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Start a server in a daemon thread; returns it and its base URL (port 0: a free port)."""
    server = make_server(models, host, port)
    threading.Thread(target=server.serve_forever, daemon=True, name="audit-serve").start()
    return server, f"http://{host}:{server.server_address[1]}"
