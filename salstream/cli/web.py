"""``salstream web``: watch published maps live in a browser (this machine or, with --allow-remote, others)."""
from __future__ import annotations

import argparse
import signal
import sys
import threading

from salstream.cli.numbers import number
from salstream.streamer.web import DEFAULT_LISTEN
from salstream.streamer.wire.publisher import DEFAULT_ADDRESS


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "web", help="watch a map stream live in a browser",
        description="Subscribe to `salstream run`'s maps and serve a page that shows every stream live: the "
                    "frame with its heatmap (opacity and colormap controls), a stream picker, the mode and "
                    "flags of each map, maps/s and p50/p95 latency as a live chart, pause and snapshot. "
                    "Clients without JavaScript get MJPEG at /mjpeg[/STREAM]. It keeps running while the "
                    "publisher stops and restarts; Ctrl-C ends it. `salstream run --web HOST:PORT` does "
                    "the same from the run itself.")
    p.add_argument("--connect", default=DEFAULT_ADDRESS, metavar="ADDR",
                   help="publisher address to subscribe to (default %(default)s)")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help="where to serve the page (default %(default)s); loopback only unless --allow-remote")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --listen address (the maps become visible to other machines)")
    p.add_argument("--alpha", type=number(float, 0, 1), default=0.6,
                   help="heatmap opacity of the server-side MJPEG overlay (default %(default)s)")
    p.set_defaults(func=web)
    return p


def web(args: argparse.Namespace) -> int:
    from salstream.errors import SalstreamError
    from salstream.streamer.web import WebViewer

    if not 0.0 <= args.alpha <= 1.0:
        raise SalstreamError(f"--alpha {args.alpha}: must be between 0 and 1")
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        with WebViewer(args.listen, allow_remote=args.allow_remote, alpha=args.alpha) as viewer:
            viewer.connect(args.connect).start()
            print(f"salstream web: open {viewer.url} (maps from {args.connect}; Ctrl-C to stop)", file=sys.stderr)
            while not stop.wait(0.5):
                pass
            print(f"salstream web: stopped ({viewer.bridge.maps} maps received, {viewer.clients} clients)",
                  file=sys.stderr)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return 0
