"""Remote engine: a model behind a KServe v2 / Open Inference Protocol server (Triton, KServe, MLServer, ``audit serve``).

``[[model]] engine = "remote"`` with ``url`` and ``model_name`` (``model_version`` optional). The input name, shape
and datatype come from the v2 model metadata (``GET /v2/models/{name}``); string ``parameters`` of that metadata are
read as the artifact's metadata (head, preprocessing: what ``audit serve`` passes on from the ONNX file), and the
config's ``[head]`` / ``[preprocess]`` win as for a local file. A batch is cut into requests of at most ``max_batch``
(the config's, else the server's ``max_batch_size`` where it exposes Triton's ``/config``), sent ``concurrency`` at a
time; connection errors, timeouts and 5xx answers are retried with exponential backoff, and what still fails is one
``EngineError`` naming the server and the model (never the credentials of the URL). ``binary = true`` uses the
binary tensor data extension instead of JSON numbers (default: where ``GET /v2`` lists it, as Triton and
``audit serve`` do; about 200x the throughput of JSON for CT volumes). Standard library only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from audit.engines.base import Engine, InputSpec, dims
from audit.errors import ConfigError, EngineError

#: v2 datatype <-> NumPy dtype.
V2_TYPES = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32,
            "INT16": np.int16, "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}
BINARY_HEADER = "Inference-Header-Content-Length"


def v2_type(dtype: Any) -> str:
    dtype = np.dtype(dtype)
    for name, np_type in V2_TYPES.items():
        if np.dtype(np_type) == dtype:
            return name
    raise EngineError(f"dtype {dtype} has no KServe v2 datatype")


def encode_tensors(tensors: Sequence[tuple[str, np.ndarray]], head: dict[str, Any], key: str, binary: bool,
                   requested: Sequence[str] = ()) -> tuple[bytes, dict[str, str]]:
    """A v2 request/response body holding ``tensors`` under ``head[key]``: JSON numbers, or (``binary``) the JSON
    header followed by the raw little-endian tensor bytes (the binary tensor data extension)."""
    blobs, entries = [], []
    for name, array in tensors:
        array = np.ascontiguousarray(array)
        entry: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": v2_type(array.dtype)}
        if binary:
            blob = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.reshape(-1).tolist()
        entries.append(entry)
    body = dict(head, **{key: entries})
    if requested:
        body["outputs"] = [{"name": n, "parameters": {"binary_data": binary}} for n in requested]
    text = json.dumps(body, separators=(",", ":")).encode()
    if not binary:
        return text, {"Content-Type": "application/json"}
    return text + b"".join(blobs), {"Content-Type": "application/octet-stream", BINARY_HEADER: str(len(text))}


def decode_tensors(raw: bytes, header_length: str | None, key: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON of a v2 body and its tensors under ``key`` (JSON ``data`` or binary parts), name -> array."""
    size = int(header_length) if header_length else len(raw)
    if not 0 <= size <= len(raw):
        raise ValueError(f"{BINARY_HEADER} {size} is outside the body of {len(raw)} bytes")
    body = json.loads(raw[:size])
    if not isinstance(body, dict) or not isinstance(body.get(key), list):
        raise ValueError(f"expected a JSON object with a list '{key}'")
    offset, out = size, {}
    for entry in body[key]:
        name, dtype = str(entry["name"]), np.dtype(V2_TYPES[entry["datatype"]])
        shape = tuple(int(d) for d in entry["shape"])
        nbytes = (entry.get("parameters") or {}).get("binary_data_size")
        if nbytes is not None:
            nbytes = int(nbytes)
            if offset + nbytes > len(raw):
                raise ValueError(f"tensor '{name}': {nbytes} binary bytes announced, body ends before")
            array = np.frombuffer(raw[offset:offset + nbytes], dtype.newbyteorder("<")).astype(dtype)
            offset += nbytes
        else:
            array = np.asarray(entry["data"], dtype)
        out[name] = array.reshape(shape)
    return body, out


