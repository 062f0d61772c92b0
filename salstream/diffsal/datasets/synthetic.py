"""Synthetic audio-visual saliency benchmark: "which of the moving objects is making the sound?".

Every clip shows a few objects moving across a textured background. The objects take
turns being *active*: during its turn (0.20–0.35 s) an object swells and lights up, then
a short pause follows and the next object's turn begins (each round visits every object
once, in a fresh random order, never the same object twice in a row). Exactly one object
is the sounding source: each of its turns is a tone in the soundtrack, with the same
attack and release as the picture. The distractors' turns are silent. Every object is
active equally often and moves just as fast, so from the pictures alone every object
looks equally likely to be the source; only the soundtrack tells them apart (the object
that lights up while the tone plays).

The tone also says roughly *where* the source is when its turn starts, the way a real
soundtrack carries a little spatial prior: its pitch follows the source's height (high
pitch = high up, the pitch-elevation correspondence people also show) and its timbre the
horizontal position (a pure tone at the left edge, ever stronger overtones towards the
right: a stand-in for the stereo panning a mono log-mel cannot hear). So audio alone
narrows the source down to a neighbourhood, and only the picture pins it down.

Ground truth for frame ``i`` mimics an eye-tracking density: most mass on the source
(``SOURCE_MASS``), a centre bias (``CENTRE_MASS``) and a little on the moving distractors
(``MOTION_MASS``), scaled so its maximum is 1 like an 8-bit ``eyeMap`` image. Fixations
are ``n_observers`` points drawn from that density.

Everything is a pure function of ``(seed, frame index)`` or ``(seed, sample range)``, so
a clip can be rendered lazily, in any order, as long as needed (a live source), and two
processes agree on every pixel. Splits use disjoint seed ranges (:data:`SPLIT_SEEDS`).

Version history (:data:`GENERATOR_VERSION`): 1 used short pulses (30 ms attack, 160 ms
decay) on independent irregular rhythms, distractor pulses kept ≥ 0.12 s from the
source's; the ``lite`` model could not learn that fine timing from a 1 s window on the
CPU training budget (audio-visual CC equal to video-only). 2 uses turns.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Disjoint seed ranges per split: clip k of split s has seed SPLIT_SEEDS[s] + k.
SPLIT_SEEDS: dict[str, int] = {"train": 0, "val": 1_000_000, "test": 2_000_000}
SPLIT_SPAN = 1_000_000

SOURCE_MASS = 0.70
CENTRE_MASS = 0.15
MOTION_MASS = 0.15

# Tone pitch range: the bottom of the frame sounds at F_LOW, the top at F_HIGH (log scale).
F_LOW, F_HIGH = 250.0, 2000.0
# Overtones 2…4 at the right edge have these amplitudes (× the fundamental); at the left
# edge none. Overtones above OVERTONE_MAX_HZ are left out (no aliasing at 16 kHz).
OVERTONES_RIGHT = (0.8, 0.6, 0.45)
OVERTONE_MAX_HZ = 7000.0

TURN_SECONDS = (0.20, 0.35)    # duration of one object's active turn
PAUSE_SECONDS = (0.05, 0.15)   # quiet gap before the next turn
_RAMP = 0.03                   # s, linear attack and release of a turn (picture and sound alike)


def split_seed(split: str, index: int) -> int:
    """Seed of clip ``index`` of ``split`` (``train``/``val``/``test``)."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_SEEDS)}")
    if not 0 <= index < SPLIT_SPAN:
        raise ValueError(f"clip index must be in 0…{SPLIT_SPAN - 1}, got {index}")
    return SPLIT_SEEDS[split] + index


@dataclass(frozen=True)
class SceneObject:
    shape: str                 # "disc" | "square" | "diamond"
    color: tuple[int, int, int]
    radius: float              # px, at rest
    start: tuple[float, float]  # px, (x, y) at t = 0 inside the unfolded bounce domain
    velocity: tuple[float, float]  # px/s
    turns: np.ndarray          # (n, 2) s, start and end of each active turn
    sounding: bool


def _envelope(t: np.ndarray, turns: np.ndarray) -> np.ndarray:
    """Activity in [0, 1] at times ``t`` for non-overlapping ``turns`` (n, 2) of (start, end) s.

    A linear ramp up over ``_RAMP`` from the start, 1 until the end, a linear ramp down
    over ``_RAMP`` after it.
    """
    t = np.atleast_1d(np.asarray(t, dtype=np.float64))
    env = np.zeros_like(t)
    if len(turns) == 0:
        return env
    j = np.searchsorted(turns[:, 0], t, side="right") - 1   # the latest turn started by t
    has = j >= 0
    start, end = turns[np.clip(j, 0, None), 0], turns[np.clip(j, 0, None), 1]
    ramp = np.minimum((t - start) / _RAMP, (end + _RAMP - t) / _RAMP)
    env[has] = np.clip(ramp[has], 0.0, 1.0)
    return env


