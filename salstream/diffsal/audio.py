"""Log-mel audio features: the one implementation used by training, evaluation and streaming.

Everything here works on **16 kHz mono float waveforms in [-1, 1]**, indexed by sample
number. The feature is the VGGish-style log-mel spectrogram (spec §1.3):

* STFT frames of 400 samples (25 ms) every 160 samples (10 ms), periodic Hann window,
  512-point FFT, **magnitude** (not power), no centring and no padding, so a waveform of
  ``n`` samples has ``1 + (n - 400) // 160`` frames;
* 64 triangular filters evenly spaced on the HTK mel scale between 125 Hz and 7500 Hz
  (the DC bin gets weight 0), then ``log(mel + 0.01)``;
* examples ("slices") of 64 consecutive frames (0.64 s), one every 11 frames (0.11 s).

Two ways to cut a stream into slices live here:

``full`` (window-centred, parity with the official code)
    :func:`full_window_slices` builds a 1.6 s buffer around the window's centre, keeps real
    audio only inside the window's own clip and digital silence elsewhere, and returns its
    9 slices. :func:`official_clip_slices` reproduces the offline path of the official data
    loader from a wav at its native rate.

``lite`` (a causal grid anchored to stream time, cacheable)
    Slice ``k`` covers samples ``[k*H, k*H + SLICE_SAMPLES)`` of the stream, with
    ``H = round(slice_hop_seconds * 16000)`` (1760 for 0.11 s) and
    ``SLICE_SAMPLES = 400 + 63 * 160 = 10480``. A slice depends only on its own samples,
    so its features can be computed once when it completes and reused by every later
    window. :func:`latest_slices` says which slices a window ending at a given sample
    uses, :func:`slice_span` where a slice lies and :func:`slice_log_mel` computes one.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from salstream.diffsal.config import AudioConfig
from salstream.errors import SalstreamError

SAMPLE_RATE = 16000
STFT_WINDOW = 400            # 25 ms
STFT_HOP = 160               # 10 ms
FFT_SIZE = 512
N_MELS = 64
MEL_LOW_HZ = 125.0
MEL_HIGH_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 64          # STFT frames per slice (0.64 s)
EXAMPLE_HOP_FRAMES = 11      # STFT frames between slices (0.11 s)
# Samples one slice needs: the first STFT frame plus 63 hops.
SLICE_SAMPLES = STFT_WINDOW + (EXAMPLE_FRAMES - 1) * STFT_HOP
# What digital silence becomes after the log: log(0 + 0.01).
SILENCE_LOG_MEL = math.log(LOG_OFFSET)

# `full` streaming rule: a 1.6 s buffer at 16 kHz centred on the window centre.
FULL_BUFFER_SAMPLES = 25600
# Offline official path: zero buffer of int(22050 / 10 * 16) samples at the wav's native rate.
OFFICIAL_BUFFER_NATIVE = 35280
OFFICIAL_N_SLICES = 9

ArrayLike = np.ndarray | torch.Tensor | Sequence[float]


# --------------------------------------------------------------------------- mel filterbank

def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: 1127 · ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    return 700.0 * np.expm1(np.asarray(mel, dtype=np.float64) / 1127.0)


def mel_filterbank(n_mels: int = N_MELS, n_bins: int = FFT_SIZE // 2 + 1, sample_rate: int = SAMPLE_RATE,
                   low_hz: float = MEL_LOW_HZ, high_hz: float = MEL_HIGH_HZ) -> np.ndarray:
    """(n_bins, n_mels) float64 matrix mapping an STFT magnitude row to mel bands.

    Bin ``i`` sits at ``i · (sample_rate / 2) / (n_bins - 1)`` Hz. Band ``m`` is a triangle on
    the mel axis rising from edge ``m`` to edge ``m + 1`` and falling to edge ``m + 2``, the
    ``n_mels + 2`` edges evenly spaced in mel between ``low_hz`` and ``high_hz``. Triangles
    peak at 1 on the mel axis (no area normalisation), and the DC bin is zeroed.
    """
    bins_mel = hz_to_mel(np.linspace(0.0, sample_rate / 2.0, n_bins))[:, None]
    edges = np.linspace(hz_to_mel(low_hz), hz_to_mel(high_hz), n_mels + 2)
    lo, mid, hi = edges[:-2][None], edges[1:-1][None], edges[2:][None]
    rising = (bins_mel - lo) / (mid - lo)
    falling = (hi - bins_mel) / (hi - mid)
    weights = np.clip(np.minimum(rising, falling), 0.0, None)
    weights[0, :] = 0.0
    return weights


@lru_cache(maxsize=4)
def _filterbank_tensor(dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(mel_filterbank()).to(dtype)


@lru_cache(maxsize=4)
def _hann_tensor(dtype: torch.dtype) -> torch.Tensor:
    # Periodic Hann: 0.5 - 0.5 cos(2πn/N), n = 0…N-1 (not the symmetric N-1 form).
    return torch.hann_window(STFT_WINDOW, periodic=True, dtype=dtype)


# --------------------------------------------------------------------------- log-mel

def _as_waveform(waveform: ArrayLike, name: str = "waveform") -> torch.Tensor:
    x = waveform if isinstance(waveform, torch.Tensor) else torch.as_tensor(np.asarray(waveform))
    if x.dim() != 1:
        raise SalstreamError(f"{name} must be 1-D mono samples, got shape {tuple(x.shape)}; "
                             "average the channels first")
    if not torch.is_floating_point(x):
        raise SalstreamError(f"{name} must hold float samples in [-1, 1], got dtype {x.dtype}; "
                             "divide int16 PCM by 32768")
    return x


def log_mel(waveform_16k: ArrayLike, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Log-mel spectrogram (n_frames, 64) of a 16 kHz mono waveform in [-1, 1].

    Computed in float64 (like the numpy reference) and returned as ``dtype``.
    ``n_frames = 1 + (n - 400) // 160``; fewer than 400 samples is an error.
    """
    x = _as_waveform(waveform_16k).to(torch.float64)
    if x.numel() < STFT_WINDOW:
        raise SalstreamError(f"need at least {STFT_WINDOW} samples (25 ms at 16 kHz) for one log-mel "
                             f"frame, got {x.numel()}")
    frames = x.unfold(0, STFT_WINDOW, STFT_HOP) * _hann_tensor(torch.float64)
    # rfft with n=512 zero-pads each 400-sample frame at its end, as the reference does.
    magnitude = torch.fft.rfft(frames, n=FFT_SIZE).abs()
    mel = magnitude @ _filterbank_tensor(torch.float64)
    return torch.log(mel + LOG_OFFSET).to(dtype)


