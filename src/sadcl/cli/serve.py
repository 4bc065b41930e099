"""``sadcl serve``: the demo page (upload an image, see labels and per-label attention)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import socket

from sadcl.cli.options import add_device, add_thresholds_file

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help="serve a demo page for a checkpoint",
        description="Serve a one-page demo: upload an image (or pick a MOM-30 example) and see the "
        "labels with their scores and each label's attention map.",
    )
    p.add_argument("checkpoint", help="checkpoint file from `sadcl train`, or a model directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 = any free port)")
    add_device(p, default="cpu")
    add_thresholds_file(p, help="per-class thresholds JSON from `sadcl tune-thresholds`")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload in MB (default: 10)")
    p.add_argument("--no-examples", action="store_true", help="do not offer MOM-30 example images")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from sadcl.inference.serve import create_app

    if args.max_upload_mb <= 0:
        raise ValueError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        logger.warning("binding to %s: the demo has no authentication and is reachable from other machines", args.host)
    # Bind first, announce after: a busy port is an error line, never a "serving on" that is not true.
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    port = sock.getsockname()[1]
    try:
        app = create_app(
            args.checkpoint,
            max_upload_bytes=int(args.max_upload_mb * 2**20),
            thresholds=args.thresholds,
            examples=not args.no_examples,
            device=args.device,
        )
    except BaseException:
        sock.close()
        raise
    print(f"serving {args.checkpoint} on http://{args.host}:{port}/ (Ctrl+C to stop)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])
    return 0
