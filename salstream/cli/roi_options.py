"""The ROI options ``salstream encode`` and ``salstream run --roi`` share (defaults: :class:`RoiConfig`)."""
from __future__ import annotations

import argparse

from salstream.cli.numbers import number


def add_roi_options(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--{prefix}block-size``, ``--{prefix}salient-qp``, ``--{prefix}background-qp``, ``--{prefix}smooth``."""
    from salstream.streamer.guidance.roi import RoiConfig

    d = RoiConfig()
    p.add_argument(f"--{prefix}block-size", type=number(int, 4, 256), default=d.block_size,
                   help="ROI block size in pixels (default %(default)s: one H.264 macroblock)")
    p.add_argument(f"--{prefix}salient-qp", type=number(float, -51, 51), default=d.salient_offset,
                   help="QP offset of the most salient blocks; negative = finer (default %(default)s)")
    p.add_argument(f"--{prefix}background-qp", type=number(float, -51, 51), default=d.background_offset,
                   help="QP offset of blocks nobody looks at; positive = coarser (default %(default)s)")
    p.add_argument(f"--{prefix}smooth", type=number(float, 0, 60), default=d.time_constant, metavar="S",
                   help="time constant of the per-block QP smoothing, seconds; 0 = none (default %(default)s)")


def roi_config(args: argparse.Namespace, prefix: str = ""):
    """The :class:`RoiConfig` the options of :func:`add_roi_options` describe (checked: bad values fail clearly)."""
    from salstream.streamer.guidance.roi import RoiConfig

    key = prefix.replace("-", "_")
    return RoiConfig(block_size=getattr(args, f"{key}block_size"), salient_offset=getattr(args, f"{key}salient_qp"),
                     background_offset=getattr(args, f"{key}background_qp"),
                     time_constant=getattr(args, f"{key}smooth"))