def frames_to_examples(log_mel_frames: torch.Tensor) -> torch.Tensor:
    """Cut (n_frames, 64) into (N_ex, 64 time, 64 mel) examples: 64 frames every 11, no padding."""
    n = log_mel_frames.shape[0]
    if n < EXAMPLE_FRAMES:
        raise SalstreamError(f"need at least {EXAMPLE_FRAMES} log-mel frames ({SLICE_SAMPLES} samples at "
                             f"16 kHz) for one slice, got {n}")
    # unfold appends the window axis last: (N_ex, mel, time) -> (N_ex, time, mel)
    return log_mel_frames.unfold(0, EXAMPLE_FRAMES, EXAMPLE_HOP_FRAMES).transpose(1, 2).contiguous()


def resize_slices(examples: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize (..., 64, 64) examples to ``size`` (rows = time, columns = mel).

    Bilinear, ``align_corners=False``, **no antialiasing**: what torchvision's tensor
    ``Resize`` did in the version the official code ran (0.15, where ``antialias=None``
    meant off for tensors). Current torchvision defaults to ``antialias=True``; for the
    upsampling used here (64×64 → 112×192) the two agree to ~2e-5, they differ only when
    shrinking. A 64×64 target is returned unchanged.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(examples.shape[-2:]) == size:
        return examples
    lead = examples.shape[:-2]
    flat = examples.reshape(-1, 1, *examples.shape[-2:])
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False, antialias=False)
    return out.reshape(*lead, *size)


def repeat_to_n(examples: torch.Tensor, n: int = OFFICIAL_N_SLICES) -> torch.Tensor:
    """The official rule for a wrong example count: repeat each example ``n // N`` times
    (interleaved), append the first ``n % N`` examples, keep the first ``n``."""
    have = examples.shape[0]
    if have == n:
        return examples
    reps = n // have
    out = torch.repeat_interleave(examples, reps, dim=0) if reps else examples
    out = torch.cat([out, examples[: n % have]], dim=0)
    return out[:n]


def waveform_to_slices(waveform_16k: ArrayLike, slice_size: Sequence[int] = (64, 64)) -> torch.Tensor:
    """All complete slices of a waveform: (N_ex, 1, h, w) float32."""
    ex = frames_to_examples(log_mel(waveform_16k))
    return resize_slices(ex, slice_size).unsqueeze(1)


# --------------------------------------------------------------------------- full: window-centred

