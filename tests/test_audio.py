"""Log-mel features (diffsal.audio): filterbank, STFT, slicing rules for `full` and `lite`."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from scipy.io import wavfile

from salstream.diffsal import audio as A
from salstream.diffsal.config import AudioConfig
from salstream.errors import SalstreamError

SR = 16000


def tone(freq: float, seconds: float, amp: float = 0.5, rate: int = SR, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return amp * np.sin(2 * np.pi * freq * t + phase)


def reference_log_mel(x: np.ndarray) -> np.ndarray:
    """Straight-line numpy version: explicit frame loop, periodic Hann, |rfft|, scalar mel weights."""
    n_frames = 1 + (len(x) - 400) // 160
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    spec = np.stack([np.abs(np.fft.rfft(x[i * 160: i * 160 + 400] * window, 512)) for i in range(n_frames)])
    mel_of = lambda f: 1127.0 * math.log(1 + f / 700.0)  # noqa: E731
    lo_m, hi_m = mel_of(125.0), mel_of(7500.0)
    edges = [lo_m + (hi_m - lo_m) * i / 65 for i in range(66)]
    weights = np.zeros((257, 64))
    for b in range(1, 257):                       # DC bin stays 0
        m = mel_of(b * 8000.0 / 256)
        for band in range(64):
            a, c, d = edges[band], edges[band + 1], edges[band + 2]
            if a < m <= c:
                weights[b, band] = (m - a) / (c - a)
            elif c < m < d:
                weights[b, band] = (d - m) / (d - c)
    return np.log(spec @ weights + 0.01)


def test_filterbank_matches_htk_triangles():
    fb = A.mel_filterbank()
    assert fb.shape == (257, 64)
    assert np.all(fb[0] == 0), "DC bin must have weight 0"
    assert fb.max() <= 1.0 and fb.min() >= 0.0
    bin_hz = np.linspace(0, 8000, 257)
    edges_hz = A.mel_to_hz(np.linspace(A.hz_to_mel(125.0), A.hz_to_mel(7500.0), 66))
    for band in range(64):
        lo, centre, hi = edges_hz[band: band + 3]
        support = np.nonzero(fb[:, band])[0]
        # Non-zero weights only strictly inside the band's edges.
        assert bin_hz[support].min() > lo and bin_hz[support].max() < hi
        # The peak sits at the FFT bin nearest the band's HTK-mel centre (or its neighbour).
        nearest = np.argmin(np.abs(bin_hz - centre))
        assert abs(int(np.argmax(fb[:, band])) - nearest) <= 1
    # Where two neighbouring triangles overlap, their weights sum to 1 (partition of unity).
    inner = (bin_hz > edges_hz[1]) & (bin_hz < edges_hz[-2])
    np.testing.assert_allclose(fb[inner].sum(axis=1), 1.0, atol=1e-9)
    # HTK mel: 1000 Hz is 1000 mel (to 0.1 %), and the inverse is exact.
    assert abs(float(A.hz_to_mel(1000.0)) - 1000.0) < 1.0
    np.testing.assert_allclose(A.mel_to_hz(A.hz_to_mel([125.0, 7500.0])), [125.0, 7500.0])


def test_log_mel_equals_straight_line_reference():
    rng = np.random.default_rng(0)
    x = np.clip(rng.normal(0, 0.2, 4000) + tone(440, 0.25, 0.3), -1, 1)
    got = A.log_mel(x, dtype=torch.float64).numpy()
    assert got.shape == (1 + (4000 - 400) // 160, 64)
    np.testing.assert_allclose(got, reference_log_mel(x), rtol=0, atol=1e-9)
    assert A.log_mel(x).dtype == torch.float32


def test_log_mel_uses_magnitude_and_finds_the_tone():
    quiet, loud = A.log_mel(tone(1000, 0.5, 0.1), torch.float64), A.log_mel(tone(1000, 0.5, 0.2), torch.float64)
    band = int(quiet.mean(0).argmax())
    centres = A.mel_to_hz(np.linspace(A.hz_to_mel(125.0), A.hz_to_mel(7500.0), 66))[1:-1]
    assert abs(centres[band] - 1000) == np.abs(centres - 1000).min() or abs(centres[band] - 1000) < 40
    # Doubling the amplitude doubles a magnitude spectrogram (log + ln 2), a power one would quadruple.
    gain = torch.log(loud[:, band].exp() - 0.01) - torch.log(quiet[:, band].exp() - 0.01)
    np.testing.assert_allclose(gain.numpy(), math.log(2), atol=1e-6)


def test_silence_and_frame_count_and_errors():
    out = A.log_mel(np.zeros(400 + 160 * 9))
    assert out.shape == (10, 64)
    assert torch.all(out == torch.tensor(math.log(0.01), dtype=torch.float32))
    with pytest.raises(SalstreamError, match="at least 400"):
        A.log_mel(np.zeros(399))
    with pytest.raises(SalstreamError, match="1-D mono"):
        A.log_mel(np.zeros((2, 1000)))
    with pytest.raises(SalstreamError, match="32768"):
        A.log_mel(np.zeros(1000, dtype=np.int16))


def test_examples_are_64_frames_every_11():
    rng = np.random.default_rng(1)
    frames = A.log_mel(rng.uniform(-1, 1, A.FULL_BUFFER_SAMPLES))
    assert frames.shape[0] == 158
    ex = A.frames_to_examples(frames)
    assert ex.shape == (9, 64, 64)
    for i in range(9):
        assert torch.equal(ex[i], frames[11 * i: 11 * i + 64])
    with pytest.raises(SalstreamError, match="64 log-mel frames"):
        A.frames_to_examples(frames[:63])


def test_resize_matches_torchvision_tensor_resize():
    x = torch.randn(9, 64, 64) * 2 - 4
    ours = A.resize_slices(x, (112, 192))
    assert ours.shape == (9, 112, 192)
    # Exactly the non-antialiased resize the official torchvision 0.15 did on tensors ...
    legacy = T.Resize((112, 192), antialias=False)(x.unsqueeze(1)).squeeze(1)
    assert torch.equal(ours, legacy)
    # ... and, for this upsampling, what today's default (antialias on) gives, to float rounding.
    current = T.Resize((112, 192))(x.unsqueeze(1)).squeeze(1)
    assert (ours - current).abs().max() < 1e-4
    assert A.resize_slices(x, (64, 64)) is x


def test_repeat_rule():
    ids = lambda n: torch.arange(n, dtype=torch.float32).view(n, 1, 1)  # noqa: E731
    flat = lambda t: t.view(-1).int().tolist()  # noqa: E731
    assert flat(A.repeat_to_n(ids(1))) == [0] * 9
    assert flat(A.repeat_to_n(ids(2))) == [0, 0, 0, 0, 1, 1, 1, 1, 0]
    assert flat(A.repeat_to_n(ids(4))) == [0, 0, 1, 1, 2, 2, 3, 3, 0]
    assert flat(A.repeat_to_n(ids(15))) == list(range(9))
    assert flat(A.repeat_to_n(ids(9))) == list(range(9))


def test_full_window_keeps_real_audio_only_in_the_clip():
    cfg = AudioConfig(slice_size=(64, 64))
    rng = np.random.default_rng(2)
    stream = rng.uniform(-0.5, 0.5, 5 * SR)
    centre_s, clip_s = 2.5, 16 / 30
    got = A.full_window_slices(stream, centre_s, clip_s, cfg)
    assert got.shape == (1, 9, 64, 64)
    # Rebuild the buffer by hand: silence except the middle 16/fps seconds.
    c, n = int(round(centre_s * SR)), int(round(clip_s * SR))
    buf = np.zeros(25600)
    buf[12800 - n // 2: 12800 - n // 2 + n] = stream[c - n // 2: c - n // 2 + n]
    want = A.frames_to_examples(A.log_mel(buf))
    assert torch.allclose(got[0], want, atol=1e-6)
    # STFT frames that lie wholly outside the real span are exact silence.
    frames = A.log_mel(buf)
    first_real = (12800 - n // 2) // 160
    assert torch.all(frames[: first_real - 2] == np.float32(math.log(0.01)))
    assert not torch.all(frames[first_real + 3] == np.float32(math.log(0.01)))
    # Handing in only a stretch of the stream (with its offset) gives the same slices.
    part = stream[c - 20000: c + 20000]
    assert torch.allclose(A.full_window_slices(part, centre_s, clip_s, cfg, start_sample=c - 20000), got)
    # Default config resizes to the spec size.
    assert A.full_window_slices(stream, centre_s, clip_s, AudioConfig()).shape == (1, 9, 112, 192)


def test_full_window_near_stream_start_is_silence_padded():
    cfg = AudioConfig(slice_size=(64, 64))
    stream = tone(300, 1.0)
    got = A.full_window_slices(stream, 0.1, 16 / 30, cfg)   # half the clip lies before sample 0
    manual = np.zeros(25600)
    n = int(round(16 / 30 * SR))
    lo = 12800 - n // 2                                      # buffer offset of the clip's first sample
    first_stream = int(round(0.1 * SR)) - n // 2             # negative: before the stream
    manual[lo - first_stream: lo + n] = stream[: n + first_stream]
    assert torch.allclose(got[0], A.frames_to_examples(A.log_mel(manual)), atol=1e-6)


def test_official_frame_spans_follow_the_loader_formula():
    starts, ends = A.official_frame_spans(5, "30", 22050, 10**6)
    # frame 1: centre 0, half a frame = 367.5 samples; frame 2: centre 735.
    assert (starts[1], ends[1]) == (0, 367)
    assert (starts[2], ends[2]) == (367, 1102)
    assert (starts[5], ends[5]) == (int(4 * 735 - 367.5), int(4 * 735 + 367.5))
    _, ends_short = A.official_frame_spans(5, 30, 22050, 1000)
    assert ends_short[5] == 1000


# 22.05 kHz: exactly 9 examples. 16 kHz: 15 examples, the first 9 kept, of which the first two
# lie wholly in the silent head of the 2.2 s buffer (identical). 48 kHz: one example, repeated.
@pytest.mark.parametrize("rate,expect_distinct", [(22050, 9), (16000, 8), (48000, 1)])
def test_official_clip_slices_from_wav(tmp_path, rate, expect_distinct):
    rng = np.random.default_rng(rate)
    seconds = 3.0
    pcm = (np.clip(rng.normal(0, 0.1, int(seconds * rate)) + tone(700, seconds, 0.3, rate), -1, 1)
           * 32767).astype(np.int16)
    path = tmp_path / "clip.wav"
    wavfile.write(path, rate, pcm)
    samples, fs = A.read_wav(str(path))
    assert fs == rate and np.array_equal(samples, pcm / 32768.0)
    cfg = AudioConfig()
    got = A.official_clip_slices(samples, fs, 20, 35, 30.0, cfg, n_frames=90)
    assert got.shape == (1, 9, 112, 192)
    distinct = len({tuple(s.flatten()[::97].tolist()) for s in got[0]})
    assert distinct == expect_distinct
    if rate == 16000:
        # No resampling at 16 kHz: the buffer is 2.205 s -> 15 examples, the first 9 kept.
        starts, ends = A.official_frame_spans(90, 30.0, fs, samples.size)
        excerpt = samples[starts[20]: ends[35] + 1]
        buf = np.zeros(35280)
        buf[17640 - excerpt.size // 2: 17640 - excerpt.size // 2 + excerpt.size] = excerpt
        ex = A.frames_to_examples(A.log_mel(buf))
        assert ex.shape[0] == 15
        assert torch.allclose(got[0], A.resize_slices(ex[:9], (112, 192)), atol=1e-6)


def test_read_wav_errors(tmp_path):
    bad = tmp_path / "float.wav"
    wavfile.write(bad, 16000, np.zeros(100, dtype=np.float32))
    with pytest.raises(SalstreamError, match="16-bit PCM"):
        A.read_wav(str(bad))
    with pytest.raises(SalstreamError, match="cannot read wav"):
        A.read_wav(str(tmp_path / "missing.wav"))
    stereo = tmp_path / "stereo.wav"
    wavfile.write(stereo, 16000, np.array([[100, 300], [-200, 0]], dtype=np.int16))
    mono, _ = A.read_wav(str(stereo))
    np.testing.assert_allclose(mono, [200 / 32768, -100 / 32768])


def test_lite_grid_indices():
    assert A.SLICE_SAMPLES == 10480
    assert A.slice_hop_samples(AudioConfig()) == 1760
    assert A.slice_span(3) == (5280, 5280 + 10480)
    assert A.latest_slices(10480, 1) == [0]
    assert A.latest_slices(10480 + 1759, 2) == [-1, 0]
    assert A.latest_slices(10480 + 1760, 3) == [-1, 0, 1]
    cfg = AudioConfig(slice_hop_seconds=0.2)
    for end in [0, 5000, 10480, 47123, 160000]:
        ks = A.latest_slices(end, 4, cfg)
        assert ks == sorted(ks) and len(ks) == 4
        assert A.slice_span(ks[-1], cfg)[1] <= end < A.slice_span(ks[-1] + 1, cfg)[1]


def test_lite_slices_equal_whole_stream_examples():
    """Per-slice caching is exact: slice k alone == example k of the whole stream's log-mel."""
    rng = np.random.default_rng(3)
    stream = rng.uniform(-1, 1, 3 * SR)
    whole = A.frames_to_examples(A.log_mel(stream))
    hop = A.slice_hop_samples()
    for k in [0, 1, 7, whole.shape[0] - 1]:
        lo, hi = A.slice_span(k)
        one = A.slice_log_mel(stream[lo:hi])
        assert one.shape == (1, 64, 64)
        assert torch.allclose(one[0], whole[k], atol=1e-5)
    assert hop == 11 * 160
    with pytest.raises(SalstreamError, match="exactly 10480"):
        A.slice_log_mel(stream[:10000])


def test_lite_window_slices_pad_before_stream_start():
    cfg = AudioConfig(n_slices=4, slice_size=(64, 64))
    rng = np.random.default_rng(4)
    stream = rng.uniform(-1, 1, 2 * SR).astype(np.float32)
    end = 12000
    got = A.lite_window_slices(stream, end, cfg)
    ks = A.latest_slices(end, 4, cfg)
    assert ks == [-3, -2, -1, 0]
    assert got.shape == (1, 4, 64, 64)
    padded = np.concatenate([np.zeros(3 * 1760, np.float32), stream])
    for i, k in enumerate(ks):
        lo = (k + 3) * 1760
        assert torch.allclose(got[0, i], A.slice_log_mel(padded[lo: lo + 10480])[0])
    # A stretch with an offset gives the same slices as the whole stream.
    later = A.lite_window_slices(stream, 30000, cfg)
    part = A.lite_window_slices(stream[9000:], 30000, cfg, start_sample=9000)
    assert torch.equal(later, part)
