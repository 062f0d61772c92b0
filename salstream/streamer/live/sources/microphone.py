"""``--mic``: a microphone through PyAudio, replacing (or providing) a source's audio.

PyAudio is optional (extra ``audio``). Without it, or without the requested device, one
clear warning is logged and the source goes on without the microphone, never a traceback.

Timing: capture starts when the first video frame arrives, and its first sample is placed
on the video's media clock by wall time (a frame with PTS ``p`` was captured at
``capture_time``, so media time 0 is ``capture_time - p``); later blocks continue the
sample count, so the audio never jitters.
If the device lost samples (an overrun while the machine was busy) and the count falls
more than ``resync_seconds`` behind the wall clock, the gap is filled with silence.
"""
from __future__ import annotations

import contextlib
import logging
import os
import queue
import tempfile
import threading
import time
from typing import Iterator

import numpy as np

from salstream.streamer.live.sources.base import AudioClock, Source, Unit
from salstream.streamer.live.units import AudioChunk, StreamEvent, VideoFrame

log = logging.getLogger("salstream.sources.microphone")

_STDERR_LOCK = threading.Lock()


class MicrophoneUnavailable(RuntimeError):
    """PyAudio missing, no such device, or the device refused to open (message says which)."""


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """PortAudio/ALSA/JACK print dozens of probe messages on stderr; keep them for debug logs."""
    with _STDERR_LOCK, tempfile.TemporaryFile() as sink:
        try:
            saved = os.dup(2)
        except OSError:
            yield
            return
        try:
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace").strip()
            if text:
                log.debug("native audio messages:\n%s", text)


def _import_pyaudio():
    try:
        import pyaudio  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise MicrophoneUnavailable("PyAudio is not installed; install it with "
                                    "`pip install 'salstream[audio]'` (needs the portaudio19-dev "
                                    "system package)") from exc
    return pyaudio


def input_devices(pa) -> list[dict]:
    return [d for d in (pa.get_device_info_by_index(i) for i in range(pa.get_device_count()))
            if int(d.get("maxInputChannels", 0)) > 0]


def find_device(pa, wanted: str | int | bool) -> dict:
    """The PyAudio device info for an index, a name (exact, then substring) or the default."""
    devices = input_devices(pa)
    names = ", ".join(f"{d['index']}: {d['name']}" for d in devices) or "none"
    if wanted is True or (isinstance(wanted, str) and wanted.strip().lower() in ("", "default")):
        try:
            return pa.get_default_input_device_info()
        except (IOError, OSError) as exc:
            raise MicrophoneUnavailable(f"no default input device ({exc}); input devices: {names}") from exc
    if isinstance(wanted, int) or (isinstance(wanted, str) and wanted.strip().isdigit()):
        idx = int(wanted)
        for d in devices:
            if int(d["index"]) == idx:
                return d
        raise MicrophoneUnavailable(f"no input device with index {idx}; input devices: {names}")
    text = str(wanted).strip()
    exact = [d for d in devices if d["name"] == text]
    partial = [d for d in devices if text.lower() in d["name"].lower()]
    if exact or partial:
        return (exact or partial)[0]
    raise MicrophoneUnavailable(f"no input device named {text!r}; input devices: {names}")


class Microphone:
    """Blocking PyAudio capture on a thread; mono float32 blocks at ``sample_rate``."""

    def __init__(self, device: str | int | bool = True, *, sample_rate: int = 16000, block_seconds: float = 0.02,
                 capture_rate: int | None = None, max_queue_seconds: float = 10.0):
        pyaudio = _import_pyaudio()
        self.sample_rate = int(sample_rate)
        with _quiet_native_stderr():
            self._pa = pyaudio.PyAudio()
        try:
            info = find_device(self._pa, device)
            self.name = str(info["name"])
            self.index = int(info["index"])
            self._stream, self.capture_rate = self._open(pyaudio, capture_rate, float(info["defaultSampleRate"]))
        except MicrophoneUnavailable:
            self._pa.terminate()
            raise
        self.block = max(1, int(round(block_seconds * self.capture_rate)))
        self._resampler = None
        if self.capture_rate != self.sample_rate:
            import av
            self._resampler = av.AudioResampler(format="fltp", layout="mono", rate=self.sample_rate)
        self.blocks: queue.Queue = queue.Queue(maxsize=max(4, int(max_queue_seconds / block_seconds)))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    def _open(self, pyaudio, capture_rate: int | None, default_rate: float):
        rates = [capture_rate] if capture_rate else [self.sample_rate, int(default_rate)]
        last: Exception | None = None
        for rate in dict.fromkeys(rates):  # unique, in order
            try:
                with _quiet_native_stderr():
                    stream = self._pa.open(format=pyaudio.paInt16, channels=1, rate=int(rate), input=True,
                                           input_device_index=self.index, frames_per_buffer=1024,
                                           start=False)
                return stream, int(rate)
            except (OSError, ValueError) as exc:
                last = exc
        raise MicrophoneUnavailable(f"input device {self.name!r} cannot capture mono 16-bit audio at "
                                    f"{'/'.join(str(int(r)) for r in dict.fromkeys(rates))} Hz: {last}")

    def start(self) -> float:
        """Start capturing; returns the wall time (monotonic) of the first sample."""
        with _quiet_native_stderr():
            started = time.monotonic()
            self._stream.start_stream()
        self._thread = threading.Thread(target=self._run, args=(started,), name=f"mic-{self.index}", daemon=True)
        self._thread.start()
        return started

    def _run(self, started_at: float) -> None:
        start_sample = 0
        while not self._stop.is_set():
            try:
                raw = self._stream.read(self.block, exception_on_overflow=False)
            except (OSError, IOError) as exc:
                self.error = f"microphone {self.name!r} stopped: {exc}"
                self._put(None)
                return
            now = time.monotonic()
            pcm = np.frombuffer(raw, dtype="<i2")
            # The first block starts when the stream started; a later block's first sample was
            # captured one block-duration before its read returned (used to detect lost samples).
            started = started_at if start_sample == 0 else now - len(pcm) / self.capture_rate
            samples = self._convert(pcm, start_sample)
            start_sample += len(pcm)
            if samples.size:
                self._put((samples, started, now))

    def _convert(self, pcm: np.ndarray, start_sample: int) -> np.ndarray:
        if self._resampler is None:
            return pcm.astype(np.float32) / 32768.0
        import av
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate = self.capture_rate
        out = [f.to_ndarray()[0] for f in self._resampler.resample(frame)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)

    def _put(self, item: tuple | None) -> None:
        # Block rather than drop: a device that delivers faster than real time (a file) loses
        # nothing; a real one that we stall overruns inside PortAudio and is resynced later.
        while not self._stop.is_set():
            try:
                self.blocks.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self._thread is None or not self._thread.is_alive():
            with contextlib.suppress(OSError):
                self._stream.stop_stream()
                self._stream.close()
            self._pa.terminate()