def full_window_slices(samples_16k: ArrayLike, center_s: float, clip_seconds: float, cfg: AudioConfig,
                       start_sample: int = 0) -> torch.Tensor:
    """The 9 slices of a ``full`` window, (1, 9, h, w) float32 (spec §1.3 streaming rule).

    ``samples_16k`` is a stretch of the stream at 16 kHz whose first element is stream
    sample ``start_sample``. The window's centre is at ``center_s`` seconds of stream time
    (for the official clip timing: half a frame before the target frame, (j + 6.5) / fps).
    A 25 600-sample (1.6 s) buffer is centred there; only the middle ``clip_seconds``
    (16 / fps) carry real audio, the rest is digital silence, exactly as in training.
    Samples the stretch does not hold (before it starts or after it ends) are silence too.
    """
    if cfg.sample_rate != SAMPLE_RATE:
        raise SalstreamError(f"audio config sample_rate must be {SAMPLE_RATE}, got {cfg.sample_rate}")
    x = _as_waveform(samples_16k, "samples_16k")
    centre = int(round(center_s * SAMPLE_RATE))
    n_real = min(int(round(clip_seconds * SAMPLE_RATE)), FULL_BUFFER_SAMPLES)
    buf_start = centre - FULL_BUFFER_SAMPLES // 2
    real_lo = FULL_BUFFER_SAMPLES // 2 - n_real // 2   # offsets inside the buffer
    real_hi = real_lo + n_real
    buf = torch.zeros(FULL_BUFFER_SAMPLES, dtype=torch.float64)
    # Intersect the real span with what the caller's stretch holds.
    lo = max(real_lo, start_sample - buf_start)
    hi = min(real_hi, start_sample + x.numel() - buf_start)
    if hi > lo:
        buf[lo:hi] = x[buf_start + lo - start_sample: buf_start + hi - start_sample].to(torch.float64)
    ex = frames_to_examples(log_mel(buf))
    ex = repeat_to_n(ex, cfg.n_slices)
    return resize_slices(ex, cfg.slice_size).unsqueeze(0)


def read_wav(path: str) -> tuple[np.ndarray, int]:
    """Read a 16-bit PCM wav as float64 in [-1, 1] (int16 / 32768) and its native rate.

    Multi-channel files are averaged to mono (the official loader assumes mono input).
    """
    from scipy.io import wavfile

    try:
        rate, data = wavfile.read(path)
    except (OSError, ValueError) as exc:
        raise SalstreamError(f"cannot read wav {path!r}: {exc}; convert it to 16-bit PCM wav") from exc
    if data.dtype != np.int16:
        raise SalstreamError(f"wav {path!r} holds {data.dtype} samples; the official features expect "
                             "16-bit PCM (e.g. ffmpeg -i in.wav -acodec pcm_s16le out.wav)")
    samples = data.astype(np.float64) / 32768.0
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    return samples, int(rate)