def _bounce(p0: float, v: float, t: np.ndarray | float, lo: float, hi: float) -> np.ndarray:
    """Position of a point moving at constant speed between walls ``lo`` and ``hi`` (elastic)."""
    span = hi - lo
    u = np.mod(p0 - lo + v * np.asarray(t, dtype=np.float64), 2 * span)
    return lo + np.where(u > span, 2 * span - u, u)


class SyntheticClip:
    """One deterministic synthetic clip (see the module docstring).

    ``frame(i)`` (H, W, 3) uint8 RGB; ``audio()`` the whole soundtrack, float32 mono in
    [-1, 1]; ``audio_between(t0, t1)`` any time span (zeros outside the clip);
    ``density(i)`` (H, W) float32 with max 1; ``fixations(i)`` (H, W) bool.
    Frame ``i`` is shown at time ``i / fps``.
    """

    def __init__(self, seed: int, width: int = 384, height: int = 224, fps: float = 30.0,
                 sample_rate: int = 16000, n_frames: int = 150, n_objects: int = 3,
                 n_observers: int = 16):
        if width < 64 or height < 48:
            raise ValueError(f"clip size {width}x{height} is too small; use at least 64x48")
        if n_objects < 2:
            raise ValueError(f"n_objects must be ≥ 2 (one source and at least one distractor), got {n_objects}")
        if fps <= 0 or sample_rate <= 0 or n_frames <= 0:
            raise ValueError("fps, sample_rate and n_frames must be positive")
        self.seed = int(seed)
        self.width, self.height = int(width), int(height)
        self.fps, self.sample_rate, self.n_frames = float(fps), int(sample_rate), int(n_frames)
        self.n_observers = int(n_observers)
        self.duration = self.n_frames / self.fps
        rng = np.random.default_rng([self.seed, 0])
        self._background = self._make_background(rng)
        self.objects = self._make_objects(rng, n_objects)
        self.source_index = next(k for k, o in enumerate(self.objects) if o.sounding)
        # Pixel grid, shared by all renders.
        self._yy, self._xx = np.mgrid[0:self.height, 0:self.width].astype(np.float32)
        cx, cy, sx, sy = self.width / 2, self.height / 2, self.width / 4, self.height / 4
        centre = np.exp(-0.5 * (((self._xx - cx) / sx) ** 2 + ((self._yy - cy) / sy) ** 2))
        self._centre = (centre / centre.sum()).astype(np.float32)

    # ------------------------------------------------------------------ scene set-up
    def _make_background(self, rng: np.random.Generator) -> np.ndarray:
        return sine_background(rng, self.height, self.width)

    def _make_objects(self, rng: np.random.Generator, n: int) -> list[SceneObject]:
        shapes = ("disc", "square", "diamond")
        hues = rng.permutation(12)[:n] / 12.0
        source = int(rng.integers(n))
        scale = min(self.width / 384, self.height / 224)
        turns = self._turns(rng, n)
        objs = []
        for k in range(n):
            r = float(rng.uniform(15, 24)) * scale
            speed = float(rng.uniform(50, 90)) * scale
            ang = float(rng.uniform(0, 2 * np.pi))
            objs.append(SceneObject(
                shape=shapes[int(rng.integers(len(shapes)))],
                color=_hsv_to_rgb(float(hues[k]), 0.75, 0.85),
                radius=r,
                start=(float(rng.uniform(0, self.width)), float(rng.uniform(0, self.height))),
                velocity=(speed * math.cos(ang), speed * math.sin(ang)),
                turns=turns[k],
                sounding=(k == source),
            ))
        return objs

    def _turns(self, rng: np.random.Generator, n: int) -> list[np.ndarray]:
        """Per object, its (start, end) turns: rounds over all objects in random order."""
        per_object: list[list[tuple[float, float]]] = [[] for _ in range(n)]
        t = float(rng.uniform(0.0, 0.3))
        last = -1
        while t < self.duration + 1.0:
            order = rng.permutation(n)
            if order[0] == last:           # never the same object twice in a row
                order = np.roll(order, -1)
            for k in order:
                d = float(rng.uniform(*TURN_SECONDS))
                per_object[int(k)].append((t, t + d))
                t += d + float(rng.uniform(*PAUSE_SECONDS))
            last = int(order[-1])
        return [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in per_object]

    # ------------------------------------------------------------------ state at a time
    def object_state(self, k: int, t: float) -> tuple[float, float, float, float]:
        """(x, y, radius, activity) of object ``k`` at time ``t`` s; activity in [0, 1]."""
        o = self.objects[k]
        margin = o.radius * 1.4
        x = float(_bounce(o.start[0], o.velocity[0], t, margin, self.width - margin))
        y = float(_bounce(o.start[1], o.velocity[1], t, margin, self.height - margin))
        active = float(_envelope(np.array([t]), o.turns)[0])
        return x, y, o.radius * (1.0 + 0.35 * active), active

    def _check_frame(self, i: int) -> int:
        if not 0 <= int(i) < self.n_frames:
            raise IndexError(f"frame {i} is outside the clip (0…{self.n_frames - 1})")
        return int(i)

    # ------------------------------------------------------------------ video
    def frame(self, i: int) -> np.ndarray:
        i = self._check_frame(i)
        t = i / self.fps
        img = self._background.copy()
        for k, o in enumerate(self.objects):
            x, y, r, active = self.object_state(k, t)
            x0, x1 = max(0, int(x - r - 2)), min(self.width, int(x + r + 3))
            y0, y1 = max(0, int(y - r - 2)), min(self.height, int(y + r + 3))
            dx = self._xx[y0:y1, x0:x1] - x
            dy = self._yy[y0:y1, x0:x1] - y
            if o.shape == "disc":
                d = np.sqrt(dx * dx + dy * dy)
            elif o.shape == "square":
                d = np.maximum(np.abs(dx), np.abs(dy)) * 1.1
            else:
                d = (np.abs(dx) + np.abs(dy)) * 0.8
            cover = np.clip(r - d + 0.5, 0.0, 1.0)[..., None]  # 1-px anti-aliased edge
            col = np.asarray(o.color, np.float32)
            col = col + active * (255.0 - col) * 0.8  # lights up while active
            img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - cover) + col * cover
        # Sensor noise, deterministic per frame.
        noise = np.random.default_rng([self.seed, 1, i]).normal(0.0, 2.0, size=img.shape[:2])
        img += noise[..., None].astype(np.float32)
        return np.clip(img + 0.5, 0, 255).astype(np.uint8)

    # ------------------------------------------------------------------ audio
    def pitch_at(self, t: float) -> float:
        """Tone frequency (Hz) for a turn starting at ``t``: log-linear in the source's height."""
        _, y, _, _ = self.object_state(self.source_index, t)
        up = 1.0 - y / self.height
        return float(F_LOW * (F_HIGH / F_LOW) ** up)

    def overtones_at(self, t: float) -> tuple[float, ...]:
        """Amplitudes of overtones 2, 3, 4 (× the fundamental) for a turn starting at ``t``:
        proportional to the source's horizontal position (0 at the left edge)."""
        x, _, _, _ = self.object_state(self.source_index, t)
        right = min(max(x / self.width, 0.0), 1.0)
        f = self.pitch_at(t)
        return tuple(a * right if (k + 2) * f < OVERTONE_MAX_HZ else 0.0
                     for k, a in enumerate(OVERTONES_RIGHT))

    def audio(self) -> np.ndarray:
        return self.audio_between(0.0, self.duration)

    def audio_between(self, t0: float, t1: float) -> np.ndarray:
        """Samples ``round(t0·sr)`` … ``round(t1·sr) − 1``; silence outside the clip."""
        sr = self.sample_rate
        n0, n1 = int(round(t0 * sr)), int(round(t1 * sr))
        if n1 < n0:
            raise ValueError(f"audio_between: t1 ({t1}) is before t0 ({t0})")
        out = np.zeros(n1 - n0, np.float32)
        a, b = max(n0, 0), min(n1, int(round(self.duration * sr)))
        if b <= a:
            return out
        t = np.arange(a, b, dtype=np.float64) / sr
        src = self.objects[self.source_index]
        env = _envelope(t, src.turns)
        # Each turn is one note at the pitch of its start, so phase is continuous within it.
        starts = src.turns[:, 0]
        idx = np.searchsorted(starts, t, side="right") - 1
        sig = np.zeros_like(t)
        has = idx >= 0
        if has.any():
            j = np.clip(idx, 0, None)
            onset = starts[j]
            f = np.array([self.pitch_at(float(o)) for o in starts])[j]
            over = np.array([self.overtones_at(float(o)) for o in starts]).reshape(len(starts), -1)[j]
            ph = 2 * np.pi * f * (t - onset)
            tone = np.sin(ph) + sum(over[:, k] * np.sin((k + 2) * ph) for k in range(over.shape[1]))
            tone /= np.sqrt(1.0 + (over ** 2).sum(axis=1))   # same loudness (RMS) whatever the timbre
            sig = np.where(has, tone, 0.0) * env * 0.5
        sig += self._hiss(a, b)
        out[a - n0:b - n0] = np.clip(sig, -1.0, 1.0)
        return out

    def _hiss(self, a: int, b: int) -> np.ndarray:
        # Quiet room noise in one-second blocks seeded by block index: any span is reproducible.
        sr = self.sample_rate
        blocks = range(a // sr, (b - 1) // sr + 1)
        noise = np.concatenate([np.random.default_rng([self.seed, 2, k]).normal(0.0, 0.01, sr) for k in blocks])
        start = a - blocks[0] * sr
        return noise[start:start + (b - a)]

    # ------------------------------------------------------------------ ground truth
    def density(self, i: int) -> np.ndarray:
        i = self._check_frame(i)
        t = i / self.fps
        n_dis = len(self.objects) - 1
        blobs = []
        for k, o in enumerate(self.objects):
            x, y, r, _ = self.object_state(k, t)
            blobs.append((x, y, r, SOURCE_MASS if o.sounding else MOTION_MASS / n_dis))
        return mixture_density(self._centre, self._xx, self._yy, blobs)

    def fixations(self, i: int) -> np.ndarray:
        return sample_fixations(self.density(i), self.seed, int(i), self.n_observers)

    def describe(self) -> dict:
        return {"seed": self.seed, "size": [self.width, self.height], "fps": self.fps,
                "sample_rate": self.sample_rate, "n_frames": self.n_frames,
                "source_index": self.source_index,
                "objects": [{"shape": o.shape, "color": list(o.color), "radius": o.radius,
                             "sounding": o.sounding, "n_turns": int(np.sum(o.turns[:, 0] < self.duration))}
                            for o in self.objects]}


def mixture_density(centre: np.ndarray, xx: np.ndarray, yy: np.ndarray,
                    blobs: list[tuple[float, float, float, float]], partly_outside: bool = False) -> np.ndarray:
    """The ground-truth fixation density: ``CENTRE_MASS`` × ``centre`` (a normalised centre
    bias) plus, per ``(x, y, radius, mass)``, ``mass`` spread as a Gaussian of σ = 0.8·radius
    around (x, y); scaled so its maximum is 1 like an 8-bit ``eyeMap`` image.

    Each Gaussian is normalised over the picture, unless ``partly_outside`` (objects may
    leave the picture): then over the whole plane, so the part of an object outside the
    picture takes its share of the mass with it instead of piling it up at the border."""
    dens = CENTRE_MASS * centre
    for x, y, r, mass in blobs:
        sigma = 0.8 * r
        g = np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / sigma ** 2)
        total = 2 * np.pi * sigma ** 2 if partly_outside else g.sum()
        if total > 0:
            dens = dens + mass * (g / total)
    return (dens / dens.max()).astype(np.float32)


