"""``salstream`` command line: one entry point, sub-commands registered by their rooms."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable

from diffsal.errors import SalstreamError

# sub-command name -> module that defines ``add_parser(subparsers)`` returning the parser
# and setting ``func`` via ``set_defaults``. Modules are imported only when listed here.
SUBCOMMANDS: dict[str, str] = {
    "run": "streamer.run_cli",
    "view": "streamer.view_cli",
    "convert-official": "diffsal.convert",
    "export": "export.cli",
    "train": "diffsal.train",
    "eval": "diffsal.evaluate",
    "bench": "benchmarks.cli",
    "encode": "streamer.encode_cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="salstream",
        description="Real-time audio-visual saliency (DiffSal) for live video, published over ZeroMQ.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name):
                continue  # that room has not been built in this checkout
            raise
        mod.add_parser(sub)
    return parser


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