def official_frame_spans(n_frames: int, fps: float, rate: int, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame sample spans of the official loader, 1-based (index 0 unused).

    Frame ``k`` covers ``int(max(0, (k-1)·Fs/fps − Fs/(2 fps)))`` …
    ``int(min(N, (k-1)·Fs/fps + Fs/(2 fps)))``, inclusive; arithmetic in the same order as
    the reference so the int truncations agree.
    """
    fps = float(fps)
    half = rate / fps / 2
    starts = np.zeros(n_frames + 1, dtype=np.int64)
    ends = np.zeros(n_frames + 1, dtype=np.int64)
    for k in range(1, n_frames + 1):
        pos = (k - 1) * (1.0 / fps) * rate
        starts[k] = int(max(0, pos - half))
        ends[k] = int(min(n_samples, abs(pos + half)))
    return starts, ends


def _resample_to_16k(x: np.ndarray, rate: int) -> np.ndarray:
    from scipy.signal import resample_poly

    if rate == SAMPLE_RATE:
        return x
    g = math.gcd(SAMPLE_RATE, rate)
    y = resample_poly(x, SAMPLE_RATE // g, rate // g)
    return y[: int(x.shape[0] * SAMPLE_RATE / rate)]


def official_clip_slices(samples: np.ndarray, rate: int, first_frame: int, last_frame: int, fps: float,
                         cfg: AudioConfig, n_frames: Optional[int] = None) -> torch.Tensor:
    """Offline official audio for the clip of 1-based frames ``first_frame…last_frame``: (1, 9, h, w).

    ``samples``: the whole wav at its native ``rate`` as float in [-1, 1] (see
    :func:`read_wav`). The excerpt from the first frame's start to the last frame's end
    (inclusive) is written centred into a zero buffer of 35 280 native samples, the buffer
    is resampled to 16 kHz, cut into slices, repeated to 9 when the rate does not give
    exactly 9 (only 22.05 kHz does) and resized to ``cfg.slice_size``.

    Known deviation: the reference resamples with resampy's ``kaiser_best`` filter, which
    is not installed here; scipy's ``resample_poly`` (Kaiser-windowed polyphase FIR) is
    used instead, so values differ slightly (the 16 kHz length is the same).
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1:
        raise SalstreamError(f"samples must be mono (1-D), got shape {x.shape}")
    total_frames = n_frames if n_frames is not None else max(last_frame, 1)
    if not 1 <= first_frame <= last_frame <= total_frames:
        raise SalstreamError(f"frame range {first_frame}…{last_frame} is not inside 1…{total_frames} "
                             "(frames are 1-based)")
    starts, ends = official_frame_spans(total_frames, fps, rate, x.shape[0])
    excerpt = x[starts[first_frame]: ends[last_frame] + 1]
    buf = np.zeros(OFFICIAL_BUFFER_NATIVE, dtype=np.float64)
    n = min(excerpt.shape[0], OFFICIAL_BUFFER_NATIVE)
    lo = OFFICIAL_BUFFER_NATIVE // 2 - n // 2
    buf[lo: lo + n] = excerpt[:n]
    ex = frames_to_examples(log_mel(torch.from_numpy(_resample_to_16k(buf, rate))))
    ex = repeat_to_n(ex, cfg.n_slices)
    return resize_slices(ex, cfg.slice_size).unsqueeze(0)


# --------------------------------------------------------------------------- lite: causal slice grid

def slice_hop_samples(cfg: Optional[AudioConfig] = None) -> int:
    """Samples between the starts of two consecutive grid slices (1760 for 0.11 s)."""
    cfg = cfg or AudioConfig()
    return int(round(cfg.slice_hop_seconds * cfg.sample_rate))


def slice_span(k: int, cfg: Optional[AudioConfig] = None) -> tuple[int, int]:
    """Stream samples ``[start, end)`` covered by grid slice ``k`` (``end - start == SLICE_SAMPLES``).

    Negative ``k`` (or any part before sample 0) lies before the stream began: fill it with
    zeros (digital silence), which is also what training does at the start of a clip.
    """
    start = int(k) * slice_hop_samples(cfg)
    return start, start + SLICE_SAMPLES


def latest_slices(end_sample: int, n: int, cfg: Optional[AudioConfig] = None) -> list[int]:
    """The ``n`` newest complete grid slices ending at or before stream sample ``end_sample``.

    ``end_sample`` is exclusive (the number of samples received, or the sample index at
    the newest frame's timestamp for a causal window). Slice ``k`` is complete when
    ``k·H + SLICE_SAMPLES <= end_sample``. Returned oldest first; indices may be negative
    at the start of a stream (see :func:`slice_span`).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    newest = (int(end_sample) - SLICE_SAMPLES) // slice_hop_samples(cfg)  # floor division, also for < 0
    return list(range(newest - n + 1, newest + 1))


def slice_log_mel(samples: ArrayLike, slice_size: Sequence[int] = (64, 64)) -> torch.Tensor:
    """Features of one grid slice: exactly ``SLICE_SAMPLES`` samples -> (1, h, w) float32.

    Identical to the corresponding example of :func:`log_mel` over the whole stream, so
    per-slice caching gives the same numbers as slicing a long recording at once.
    """
    x = _as_waveform(samples, "samples")
    if x.numel() != SLICE_SAMPLES:
        raise SalstreamError(f"one slice needs exactly {SLICE_SAMPLES} samples at 16 kHz, got {x.numel()}")
    ex = log_mel(x).unsqueeze(0)                      # (1, 64 time, 64 mel)
    return resize_slices(ex, slice_size)


def grid_slices(samples_16k: ArrayLike, indices: Sequence[int], cfg: Optional[AudioConfig] = None,
                start_sample: int = 0) -> torch.Tensor:
    """Grid slices ``indices`` of a stretch of stream: (1, S, h, w) float32.

    ``samples_16k[0]`` is stream sample ``start_sample``; anything a slice needs outside
    the stretch is silence. Used to build a whole ``lite`` window offline (training,
    evaluation); a live stream computes the same slices one at a time with
    :func:`slice_log_mel` and caches them.
    """
    cfg = cfg or AudioConfig()
    x = _as_waveform(samples_16k, "samples_16k")
    out = []
    for k in indices:
        lo, hi = slice_span(k, cfg)
        seg = torch.zeros(SLICE_SAMPLES, dtype=x.dtype)
        a, b = max(lo, start_sample), min(hi, start_sample + x.numel())
        if b > a:
            seg[a - lo: b - lo] = x[a - start_sample: b - start_sample]
        out.append(slice_log_mel(seg, cfg.slice_size))
    return torch.cat(out, dim=0).unsqueeze(0)


def lite_window_slices(samples_16k: ArrayLike, end_sample: int, cfg: AudioConfig,
                       start_sample: int = 0) -> torch.Tensor:
    """The ``cfg.n_slices`` newest grid slices complete at ``end_sample``: (1, S, h, w)."""
    return grid_slices(samples_16k, latest_slices(end_sample, cfg.n_slices, cfg), cfg, start_sample)
