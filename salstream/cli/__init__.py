"""``salstream`` command line: one entry point; each sub-command is a module with ``add_parser``."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

from salstream import __version__
from salstream.errors import SalstreamError
from salstream.redact import RedactingFilter, redact

# sub-command name -> (module that defines ``add_parser(subparsers)`` returning the parser and
# setting ``func`` via ``set_defaults``, one-line help). Only the module of the command being run
# is imported: the others pull in PyTorch or PyAV, which `salstream web` or `--version` never need.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("salstream.cli.run", "run the live pipeline (default: the bundled demo clip)"),
    "serve": ("salstream.cli.serve", "serve many streams on a Ray cluster (needs the 'serve' extra)"),
    "view": ("salstream.cli.view", "show or record the overlay of a published map stream"),
    "web": ("salstream.cli.web", "watch published maps live in a browser"),
    "encode": ("salstream.cli.encode", "encode a source to H.264, spending more bits where people look"),
    "export": ("salstream.cli.export", "export a checkpoint to ONNX graphs (and optionally Torch-TensorRT)"),
    "train": ("salstream.diffsal.train", "train a profile on a dataset or the synthetic benchmark"),
    "eval": ("salstream.diffsal.evaluate", "score a checkpoint: six metrics per dataset and mode"),
    "convert-official": ("salstream.diffsal.convert", "convert an official DiffSal checkpoint to the full profile"),
}


def _command_in(argv: list[str]) -> Optional[str]:
    """The sub-command named in ``argv`` (skipping top-level options and their values), if any."""
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token == "--log-level":
            skip = True
        elif not token.startswith("-"):
            return token
    return None


class UsageError(SalstreamError):
    """An option argparse refused (unknown, missing a value, not a number, out of range)."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option as one line and status 2 through :func:`main`, like any
    other bad input, instead of printing the usage and leaving the process (sub-commands inherit it)."""

    def error(self, message: str):
        raise UsageError(self.prog, message)


def build_parser(argv: Optional[list[str]] = None) -> argparse.ArgumentParser:
    """The parser; with ``argv``, only the command it names is built in full (the rest are listed)."""
    parser = _Parser(
        prog="salstream",
        description="Real-time audio-visual saliency (DiffSal) for live video, published over ZeroMQ.")
    parser.add_argument("--version", action="version", version=f"salstream {__version__}")
    add_logging_options(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = _command_in(argv) if argv is not None else None
    for name, (module, help_text) in SUBCOMMANDS.items():
        if argv is None or name == wanted:
            add_logging_options(importlib.import_module(module).add_parser(sub))
        else:
            sub.add_parser(name, help=help_text, add_help=False)   # listed in --help, never run
    _add_bench(sub)
    return parser


LOG_LEVELS = ("debug", "info", "warning", "error")


def add_logging_options(parser: argparse.ArgumentParser, top_level: bool = False) -> None:
    """-v/-q/--log-level, accepted before the command (``salstream -v run``) and after it."""
    # A sub-command's defaults would overwrite what was given before the command: only the
    # top level sets defaults.
    default = (lambda value: value) if top_level else (lambda value: argparse.SUPPRESS)
    g = parser.add_argument_group("logging")
    g.add_argument("-v", "--verbose", action="count", default=default(0),
                   help="more detail: -v salstream's debug messages, -vv also those of the libraries it uses")
    g.add_argument("-q", "--quiet", action="store_true", default=default(False),
                   help="only warnings, errors and the final summary")
    g.add_argument("--log-level", choices=LOG_LEVELS, type=str.lower, default=default(None),
                   help="salstream's log level (default: info; overrides -v/-q)")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a message is logged (a caller may swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure_logging(args: argparse.Namespace) -> None:
    """The one logging set-up of the command line: salstream's messages at the chosen level,
    other libraries' (e.g. the ONNX exporter's) only when they warn, unless -vv. A program that
    configured logging itself (and calls ``main``) keeps its handlers; only salstream's level is set."""
    verbose = getattr(args, "verbose", 0) or 0
    level = (args.log_level.upper() if getattr(args, "log_level", None)
             else "WARNING" if getattr(args, "quiet", False) else "DEBUG" if verbose else "INFO")
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _StderrHandler)]
    if len(ours) == len(root.handlers):
        if not ours:
            handler = _StderrHandler()
            handler.setFormatter(logging.Formatter("salstream: %(message)s"))
            handler.addFilter(RedactingFilter())   # no URL password in any line, libraries' included
            root.addHandler(handler)
        root.setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
    logging.getLogger("salstream").setLevel(level)


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
    parser = build_parser(list(sys.argv[1:] if argv is None else argv))
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(f"{exc.prog}: error: {exc}; see {exc.prog} --help", file=sys.stderr)
        return 2
    func: Callable | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    configure_logging(args)
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (SalstreamError, FileNotFoundError) as exc:
        # Known bad input: one line naming the problem and the fix, no traceback.
        print(f"salstream {args.command}: error: {redact(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
