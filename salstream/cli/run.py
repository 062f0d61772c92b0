"""``salstream run``: live saliency maps from one or more sources, published over ZeroMQ."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from salstream.cli.numbers import (
    attempts_or_forever,
)
from salstream.cli.roi_options import add_roi_options, roi_config
from salstream.cli.stop_signals import handling_stop_signals
from salstream.errors import SalstreamError
from salstream.streamer.web import DEFAULT_LISTEN
from salstream.streamer.wire.publisher import DEFAULT_ADDRESS

DEMO_RECORD = "out/overlay.mp4"
# A terminal closing (SIGHUP) ends a run like Ctrl-C or a service manager's SIGTERM.


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "run", help="run the live pipeline (default: the bundled demo clip)",
        description="Read a live source (or several), predict a saliency map per frame window and publish "
                    "each map over ZeroMQ (wire format in the README). With no --source it runs the bundled "
                    f"demo clip and records the overlay to {DEMO_RECORD}. Ends when the sources end or on "
                    "Ctrl-C, then prints a latency summary.")
    add_stream_options(p, "that share one engine (default: the bundled demo clip)")
    p.add_argument("--mic", nargs="?", const="default", default=None, metavar="DEVICE",
                   help="take the first stream's audio from a microphone (PyAudio device name or index; "
                        "needs the 'audio' extra); without a usable device the stream runs video-only")
    p.add_argument("--web", default=None, metavar="HOST:PORT", nargs="?", const=DEFAULT_LISTEN,
                   help=f"also serve the browser viewer of this run (as `salstream web`; default {DEFAULT_LISTEN} "
                        "when given without a value)")
    p.add_argument("--save-maps", default=None, metavar="DIR",
                   help="write every map with its frame index and timestamps to DIR/<stream>/maps.npz (+ "
                        "headers.jsonl; layout in the README), written as the run goes; DIR must be new or empty")
    p.add_argument("--save-png", action="store_true",
                   help="with --save-maps: also write 8-bit PNGs named by frame, DIR/<stream>/png/0001.png, …")
    p.add_argument("--record", default=None, metavar="PATH", help="write the heatmap overlay of the first "
                   f"stream as H.264 MP4 with its audio (demo default: {DEMO_RECORD})")
    p.add_argument("--no-record", action="store_true", help="do not record the demo overlay")
    p.add_argument("--record-preset", default="veryfast",
                   choices=("ultrafast", "superfast", "veryfast", "faster", "fast", "medium"),
                   help="x264 preset of the overlay recording: faster presets cost less CPU and make larger files "
                        "(default %(default)s)")
    p.set_defaults(func=run)
    return p


def add_stream_options(p: argparse.ArgumentParser, sources_help: str) -> None:
    """The options of the live flow that `run` and `serve` share (sources, model, timing, wire)."""
    p.add_argument("--source", action="append", default=None, metavar="SPEC",
                   help="media file, rtsp://…, http(s)://…, webcam:N or synthetic[:SEED]; repeat for several "
                        f"streams (ids 0, 1, …) {sources_help}")
    p.add_argument("--profile", default="lite", help="model profile: lite (CPU, causal) or full (published "
                   "DiffSal, GPU); default: %(default)s")
    p.add_argument("--checkpoint", default=None, help="model weights (.safetensors); default: the bundled lite "
                   "weights when present, else an untrained model (with a warning)")
    p.add_argument("--engine", default="auto", help="inference backend: auto (default: a GPU engine when a usable "
                   "GPU is present, else ort-cpu, exported once and cached, else torch), or one of torch, ort-cpu, "
                   "ort-cuda, ort-trt, tensorrt, torch-cuda")
    p.add_argument("--artifacts", default=None, metavar="DIR",
                   help="graphs written by `salstream export` for an exported-graph engine (--engine ort-cpu, …); "
                        "they must come from the same checkpoint (default: export once and cache)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps per map, 1–1000 (default: the profile's)")
    p.add_argument("--warm-start", type=int, default=None, metavar="T",
                   help="start each map from the stream's previous map noised to timestep T (e.g. 250) and run "
                        "only the DDIM steps at or below T: fewer network calls, steadier maps (default: off)")
    p.add_argument("--samples", type=int, default=1, metavar="K",
                   help="draw K maps per window in one batched engine call (encoders once) and publish their mean; "
                        "their per-pixel standard deviation goes out on topic conf/<stream> (where the model is "
                        "unsure). Costs about K× the denoiser time; default %(default)s (one draw, no conf topic)")
    p.add_argument("--hop", type=int, default=1, help="one map every N frames (default %(default)s: a map for every frame)")
    p.add_argument("--mode", default="auto", choices=("auto", "video", "audio"),
                   help="auto (default): audio-visual when the stream has audio, else video-only; or force one "
                        "modality")
    p.add_argument("--publish", default=DEFAULT_ADDRESS, metavar="ADDR",
                   help="ZeroMQ address to bind (PUB; default %(default)s); loopback only unless --allow-remote")
    p.add_argument("--allow-remote", action="store_true", help="allow binding a non-loopback interface for "
                   "--publish and --web (maps become visible to other machines)")
    p.add_argument("--summary-json", default=None, metavar="FILE",
                   help="write the run summary (maps/s, latency percentiles, drops, modes, …) to FILE as JSON")
    p.add_argument("--as-fast-as-possible", action="store_true",
                   help="read files without pacing them at their frame rate and map every window (offline run)")
    p.add_argument("--max-batch", type=int, default=4, help="most windows (of different streams) per engine call (default %(default)s)")
    p.add_argument("--batch-deadline-ms", type=float, default=5.0,
                   help="how long a ready window may wait for the other streams' windows to batch with "
                        "(default %(default)s)")
    p.add_argument("--max-new-frames", type=int, default=4, metavar="N",
                   help="lite: when compute falls far behind, encode at most N new frames per window and reuse "
                        "the nearest encoded frame for the rest (flag approx_frames); 0 = no cap (default %(default)s)")
    p.add_argument("--audio-wait-ms", type=float, default=100.0,
                   help="how long a window may wait for late audio before it runs video-only (flagged; "
                        "default %(default)s)")
    p.add_argument("--reconnect", type=attempts_or_forever, default=400, metavar="N|forever",
                   help="network sources (rtsp://, http(s)://): reconnect attempts per outage before the stream "
                        "ends, or 'forever' (default %(default)s: about 100 s of outage, enough for a camera reboot). "
                        "An HTTP file is reopened where it stopped")
    p.add_argument("--reconnect-max-delay", type=float, default=0.25, metavar="S",
                   help="longest wait between two reconnect attempts; it starts at 0.1 s and doubles up to S "
                        "(default %(default)s)")
    p.add_argument("--stall-frames", type=float, default=30.0, metavar="N",
                   help="a live stream (RTSP, live HTTP) that delivers no frame for N frame intervals (without "
                        "disconnecting) is stalled: "
                        "the next map carries flags.gap and the missing PTS range (default %(default)g; 0: off)")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop each stream after N frames")
    p.add_argument("--payload", default="float32", choices=("float32", "uint8"),
                   help="map payload on the wire: little-endian float32 in [0,1] (default) or uint8 0–255")
    p.add_argument("--no-frames", action="store_true",
                   help="do not publish the JPEG frame previews (topic frame/<stream>) that `salstream view` "
                        "overlays")
    p.add_argument("--roi", action="store_true",
                   help="also publish roi/<stream> for every map: per-block QP offsets and FFmpeg regions of "
                        "interest for a saliency-guided encoder (`salstream encode --connect`; wire format in "
                        "the README); tune them with --roi-block-size, --roi-salient-qp, --roi-background-qp, "
                        "--roi-smooth")
    add_roi_options(p, prefix="roi-")
    p.add_argument("--wait-subscriber", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds for a first subscriber before reading the sources, so it "
                        "gets every map")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the engine (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the diffusion noise (reproducible maps; default %(default)s)")


def options_from_args(args: argparse.Namespace):
    from salstream.streamer.live.pipeline import PipelineOptions

    return PipelineOptions(
        sources=list(args.source or []), mic=getattr(args, "mic", None), steps=args.steps, hop=args.hop, publish=args.publish,
        allow_remote=args.allow_remote, paced=not args.as_fast_as_possible, max_batch=args.max_batch,
        batch_deadline_ms=args.batch_deadline_ms, duration=args.duration, max_frames=args.max_frames,
        payload_dtype=args.payload, send_frames=not args.no_frames, audio_wait_ms=args.audio_wait_ms,
        mode=args.mode, seed=args.seed, wait_subscriber=args.wait_subscriber,
        max_new_frames=args.max_new_frames, warm_start=args.warm_start, reconnect_attempts=args.reconnect,
        reconnect_max_delay=args.reconnect_max_delay, stall_frames=args.stall_frames,
        samples=args.samples)


def record_path(args: argparse.Namespace):
    """--record, or the demo's overlay when no --source was given (unless --no-record)."""
    if args.no_record:
        return None
    if args.record is None and not args.source:
        return DEMO_RECORD
    return args.record


