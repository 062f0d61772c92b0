"""Recording the overlay: an H.264 file of a stream's frames with their heatmaps (+ source audio).

:class:`OverlayRecorder` writes an MP4 through PyAV: one video frame per source frame at
its media PTS and, when given, the source audio as AAC on the same clock. MP4/MOV files
are fragmented (a fragment per second, the index up front): they play while they are being
written and whatever was written before a kill (SIGKILL, power loss) stays playable, so
the file is written in place, never as a hidden partial. ``close()`` finalises it and is
safe to call twice and from a signal-driven shutdown; a recording without frames is
removed. A write that fails (full disk, file system gone) raises :class:`RecordingError`
naming ``--record``; what was written before stays if it plays, else it is removed.
:func:`check_record_target` refuses an unusable path before a run starts.

:class:`OverlayRecording` is the pipeline consumer around it: every frame of one stream
with the newest map at or before it (sample and hold: a frame whose window was dropped
shows the previous map, as a live viewer saw), blended and encoded in its own thread.
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

import av
import cv2
import numpy as np

from salstream.errors import SalstreamError
from salstream.streamer.align import PairedConsumer
from salstream.streamer.overlay.render import blend

log = logging.getLogger("salstream.overlay")

_FORMATS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}
RECORD_SUFFIXES = tuple(_FORMATS)
# Fragmented MP4: the moov box first (empty) and a self-contained fragment per keyframe.
_FRAGMENTED = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}
MIN_FREE_BYTES = 16 << 20     # refuse to start a recording with less room than this


class RecordingError(SalstreamError):
    """The overlay could not be written (the message names ``--record`` and the cause)."""


def check_record_target(path: str | Path, sources: Sequence[str] = (), option: str = "--record") -> Path:
    """Refuse, before anything runs, a recording path that cannot work or would destroy an input.

    Checks the suffix, that the path is not a folder, that its folder can be created and
    written, that it has room, and that it is not one of ``sources`` (the overlay would
    replace the very file being read)."""
    p = Path(path)
    if p.suffix.lower() not in _FORMATS:
        raise SalstreamError(f"{option} {path}: use a .mp4 (or .mkv/.mov) file name")
    if p.is_dir():
        raise SalstreamError(f"{option} {path}: is a folder; give a file name such as {p / 'overlay.mp4'}")
    target = p.resolve()
    for spec in sources:
        if "://" in str(spec) or str(spec).startswith(("webcam:", "synthetic")):
            continue
        src = Path(spec)
        if src.resolve() == target or (src.exists() and p.exists() and os.path.samefile(src, p)):
            raise SalstreamError(f"{option} {path} is the --source being read; recording there would replace "
                                 "the input: give another file name")
    folder = target.parent
    existing = next(d for d in (folder, *folder.parents) if d.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise SalstreamError(f"{option} {path}: cannot write in {existing} (permission denied or not a folder); "
                             "record into a folder you can write")
    if folder.is_dir():
        try:
            fd, probe = tempfile.mkstemp(prefix=".salstream-probe-", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise SalstreamError(f"{option} {path}: cannot create files in {folder} ({exc.strerror or exc}); "
                                 "record into a folder you can write") from None
    try:
        st = os.statvfs(existing)
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = None
    if free is not None and free < MIN_FREE_BYTES:
        raise SalstreamError(f"{option} {path}: only {free // 1024} KiB free on its file system; free some space "
                             f"(a recording needs at least {MIN_FREE_BYTES >> 20} MiB) or record elsewhere")
    return p


class OverlayRecorder:
    """Writes overlay frames (and optionally audio) to an H.264 MP4.

    ``fps``: the source's nominal rate; a frame's PTS is ``round(pts · fps)`` ticks of
    ``1/fps``. ``audio_rate``: add an AAC track fed by :meth:`add_audio` (mono float32).
    ``max_side``: frames are scaled down so their longer side is at most this.
    """

    def __init__(self, path: str | Path, fps: float = 30.0, *, audio_rate: Optional[int] = None,
                 max_side: int = 960, crf: int = 23, preset: str = "veryfast", threads: int = 0):
        self.path = Path(path)
        if self.path.suffix.lower() not in _FORMATS:
            raise SalstreamError(f"--record {path}: use a .mp4 (or .mkv/.mov) file name")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SalstreamError(f"--record {path}: cannot create its folder ({exc})") from None
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self._tb = Fraction(round(self.fps * 1000), 1000).limit_denominator(100000)
        self.max_side = int(max_side)
        self._opts = {"preset": preset, "crf": str(crf), "threads": str(int(threads))}   # threads 0: x264 picks
        self._audio_rate = audio_rate
        self._lock = threading.Lock()
        fmt = _FORMATS[self.path.suffix.lower()]
        try:
            self._container = av.open(str(self.path), "w", format=fmt,
                                      options=_FRAGMENTED if fmt in ("mp4", "mov") else {})
        except (OSError, av.error.FFmpegError) as exc:
            raise SalstreamError(f"--record {path}: cannot create the file ({exc})") from None
        self.error: Optional[str] = None
        self._video = None
        self._audio = None
        if audio_rate:
            self._audio = self._container.add_stream("aac", rate=int(audio_rate), layout="mono")
        self._held: list = []    # audio packets waiting for the video stream (the header needs both)
        self._last_pts: Optional[int] = None
        self._audio_next: Optional[int] = None
        self._size: Optional[tuple[int, int]] = None
        self.frames = 0
        self.audio_samples = 0
        self.closed = False

    def _open_video(self, h: int, w: int) -> None:
        scale = min(1.0, self.max_side / max(h, w))
        # H.264 in yuv420p needs even dimensions.
        ow, oh = max(2, int(w * scale) // 2 * 2), max(2, int(h * scale) // 2 * 2)
        self._video = self._container.add_stream("libx264", rate=self._tb, options=self._opts)
        self._video.width, self._video.height, self._video.pix_fmt = ow, oh, "yuv420p"
        # A keyframe (so a fragment) every second: a kill loses at most the last second.
        self._video.codec_context.gop_size = max(1, round(self.fps))
        self._size = (oh, ow)
        held, self._held = self._held, []
        self._mux(held)

    def add_frame(self, overlay_rgb: np.ndarray, pts: float) -> bool:
        """Append one overlay frame at media time ``pts`` (s). Returns False if it was not newer."""
        with self._lock:
            if self.closed:
                return False
            if self.error is not None:
                raise RecordingError(self.error)
            if self._video is None:
                self._open_video(*overlay_rgb.shape[:2])
            tick = int(round(pts * float(self._tb)))
            if self._last_pts is not None and tick <= self._last_pts:
                return False
            img = overlay_rgb
            if img.shape[:2] != self._size:
                img = cv2.resize(img, (self._size[1], self._size[0]), interpolation=cv2.INTER_AREA)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts, frame.time_base = tick, 1 / self._tb
            try:
                packets = self._video.encode(frame)
            except (OSError, av.error.FFmpegError) as exc:
                self._fail(exc)
            self._mux(packets)
            self._last_pts = tick
            self.frames += 1
            return True

    def add_audio(self, samples: np.ndarray, sample_index: int) -> None:
        """Append mono float32 samples starting at stream sample ``sample_index``."""
        if self._audio is None:
            return
        with self._lock:
            if self.closed or self.error is not None:
                return
            x = np.asarray(samples, np.float32).reshape(1, -1)
            if self._audio_next is not None and sample_index < self._audio_next:   # overlap: keep new part
                x = x[:, self._audio_next - sample_index:]
                sample_index = self._audio_next
            if x.size == 0:
                return
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x), format="flt", layout="mono")
            frame.sample_rate = self._audio_rate
            frame.pts, frame.time_base = int(sample_index), Fraction(1, self._audio_rate)
            packets = list(self._audio.encode(frame))
            if self._video is None:
                self._held.extend(packets)
            else:
                self._mux(packets)
            self._audio_next = sample_index + x.shape[1]
            self.audio_samples += x.shape[1]

    def _mux(self, packets) -> None:
        try:
            for p in packets:
                self._container.mux(p)
        except (OSError, av.error.FFmpegError) as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        """A write failed: stop recording and raise one error that names --record and the cause."""
        cause = getattr(exc, "strerror", None) or str(exc)
        if self.error is None:
            self.error = f"--record {self.path}: writing failed after {self.frames} frames ({cause})"
        raise RecordingError(self.error) from None

    def close(self, discard: bool = False) -> None:
        """Flush the encoders and finish the file; idempotent.

        Without any frame, or with ``discard``, nothing is left behind. After a failed
        write (or a failing finish) raises :class:`RecordingError`; the file stays only if
        what was written before plays."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            try:
                if self.error is None and self._video is not None:
                    self._mux(self._video.encode(None))
                if self.error is None and self._audio is not None and self.audio_samples and self._video is not None:
                    self._mux(self._held + list(self._audio.encode(None)))
            except RecordingError:
                pass
            except (OSError, av.error.FFmpegError) as exc:
                self.error = self.error or f"--record {self.path}: finishing the file failed ({exc})"
            try:
                self._container.close()
            except (OSError, av.error.FFmpegError) as exc:
                self.error = self.error or (f"--record {self.path}: finishing the file failed "
                                            f"({getattr(exc, 'strerror', None) or exc})")
            if discard:
                self.path.unlink(missing_ok=True)
                log.info("%s: recording discarded", self.path)
            elif self.error is not None:
                kept = bool(self.frames) and _plays(self.path)
                if not kept:
                    self.path.unlink(missing_ok=True)
                raise RecordingError(self.error + ("; what was written before is kept in the file (it plays)" if kept
                                                   else "; the incomplete file was removed"))
            elif not self.frames:
                self.path.unlink(missing_ok=True)
                log.warning("%s: no frames were recorded, so no file was written", self.path)

    def __enter__(self) -> "OverlayRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _plays(path: Path) -> bool:
    """Does the file open and decode at least one video frame?"""
    try:
        with av.open(str(path)) as c:
            return next(c.decode(video=0), None) is not None
    except (OSError, av.error.FFmpegError, IndexError, StopIteration):
        return False


