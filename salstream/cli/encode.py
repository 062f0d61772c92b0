"""``salstream encode``: H.264 of a source, optionally with saliency-guided regions of interest.

Where the maps come from (with ``--saliency-guided``):

* default: the live pipeline runs in this process on the same source
  (:class:`salstream.streamer.live.pipeline.Pipeline`; the encoder is one of its
  consumers; the maps and the applied regions are also published on ``--publish``);
* ``--maps ADDRESS``: maps of a ``salstream run`` already publishing for the same input;
* ``--truth``: synthetic sources only, the ground-truth density (no model).

``--connect ADDRESS`` instead follows a ``salstream run`` in another process: its frame
previews, each guided by the run's ``roi/<stream>`` offsets (``run --roi``) or its maps
(``--guide maps``), encoded while the run goes on.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any, Callable, Optional

from salstream.cli.numbers import COUNT, SECONDS, WAIT_SECONDS, number
from salstream.cli.roi_options import add_roi_options, roi_config
from salstream.errors import SalstreamError
from salstream.streamer.guidance.encoder import EncodeSettings, GuidedEncoder, add_source_audio, parse_bitrate
from salstream.streamer.guidance.roi import RoiConfig, RoiPublisher
from salstream.streamer.guidance.session import LiveEncodeSession, follow_publisher
from salstream.streamer.live.units import VideoFrame


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "encode", help="encode a source to H.264, spending more bits where people look",
        description="Encode --source to --out with libx264 at --bitrate (one-pass ABR, 1 s VBV buffer). "
                    "With --saliency-guided every frame carries regions of interest (a QP offset per "
                    "block) from its saliency map, computed live by the pipeline in this process, or "
                    "taken from a running `salstream run` (--maps), or the synthetic ground truth (--truth). "
                    "With --connect ADDRESS it follows a running `salstream run` instead of reading a source: "
                    "the run's frame previews, guided by its roi/<stream> offsets (run it with --roi) or its "
                    "maps (--guide maps), encoded while the run goes on.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--source", help="a media file, rtsp://…, http(s)://…, webcam:N or synthetic[:SEED]")
    what.add_argument("--connect", metavar="ADDRESS",
                      help="follow `salstream run` publishing on ADDRESS (e.g. tcp://127.0.0.1:5556): encode its "
                           "frame previews (longer side ≤ 640 px) as they arrive; ends after --frames, after "
                           "--idle-timeout without messages, or on Ctrl-C (the file stays playable; .mkv plays "
                           "while it is still being written)")
    p.add_argument("--out", required=True, help="output file (.mp4 or .mkv)")
    p.add_argument("--bitrate", required=True, help="target bitrate, e.g. 500k or 2M")
    p.add_argument("--saliency-guided", action="store_true", help="apply per-frame regions of interest")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--maps", metavar="ADDRESS", help="take maps of stream 0 from this publisher "
                     "(e.g. tcp://127.0.0.1:5556 of `salstream run` on the same input)")
    src.add_argument("--truth", action="store_true", help="synthetic sources only: use the ground-truth density")
    p.add_argument("--profile", default="lite", help="model profile for the in-process pipeline (default lite)")
    p.add_argument("--checkpoint", default=None, help="weights for the in-process pipeline (default: bundled)")
    p.add_argument("--engine", default="auto", help="engine for the in-process pipeline (default auto: the fastest "
                   "available, as for `salstream run`)")
    p.add_argument("--steps", type=number(int, 1, 1000), default=None, help="DDIM steps (default: the model's)")
    p.add_argument("--publish", default="tcp://127.0.0.1:5556",
                   help="where the in-process pipeline publishes maps and roi/<stream> messages")
    p.add_argument("--frames", type=COUNT, default=None, help="stop after this many frames")
    p.add_argument("--paced", choices=("auto", "yes", "no"), default="auto",
                   help="read files at their native rate (auto: only with --maps, to stay in step with "
                        "the publisher; the in-process pipeline then computes a map for every frame)")
    p.add_argument("--preset", default="veryfast", help="x264 preset (default veryfast)")
    p.add_argument("--tune", default=None, help="x264 tune, e.g. zerolatency")
    add_roi_options(p)
    follow = p.add_argument_group("with --connect")
    follow.add_argument("--guide", choices=("roi", "maps"), default="roi",
                        help="roi (default): apply the offsets the run publishes on roi/<stream> as they are "
                             "(set them there: run --roi-salient-qp …; the ROI options here are then unused); "
                             "maps: make the offsets here from the run's maps, with the ROI options above")
    follow.add_argument("--stream", default="0", help="stream id to follow (default %(default)s)")
    follow.add_argument("--fps", type=number(float, 0, 1000, lo_open=True), default=30.0,
                        help="frame rate for rate control (timestamps come from the run; default %(default)s)")
    follow.add_argument("--idle-timeout", type=SECONDS, default=10.0, metavar="S",
                        help="finish when nothing arrived for S seconds (default %(default)s)")
    follow.add_argument("--wait", type=WAIT_SECONDS, default=60.0, metavar="S",
                        help="how long to wait for the first frame before giving up (default %(default)s)")
    p.add_argument("--max-delay", type=number(int, 0, 10_000), default=30,
                   help="frames held back waiting for their map before encoding with the latest one (default 30)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.set_defaults(func=run)
    return p


def _subscribe(address: str, session: LiveEncodeSession) -> Callable[[], None]:
    """Feed maps from a publisher into ``session`` on a thread; returns its stop function."""
    from salstream.streamer.wire.subscriber import Subscriber

    done = threading.Event()
    sub = Subscriber(address, [session.stream_id])

    def loop() -> None:
        try:
            while not done.is_set():
                msg = sub.recv_map(timeout=0.1)
                if msg is not None:
                    session.add_map(msg.frame_index, msg.saliency)
        finally:
            sub.close()

    thread = threading.Thread(target=loop, name="salstream-encode-maps", daemon=True)
    thread.start()

    def stop() -> None:
        done.set()
        thread.join(timeout=2.0)

    return stop


def _frame_limited(source: Any, limit: Optional[int]):
    n = 0
    for unit in source:
        if isinstance(unit, VideoFrame):
            n += 1
            if limit is not None and n > limit:
                return
        yield unit


class RoiPublishing:
    """Pipeline consumer: the regions of every applied map also go out as ``roi/<stream>`` messages."""

    def __init__(self, roi: RoiConfig):
        self.roi = roi
        self.publisher: Optional[RoiPublisher] = None
        self._sock = None

    def start(self, sources, publisher) -> None:
        self._sock = publisher

    def attach(self, width: int, height: int) -> None:
        if self._sock is not None and self.publisher is None:
            self.publisher = RoiPublisher(self._sock, width, height, self.roi)

    def applied(self, frame_index: int, pts: float, qp, regions) -> None:
        if self.publisher is not None:
            self.publisher.publish("0", qp, regions, frame_index, pts, time.monotonic())

    def on_unit(self, unit) -> None:
        pass

    def on_map(self, header, saliency) -> None:
        pass

    def close(self, failed: bool = False) -> None:
        pass

    def summary(self) -> list[str]:
        return []


def run(args: argparse.Namespace) -> int:
    from salstream.streamer.live.sources import open_source

    settings = EncodeSettings(bitrate=parse_bitrate(args.bitrate), preset=args.preset, tune=args.tune)
    roi = roi_config(args)
    if args.frames is not None and args.frames < 1:
        raise SalstreamError(f"--frames {args.frames}: must be ≥ 1")
    if args.connect:
        return _follow(args, settings, roi)
    guided = bool(args.saliency_guided)
    if not guided and (args.maps or args.truth):
        raise SalstreamError("--maps/--truth only matter with --saliency-guided; add it or drop them")
    in_process = guided and not (args.maps or args.truth)
    from salstream.streamer.overlay.recording import check_record_target
    check_record_target(args.out, [args.source], option="--out")    # never the input itself, nor a full disk
    paced = {"yes": True, "no": False}.get(args.paced, bool(args.maps))
    source = open_source(args.source, stream_id="0", paced=paced)
    fps = source.fps
    roi_out = RoiPublishing(roi)

    def make_encoder(width: int, height: int) -> GuidedEncoder:
        roi_out.attach(width, height)
        return GuidedEncoder(args.out, width, height, fps, settings, guided=guided, roi=roi,
                             on_qp_map=roi_out.applied if in_process else None)

    # Unguided: nothing to wait for. Guided: frames wait (bounded) for their maps.
    session = LiveEncodeSession(make_encoder, stream_id="0", max_delay=args.max_delay if guided else 0)
    stop_maps = None
    summary_extra: dict[str, Any] = {}
    failed = True
    try:
        if in_process:
            from salstream.runtime import load_engine
            from salstream.streamer.live.pipeline import Pipeline, PipelineOptions
            opts = PipelineOptions(sources=[args.source], steps=args.steps, publish=args.publish, paced=paced,
                                   max_frames=args.frames, send_frames=False)

            def engine():
                return load_engine(args.profile, args.checkpoint, args.engine)[0]
            result = Pipeline(opts, engine, sources=[source], consumers=[session, roi_out]).run()
            summary_extra["maps"] = result.maps
        else:
            truth = None
            if args.truth:
                truth = getattr(source, "clip", None)
                if truth is None:
                    raise SalstreamError(f"--truth: source {args.source!r} has no ground truth; only "
                                         "synthetic[:SEED] does (drop --truth to compute maps with the model)")
            if args.maps:
                stop_maps = _subscribe(args.maps, session)
            for unit in _frame_limited(source, args.frames):
                if truth is not None and isinstance(unit, VideoFrame):
                    session.add_map(unit.index, truth.density(unit.index % truth.n_frames))
                session.on_unit(unit)
            if stop_maps is not None:
                time.sleep(min(1.0, args.max_delay / max(fps, 1.0)))   # let the last maps arrive
        failed = False
    finally:
        source.close()
        if stop_maps is not None:
            stop_maps()
        stats = session.close(failed=failed)
    if stats is None:
        raise SalstreamError(f"source {args.source!r} ended before its first video frame; nothing was encoded")
    # The source's own sound, packets unchanged (files and HTTP; a live stream's is not replayable).
    url = getattr(source, "url", None)
    audio = bool(url) and source.has_audio and not getattr(source, "live", False) and add_source_audio(
        args.out, url, seconds=stats.seconds)
    summary = {"out": str(args.out), "frames": stats.frames, "guided_frames": stats.guided_frames,
               "maps_received": session.maps_in,
               "frames_without_own_map": session.aligner.late_frames if guided else None,
               "bytes": stats.bytes, "bitrate": round(stats.bitrate), "target_bitrate": settings.bitrate,
               "regions_max": stats.regions_max, "audio": bool(audio), **summary_extra}
    _print_summary(summary, args.json)
    return 0


def _print_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
    else:
        print(" ".join(f"{k}={v}" for k, v in summary.items()), file=sys.stderr)


def _follow(args: argparse.Namespace, settings: EncodeSettings, roi: RoiConfig) -> int:
    """--connect: encode the frame previews of a running `salstream run`, guided by its roi/ or maps."""
    if args.maps or args.truth:
        raise SalstreamError("--connect takes frames and guidance from the run; drop --maps/--truth")
    if args.fps <= 0 or args.idle_timeout <= 0 or args.wait <= 0:
        raise SalstreamError("--fps, --idle-timeout and --wait must be > 0")
    from salstream.streamer.wire import format as wire
    wire.check_stream_id(args.stream)

    def make_encoder(width: int, height: int) -> GuidedEncoder:
        return GuidedEncoder(args.out, width, height, args.fps, settings, guided=True, roi=roi)

    session = LiveEncodeSession(make_encoder, stream_id=args.stream, max_delay=args.max_delay)
    failed = True
    try:
        got = follow_publisher(args.connect, session, guide=args.guide, max_frames=args.frames,
                               idle_timeout=args.idle_timeout, first_timeout=args.wait)
        failed = False
    finally:
        stats = session.close(failed=failed)
    if stats is None:
        raise SalstreamError(f"--connect {args.connect}: no frame of stream {args.stream} arrived; nothing was encoded")
    _print_summary({"out": str(args.out), "frames": stats.frames, "guided_frames": stats.guided_frames,
                    "guidance_received": got.guides, "guide": args.guide,
                    "frames_without_own_guidance": session.aligner.late_frames, "bad_frames": got.bad_frames,
                    "ended": got.ended, "bytes": stats.bytes, "target_bitrate": settings.bitrate,
                    "regions_max": stats.regions_max}, args.json)
    return 0
