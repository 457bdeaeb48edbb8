"""``audit serve MODEL.onnx [--name N] [--port P]``: the artifact behind a KServe v2 HTTP server (see audit.serve)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from audit.serve import ServedModel, make_server


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve an ONNX model over the KServe v2 / Open Inference Protocol (HTTP)")
    p.add_argument("model", type=Path, help="the ONNX file")
    p.add_argument("--name", default=None, help="model name on the server (default: the file's stem)")
    p.add_argument("--version", default="1", help="model version (default 1)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: a free one; the URL is printed)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = ServedModel(args.model, args.name or args.model.stem, args.version, args.threads)
    try:
        server = make_server([model], args.host, args.port)
    except OSError as exc:
        print(f"audit serve: cannot listen on {args.host}:{args.port} ({exc.strerror or exc})", file=sys.stderr)
        return 2
    print(f"serving {model.name!r} version {model.version} at http://{args.host}:{server.server_address[1]} "
          f"(KServe v2)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