def run(args: argparse.Namespace) -> int:
    from salstream.runtime import load_engine
    from salstream.streamer.live.pipeline import Pipeline

    opts = options_from_args(args)
    opts.validate()                       # bad numbers fail before the model loads (PipelineOptions: the one check)
    if args.threads is not None and not 1 <= args.threads <= 1024:
        raise SalstreamError(f"--threads {args.threads}: must be 1…1024 CPU threads")
    if args.save_png and args.save_maps is None:
        raise SalstreamError("--save-png writes beside the saved maps: add --save-maps DIR")
    if args.summary_json is not None and Path(args.summary_json).is_dir():
        raise SalstreamError(f"--summary-json {args.summary_json}: is a folder; give a file name, e.g. summary.json")
    consumers = []
    record = record_path(args)
    if record is not None:
        from salstream.streamer.live.sources import default_demo_source
        from salstream.streamer.overlay.recording import OverlayRecording, check_record_target
        # Before anything runs: an unwritable path, a full disk or the input itself fail now.
        check_record_target(record, list(args.source or [default_demo_source()]))
        consumers.append(OverlayRecording(record, preset=args.record_preset))
    if args.save_maps is not None:
        from salstream.streamer.saved_maps import MapSaver
        consumers.append(MapSaver(args.save_maps, png=args.save_png))
    if args.roi:
        from salstream.streamer.guidance.roi import RoiFeed
        consumers.append(RoiFeed(roi_config(args, prefix="roi-")))   # bad ROI numbers fail before the model loads
    if args.web is not None:
        from salstream.streamer.web.consumer import WebViewing
        consumers.append(WebViewing(args.web, allow_remote=args.allow_remote))   # binds now: a busy port fails early

    def engine():
        return load_engine(args.profile, args.checkpoint, args.engine, args.threads, args.artifacts)[0]

    pipe = Pipeline(opts, engine, consumers=consumers)
    stopping = threading.Event()

    def on_signal(signum, _frame):
        name = signal.Signals(signum).name
        if stopping.is_set():
            # Second signal: leave now. Unwinding threads that sit in native code (encoders,
            # x264) can abort the interpreter; the recording is fragmented, so it already
            # plays up to its last second.
            print(f"\nsalstream run: {name} again, exiting now", file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        stopping.set()
        if not pipe.ready.is_set():
            # Still loading or exporting the model (a minute on first use): nothing to finish.
            print(f"\nsalstream run: {name}, stopping before the first map", file=sys.stderr)
            pipe.stop()
            raise KeyboardInterrupt
        # First Ctrl-C / SIGTERM / SIGHUP: finish cleanly (maps in flight, playable recording).
        print(f"\nsalstream run: {name}, finishing…", file=sys.stderr)
        pipe.stop()

    with handling_stop_signals(on_signal, keep_if=stopping.is_set):
        summary = pipe.run()
    print(summary.format())
    if args.summary_json is not None:
        summary.write_json(args.summary_json)
    if summary.source_errors and not stopping.is_set():
        # The input failed (camera gone for good, unreadable file): say so once per stream, exit 1.
        for message in summary.source_errors:
            print(f"salstream run: error: {message}", file=sys.stderr)
        return 1
    return 0
