"""Media files, RTSP and HTTP(S) through PyAV: demux video + audio, decode, stamp, pace.

* Video frames are converted to RGB uint8; audio is resampled by PyAV's resampler to
  mono float32 at the rate the audio features need (16 kHz).
* Files (and HTTP URLs with a known duration) are released in PTS order at their native
  rate when ``paced`` (they stand in for a live feed); ``paced=False`` reads them as fast
  as they decode.
* Live URLs (RTSP, HTTP without a duration) are not paced (the network does that). When
  their demux loop ends or fails, that is a disconnect: a ``gap`` event is emitted and the
  source reconnects with a bounded backoff; the media clock continues across the gap.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
from fractions import Fraction
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import av

from salstream.errors import SalstreamError
from salstream.redact import redact
from salstream.streamer.live.sources.base import AudioClock, Pacer, Source, Unit
from salstream.streamer.live.units import VideoFrame

log = logging.getLogger("salstream.sources.pyav")

NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https")

# Errors PyAV/FFmpeg raise for unreadable input, refused connections and timeouts.
_AV_ERRORS: tuple[type[BaseException], ...] = (av.error.FFmpegError, OSError, EOFError)
OPEN_RETRY_DELAY = 0.25  # s between attempts to open a network stream that is not ready yet
MIN_SIDE = 16            # smallest picture side that makes a saliency map
MAX_BAD_PACKETS = 300    # undecodable packets in a row before a source counts as unreadable
MAX_STUCK_REOPENS = 3    # reopened network files that gave nothing new, in a row, before giving up


class PyAVSource(Source):
    """A media file or a network stream read through PyAV (FFmpeg).

    ``open_timeout``/``read_timeout`` (s) bound how long opening and each read may block.
    Network sources reconnect up to ``reconnect_attempts`` times (``None``: forever), waiting
    ``reconnect_delay`` doubling up to ``reconnect_max_delay`` between attempts (≈100 s of
    outage by default: a camera reboot). A live stream continues its media clock across the
    outage; an HTTP file whose server went away is reopened where it stopped.
    ``live`` overrides the automatic choice (RTSP, or HTTP without a known duration).
    ``status`` is ``"live"``, or ``"reconnecting"`` during an outage.
    """

    def __init__(self, url: str | Path, *, stream_id: str = "0", paced: bool = True, audio_rate: int = 16000,
                 open_timeout: float = 5.0, read_timeout: float = 5.0, reconnect_attempts: int | None = 400,
                 reconnect_delay: float = 0.1, reconnect_max_delay: float = 0.25, live: bool | None = None,
                 probe_seconds: float = 0.5):
        self.url = str(url)
        self.scheme = urlsplit(self.url).scheme.lower() if "://" in self.url else ""
        self.network = self.scheme in NETWORK_SCHEMES
        self.open_timeout = float(open_timeout)
        self.read_timeout = float(read_timeout)
        self.reconnect_attempts = None if reconnect_attempts is None else int(reconnect_attempts)
        self.reconnect_delay = float(reconnect_delay)
        self.reconnect_max_delay = float(reconnect_max_delay)
        self.probe_seconds = float(probe_seconds)
        self.reconnects = 0  # successful reconnections so far
        self.skipped_packets = 0  # undecodable packets skipped (corrupt regions)
        container = self._open()
        video = container.streams.video[0] if container.streams.video else None
        if video is None:
            container.close()
            raise SalstreamError(f"source {redact(self.url)!r} has no video track; salstream needs video "
                                 "(give a file or stream with a picture)")
        if video.codec_context is None:   # demuxed fine, but this FFmpeg build has no decoder for it
            container.close()
            raise SalstreamError(f"source {redact(self.url)!r}: unsupported video codec (this FFmpeg build "
                                 "has no decoder for it); re-encode it to H.264, e.g. "
                                 "ffmpeg -i IN -c:v libx264 -c:a aac OUT.mp4")
        width, height = video.codec_context.width or 0, video.codec_context.height or 0
        if 0 < min(width, height) < MIN_SIDE:
            container.close()
            raise SalstreamError(f"source {redact(self.url)!r} is {width}×{height} pixels; salstream needs at least "
                                 f"{MIN_SIDE}×{MIN_SIDE} (a real picture) — give a larger video")
        fps = native_fps(video.average_rate or video.guessed_rate or video.base_rate)
        has_audio = _audio_stream(container) is not None
        if container.streams.audio and not has_audio:
            log.warning("source %s: its audio codec has no decoder here; running video-only", redact(self.url))
        if live is None:
            live = self.scheme in ("rtsp", "rtsps") or (self.network and container.duration is None)
        self.live = bool(live)
        self.paced = bool(paced) and not self.live
        kind = "live stream" if self.live else "file"
        super().__init__(stream_id, fps=fps, has_audio=has_audio, sample_rate=audio_rate,
                         description=f"{kind} {redact(self.url)}")
        self._container: av.container.InputContainer | None = container
        self.audio_clock = AudioClock(self, audio_rate)
        self._last_pts: float | None = None
        self._frame_index = 0     # frames emitted (VideoFrame.index)
        self._decoded_video = 0   # frames decoded (paced files emit them a little later)
        self._last_capture: float | None = None  # capture_time of the last frame emitted
        self._resume_after: float | None = None  # HTTP file reopened: skip what was already emitted
        self._stuck_reopens = 0
        self._duration = container.duration / 1e6 if container.duration else None

    # ------------------------------------------------------------------ opening
    def _options(self) -> dict[str, str]:
        if self.scheme in ("rtsp", "rtsps"):
            # TCP interleaving survives NAT/firewalls and loses no packets; timeout is in µs.
            # A short probe: FFmpeg's default analysis (5 s budget) makes opening, and so every
            # reconnect, take ~1.5 s; 0.5 s still finds the codecs and the frame rate.
            return {"rtsp_transport": "tcp", "timeout": str(int(self.read_timeout * 1e6)),
                    "analyzeduration": str(int(self.probe_seconds * 1e6)), "probesize": "262144"}
        if self.network:
            return {"rw_timeout": str(int(self.read_timeout * 1e6))}
        return {}

    def _open(self) -> av.container.InputContainer:
        target = self.url
        if not self.network:
            path = Path(self.url)
            if not path.is_file():
                raise SalstreamError(f"source {self.url!r}: no such file; give an existing media file, "
                                     "rtsp://…, http(s)://…, webcam:N or synthetic")
        kwargs = {"options": self._options()}
        if self.network:
            kwargs["timeout"] = (self.open_timeout, self.read_timeout)
        deadline = time.monotonic() + self.open_timeout
        try:
            while True:
                try:
                    return av.open(target, **kwargs)
                except av.error.InvalidDataError:
                    # The server answered but had no usable stream description yet (a camera or
                    # RTSP server still starting its encoder): ask again until open_timeout.
                    if not self.network or time.monotonic() + OPEN_RETRY_DELAY >= deadline:
                        raise
                    time.sleep(OPEN_RETRY_DELAY)
        except _AV_ERRORS as exc:
            where = redact(self.url)
            if self.network:
                raise SalstreamError(f"cannot open stream {where!r}: {redact(exc)}; check the URL and that the server "
                                     f"is up (waited up to {self.open_timeout:g} s)") from exc
            raise SalstreamError(f"cannot read {where!r} as a media file: {redact(exc)}; give a video file "
                                 "FFmpeg can decode (e.g. MP4 with H.264)") from exc

    # ------------------------------------------------------------------ iteration
    def _units(self) -> Iterator[Unit]:
        container = self._container
        had_audio = self.has_audio
        offset = 0.0
        while container is not None and not self.closed:
            session_audio = _audio_stream(container) is not None
            if session_audio != had_audio:
                yield self.event("audio_back" if session_audio else "audio_lost", self._last_pts,
                                 reason="reconnected stream has an audio track" if session_audio
                                 else "reconnected stream has no audio track")
                had_audio = session_audio
            reason, failed = "stream ended", False
            try:
                if self.paced:
                    yield from self._paced(container, offset)
                else:
                    yield from self._session(container, offset)
            except _AV_ERRORS as exc:
                reason, failed = redact(f"{type(exc).__name__}: {exc}"), True
            finally:
                container.close()
                self._container = container = None
            if self.closed:
                return
            # A reopened file that gave nothing new ends here (a track shorter than the container
            # says, or damage at that spot): reopening it again would loop.
            stuck = self._resume_after is not None and self._last_pts == self._resume_after
            self._stuck_reopens = self._stuck_reopens + 1 if stuck else 0
            stuck = self._stuck_reopens > MAX_STUCK_REOPENS
            if not self.live and not failed and self.network and self._ended_early() and not stuck:
                reason, failed = (f"the server closed the file at {self._last_pts:.1f} s of "
                                  f"{self._duration:.1f} s"), True
            if not self.live:
                if not failed:
                    return
                if not self.network or stuck:
                    yield self.event("error", self._last_pts, message=f"{self.description}: read failed: {reason}")
                    return
            # A live stream that stops, or an HTTP file whose server went away: report, reconnect.
            log.warning("%s: disconnected (%s); reconnecting", self.description, reason)
            yield self.event("gap", self._last_pts, from_pts=self._last_pts, reason=reason)
            container = self._reconnect()
            if container is None:
                if not self.closed:
                    tries = "forever" if self.reconnect_attempts is None else f"after {self.reconnect_attempts} attempts"
                    yield self.event("error", self._last_pts,
                                     message=f"{self.description}: could not reconnect {tries}; giving up")
                return
            self._container = container
            self.reconnects += 1
            self.audio_clock.restart()
            if not self.live:
                # The same file again: continue from the last frame sent, on the file's own clock.
                self._resume_after = self._last_pts
                if self._last_pts is not None:
                    try:
                        start = (container.start_time or 0) / 1e6
                        container.seek(int((self._last_pts + start) * 1e6), backward=True)
                    except _AV_ERRORS as exc:
                        log.info("%s: cannot seek after reconnecting (%s); skipping to the position", self.description, exc)
                continue
            # The new session's clock restarts; continue ours by the wall time since the last frame.
            last = self._last_pts if self._last_pts is not None else 0.0
            since = time.monotonic() - (self._last_capture if self._last_capture is not None else time.monotonic())
            offset = last + max(1.0 / self.fps, since)

    def _ended_early(self) -> bool:
        """A file read over the network that stopped well before its known duration (a server
        restart can look like a clean end of file to the demuxer)."""
        if self._duration is None or self._last_pts is None:
            return False
        return self._last_pts < self._duration - 3.0 / self.fps

    def _reconnect(self) -> av.container.InputContainer | None:
        delay = min(self.reconnect_delay, self.reconnect_max_delay)
        limit = self.reconnect_attempts
        of = "∞" if limit is None else str(limit)
        self.status = "reconnecting"
        try:
            for attempt in (itertools.count(1) if limit is None else range(1, limit + 1)):
                if self.wait(delay):
                    return None
                try:
                    container = self._open()
                except SalstreamError as exc:
                    log.info("%s: reconnect attempt %d/%s failed: %s", self.description, attempt, of, exc)
                    delay = min(self.reconnect_max_delay, delay * 2)
                    continue
                if not container.streams.video:
                    container.close()
                    continue
                log.warning("%s: reconnected (attempt %d)", self.description, attempt)
                return container
            return None
        finally:
            self.status = "live"

    def _decoded(self, container: av.container.InputContainer, offset: float) -> Iterator[tuple[float, object]]:
        """(pts, unit-without-capture-time) in decode order for one session."""
        video = container.streams.video[0]
        audio = _audio_stream(container)
        if not self.live:
            video.thread_type = "AUTO"  # frame threads add latency: only for files
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=self.sample_rate) if audio else None
        origin: float | None = None
        if container.start_time is not None and not self.live:
            origin = container.start_time / 1e6
        first_frame = self._decoded_video  # frames decoded before this session
        streams = [video] + ([audio] if audio is not None else [])
        bad_in_a_row = 0
        for packet in container.demux(streams):
            if self.closed:
                return
            try:
                frames = packet.decode()
                bad_in_a_row = 0
            except _AV_ERRORS as exc:
                # A corrupt region: the decoder fails on its packets (FFmpeg reports it as any error
                # code, EPERM included). Skip them as FFmpeg's own tools do; give up only when
                # nothing decodes any more.
                bad_in_a_row += 1
                self.skipped_packets += 1
                if bad_in_a_row > MAX_BAD_PACKETS:
                    raise
                log.debug("%s: skipped undecodable packet: %s", self.description, exc)
                continue
            for frame in frames:
                t = frame.time
                skip = self._resume_after
                if skip is not None and t is not None and origin is not None and t - origin + offset <= skip:
                    continue                   # sent before the server went away
                if origin is None and t is not None:
                    # Frames already emitted without timestamps keep their place before this one.
                    origin = t - (self._decoded_video - first_frame) / self.fps if packet.stream is video else t
                if packet.stream is video:
                    yield self._video_unit(frame, t, origin, offset, self._decoded_video - first_frame)
                    self._decoded_video += 1
                else:
                    for out in resampler.resample(frame):
                        pts = None if out.time is None or origin is None else out.time - origin + offset
                        yield (pts if pts is not None else math.inf), ("audio", out.to_ndarray()[0], pts)
        if resampler is not None:
            for out in resampler.resample(None):
                pts = None if out.time is None or origin is None else out.time - origin + offset
                yield (pts if pts is not None else math.inf), ("audio", out.to_ndarray()[0], pts)

    def _video_unit(self, frame: av.VideoFrame, t: float | None, origin: float | None,
                    offset: float, session_index: int) -> tuple[float, object]:
        if t is None or origin is None:
            # RTSP's first frames may carry no timestamp: place them by the frame rate.
            pts = offset + session_index / self.fps if session_index == 0 else self._last_pts + 1.0 / self.fps
        else:
            pts = t - origin + offset
        if self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1.0 / self.fps  # keep video PTS strictly increasing
        self._last_pts = pts
        return pts, ("video", frame.to_ndarray(format="rgb24"), pts)

    def _emit(self, payload: tuple, capture_time: float) -> Unit | None:
        kind, data, pts = payload
        if kind == "video":
            unit = VideoFrame(image=data, pts=pts, capture_time=capture_time, index=self._frame_index,
                              stream_id=self.stream_id)
            self._frame_index += 1
            self._last_capture = capture_time
            return unit
        return self.audio_clock.chunk(data, pts, capture_time)

    def _session(self, container: av.container.InputContainer, offset: float) -> Iterator[Unit]:
        for _, payload in self._decoded(container, offset):
            unit = self._emit(payload, time.monotonic())
            if unit is not None:
                yield unit

    def _paced(self, container: av.container.InputContainer, offset: float) -> Iterator[Unit]:
        """Release units in PTS order at the native rate, like a live feed would deliver them.

        Containers interleave audio and video in chunks (often ~0.5 s), so units are held
        in a small PTS-ordered queue until every track has been decoded past the head.
        """
        pacer = Pacer(self)
        queue: list[tuple[float, int, tuple]] = []
        seq = itertools.count()
        newest = {"video": -math.inf, "audio": -math.inf if self.has_audio else math.inf}
        # A track that lags the other by more than `slack` of media time (it ended early, or the
        # file is badly interleaved) must not hold the other back: memory stays bounded.
        slack, cap = 1.0, 512

        def due() -> Iterator[Unit]:
            while queue and (queue[0][0] <= min(newest.values()) or queue[0][0] <= max(newest.values()) - slack
                             or len(queue) > cap):
                pts, _, payload = heapq.heappop(queue)
                if pacer.release_at(pts):
                    return
                unit = self._emit(payload, time.monotonic())
                if unit is not None:
                    yield unit

        for pts, payload in self._decoded(container, offset):
            newest[payload[0]] = max(newest[payload[0]], pts)
            heapq.heappush(queue, (pts, next(seq), payload))
            yield from due()
            if self.closed:
                return
        newest = {"video": math.inf, "audio": math.inf}
        yield from due()

    def _release(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


def _audio_stream(container: av.container.InputContainer):
    """The first audio track this FFmpeg build can decode, or None."""
    return next((a for a in container.streams.audio if a.codec_context is not None), None)


def native_fps(rate: Fraction | float | None) -> float:
    """A frame rate usable for pacing (30 when the container does not say)."""
    return float(rate) if rate and 1.0 <= float(rate) <= 480.0 else 30.0
