"""``salstream`` command line: one entry point; each sub-command is a module with ``add_parser``."""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

from salstream import __version__
from salstream.errors import SalstreamError

# sub-command name -> module that defines ``add_parser(subparsers)`` returning the parser
# and setting ``func`` via ``set_defaults``.
SUBCOMMANDS: dict[str, str] = {
    "run": "salstream.cli.run",
    "view": "salstream.cli.view",
    "encode": "salstream.cli.encode",
    "export": "salstream.cli.export",
    "train": "salstream.diffsal.train",
    "eval": "salstream.diffsal.evaluate",
    "convert-official": "salstream.diffsal.convert",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="salstream",
        description="Real-time audio-visual saliency (DiffSal) for live video, published over ZeroMQ.")
    parser.add_argument("--version", action="version", version=f"salstream {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    _add_bench(sub)
    return parser


def checkout_root(start: Optional[Path] = None) -> Optional[Path]:
    """The source checkout holding ``benchmarks/`` at or above ``start`` (default: the working directory)."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "benchmarks" / "__main__.py").is_file() and (d / "salstream").is_dir():
            return d
    return None


def _add_bench(sub) -> None:
    # The benchmarks are part of the checkout, not of the installed package: this command only
    # starts `python -m benchmarks` there (nothing is imported from it).
    p = sub.add_parser("bench", help="latency/throughput benchmarks (runs `python -m benchmarks` in a checkout)",
                       add_help=False, prefix_chars="\0")
    p.add_argument("rest", nargs="*")
    p.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    root = checkout_root()
    if root is None:
        raise SalstreamError("'salstream bench' runs from a source checkout: clone the repository and run it "
                             "inside it (or run 'python -m benchmarks' from the repository root)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    return subprocess.call([sys.executable, "-m", "benchmarks", *args.rest], cwd=root, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (SalstreamError, FileNotFoundError) as exc:
        # Known bad input: one line naming the problem and the fix, no traceback.
        print(f"salstream {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
