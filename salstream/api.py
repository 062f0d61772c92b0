"""Saliency maps from Python, without sockets: for notebooks and scripts.

    from salstream import Saliency
    sal = Saliency()                                   # bundled lite weights, fastest engine here
    for pts, frame, smap in sal.predict_file("clip.mp4"):
        ...                                            # frame (H, W, 3) uint8 RGB, smap (h, w) float32 in [0, 1]

The same profiles, engines and checkpoints as ``salstream run`` (:func:`salstream.runtime.load_engine`)
and the same live pipeline, with its publisher switched off: every map reaches this
process and nothing is bound. Each call returns a :class:`Predictions` iterator (one pass;
``stop()`` or leaving the ``for`` loop ends the run; ``summary`` afterwards).
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from salstream.errors import SalstreamError

__all__ = ["Saliency", "Prediction", "Predictions"]


@dataclass
class Prediction:
    """One map with its frame. Unpacks as ``pts, frame, saliency``.

    ``frame``: the source frame, (H, W, 3) uint8 RGB. ``saliency``: (h, w) float32 in
    [0, 1] at model resolution (``salstream.diffsal.maps.resize_map`` scales it to the
    frame). ``header``: the map's wire header (frame_index, mode, flags, latency_ms, …).
    ``spread``: with ``samples`` K > 1, the per-pixel standard deviation of the K draws whose
    mean is ``saliency`` (same shape; high where the model is unsure), else ``None``.
    """
    pts: float
    frame: np.ndarray
    saliency: np.ndarray
    header: Any
    spread: Optional[np.ndarray] = None

    @property
    def frame_index(self) -> int:
        return self.header.frame_index

    @property
    def mode(self) -> str:
        return self.header.mode

    def __iter__(self) -> Iterator[Any]:
        return iter((self.pts, self.frame, self.saliency))


class Saliency:
    """A loaded model; its ``predict_*`` and ``live`` calls run one at a time.

    ``profile``: ``"lite"`` (CPU, causal) or ``"full"``. ``engine``: ``"auto"`` (the fastest
    here), an engine name (``torch``, ``ort-cpu``, …), or an engine object. ``checkpoint``:
    ``.safetensors`` weights (default: the profile's bundled weights). ``steps``,
    ``warm_start``, ``mode``, ``hop``, ``seed``, ``samples``: as for ``salstream run`` (``samples`` K > 1:
    each map is the mean of K draws and :attr:`Prediction.spread` their per-pixel spread).
    """

    def __init__(self, profile: str = "lite", engine: Any = "auto", checkpoint: Optional[str] = None, *,
                 steps: Optional[int] = None, threads: Optional[int] = None, artifacts: Optional[str] = None,
                 warm_start: Optional[int] = None, mode: str = "auto", hop: int = 1, seed: int = 0,
                 samples: int = 1):
        from salstream.streamer.live.pipeline import PipelineOptions
        self.options = dict(steps=steps, warm_start=warm_start, mode=mode, hop=hop, seed=seed, samples=samples)
        PipelineOptions(**self.options).validate()        # bad numbers fail before the model loads
        if isinstance(engine, str):
            from salstream.runtime import load_engine
            self.engine, self.weights = load_engine(profile, checkpoint, engine, threads, artifacts)
        else:
            self.engine, self.weights = engine, checkpoint
        self._running: Optional[Predictions] = None

    @property
    def profile(self) -> str:
        return self.engine.config.profile

    def predict_file(self, path: str, *, realtime: bool = False, max_frames: Optional[int] = None,
                     save_maps: Optional[str] = None, save_png: bool = False) -> "Predictions":
        """Every frame of a media file with its map (``realtime``: at the file's frame rate, latest wins,
        as a live feed would be)."""
        from salstream.streamer.live.sources import open_source
        return self._run(lambda: open_source(path, paced=realtime), lossless=not realtime,
                         max_frames=max_frames, save_maps=save_maps, save_png=save_png)

    def predict_frames(self, frames: Union[np.ndarray, Sequence[np.ndarray]], fps: float = 30.0,
                       audio: Optional[np.ndarray] = None, sample_rate: int = 16000, *,
                       save_maps: Optional[str] = None, save_png: bool = False) -> "Predictions":
        """Frames in memory, ``(N, H, W, 3)`` uint8 RGB at ``fps``, with an optional waveform
        (``(samples,)`` or ``(samples, channels)``, float in [-1, 1] or int16, at ``sample_rate``)."""
        from salstream.streamer.live.sources.arrays import ArraySource
        source = ArraySource(frames, fps, audio, sample_rate)       # checks the arrays now
        return self._run(lambda: source, lossless=True, save_maps=save_maps, save_png=save_png)

    def live(self, source: str = "webcam:0", *, mic: Optional[str] = None, duration: Optional[float] = None,
             max_frames: Optional[int] = None, save_maps: Optional[str] = None, save_png: bool = False,
             buffer: int = 4) -> "Predictions":
        """Maps of a live source (``webcam:N``, ``rtsp://…``, a file played at its rate, ``synthetic``) as they
        come; a slow reader gets the newest ``buffer`` maps (older ones are skipped and counted)."""
        from salstream.streamer.live.sources import open_source
        return self._run(lambda: open_source(source, paced=True, mic=mic), lossless=False, duration=duration,
                         max_frames=max_frames, save_maps=save_maps, save_png=save_png, buffer=buffer)

    def _run(self, open_source, *, lossless: bool, save_maps: Optional[str], save_png: bool,
             duration: Optional[float] = None, max_frames: Optional[int] = None, buffer: int = 8) -> "Predictions":
        if self._running is not None and not self._running.finished:
            raise SalstreamError("this Saliency object is still running an earlier call; finish iterating it or "
                                 "call its stop() first (or make a second Saliency)")
        from salstream.streamer.live.pipeline import PipelineOptions
        opts = PipelineOptions(publish=None, paced=not lossless, duration=duration, max_frames=max_frames,
                               send_frames=False, **self.options)
        opts.validate()
        consumers = []
        if save_maps is not None:
            from salstream.streamer.saved_maps import MapSaver
            consumers.append(MapSaver(save_maps, png=save_png))
        self._running = Predictions(opts, self.engine, open_source, consumers, lossless=lossless, buffer=buffer)
        return self._running


class Predictions:
    """The maps of one call, as they are computed. Iterate once; ``stop()`` ends the run early.

    ``summary`` (a :class:`~salstream.streamer.live.summary.RunSummary`) is set when the run
    has ended; ``skipped`` counts maps a slow reader of a live source never saw.
    """

    def __init__(self, opts, engine, open_source, consumers, *, lossless: bool, buffer: int):
        self._opts, self._engine, self._open_source = opts, engine, open_source
        self._consumers = consumers
        self._collector = _Collector(lossless=lossless, buffer=max(1, int(buffer)))
        self._pipe = None
        self._started = False
        self.summary = None
        self.finished = False

    @property
    def skipped(self) -> int:
        return self._collector.skipped

    def __iter__(self) -> Iterator[Prediction]:
        if self._started:
            raise SalstreamError("these predictions were already iterated; call predict_* again for another pass")
        self._started = True
        return self._generate()

    def __enter__(self) -> "Predictions":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """End the run (thread-safe): the source closes, what is in flight finishes."""
        self._collector.stopped.set()
        if self._pipe is not None:
            self._pipe.stop()
        elif not self._started:
            self.finished = True

    def _generate(self) -> Iterator[Prediction]:
        from salstream.streamer.live.pipeline import Pipeline
        out: dict[str, Any] = {}
        try:
            source = self._open_source()
        except BaseException:
            self.finished = True
            raise
        self._pipe = Pipeline(self._opts, self._engine, sources=[source],
                              consumers=[self._collector, *self._consumers])

        done = threading.Event()
        results = self._collector.results

        def run() -> None:
            try:
                out["summary"] = self._pipe.run()
            except BaseException as exc:       # re-raised in the reading thread
                out["error"] = exc
            finally:
                done.set()                     # after the consumers closed: every map was delivered

        thread = threading.Thread(target=run, name="salstream-api-run", daemon=True)
        thread.start()
        try:
            while True:
                try:
                    item = results.get(timeout=0.1)
                except queue.Empty:
                    if done.is_set() and results.empty():
                        break
                    continue
                yield item
        finally:
            self.stop()
            self._collector.drain()
            thread.join()
            self.summary = out.get("summary")
            self.finished = True
        if "error" in out:
            raise out["error"]


class _Collector:
    """Pipeline consumer: pairs each map with its own frame and hands both to the reading thread."""

    def __init__(self, *, lossless: bool, buffer: int):
        from salstream.streamer.align import PairedConsumer
        self.lossless = lossless
        self.results: queue.Queue = queue.Queue(maxsize=buffer)
        self.stopped = threading.Event()
        self.skipped = 0
        collector = self

        class Pairing(PairedConsumer):
            name = "api"

            spread: Optional[tuple[int, np.ndarray]] = None

            def on_spread(self, header, spread):
                # Called just before on_map of the same map, from the same thread.
                self.spread = (header.seq, spread)

            def on_map(self, header, saliency):
                if header.stream == self.stream_id:
                    spread = self.spread[1] if self.spread is not None and self.spread[0] == header.seq else None
                    # The header (and spread) travel with the map so the reader gets them all.
                    self._put(("map", int(header.frame_index), (header, saliency, spread)))

            def write(self, frame, paired):
                if paired is not None and paired[0].frame_index == frame.index:
                    collector.deliver(Prediction(frame.pts, frame.image, paired[1], paired[0], paired[2]))

        # Offline runs keep every frame until its map is there (the readers wait for the engine,
        # so frames run at most a few windows ahead); live runs bound the wait.
        self._pairing = Pairing(lossless=lossless, max_delay=1 << 20 if lossless else 90)

    def start(self, sources=(), publisher=None) -> None:
        self._pairing.stream_id = sources[0].stream_id if sources else "0"
        self._pairing.start(sources, publisher)

    def on_unit(self, unit) -> None:
        self._pairing.on_unit(unit)

    def on_spread(self, header, spread) -> None:
        if header.stream == self._pairing.stream_id:
            self._pairing.on_spread(header, spread)

    def on_map(self, header, saliency) -> None:
        self._pairing.on_map(header, saliency)

    def close(self, failed: bool = False) -> None:
        self._pairing.close(failed)

    def summary(self) -> list[str]:
        return [f"maps not read (reader too slow): {self.skipped}"] if self.skipped else []

    def deliver(self, item: Prediction) -> None:
        """From the pairing thread: offline runs wait for the reader, live runs keep the newest."""
        while not self.stopped.is_set():
            try:
                if self.lossless:
                    self.results.put(item, timeout=0.1)
                else:
                    self.results.put_nowait(item)
                return
            except queue.Full:
                if not self.lossless:
                    try:
                        self.results.get_nowait()
                        self.skipped += 1
                    except queue.Empty:
                        pass

    def drain(self) -> None:
        while True:
            try:
                self.results.get_nowait()
            except queue.Empty:
                return