class _MicBlock:
    __slots__ = ("block",)

    def __init__(self, block: tuple | None):
        self.block = block  # (samples, first-sample wall time, read time) or None: the device failed


_INNER_DONE = object()


class MicrophoneSource(Source):
    """Video (and events) from ``inner``; audio from a :class:`Microphone`."""

    def __init__(self, inner: Source, mic: Microphone, *, resync_seconds: float = 0.5):
        super().__init__(inner.stream_id, fps=inner.fps, has_audio=True, sample_rate=mic.sample_rate,
                         description=f"{inner.description} + microphone {mic.name!r}")
        self.inner = inner
        self.mic = mic
        self.resync = int(resync_seconds * mic.sample_rate)
        self.audio_clock = AudioClock(self, mic.sample_rate)
        self._merged: queue.Queue = queue.Queue(maxsize=512)
        self._threads: list[threading.Thread] = []

    def _forward(self, item: object) -> bool:
        """Put into the merged queue unless closed; False when closed."""
        while not self.closed:
            try:
                self._merged.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _pump_inner(self) -> None:
        try:
            for unit in self.inner:
                if not self._forward(unit):
                    break
        finally:
            with contextlib.suppress(queue.Full):
                self._merged.put(_INNER_DONE, timeout=1.0)  # even if the inner source failed

    def _pump_mic(self) -> None:
        while not self.closed:
            try:
                block = self.mic.blocks.get(timeout=0.1)
            except queue.Empty:
                continue
            if not self._forward(_MicBlock(block)) or block is None:
                return

    def _start_thread(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=f"{name}-pump-{self.stream_id}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _units(self) -> Iterator[Unit]:
        self._start_thread(self._pump_inner, "video")
        origin: float | None = None        # wall time of media PTS 0
        while not self.closed:
            try:
                item = self._merged.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _INNER_DONE:
                return
            if isinstance(item, _MicBlock):
                if item.block is None:
                    log.warning("%s; continuing video-only", self.mic.error)
                    yield self.event("audio_lost", None, reason=self.mic.error)
                else:
                    chunk = self._stamp(item.block, origin)
                    if chunk is not None:
                        yield chunk
            elif isinstance(item, StreamEvent):
                if item.kind in ("audio_lost", "audio_back", "end"):
                    continue  # the inner source's own audio is replaced; its end arrives as _INNER_DONE
                yield item
            elif isinstance(item, VideoFrame):
                if origin is None:
                    # Start the microphone on the video's clock: its first sample is then at or
                    # after media time 0, placed by wall time; later samples are counted.
                    origin = item.capture_time - item.pts
                    try:
                        self.mic.start()
                        self._start_thread(self._pump_mic, "mic")
                    except OSError as exc:  # the device vanished between opening and starting
                        reason = f"microphone {self.mic.name!r} did not start: {exc}"
                        log.warning("%s; continuing video-only", reason)
                        yield self.event("audio_lost", None, reason=reason)
                yield item
            # An AudioChunk from the inner source: replaced by the microphone, dropped.

    def _stamp(self, block: tuple, origin: float) -> AudioChunk | None:
        samples, started, captured = block
        wall_index = int(round((started - origin) * self.sample_rate))
        expected = self.audio_clock.next_index
        if expected is None or wall_index - expected > self.resync:
            pts = wall_index / self.sample_rate  # first block, or samples were lost: place by wall time
        else:
            pts = None  # continue the count
        return self.audio_clock.chunk(samples, pts, captured)

    def close(self) -> None:
        super().close()
        self.inner.close()

    def _release(self) -> None:
        self.close()
        for thread in self._threads:
            thread.join(timeout=5.0)
        self.mic.close()


def with_microphone(source: Source, device: str | int | bool, *, sample_rate: int = 16000) -> Source:
    """``source`` with its audio taken from the microphone; unchanged (with a warning) if unusable."""
    try:
        mic = Microphone(device, sample_rate=sample_rate)
    except MicrophoneUnavailable as exc:
        what = "with its own audio" if source.has_audio else "video-only"
        log.warning("microphone unavailable: %s; %s continues %s", exc, source.description, what)
        return source
    log.info("microphone: %r (device %d, %d Hz capture)", mic.name, mic.index, mic.capture_rate)
    return MicrophoneSource(source, mic)
