"""``salstream view``: subscribe to a map stream and show or record the heatmap overlay.

The frames come from the publisher's ``frame/<stream>`` previews (JPEG, sent by
``salstream run`` unless ``--no-frames``); each map is paired with the preview of
the same frame index. Without previews the heatmap is drawn on black.
"""
from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from typing import Optional

import numpy as np

from salstream.cli.numbers import COUNT, SECONDS, number
from salstream.errors import SalstreamError
from salstream.streamer.wire.format import FrameMessage, MapHeader, MapMessage, WireError
from salstream.streamer.wire.publisher import DEFAULT_ADDRESS

log = logging.getLogger("salstream.view")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "view", help="show or record the overlay of a published map stream",
        description="Subscribe to `salstream run`'s maps and lay each heatmap over its frame: in a window "
                    "(needs an OpenCV build with GUI), or with --record into an H.264 MP4.")
    p.add_argument("address", nargs="?", default=DEFAULT_ADDRESS, help="publisher address (default %(default)s)")
    p.add_argument("--stream", default=None, help="stream id to show (default: the first one received)")
    p.add_argument("--record", default=None, metavar="PATH", help="write the overlay to this .mp4 instead of "
                   "showing a window")
    p.add_argument("--alpha", type=number(float, 0, 1), default=0.6, help="heatmap opacity at the most salient pixel (default %(default)s)")
    p.add_argument("--fps", type=number(float, 1, 480), default=30.0, help="frame rate of the recording's time base (default %(default)s)")
    p.add_argument("--duration", type=SECONDS, default=None, metavar="S", help="stop after S seconds")
    p.add_argument("--max-maps", type=COUNT, default=None, metavar="N", help="stop after N maps")
    p.add_argument("--idle-timeout", type=SECONDS, default=None, metavar="S",
                   help="stop when no map arrived for S seconds (default: wait forever)")
    p.set_defaults(func=view)
    return p


class OverlayViewer:
    """Pairs maps with their frame previews and hands overlays to a sink (window or recorder).

    A client never dies of a bad message: undecodable previews are skipped and counted
    (``bad_frames``), like bad maps in the subscriber.
    """

    def __init__(self, address: str, stream: Optional[str] = None, alpha: float = 0.6):
        from salstream.streamer.align import FrameMapAligner
        from salstream.streamer.wire.subscriber import Subscriber
        self.sub = Subscriber(address, streams=None if stream is None else [stream], frames=True)
        self.stream = stream
        self.alpha = alpha
        self.aligner: FrameMapAligner[FrameMessage] = FrameMapAligner(max_delay=64, index=lambda f: f.frame_index)
        self.maps = 0
        self.bad_frames = 0
        self.last_header: Optional[MapHeader] = None

    def next_overlay(self, timeout: float) -> Optional[tuple[np.ndarray, float, MapMessage]]:
        """Wait up to ``timeout`` s for a map; return (overlay RGB, pts, message) or None."""
        from salstream.streamer.overlay.render import blend
        deadline = time.monotonic() + timeout
        while True:
            msg = self.sub.recv(timeout=max(0.0, deadline - time.monotonic()))
            if msg is None:
                return None
            if self.stream is None:
                self.stream = msg.stream
            if msg.stream != self.stream:
                continue
            if isinstance(msg, FrameMessage):
                self.aligner.add_frame(msg)
                continue
            if not isinstance(msg, MapMessage):
                continue
            pairs = self.aligner.add_map(msg.frame_index, msg.saliency)
            image = None
            if pairs and pairs[-1][0].frame_index == msg.frame_index:
                try:
                    image = pairs[-1][0].image()
                except WireError as exc:
                    self.bad_frames += 1
                    log.warning("skipping a frame preview: %s", exc)
            if image is None:
                h, w = (msg.header.source_shape or msg.saliency.shape)[:2]
                image = np.zeros((min(h, 480), min(w, 640), 3), np.uint8)
            self.maps += 1
            self.last_header = msg.header
            return blend(image, msg.saliency, self.alpha), msg.pts, msg

    def close(self) -> None:
        self.sub.close()


def view(args: argparse.Namespace) -> int:
    from salstream.streamer.overlay.recording import OverlayRecorder
    from salstream.streamer.overlay.render import has_gui

    if args.record is None and not has_gui():
        raise SalstreamError(f"this OpenCV build has no windows (salstream uses opencv-python-headless); watch it "
                             f"in a browser instead: salstream web --connect {args.address} (then open "
                             "http://127.0.0.1:8080/), or record it with --record overlay.mp4")
    stop = threading.Event()

    def on_signal(signum, _frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    if args.record:
        from salstream.streamer.overlay.recording import check_record_target
        check_record_target(args.record)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    viewer = OverlayViewer(args.address, args.stream, args.alpha)
    recorder = OverlayRecorder(args.record, fps=args.fps) if args.record else None
    t0 = last = time.monotonic()
    try:
        import cv2
        while not stop.is_set():
            if args.duration is not None and time.monotonic() - t0 >= args.duration:
                break
            if args.max_maps is not None and viewer.maps >= args.max_maps:
                break
            got = viewer.next_overlay(timeout=0.1)
            if got is None:
                if args.idle_timeout is not None and time.monotonic() - last >= args.idle_timeout:
                    break
                continue
            last = time.monotonic()
            overlay, pts, msg = got
            if recorder is not None:
                recorder.add_frame(overlay, pts)
            else:
                cv2.imshow(f"salstream {args.address} stream {viewer.stream}", cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
                if cv2.waitKey(1) & 0xFF in (27, ord("q")):
                    break
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if recorder is not None:
            recorder.close()
        viewer.close()
    missed = viewer.sub.missed
    bad = viewer.sub.bad_messages + viewer.bad_frames
    print(f"salstream view: {viewer.maps} maps from stream {viewer.stream}"
          + (f", {missed} missed (subscriber too slow)" if missed else "")
          + (f", {bad} bad messages skipped (last: {viewer.sub.last_error or 'undecodable preview'})" if bad else "")
          + (f"; overlay written to {args.record}" if recorder is not None else ""))
    return 0
