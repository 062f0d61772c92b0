"""Saliency-guided encoding of a live stream: frames wait for their maps, then go to the encoder."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from salstream.streamer.align import PairedConsumer
from salstream.streamer.guidance.encoder import EncodeStats, GuidedEncoder


class LiveEncodeSession(PairedConsumer):
    """Pipeline consumer (or a standalone one fed by :meth:`add_frame` / :meth:`add_map`) that
    encodes one stream, each frame with the regions of its map.

    Frames wait (up to ``max_delay`` frames) for their map in this consumer's own thread, so
    neither the source reader nor the map publisher ever waits for x264; nothing is dropped.
    The encoder is built by ``make_encoder(width, height)`` at the first frame (odd sizes
    lose one pixel); after a source outage its smoothing state starts over.
    """

    name = "encoder"

    def __init__(self, make_encoder: Callable[[int, int], GuidedEncoder], *, stream_id: str = "0",
                 max_delay: int = 15, queue_size: int = 256):
        super().__init__(stream_id, max_delay=max_delay, lossless=True, queue_size=queue_size)
        self._make = make_encoder
        self.encoder: Optional[GuidedEncoder] = None
        self.stats: Optional[EncodeStats] = None
        self._crop = (0, 0)

    def add_frame(self, frame) -> None:
        self.on_unit(frame)

    def write(self, frame, saliency: Optional[np.ndarray]) -> None:
        if self.encoder is None:
            h, w = frame.image.shape[:2]
            self._crop = (h - h % 2, w - w % 2)
            self.encoder = self._make(self._crop[1], self._crop[0])
        img = np.ascontiguousarray(frame.image[: self._crop[0], : self._crop[1]])
        self.encoder.write(img, saliency, frame.pts)

    def on_gap(self) -> None:
        if self.encoder is not None and self.encoder.mapper is not None:
            self.encoder.mapper.reset()   # the old smoothing state belongs to frames before the outage

    def finish(self, failed: bool) -> None:
        if self.encoder is not None:
            self.stats = self.encoder.close()

    def close(self, failed: bool = False) -> Optional[EncodeStats]:
        """Encode what is still held back and finish the file; re-raises a worker error."""
        super().close(failed)
        return self.stats