class OverlayRecording(PairedConsumer):
    """Pipeline consumer that records the overlay of one stream (default: the first) to ``path``."""

    name = "recorder"

    def __init__(self, path: str | Path, stream_id: Optional[str] = None, *, alpha: float = 0.6,
                 max_pending: int = 90, preset: str = "veryfast", threads: int = 1):
        super().__init__(stream_id or "0", max_delay=max_pending)
        self.path = Path(path)
        if self.path.suffix.lower() not in _FORMATS:
            raise SalstreamError(f"--record {path}: use a .mp4 (or .mkv/.mov) file name")
        self.alpha = alpha
        self._pick_first = stream_id is None
        # x264 on this consumer's own thread (threads=1): its CPU stays countable and it never
        # competes with the model's two stages for more than one core.
        self._encoder_opts = {"preset": preset, "threads": threads}
        self.recorder: Optional[OverlayRecorder] = None

    def start(self, sources=(), publisher=None) -> None:
        if self.recorder is None:
            if self._pick_first and sources:
                self.stream_id = sources[0].stream_id
            src = next((s for s in sources if s.stream_id == self.stream_id), None)
            fps = getattr(src, "fps", 30.0) if src is not None else 30.0
            audio = 16000 if src is not None and src.has_audio else None
            self.recorder = OverlayRecorder(self.path, fps=fps, audio_rate=audio, **self._encoder_opts)
        super().start(sources, publisher)

    def write(self, frame, saliency: Optional[np.ndarray]) -> None:
        if self.recorder.error is not None:
            return                     # reported once, raised again by close(): the run ends non-zero
        try:
            image = frame.image if saliency is None else blend(frame.image, saliency, self.alpha)
            self.recorder.add_frame(image, frame.pts)
        except RecordingError as exc:  # the maps go on; the run reports the lost recording at its end
            log.error("%s; the recording stops, the maps go on", exc)
        except Exception:  # a recording problem must not stop the maps
            log.exception("overlay recording failed")

    def write_audio(self, chunk) -> None:
        try:
            self.recorder.add_audio(chunk.samples, chunk.sample_index)
        except RecordingError as exc:
            log.error("%s; the recording stops, the maps go on", exc)

    def finish(self, failed: bool) -> None:
        # A run that failed before any map reached the recording leaves no file behind.
        if self.recorder is not None:
            self.recorder.close(discard=failed and self.maps_in == 0)

    @property
    def frames(self) -> int:
        return self.recorder.frames if self.recorder is not None else 0

    def summary(self) -> list[str]:
        if self.recorder is not None and self.recorder.error is not None:
            return [f"overlay: FAILED ({self.recorder.error})"]
        if self.frames:
            return [f"overlay: {self.path} ({self.frames} frames"
                    + (f", {self.dropped} skipped" if self.dropped else "") + ")"]
        return [f"overlay: nothing recorded (no frames), {self.path} not written"]
