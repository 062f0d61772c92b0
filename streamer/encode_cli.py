"""``salstream encode``: H.264 of a source, optionally with saliency-guided regions of interest."""
from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from typing import Optional

import numpy as np

from diffsal.errors import SalstreamError

from .encode import EncodeSettings, GuidedEncoder, encode_source, parse_bitrate
from .roi import RoiConfig


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "encode", help="encode a source to H.264, spending more bits where the saliency maps look",
        description="Encode --source to --out with libx264 at --bitrate. With --saliency-guided each frame "
                    "carries regions of interest (QP offsets per block) from its saliency map: maps "
                    "published by a running `salstream run` (--maps) or, for synthetic sources, the "
                    "ground truth (--truth).")
    p.add_argument("--source", required=True, help="a media file, rtsp://…, http(s)://…, webcam:N or synthetic[:SEED]")
    p.add_argument("--out", required=True, help="output file (.mp4 or .mkv)")
    p.add_argument("--bitrate", required=True, help="target bitrate, e.g. 500k or 2M (ABR with a 1 s VBV buffer)")
    p.add_argument("--saliency-guided", action="store_true", help="apply per-frame regions of interest")
    p.add_argument("--maps", metavar="ADDRESS", help="subscribe to maps of --stream at this publisher "
                   "(e.g. tcp://127.0.0.1:5556 of `salstream run` on the same source)")
    p.add_argument("--truth", action="store_true", help="synthetic sources only: use the ground-truth density")
    p.add_argument("--stream", default="0", help="stream id of the maps (default 0)")
    p.add_argument("--frames", type=int, default=None, help="stop after this many frames")
    p.add_argument("--paced", choices=("auto", "yes", "no"), default="auto",
                   help="read files at their native rate (auto: only with --maps, to stay in step with the publisher)")
    p.add_argument("--preset", default="veryfast", help="x264 preset (default veryfast)")
    p.add_argument("--tune", default=None, help="x264 tune, e.g. zerolatency")
    p.add_argument("--block-size", type=int, default=16, help="ROI block size in pixels (default 16)")
    p.add_argument("--salient-qp", type=float, default=-10.0, help="QP offset at saliency 1 (default -10)")
    p.add_argument("--background-qp", type=float, default=6.0, help="QP offset at saliency 0 (default +6)")
    p.add_argument("--smooth", type=float, default=0.2, help="time constant (s) of QP smoothing (default 0.2)")
    p.add_argument("--max-delay", type=int, default=15,
                   help="frames held back waiting for their map before encoding with the latest one (default 15)")
    p.add_argument("--publish-roi", metavar="ADDRESS", default=None,
                   help="also publish the applied QP maps/regions as roi/<stream> messages here")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)
    return p


def _subscriber_feed(address: str, stream: str):
    """Background thread receiving maps; returns (feed, stop)."""
    from .subscriber import Subscriber

    q: queue.Queue = queue.Queue()
    done = threading.Event()
    sub = Subscriber(address, [stream])

    def loop() -> None:
        try:
            while not done.is_set():
                msg = sub.recv_map(timeout=0.1)
                if msg is not None:
                    q.put((msg.frame_index, msg.saliency))
        finally:
            sub.close()

    thread = threading.Thread(target=loop, name="salstream-encode-maps", daemon=True)
    thread.start()

    def feed() -> list[tuple[int, np.ndarray]]:
        out = []
        while True:
            try:
                out.append(q.get_nowait())
            except queue.Empty:
                return out

    def stop() -> None:
        done.set()
        thread.join(timeout=2.0)

    return feed, stop


def run(args: argparse.Namespace) -> int:
    from .sources import open_source

    settings = EncodeSettings(bitrate=parse_bitrate(args.bitrate), preset=args.preset, tune=args.tune)
    roi = RoiConfig(block_size=args.block_size, salient_offset=args.salient_qp,
                    background_offset=args.background_qp, time_constant=args.smooth)
    guided = bool(args.saliency_guided)
    if guided and not (args.maps or args.truth):
        raise SalstreamError("--saliency-guided needs maps: --maps tcp://HOST:PORT (a running `salstream run "
                             "--source` on the same input) or --truth (synthetic sources)")
    if not guided and (args.maps or args.truth):
        raise SalstreamError("--maps/--truth only matter with --saliency-guided; add it or drop them")
    paced = {"yes": True, "no": False}.get(args.paced, bool(args.maps))
    source = open_source(args.source, stream_id=args.stream, paced=paced)
    truth = None
    if args.truth:
        clip = getattr(source, "clip", None)
        if clip is None:
            raise SalstreamError(f"--truth: source {args.source!r} has no ground truth; only synthetic[:SEED] does "
                                 "(use --maps for real inputs)")
        truth = lambda frame: clip.density(frame.index % clip.n_frames)  # noqa: E731

    roi_pub = publisher = None
    if args.publish_roi:
        from .publish import Publisher
        from .roi import RoiPublisher
        publisher = Publisher(args.publish_roi)

    def make_encoder(width: int, height: int, fps: float) -> GuidedEncoder:
        nonlocal roi_pub
        hook = None
        if publisher is not None and guided:
            roi_pub = RoiPublisher(publisher, width, height, roi)
            hook = lambda i, pts, qp, regions: roi_pub.publish(  # noqa: E731
                args.stream, qp, regions, i, pts, time.monotonic())
        return GuidedEncoder(args.out, width, height, fps, settings, guided=guided, roi=roi, on_qp_map=hook)

    feed = stop_feed = None
    if args.maps:
        feed, stop_feed = _subscriber_feed(args.maps, args.stream)
    try:
        encoder, aligner = encode_source(source, make_encoder, source.fps, map_feed=feed, truth=truth,
                                         max_delay=args.max_delay, max_frames=args.frames,
                                         end_wait=1.0 if feed else 0.0)
    except KeyboardInterrupt:
        source.close()
        raise
    finally:
        if stop_feed is not None:
            stop_feed()
        if publisher is not None:
            publisher.close()
    if encoder is None:
        raise SalstreamError(f"source {args.source!r} ended before its first video frame; nothing was encoded")
    st = encoder.stats
    summary = {"out": str(args.out), "frames": st.frames, "guided_frames": st.guided_frames,
               "frames_without_own_map": aligner.late_frames if guided else None, "bytes": st.bytes,
               "bitrate": round(st.bitrate), "target_bitrate": settings.bitrate, "regions_max": st.regions_max}
    if args.json:
        print(json.dumps(summary))
    else:
        print(" ".join(f"{k}={v}" for k, v in summary.items()), file=sys.stderr)
    return 0
