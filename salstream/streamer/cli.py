"""``salstream`` command line: one entry point, sub-commands registered by their rooms."""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Callable

from salstream.errors import SalstreamError

# sub-command name -> module that defines ``add_parser(subparsers)`` returning the parser
# and setting ``func`` via ``set_defaults``. Modules are imported only when listed here.
SUBCOMMANDS: dict[str, str] = {
    "run": "salstream.streamer.run_cli",
    "view": "salstream.streamer.view_cli",
    "convert-official": "salstream.diffsal.convert",
    "export": "salstream.export.cli",
    "train": "salstream.diffsal.train",
    "eval": "salstream.diffsal.evaluate",
    "bench": "benchmarks.cli",
    "encode": "salstream.streamer.encode_cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="salstream",
        description="Real-time audio-visual saliency (DiffSal) for live video, published over ZeroMQ.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        try:
            mod = _import_room(module)
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name):
                if module.split(".")[0] in CHECKOUT_ONLY:
                    _add_checkout_only(sub, name)
                continue  # that room has not been built in this checkout
            raise
        mod.add_parser(sub)
    return parser


# Rooms that live in the source checkout but are not installed packages (``benchmarks/``).
CHECKOUT_ONLY = {"benchmarks"}


def _import_room(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        # An editable install maps only the packaged rooms; the checkout beside them has the rest.
        root = Path(__file__).resolve().parent.parent
        if exc.name != top or top not in CHECKOUT_ONLY or not (root / top / "__init__.py").is_file() \
                or str(root) in sys.path:
            raise
        sys.path.append(str(root))
        return importlib.import_module(module)


def _add_checkout_only(sub, name: str) -> None:
    def unavailable(args: argparse.Namespace) -> int:
        raise SalstreamError(f"'salstream {name}' runs from a source checkout: clone the repository, install it "
                             f"with 'pip install -e .' (or ./dev setup) and run it there, or run "
                             f"'python -m benchmarks.cli' from the repository root")
    # no option prefix: whatever options follow are taken as they come, and the message explains
    p = sub.add_parser(name, help="(needs a source checkout)", add_help=False, prefix_chars="\0")
    p.add_argument("rest", nargs="*")
    p.set_defaults(func=unavailable)


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
