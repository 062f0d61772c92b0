"""``salstream serve``: many streams over the replicas of a Ray cluster, maps on one ZeroMQ address."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import textwrap
import threading
from pathlib import Path

from salstream.cli.roi_options import roi_config
from salstream.cli.run import add_stream_options, options_from_args
from salstream.cli.stop_signals import handling_stop_signals
from salstream.errors import SalstreamError


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve", help="serve many streams on a Ray cluster (needs the 'serve' extra)",
        description=textwrap.fill(  # raw formatting keeps the epilog's example; wrap the prose here
            "Spread live streams over replicas on a Ray cluster (a local one by default). Each stream is "
            "pinned to one replica, which reads and decodes it, assembles its windows and batches them "
            "with its other streams' exactly as `salstream run` does; every map leaves on --publish in "
            "the same wire format, so `salstream view`, `web` and the subscriber work unchanged. When a "
            "replica dies its streams move to live ones within seconds; the first map after a move "
            "carries flags.gap and the missing PTS range. Ends when every stream has ended, after "
            "--duration, or on Ctrl-C, then prints a summary per replica. Needs the 'serve' extra "
            "(pip install 'salstream[serve]').", 79),
        epilog="streams.yaml: a list of streams, each a source spec or {id: NAME, source: SPEC}, e.g.\n"
               "  streams:\n"
               "    - synthetic:1\n"
               "    - {id: lobby, source: \"rtsp://cam-lobby:8554/stream\"}\n"
               "Streams of --source come first (ids 0, 1, …); an entry's id defaults to its position.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stream_options(p, "spread over the replicas (or list them in --config)")
    g = p.add_argument_group("cluster")
    g.add_argument("--config", default=None, metavar="FILE",
                   help="YAML file listing the streams (format below); adds to any --source")
    g.add_argument("--replicas", type=int, default=2, metavar="N",
                   help="replicas to start (default %(default)s); each loads the model once and serves its streams")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join this Ray cluster (what `ray start --head` printed, e.g. 10.0.0.5:6379); default: "
                        "start a local Ray runtime for this run. Replicas on other machines send their maps to "
                        "this one, which needs --allow-remote")
    g.add_argument("--replica-cpus", type=float, default=1.0, metavar="N",
                   help="CPUs Ray reserves per replica (default %(default)s)")
    g.add_argument("--replica-gpus", type=float, default=0.0, metavar="N",
                   help="GPUs Ray reserves per replica, fractions share one (e.g. 0.5; default %(default)s)")
    g.add_argument("--health-timeout", type=float, default=10.0, metavar="S",
                   help="a replica that has not answered for S seconds is lost and its streams move "
                        "(a dead process is noticed at once; default %(default)s)")
    p.set_defaults(func=serve)
    return p


def serve(args: argparse.Namespace) -> int:
    from salstream.serve.config import stream_specs
    from salstream.serve.controller import ClusterController, import_ray
    from salstream.serve.replica import EngineRecipe

    opts = options_from_args(args)
    opts.validate()                                  # bad numbers fail before a cluster starts
    streams = stream_specs(args.source, args.config)
    opts.sources = []
    if args.summary_json is not None and Path(args.summary_json).is_dir():
        raise SalstreamError(f"--summary-json {args.summary_json}: is a folder; give a file name, e.g. summary.json")
    roi = roi_config(args, prefix="roi-") if args.roi else None    # bad ROI numbers fail before a cluster starts
    if args.health_timeout <= 0:
        raise SalstreamError(f"--health-timeout {args.health_timeout}: must be > 0 seconds")
    level = logging.getLevelName(logging.getLogger("salstream").getEffectiveLevel())
    ctl = ClusterController(opts, EngineRecipe(args.profile, _absolute(args.checkpoint), args.engine, args.threads,
                                               _absolute(args.artifacts)),
                            streams, replicas=args.replicas, ray_address=args.ray_address,
                            replica_cpus=args.replica_cpus, replica_gpus=args.replica_gpus,
                            health_timeout=args.health_timeout, log_level=level, roi=roi)
    import_ray()                                     # a missing extra fails in one line, before anything starts
    stopping = threading.Event()

    def on_signal(signum, _frame):
        # First Ctrl-C / SIGTERM / SIGHUP: every replica finishes its maps in flight, then the cluster shuts down.
        if stopping.is_set():
            raise KeyboardInterrupt
        stopping.set()
        print(f"\nsalstream serve: {signal.Signals(signum).name}, finishing…", file=sys.stderr)
        ctl.stop()

    with handling_stop_signals(on_signal):
        summary = ctl.run()
    print(summary.format())
    if args.summary_json is not None:
        summary.write_json(args.summary_json)
    return 1 if summary.errors and not stopping.is_set() else 0


def _absolute(path):
    """Paths travel to the replicas, whose working directory is not ours."""
    return None if path is None else str(Path(path).expanduser().resolve())