def sine_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32 background: a low-frequency colour field plus fine static texture
    (real-ish, but never pulsing)."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = rng.uniform(60, 150, size=3)
    img = np.empty((h, w, 3), np.float32)
    for c in range(3):
        field = np.zeros((h, w))
        for _ in range(4):
            fx, fy = rng.uniform(0.5, 3.0, size=2)
            ph = rng.uniform(0, 2 * np.pi)
            field += np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)
        img[..., c] = base[c] + 12.0 * field
    img += rng.normal(0.0, 6.0, size=(h, w, 1))
    return img


def sample_fixations(density: np.ndarray, seed: int, i: int, n_observers: int) -> np.ndarray:
    """``n_observers`` fixations of frame ``i`` drawn from ``density`` (bool map, seeded by clip and frame)."""
    p = density.ravel().astype(np.float64)
    p /= p.sum()
    rng = np.random.default_rng([seed, 3, int(i)])
    picks = rng.choice(p.size, size=n_observers, p=p)
    fix = np.zeros(p.size, bool)
    fix[picks] = True
    return fix.reshape(density.shape)


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return int(r * 255), int(g * 255), int(b * 255)


# ---------------------------------------------------------------------- on-disk writer
DATASET_NAME = "Synthetic"
GENERATOR_VERSION = 2  # bump when the rendering changes, so stale caches are rebuilt


