"""``python -m benchmarks`` (or ``salstream bench`` in a checkout): model- and pipeline-level latency, written as JSON, plots and markdown.

    salstream bench                      # default run (~10 min on 2 idle cores): lite + full, pipeline 1/2/4 streams
    salstream bench --quick              # tiny sizes, < 1 min: checks the machinery, not the speed
    salstream bench --thorough           # adds full at 2/8 steps, full on ort-cpu, full warm start
    salstream bench --skip-model --streams 1 --seconds 30
    salstream bench --subscribe tcp://127.0.0.1:5556 --seconds 30   # measure any running publisher

Each run writes ``bench.json``, ``summary.md`` and PNG plots into a new directory under
``--out``; a non-quick run also regenerates the README performance table
(``benchmarks/results/README-performance.md``), taking a part it left out (``--skip-model``)
from the newest earlier run that has it.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Optional

from .report import README_TABLE, RESULTS_DIR, SCHEMA, machine_info, new_run_dir, write_outputs

DEFAULT_OUT = RESULTS_DIR / "bench"


def _ints(text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 1,2,4") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers >= 1, e.g. 1,2,4")
    return vals


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]



def configure(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--quick", action="store_true", help="tiny configuration (< 1 min): checks that everything runs")
    g.add_argument("--thorough", action="store_true",
                   help="full profile at 1/2/4/8 steps with more repetitions, on ort-cpu too, with warm start")
    g.add_argument("--out", default=str(DEFAULT_OUT), help="results root; each run gets its own directory (default %(default)s)")
    g.add_argument("--readme-table", default=None,
                   help=f"where to write the README performance table (default: {README_TABLE} for a non-quick run; "
                        "a part this run left out comes from the newest earlier run that has it)")
    g.add_argument("--no-readme-table", action="store_true", help="do not write the README table")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for the engines (default: physical cores)")
    g.add_argument("--skip-model", action="store_true", help="leave out the model-level part")
    g.add_argument("--skip-pipeline", action="store_true", help="leave out the pipeline-level part")
    g.add_argument("--no-gpu", action="store_true", help="leave out the GPU part even when a GPU is present")
    g.add_argument("--cache-root", default=None, help="where ONNX exports are cached (default: the user cache, ~/.cache/salstream/engines)")

    m = p.add_argument_group("model level")
    m.add_argument("--profiles", type=_names, default=None, help="profiles to measure (default lite,full)")
    m.add_argument("--engines", type=_names, default=None, help="engines for lite and other profiles (default torch,ort-cpu)")
    m.add_argument("--full-engines", type=_names, default=None, help="engines for full (default torch; --thorough adds ort-cpu)")
    m.add_argument("--steps", type=_ints, default=None, help="DDIM steps to sweep (default 1,2,4,8)")
    m.add_argument("--full-steps", type=_ints, default=None, help="DDIM steps for full (default 1,4)")
    m.add_argument("--repeats", type=int, default=None, help="timed maps per setting (default 20)")
    m.add_argument("--full-repeats", type=int, default=None, help="timed windows per setting for full (default 2)")
    m.add_argument("--samples", type=_ints, default=None, metavar="K,…",
                   help="draws per map to time, each as one batched call vs K separate calls (`run --samples K`; "
                        "default 1,2,4; not for full)")
    m.add_argument("--samples-engines", type=_names, default=None,
                   help="engines of the --samples comparison (default ort-cpu; torch with --quick)")
    m.add_argument("--no-samples", action="store_true", help="leave out the --samples comparison")

    q = p.add_argument_group("pipeline level")
    q.add_argument("--pipeline-profile", default="lite")
    q.add_argument("--pipeline-engine", default=None, help="default auto, as `salstream run` (torch with --quick)")
    q.add_argument("--checkpoint", default=None, help="weights for the pipeline model (default: the bundled lite weights)")
    q.add_argument("--streams", type=_ints, default=None, help="stream counts to run (default 1,2,4)")
    q.add_argument("--seconds", type=float, default=None,
                   help="length of the 1-stream run (default 15); with --subscribe: how long to listen (default 30)")
    q.add_argument("--scaling-seconds", type=float, default=None, help="length of each multi-stream run (default 10)")
    q.add_argument("--source", default="synthetic", help="source spec for every stream (default: synthetic, pre-rendered)")
    q.add_argument("--pipeline-steps", type=int, default=None, help="DDIM steps in the pipeline (default: the profile's)")
    q.add_argument("--pipeline-samples", type=int, default=1, metavar="K",
                   help="draws per map in the pipeline runs (as `salstream run --samples K`; default %(default)s)")
    q.add_argument("--no-frames", action="store_true",
                   help="do not publish frame previews (salstream run sends them by default; they cost a JPEG encode)")
    q.add_argument("--no-demo", action="store_true",
                   help="skip the demo-configuration runs (the bundled clip with and without the overlay recording)")

    r = p.add_argument_group("re-render")
    r.add_argument("--render", metavar="RUN_DIR", default=None,
                   help="only rewrite summary.md, the plots and the README table from RUN_DIR/bench.json")

    s = p.add_argument_group("subscriber mode")
    s.add_argument("--subscribe", metavar="ADDR", default=None,
                   help="only measure the publisher at ADDR from its map headers (capture→publish→receive)")
    s.add_argument("--maps", type=int, default=None, help="with --subscribe: stop after this many maps")
    s.add_argument("--stream", action="append", default=None, help="with --subscribe: only this stream id (repeatable)")
    s.add_argument("--connect-timeout", type=float, default=30.0,
                   help="with --subscribe: give up when no map arrives within this many seconds (default 30)")
    s.add_argument("--warmup-s", type=float, default=None, help="seconds of maps left out at the start")
    p.set_defaults(func=run)


def _progress(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _pipeline_engine(args, quick: bool, threads: Optional[int]):
    if quick:
        from salstream.runtime import make_engine

        from .model_bench import load_subject
        model, _ = load_subject(args.pipeline_profile, quick=True)
        return lambda: make_engine(args.pipeline_engine or "torch", model, threads=threads, cache_root=args.cache_root)
    from salstream.runtime import load_engine

    def factory():
        return load_engine(args.pipeline_profile, args.checkpoint, args.pipeline_engine or "auto", threads)[0]
    return factory


def run(args: argparse.Namespace) -> int:
    from salstream.errors import SalstreamError
    if args.quick and args.thorough:
        raise SalstreamError("--quick and --thorough contradict each other; pick one")
    for name in ("repeats", "full_repeats"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise SalstreamError(f"--{name.replace('_', '-')} {v}: must be >= 1")
    if args.pipeline_samples < 1:
        raise SalstreamError(f"--pipeline-samples {args.pipeline_samples}: must be >= 1 (draws per map)")
    for name in ("seconds", "scaling_seconds"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise SalstreamError(f"--{name.replace('_', '-')} {v}: must be > 0 seconds")

    if args.render:
        return _render(Path(args.render), args)

    import torch

    from salstream.engines.onnxruntime_engine import physical_cores
    threads = args.threads or (1 if args.quick else physical_cores())
    torch.set_num_threads(threads)
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    t_start = time.perf_counter()
    result: dict[str, Any] = {"schema": SCHEMA, "started": started, "threads": threads,
                              "command": "salstream bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"]
                                                                       else sys.argv[1:]),
                              "machine": machine_info()}

    if args.subscribe:
        from .subscribe_bench import run_subscribe
        result["configuration"] = "subscriber"
        result["subscribe"] = run_subscribe(args.subscribe, seconds=args.seconds or 30.0, maps=args.maps,
                                            streams=args.stream, warmup_s=args.warmup_s or 0.0,
                                            connect_timeout=args.connect_timeout, progress=_progress)
        return _finish(result, args, label="subscribe", readme=False, t_start=t_start)

    quick = args.quick
    result["configuration"] = "quick (tiny sizes: not speed figures)" if quick else (
        "thorough" if args.thorough else "default")
    if not args.skip_model:
        from .model_bench import ModelBenchOptions, run_model_bench
        opts = ModelBenchOptions(threads=threads, quick=quick, gpu=not args.no_gpu, cache_root=args.cache_root)
        if quick:
            opts.engines, opts.full_engines = ["torch"], ["torch"]
            opts.steps, opts.full_steps = [1, 2], [1]
            opts.repeats, opts.full_repeats, opts.warmup, opts.full_warmup, opts.warm_windows = 3, 1, 1, 0, 2
            opts.gpu_batches, opts.gpu_repeats = (1, 2), 3
            opts.samples, opts.samples_engines = [1, 2], ["torch"]
        if args.thorough:
            opts.full_steps, opts.full_repeats = [1, 2, 4, 8], 3
            opts.full_engines, opts.full_warm_start, opts.flops = ["torch", "ort-cpu"], True, True
        for k in ("profiles", "engines", "full_engines", "steps", "full_steps", "repeats", "full_repeats",
                  "samples", "samples_engines"):
            if getattr(args, k) is not None:
                setattr(opts, k, getattr(args, k))
        if args.no_samples:
            opts.samples = ()
        result["model"] = run_model_bench(opts, progress=_progress)
    if not args.skip_pipeline:
        if not quick:  # the pipeline loads its own engine: drop the model part's models so RSS is the pipeline's
            import gc

            from .model_bench import load_subject
            load_subject.cache_clear()
            gc.collect()
        from salstream.streamer.live.sources import default_demo_source

        from .pipeline_bench import run_pipeline_bench
        # The pipeline runs as `salstream run` does: the engine's own thread default unless --threads.
        result["pipeline"] = run_pipeline_bench(
            _pipeline_engine(args, quick, args.threads if not quick else threads),
            demo_source=None if quick or args.no_demo else default_demo_source(),
            stream_counts=args.streams or ([1, 2] if quick else [1, 2, 4]),
            seconds=args.seconds or (3.0 if quick else 15.0),
            scaling_seconds=args.scaling_seconds or (2.0 if quick else 10.0),
            warmup_s=args.warmup_s if args.warmup_s is not None else (0.5 if quick else 2.0),
            steps=args.pipeline_steps, samples=args.pipeline_samples, source=args.source,
            frame_size=(96, 160) if quick else None,
            send_frames=not args.no_frames, progress=_progress)
    readme = not quick and not (args.skip_model and args.skip_pipeline)
    return _finish(result, args, label="quick" if quick else "", readme=readme or bool(args.readme_table),
                   t_start=t_start)


def _finish(result: dict, args, label: str, readme: bool, t_start: float) -> int:
    from .plots import write_plots
    from .report import load_average
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    result["machine"]["load_average_end"] = load_average()
    run_dir = new_run_dir(args.out, label)
    result["plots"] = [Path(p).name for p in write_plots(result, run_dir)]
    table: Optional[Path] = None
    if readme and not args.no_readme_table:
        table = Path(args.readme_table) if args.readme_table else README_TABLE
    written = write_outputs(result, run_dir, table)
    print((run_dir / "summary.md").read_text())
    _progress(f"wrote {run_dir} ({', '.join(p.name for p in written.values())}, {len(result['plots'])} plots) "
              f"in {result['seconds']:.0f} s")
    return 0


def _render(run_dir: Path, args) -> int:
    import json

    from salstream.errors import SalstreamError

    from .plots import write_plots
    path = run_dir / "bench.json"
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SalstreamError(f"--render {run_dir}: cannot read {path} ({exc}); give a directory a bench run wrote") \
            from None
    one = next((r for r in (result.get("pipeline") or {}).get("runs", [])
                if r.get("streams") == 1 and "skipped" not in r), None)
    if one is not None:   # the wording of the goal check may have improved since the run
        from .pipeline_bench import explain_goal
        result["pipeline"]["goal"] = explain_goal(one)
    result["plots"] = [Path(p).name for p in write_plots(result, run_dir)]
    quick = str(result.get("configuration", "")).startswith("quick")
    table = None if args.no_readme_table or (quick and not args.readme_table) else \
        Path(args.readme_table) if args.readme_table else README_TABLE
    written = write_outputs(result, run_dir, table)
    _progress(f"re-rendered {run_dir} ({', '.join(p.name for p in written.values())})")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    configure(parser)
    args = parser.parse_args(argv)
    from salstream.errors import SalstreamError
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except SalstreamError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