class RemoteEngine(Engine):
    """A model on a KServe v2 HTTP server behind the Engine interface."""

    backend = "remote"
    OPTIONS = ("url", "model_name", "model_version", "max_batch", "concurrency", "timeout_s", "retries", "binary")
    #: No local artifact file: ``[[model]]`` takes ``url`` + ``model_name`` instead of ``path``.
    NEEDS_FILE = False

    @property
    def single_thread_runs(self) -> bool:
        """The model computes where it is served: several campaign workers may each send their own batches."""
        return True

    def __init__(self, url: str, model_name: str, *, model_version: str | None = None, max_batch: int | None = None,
                 concurrency: int = 4, timeout_s: float = 30.0, retries: int = 3, binary: bool | None = None,
                 backoff_s: float = 0.2) -> None:
        parts = urllib.parse.urlsplit(str(url))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"model.url: expected http(s)://host[:port], got a URL with scheme {parts.scheme!r}")
        self._auth = None
        if parts.username is not None:  # credentials travel as a header, never in messages or reports
            token = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            self._auth = "Basic " + base64.b64encode(token.encode()).decode()
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        self.url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self.model_name, self.model_version = str(model_name), (None if model_version is None else str(model_version))
        self.concurrency, self.timeout_s = max(1, int(concurrency)), float(timeout_s)
        self.retries, self.backoff_s = max(0, int(retries)), float(backoff_s)
        self.label = f"remote model {self.model_name!r}" + (f" version {self.model_version}" if self.model_version else "") \
            + f" at {self.url}"
        route = f"/v2/models/{urllib.parse.quote(self.model_name, safe='')}"
        if self.model_version:
            route += f"/versions/{urllib.parse.quote(self.model_version, safe='')}"
        self._route = route
        meta = self._json("GET", route)
        inputs, outputs = meta.get("inputs") or [], meta.get("outputs") or []
        if len(inputs) != 1:
            raise EngineError(f"{self.label}: expected a model with one input, the metadata lists {[i.get('name') for i in inputs]}")
        inp = inputs[0]
        if inp.get("datatype") not in V2_TYPES:
            raise EngineError(f"{self.label}: input '{inp.get('name')}' has unsupported datatype {inp.get('datatype')!r}")
        params = meta.get("parameters") or {}
        metadata = {str(k): v for k, v in params.items() if isinstance(v, str)}
        super().__init__(InputSpec(str(inp["name"]), dims(inp.get("shape") or ()), np.dtype(V2_TYPES[inp["datatype"]])),
                         tuple(str(o["name"]) for o in outputs), metadata, self.label)
        self.platform = str(meta.get("platform", ""))
        self.sha256 = metadata.get("sha256", "")
        self.metadata_sha256 = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
        self.max_batch = int(max_batch) if max_batch else self._server_max_batch()
        self.binary = self._server_binary() if binary is None else bool(binary)
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="remote-engine")

    @classmethod
    def open(cls, path: Path | None = None, **options: Any) -> "RemoteEngine":
        for key in ("url", "model_name"):
            if not options.get(key):
                raise ConfigError(f"model.{key}: missing; engine 'remote' needs url and model_name")
        return cls(options.pop("url"), options.pop("model_name"), **options)

    # ------------------------------------------------------------ HTTP

    def _request(self, method: str, route: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[bytes, dict[str, str]]:
        """One call with retries on connection errors, timeouts and 5xx; 4xx and the last failure -> EngineError."""
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            req = urllib.request.Request(self.url + route, data=body, method=method, headers=dict(headers or {}))
            if self._auth:
                req.add_header("Authorization", self._auth)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return resp.read(), {k.lower(): v for k, v in resp.headers.items()}
            except urllib.error.HTTPError as exc:
                detail = _error_text(exc)
                if exc.code < 500:
                    raise EngineError(f"{self.label}: {method} {route} answered HTTP {exc.code}{detail}") from None
                last = f"HTTP {exc.code}{detail}"
            except (urllib.error.URLError, OSError) as exc:  # refused, reset, timed out, DNS
                reason = getattr(exc, "reason", exc)
                last = f"{reason.__class__.__name__}: {reason}" if isinstance(reason, BaseException) else str(reason)
        raise EngineError(f"{self.label}: {method} {route} failed after {self.retries + 1} attempt(s) ({_one_line(last)})")

    def _json(self, method: str, route: str) -> dict[str, Any]:
        raw, _ = self._request(method, route)
        try:
            out = json.loads(raw)
        except ValueError:
            raise EngineError(f"{self.label}: {route} did not answer JSON") from None
        if not isinstance(out, dict):
            raise EngineError(f"{self.label}: {route} did not answer a JSON object")
        return out

    def _server_max_batch(self) -> int | None:
        """Triton's ``max_batch_size`` from ``/config`` where the server has it (others: no limit)."""
        try:
            raw, _ = self._request("GET", self._route + "/config")
            value = json.loads(raw).get("max_batch_size")
        except (EngineError, ValueError, AttributeError):
            return None
        return int(value) if isinstance(value, int) and value > 0 else None

    def _server_binary(self) -> bool:
        """Whether the server metadata (``GET /v2``) lists the binary tensor data extension (Triton, audit serve)."""
        try:
            raw, _ = self._request("GET", "/v2")
            return "binary_tensor_data" in (json.loads(raw).get("extensions") or ())
        except (EngineError, ValueError, AttributeError, TypeError):
            return False

    # ------------------------------------------------------------ inference

    def _infer(self, chunk: np.ndarray) -> dict[str, np.ndarray]:
        body, headers = encode_tensors([(self.input_spec.name, chunk)], {}, "inputs", self.binary, self.output_names)
        raw, reply_headers = self._request("POST", self._route + "/infer", body, headers)
        try:
            _, outputs = decode_tensors(raw, reply_headers.get(BINARY_HEADER.lower()), "outputs")
        except (ValueError, KeyError, TypeError) as exc:
            raise EngineError(f"{self.label}: unreadable inference response ({_one_line(exc)})") from None
        missing = [n for n in self.output_names if n not in outputs]
        if missing:
            raise EngineError(f"{self.label}: the response lacks output(s) {missing}")
        return {n: outputs[n] for n in self.output_names}

    def _run(self, batch: Any) -> dict[str, np.ndarray]:
        if not isinstance(batch, np.ndarray):
            batch = batch.get()  # CuPy batch: the server gets bytes anyway
        step = self.max_batch or batch.shape[0] or 1
        chunks = [batch[i:i + step] for i in range(0, batch.shape[0], step)] or [batch]
        parts = list(self._pool.map(self._infer, chunks)) if len(chunks) > 1 else [self._infer(c) for c in chunks]
        return {n: np.concatenate([p[n] for p in parts]) for n in self.output_names}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "url": self.url, "model_name": self.model_name, "model_version": self.model_version,
                "platform": self.platform, "sha256": self.sha256, "metadata_sha256": self.metadata_sha256,
                "max_batch": self.max_batch, "concurrency": self.concurrency, "binary": self.binary}


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _error_text(exc: urllib.error.HTTPError) -> str:
    """The reason in an error answer: the v2 protocol's ``{"error": "..."}`` (Triton, audit serve, MLServer's own
    errors), or FastAPI's ``{"detail": ...}``, a string or a list of ``{loc, msg}``, which MLServer and KServe's
    Python server send for a request their schema rejects (HTTP 422, e.g. a binary body they do not support)."""
    try:
        body = json.loads(exc.read() or b"{}")
    except (ValueError, OSError):
        return ""
    message = (body.get("error") or body.get("detail")) if isinstance(body, dict) else None
    if isinstance(message, list):
        message = "; ".join(".".join(str(p) for p in d.get("loc") or ()) + f": {d.get('msg')}" if isinstance(d, dict)
                            else str(d) for d in message)
    return f": {_one_line(message)[:300]}" if message else ""