def clip_name(split: str, index: int) -> str:
    return f"{split}_{index:04d}"


def write_clip(root, clip: "SyntheticClip", name: str, dataset: str = DATASET_NAME) -> None:
    """Write one clip in the STAViS audio-visual layout (see :mod:`diffsal.datasets.layout`)."""
    from pathlib import Path

    from PIL import Image
    from scipy.io import savemat

    from salstream.diffsal.datasets.layout import write_wav

    root = Path(root)
    fdir = root / "video_frames" / dataset / name
    mdir = root / "annotations" / dataset / name / "maps"
    adir = root / "annotations" / dataset / name
    fdir.mkdir(parents=True, exist_ok=True)
    mdir.mkdir(parents=True, exist_ok=True)
    for i in range(clip.n_frames):
        Image.fromarray(clip.frame(i)).save(fdir / f"img_{i + 1:05d}.jpg", quality=92)
        dens = np.clip(clip.density(i) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        Image.fromarray(dens).save(mdir / f"eyeMap_{i + 1:05d}.jpg", quality=95)
        savemat(str(adir / f"fixMap_{i + 1:05d}.mat"), {"eyeMap": clip.fixations(i).astype(np.uint8)},
                do_compression=True)
    write_wav(root / "video_audio" / dataset / name / f"{name}.wav", clip.audio(), clip.sample_rate)


def write_synthetic(root, splits: dict[str, int], n_frames: int = 150, width: int = 384,
                    height: int = 224, fps: float = 30.0, sample_rate: int = 16000,
                    progress: bool = False) -> "Path":
    """Write the synthetic benchmark under ``root`` and return ``root``.

    ``splits`` maps split name (``train``/``val``/``test``) to a number of clips; clip k
    of a split is ``SyntheticClip(split_seed(split, k))``. A ``synthetic.json`` manifest
    records the parameters; calling again with the same parameters reuses what exists.
    """
    import json
    from pathlib import Path

    from salstream.diffsal.datasets.layout import VideoEntry, split_file, write_split_file

    root = Path(root)
    params = {"version": GENERATOR_VERSION, "n_frames": n_frames, "width": width, "height": height,
              "fps": fps, "sample_rate": sample_rate}
    manifest = root / "synthetic.json"
    done: dict = {}
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text())
        except ValueError:
            old = {"params": params}      # a torn manifest: the clips are rewritten below
        if old.get("params") != params:
            # Rewriting the clips in place would change them under a run that uses them.
            from salstream.errors import SalstreamError
            raise SalstreamError(f"{root} holds a synthetic set made with other parameters ({old.get('params')}); "
                                 "use synthetic_root() for a folder of its own, or delete it")
        done = old.get("splits", {})
    root.mkdir(parents=True, exist_ok=True)
    for split, count in splits.items():
        split_seed(split, 0)  # validates the split name
        have = int(done.get(split, 0))
        # The split lists every clip written so far (a run asking for fewer never shrinks it).
        entries = [VideoEntry(clip_name(split, k), n_frames, fps) for k in range(max(have, count))]
        todo = range(have, count)
        it = todo
        if progress and len(todo):
            from tqdm import tqdm
            it = tqdm(todo, desc=f"synthetic {split}", unit="clip")
        for k in it:
            clip = SyntheticClip(split_seed(split, k), width=width, height=height, fps=fps,
                                 sample_rate=sample_rate, n_frames=n_frames)
            write_clip(root, clip, clip_name(split, k))
        write_split_file(split_file(root, DATASET_NAME, split, 1), entries)
        done[split] = max(have, count)
        tmp = manifest.with_name(f".{manifest.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"params": params, "splits": done}, indent=1))
        os.replace(tmp, manifest)
    return root


def synthetic_root(base, n_frames: int = 150, width: int = 384, height: int = 224, fps: float = 30.0,
                   sample_rate: int = 16000) -> Path:
    """Where the synthetic set made with these parameters lives under ``base``: the default set in
    ``synthetic/``, any other in a folder named by its parameters, so runs with different settings
    never rewrite each other's clips."""
    if (n_frames, width, height, fps, sample_rate) == (150, 384, 224, 30.0, 16000):
        return Path(base) / "synthetic"
    return Path(base) / f"synthetic-{n_frames}f-{width}x{height}-{fps:g}fps-{sample_rate}hz"
