"""Microphone through the real PyAudio/PortAudio/ALSA path, fed a known WAV by ALSA's file plugin."""
from __future__ import annotations

import logging
import math
import sys
import time
import wave

import numpy as np
import pytest

from salstream.streamer.live.sources import open_source
from salstream.streamer.live.sources.microphone import Microphone, MicrophoneSource, MicrophoneUnavailable
from salstream.streamer.live.units import AudioChunk, StreamEvent, VideoFrame
from tests.support.alsa import write_capture_device
from tests.support.media import write_test_clip

pytest.importorskip("pyaudio", reason="PyAudio not installed (extra 'audio'; needs portaudio19-dev)")

RATE = 16000


def write_wav(path, seconds: float = 1.5) -> np.ndarray:
    """A known recording: two tones plus seeded noise, 16-bit mono at 16 kHz."""
    t = np.arange(int(seconds * RATE)) / RATE
    sig = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.15 * np.sin(2 * np.pi * 1250 * t)
    sig += np.random.default_rng(3).normal(0, 0.02, t.size)
    pcm = np.clip(np.round(sig * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())
    return pcm


def read_wav(path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, RATE)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


@pytest.fixture()
def wav_device(tmp_path, monkeypatch):
    wav = tmp_path / "speech.wav"
    write_wav(wav)
    pcm = read_wav(wav)
    home, name = write_capture_device(tmp_path / "config", pcm, name="wavin", rate=RATE)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return name, pcm


def test_microphone_audio_equals_the_wav_samples(wav_device):
    name, pcm = wav_device
    src = open_source("synthetic:2", mic=name, stream_id="room")
    assert isinstance(src, MicrophoneSource) and src.has_audio and name in src.description
    frames, chunks, events = [], [], []
    deadline = time.monotonic() + 20
    for unit in src:
        if isinstance(unit, VideoFrame):
            frames.append(unit)
        elif isinstance(unit, AudioChunk):
            chunks.append(unit)
            if sum(len(c.samples) for c in chunks) >= len(pcm):
                src.close()
        else:
            events.append(unit)
        assert time.monotonic() < deadline
    assert events[-1].kind == "end" and not [e for e in events if e.kind == "error"]
    assert frames, "video keeps flowing beside the microphone"
    audio = np.concatenate([c.samples for c in chunks])[: len(pcm)]
    # Bit-exact: the synthetic scene's own soundtrack was replaced, not mixed.
    np.testing.assert_array_equal(audio, pcm.astype(np.float32) / 32768.0)
    for prev, nxt in zip(chunks, chunks[1:]):
        assert nxt.sample_index == prev.sample_index + len(prev.samples)
    assert all(c.stream_id == "room" and c.sample_rate == RATE for c in chunks)
    assert all(c.pts == pytest.approx(c.sample_index / RATE) for c in chunks)
    # The microphone starts on the video's clock, right after the first frame.
    assert 0.0 <= chunks[0].pts < 0.5


def test_microphone_resamples_a_device_that_runs_at_another_rate(tmp_path, monkeypatch):
    # A 48 kHz device (no ALSA rate conversion: its plug converter is not exact for file
    # capture): PyAV's resampler must bring it to 16 kHz without changing the sound.
    def tones(rate: int, seconds: float) -> np.ndarray:
        t = np.arange(int(seconds * rate)) / rate
        return 0.3 * np.sin(2 * np.pi * 440 * t) + 0.15 * np.sin(2 * np.pi * 1250 * t)

    home, name = write_capture_device(tmp_path / "config", tones(48000, 1.5), name="mic48k", rate=48000)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    mic = Microphone(name, sample_rate=RATE, capture_rate=48000)
    assert mic.capture_rate == 48000
    mic.start()
    got, n = [], 0
    try:
        while n < RATE:
            samples, _, _ = mic.blocks.get(timeout=5)
            got.append(samples)
            n += len(samples)
    finally:
        mic.close()
    audio = np.concatenate(got)
    ref = tones(RATE, 1.5)
    # The resampling filter delays the signal by a few samples; compare after aligning.
    seg = slice(2000, 2000 + RATE // 2)
    lag = max(range(-32, 33), key=lambda k: float(np.dot(ref[seg], audio[seg.start + k: seg.stop + k])))
    err = audio[seg.start + lag: seg.stop + lag] - ref[seg]
    snr_db = 10 * math.log10(float(np.mean(ref[seg] ** 2)) / float(np.mean(err ** 2)))
    assert abs(lag) <= 16 and snr_db > 30, f"resampled audio differs (lag {lag}, SNR {snr_db:.1f} dB)"


def test_missing_device_logs_one_line_and_goes_video_only(wav_device, tmp_path, caplog):
    clip = write_test_clip(tmp_path / "silent.mp4", seconds=0.5, audio_rate=None)
    with caplog.at_level(logging.WARNING, logger="salstream.sources"):
        src = open_source(str(clip.path), mic="no-such-microphone", paced=False)
    assert not isinstance(src, MicrophoneSource) and src.has_audio is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].exc_info is None
    msg = warnings[0].getMessage()
    assert "no-such-microphone" in msg and "video-only" in msg and "wavin" in msg  # lists what exists
    units = list(src)
    assert sum(isinstance(u, VideoFrame) for u in units) == clip.n_frames
    assert not any(isinstance(u, AudioChunk) for u in units)
    assert isinstance(units[-1], StreamEvent) and units[-1].kind == "end"


def test_without_pyaudio_the_message_says_how_to_install(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pyaudio", None)  # import pyaudio -> ImportError
    with pytest.raises(MicrophoneUnavailable, match=r"salstream\[audio\]"):
        Microphone(True)
    with caplog.at_level(logging.WARNING, logger="salstream.sources"):
        src = open_source("synthetic", mic=True, max_frames=3, paced=False)
    assert not isinstance(src, MicrophoneSource)
    assert "PyAudio is not installed" in caplog.text
    assert sum(isinstance(u, VideoFrame) for u in src) == 3


def test_microphone_by_index_and_default(wav_device):
    name, _ = wav_device
    mic = Microphone(name)
    index = mic.index
    mic.close()
    by_index = Microphone(index)
    assert by_index.name == name
    by_index.close()
    with pytest.raises(MicrophoneUnavailable, match="no input device with index 999"):
        Microphone(999)
