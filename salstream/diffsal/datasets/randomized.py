"""Domain-randomised audio-visual clips: does a model find the sounding object in scenes of
a style it never saw?

The benchmark generator (:mod:`diffsal.datasets.synthetic`) has one look and one rule, so
a model can learn its shortcuts (pitch ↔ height, timbre ↔ x, objects taking turns) instead
of the relation real footage has: *a sound starts when something visibly happens*. Clips
here keep only that relation and randomise everything else:

* a few objects (2–4) move over a background, seen by a camera that may pan, zoom or
  shake, under lighting that may drift or flicker;
* every object has *visible events* of the clip's one event kind (a flash, a size pulse,
  a bounce whose landings are the events, an abrupt turn, a sideways jolt, a mouth-like
  opening), at irregular times with the same statistics for every object;
* the soundtrack has one sound (of the clip's sound kind: tone, noise burst, vowel, plucked
  string, knock, chirp, click) at each event of the sounding object, at a random pitch /
  band per event (no mapping from pitch or timbre to position), over background noise or
  music that matches nothing on screen. The distractors' events are identical in kind but
  never within :data:`SYNC_GAP` of a sound onset;
* *off-screen* clips: the sounds come from no visible object; every object's events are
  off-sync with them.

Styles are drawn from *families* (:data:`STYLE_FAMILIES`: background, object, event, sound,
ambience); each factor's families are split into ``in`` (the families a model may be trained
on) and ``held-out`` (never used for training), so a score on held-out-style clips measures
transfer, not memory. Camera motion and lighting (:data:`SHARED_FAMILIES`) are nuisances
drawn in full by every clip: variety to learn to ignore, not a look to transfer to.

Ground truth follows the benchmark generator (:func:`~diffsal.datasets.synthetic.mixture_density`):
``CENTRE_MASS`` on a centre bias, ``SOURCE_MASS`` on the sounding object and
``MOTION_MASS`` shared by the distractors. Without a visible source (off-screen clips)
it is the video-only density: the centre bias plus an equal share for every moving
object. That same video-only density is the clip's ``equal-blob`` reference map
(:meth:`RandomizedClip.references`): the best a model that ignores the sound can do.

Like the benchmark, a clip is a pure function of its seed; frame ``i`` is shown at
``i / fps``. Evaluation splits use disjoint seed ranges (:data:`CROSS_STYLE_SEEDS`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from salstream.diffsal.datasets.synthetic import (
    CENTRE_MASS,
    MOTION_MASS,
    SOURCE_MASS,
    _bounce,
    _hsv_to_rgb,
    mixture_density,
    sample_fixations,
    sine_background,
)

# factor -> style split -> families. A clip of style split s draws every factor from s:
# what the scene looks and sounds like.
STYLE_FAMILIES: dict[str, dict[str, tuple[str, ...]]] = {
    "background": {"in": ("sines", "gradient", "noise", "clutter"), "held-out": ("blobs", "stripes")},
    "object": {"in": ("disc", "square", "diamond", "outline", "striped", "star", "stick"),
               "held-out": ("ring", "triangle", "textured", "cross")},
    "event": {"in": ("flash", "bounce", "jolt", "open"), "held-out": ("pulse", "turn")},
    "sound": {"in": ("tone", "noise", "vowel", "pluck"), "held-out": ("knock", "chirp", "click")},
    "ambience": {"in": ("hiss", "music"), "held-out": ("rumble", "hum")},
}
# The in-style families grew after lite v4 was trained (v4 saw only disc/square/diamond, flash/
# bounce, tone/noise, hiss): the more kinds of object, event and sound a model trains on, the
# less any one look can stand in for "it happens when the sound starts". Held-out families and
# the clips drawn from them are unchanged.
STYLES = ("in", "held-out")
# Nuisances every clip draws from all families, in training and evaluation alike: how the
# camera moves and the light changes is variety a model must learn to ignore, not a style
# to transfer to.
SHARED_FAMILIES: dict[str, tuple[str, ...]] = {
    "camera": ("static", "pan", "zoom", "shake"),
    "lighting": ("steady", "drift", "flicker"),
}

# Evaluation splits: name -> (first seed, style split, sound off screen). Disjoint from the
# benchmark's seeds (0 … 3 000 000) and from each other.
CROSS_STYLE_SEEDS: dict[str, tuple[int, str, bool]] = {
    "in-style": (10_000_000, "in", False),
    "held-out-style": (11_000_000, "held-out", False),
    "off-screen": (12_000_000, "held-out", True),
}
# Training splits: in-style families only (held-out families are never trained on); every
# OFFSCREEN_EVERY-th clip has its sound off screen, so a model learns to fall back on video.
TRAIN_SEEDS: dict[str, int] = {"train": 13_000_000, "val": 14_000_000}
OFFSCREEN_EVERY = 5
SPLIT_SPAN = 1_000_000

SYNC_GAP = 0.15              # s: no distractor event this close to a sound onset
EVENT_GAP = (0.35, 0.9)      # s: time from one event of an object to its next
ATTACK, DECAY = 0.02, 0.12   # s: a visible event rises linearly, then decays exponentially
SOUND_RMS = (0.06, 0.2)      # loudness of one sound over its first 50 ms (random per event)
AMBIENCE_RMS = (0.003, 0.02)  # background noise level (random per clip): every onset stays audible


def cross_style_clip(split: str, index: int, **kwargs) -> "RandomizedClip":
    """Clip ``index`` of evaluation split ``split`` (a key of :data:`CROSS_STYLE_SEEDS`)."""
    if split not in CROSS_STYLE_SEEDS:
        raise ValueError(f"unknown cross-style split {split!r}; choose one of {', '.join(CROSS_STYLE_SEEDS)}")
    if not 0 <= index < SPLIT_SPAN:
        raise ValueError(f"clip index must be in 0…{SPLIT_SPAN - 1}, got {index}")
    first, style, offscreen = CROSS_STYLE_SEEDS[split]
    return RandomizedClip(first + index, style=style, offscreen=offscreen, **kwargs)


def training_clip(split: str, index: int, offscreen_every: int = OFFSCREEN_EVERY, **kwargs) -> "RandomizedClip":
    """Clip ``index`` of training split ``split`` (``train``/``val``): in-style families only;
    every ``offscreen_every``-th has its sound off screen."""
    if split not in TRAIN_SEEDS:
        raise ValueError(f"unknown training split {split!r}; choose one of {', '.join(TRAIN_SEEDS)}")
    if not 0 <= index < SPLIT_SPAN:
        raise ValueError(f"clip index must be in 0…{SPLIT_SPAN - 1}, got {index}")
    if offscreen_every < 1:
        raise ValueError(f"offscreen_every must be ≥ 1, got {offscreen_every}")
    offscreen = index % offscreen_every == offscreen_every - 1
    return RandomizedClip(TRAIN_SEEDS[split] + index, style="in", offscreen=offscreen, **kwargs)


@dataclass(frozen=True)
class RandomObject:
    kind: str                       # a family of STYLE_FAMILIES["object"]
    color: tuple[int, int, int]
    radius: float                   # px at rest, in world (= unmoved camera) coordinates
    start: tuple[float, float]      # px
    velocity: tuple[float, float]   # px/s
    events: np.ndarray              # (n,) s, times of its visible events (sorted)
    sounding: bool
    turn_path: Optional[np.ndarray] = None   # "turn" events: (n + 1, 2) unfolded positions at the events


def event_envelope(t: np.ndarray | float, events: np.ndarray) -> np.ndarray:
    """Visible activity in [0, 1] at ``t``: the latest event's linear attack then exponential decay."""
    t = np.atleast_1d(np.asarray(t, dtype=np.float64))
    j = np.searchsorted(events, t, side="right") - 1
    u = t - events[np.clip(j, 0, None)] if len(events) else np.full_like(t, np.inf)
    env = np.where(u < ATTACK, u / ATTACK, np.exp(-(u - ATTACK) / DECAY))
    return np.where((j >= 0) & (u >= 0), env, 0.0)


def _renewal(rng: np.random.Generator, t0: float, t1: float, avoid: np.ndarray) -> np.ndarray:
    """Irregular event times in [t0, t1), gaps drawn from EVENT_GAP, none within SYNC_GAP of ``avoid``."""
    def clash(t: float) -> bool:
        return bool(len(avoid)) and float(np.min(np.abs(avoid - t))) < SYNC_GAP

    out: list[float] = []
    t = t0 + float(rng.uniform(0.0, EVENT_GAP[1]))
    while t < t1:
        for _ in range(20):   # redraw a gap that would land on a sound onset
            if not clash(t):
                break
            t = (out[-1] if out else t0) + float(rng.uniform(*EVENT_GAP))
        if clash(t):          # still no luck: step just past the onset it hits
            t = float(avoid[np.argmin(np.abs(avoid - t))]) + SYNC_GAP
            continue
        out.append(t)
        t += float(rng.uniform(*EVENT_GAP))
    return np.asarray(out, dtype=np.float64)


class RandomizedClip:
    """One domain-randomised clip with the :class:`~diffsal.datasets.synthetic.SyntheticClip`
    interface (``frame``, ``audio``, ``audio_between``, ``density``, ``fixations``,
    ``describe``), plus ``references(i)`` and ``styles`` (the family drawn per factor).

    ``style``: ``"in"`` or ``"held-out"`` (which families, :data:`STYLE_FAMILIES`).
    ``offscreen``: the sounds come from no visible object.
    """

    def __init__(self, seed: int, style: str = "in", offscreen: bool = False, width: int = 384,
                 height: int = 224, fps: float = 30.0, sample_rate: int = 16000, n_frames: int = 150,
                 n_observers: int = 16):
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        if width < 64 or height < 48:
            raise ValueError(f"clip size {width}x{height} is too small; use at least 64x48")
        if fps <= 0 or sample_rate <= 0 or n_frames <= 0:
            raise ValueError("fps, sample_rate and n_frames must be positive")
        self.seed, self.style, self.offscreen = int(seed), style, bool(offscreen)
        self.width, self.height = int(width), int(height)
        self.fps, self.sample_rate, self.n_frames = float(fps), int(sample_rate), int(n_frames)
        self.n_observers = int(n_observers)
        self.duration = self.n_frames / self.fps
        self.scale = min(self.width / 384, self.height / 224)
        rng = np.random.default_rng([self.seed, 10])
        self.styles = {f: str(rng.choice(fams[style])) for f, fams in STYLE_FAMILIES.items()}
        self.styles.update({f: str(rng.choice(fams)) for f, fams in SHARED_FAMILIES.items()})
        self._camera = self._make_camera(rng)
        self._lighting = self._make_lighting(rng)
        self._world_cache: Optional[np.ndarray] = None   # drawn on first use from its own stream
        self.objects, self.sound_onsets = self._make_objects(rng)
        self._yy, self._xx = np.mgrid[0:self.height, 0:self.width].astype(np.float32)
        cx, cy, sx, sy = self.width / 2, self.height / 2, self.width / 4, self.height / 4
        centre = np.exp(-0.5 * (((self._xx - cx) / sx) ** 2 + ((self._yy - cy) / sy) ** 2))
        self._centre = (centre / centre.sum()).astype(np.float32)
        self._audio: Optional[np.ndarray] = None

    @property
    def source_index(self) -> Optional[int]:
        """Index of the sounding object, ``None`` for an off-screen sound."""
        return next((k for k, o in enumerate(self.objects) if o.sounding), None)

    # ------------------------------------------------------------------ scene set-up
    def _make_camera(self, rng: np.random.Generator) -> dict:
        kind = self.styles["camera"]
        w = self.width
        cam = {"kind": kind, "amp": (0.0, 0.0), "period": 1.0, "phase": (0.0, 0.0), "zoom": 0.0, "shake": []}
        if kind == "pan":
            cam.update(amp=(float(rng.uniform(0.05, 0.12)) * w, float(rng.uniform(0.0, 0.05)) * w),
                       period=float(rng.uniform(3.0, 6.0)), phase=tuple(rng.uniform(0, 2 * np.pi, 2)))
        elif kind == "zoom":
            cam.update(zoom=float(rng.uniform(0.10, 0.20)), period=float(rng.uniform(3.0, 6.0)),
                       phase=tuple(rng.uniform(0, 2 * np.pi, 2)))
        elif kind == "shake":   # a few incommensurate wobbles, 3–9 Hz, a few pixels
            cam["shake"] = [(float(rng.uniform(3, 9)), float(rng.uniform(1.0, 3.0)) * self.scale,
                             float(rng.uniform(0, 2 * np.pi)), int(rng.integers(2))) for _ in range(6)]
        return cam

    def camera(self, t: float) -> tuple[float, float, float]:
        """(dx, dy, zoom) at ``t``: screen = (world − centre − (dx, dy)) · zoom + centre."""
        c = self._camera
        dx = dy = 0.0
        z = 1.0
        w = 2 * np.pi * t / c["period"]
        if c["kind"] == "pan":
            dx = c["amp"][0] * math.sin(w + c["phase"][0])
            dy = c["amp"][1] * math.sin(0.7 * w + c["phase"][1])
        elif c["kind"] == "zoom":
            z = 1.0 + c["zoom"] * math.sin(w + c["phase"][0])
        for f, a, ph, axis in c["shake"]:
            v = a * math.sin(2 * np.pi * f * t + ph)
            if axis:
                dy += v
            else:
                dx += v
        return dx, dy, z

    def _to_screen(self, x: float, y: float, t: float) -> tuple[float, float, float]:
        dx, dy, z = self.camera(t)
        cx, cy = self.width / 2, self.height / 2
        return (x - cx - dx) * z + cx, (y - cy - dy) * z + cy, z

    def _make_lighting(self, rng: np.random.Generator) -> dict:
        kind = self.styles["lighting"]
        light = {"kind": kind, "amp": 0.0, "period": 1.0, "phase": 0.0, "steps": np.zeros(0), "gains": np.ones(1)}
        if kind == "drift":
            light.update(amp=float(rng.uniform(0.08, 0.2)), period=float(rng.uniform(3.0, 8.0)),
                         phase=float(rng.uniform(0, 2 * np.pi)))
        elif kind == "flicker":   # brightness steps at random times, unrelated to the sound
            n = int(rng.integers(2, 6))
            light.update(steps=np.sort(rng.uniform(0, self.duration, n)), gains=rng.uniform(0.75, 1.2, n + 1))
        return light

    def gain(self, t: float) -> float:
        """Global lighting gain at ``t``."""
        L = self._lighting
        if L["kind"] == "drift":
            return 1.0 + L["amp"] * math.sin(2 * np.pi * t / L["period"] + L["phase"])
        if L["kind"] == "flicker":
            j = int(np.searchsorted(L["steps"], t, side="right"))
            g = float(L["gains"][j])
            if j > 0 and t - L["steps"][j - 1] < 0.05:   # 50 ms fade from the previous level
                u = (t - L["steps"][j - 1]) / 0.05
                g = (1 - u) * float(L["gains"][j - 1]) + u * g
            return g
        return 1.0

    @property
    def _world(self) -> np.ndarray:
        if self._world_cache is None:
            self._world_cache = self._make_background(np.random.default_rng([self.seed, 11]))
        return self._world_cache

    def _make_background(self, rng: np.random.Generator) -> np.ndarray:
        # The world is larger than the picture so that a panning or zooming camera never runs out of it.
        kind = self.styles["background"]
        H, W = int(self.height * 1.5), int(self.width * 1.5)
        if kind == "sines":
            return sine_background(rng, H, W)
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32) / max(H, W)
        if kind == "gradient":
            a, b = rng.uniform(30, 220, size=(2, 3))
            ang = rng.uniform(0, 2 * np.pi)
            s = np.cos(ang) * xx + np.sin(ang) * yy
            s = (s - s.min()) / max(float(s.max() - s.min()), 1e-6)
            img = a[None, None] * (1 - s[..., None]) + b[None, None] * s[..., None]
        elif kind == "noise":   # busy colour texture: value noise at three scales, fine detail included
            import cv2
            img = np.zeros((H, W, 3), np.float32)
            for cells, amp in ((6, 70.0), (24, 45.0), (96, 30.0)):
                grid = rng.uniform(-1, 1, size=(cells, max(2, cells * W // H), 3)).astype(np.float32)
                img += amp * cv2.resize(grid, (W, H), interpolation=cv2.INTER_LINEAR)
            img += rng.uniform(70, 180, size=(1, 1, 3)).astype(np.float32)
        elif kind == "clutter":   # static hard-edged rectangles and lines: structure that never moves
            import cv2
            img = np.empty((H, W, 3), np.float32)
            img[:] = rng.uniform(30, 220, size=3)
            for _ in range(int(rng.integers(25, 60))):
                col = tuple(float(c) for c in rng.uniform(20, 235, size=3))
                x0, y0 = int(rng.integers(0, W)), int(rng.integers(0, H))
                if rng.random() < 0.6:
                    w, h = int(rng.integers(8, W // 4)), int(rng.integers(8, H // 4))
                    cv2.rectangle(img, (x0, y0), (x0 + w, y0 + h), col, thickness=-1)
                else:
                    x1, y1 = int(rng.integers(0, W)), int(rng.integers(0, H))
                    cv2.line(img, (x0, y0), (x1, y1), col, thickness=int(rng.integers(2, 8)))
        elif kind == "blobs":   # smooth value noise: large soft colour patches
            import cv2
            gh, gw = int(rng.integers(3, 7)), int(rng.integers(4, 10))
            grid = rng.uniform(30, 220, size=(gh, gw, 3)).astype(np.float32)
            img = cv2.resize(grid, (W, H), interpolation=cv2.INTER_CUBIC)
        else:   # "stripes": a hard-edged two-colour texture (stripes or checks) at a random angle
            a, b = rng.uniform(30, 220, size=(2, 3))
            period = float(rng.uniform(0.03, 0.12))
            ang = rng.uniform(0, np.pi)
            u = (np.cos(ang) * xx + np.sin(ang) * yy) / period
            v = (-np.sin(ang) * xx + np.cos(ang) * yy) / period
            on = (np.floor(u) % 2 == 0) if rng.random() < 0.5 else ((np.floor(u) + np.floor(v)) % 2 == 0)
            img = np.where(on[..., None], a[None, None], b[None, None])
        img = img.astype(np.float32) + rng.normal(0.0, 5.0, size=(H, W, 1)).astype(np.float32)
        return img

    def _make_objects(self, rng: np.random.Generator) -> tuple[list[RandomObject], np.ndarray]:
        """The objects and the sound onsets (the source's events, or an invisible source's)."""
        n = int(rng.integers(2, 5))
        source = -1 if self.offscreen else int(rng.integers(n))
        hues = rng.permutation(12)[:n] / 12.0
        t0, t1 = -1.0, self.duration + 1.0
        src_events = _renewal(rng, t0, t1, np.zeros(0))   # the sound onsets, visible source or not
        event = self.styles["event"]
        mx, my = 0.12 * self.width, 0.15 * self.height
        objs = []
        for k in range(n):
            events = src_events if k == source else _renewal(rng, t0, t1, src_events)
            r = float(rng.uniform(10, 26)) * self.scale
            speed = float(rng.uniform(30, 110)) * self.scale
            ang = float(rng.uniform(0, 2 * np.pi))
            start = (float(rng.uniform(mx, self.width - mx)), float(rng.uniform(my, self.height - my)))
            vel = (speed * math.cos(ang), speed * math.sin(ang))
            path = None
            if event == "turn":   # a new heading at every event: integrate the unfolded path
                pts = [start]
                p, v = np.array(start), np.array(vel)
                prev = t0
                for e in events:
                    p = p + v * (e - prev)
                    pts.append(tuple(p))
                    a = float(rng.uniform(0.5, 1.0)) * np.pi * (1 if rng.random() < 0.5 else -1)
                    c, s = math.cos(a), math.sin(a)
                    v = np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])
                    prev = e
                path = np.asarray(pts, dtype=np.float64)
            col = _hsv_to_rgb(float(hues[k]), float(rng.uniform(0.5, 0.9)), float(rng.uniform(0.55, 0.95)))
            objs.append(RandomObject(kind=self.styles["object"], color=col,
                                     radius=r, start=start, velocity=vel, events=events, sounding=(k == source),
                                     turn_path=path))
        return objs, src_events

    # ------------------------------------------------------------------ state at a time
    def object_state(self, k: int, t: float) -> tuple[float, float, float, float]:
        """(x, y, radius, activity) of object ``k`` at ``t`` in *screen* coordinates."""
        o = self.objects[k]
        event = self.styles["event"]
        active = float(event_envelope(t, o.events)[0])
        margin = o.radius * 1.4
        lo_x, hi_x = margin + 0.05 * self.width, self.width * 0.95 - margin
        lo_y, hi_y = margin + 0.05 * self.height, self.height * 0.95 - margin
        if event == "turn":
            j = int(np.searchsorted(o.events, t, side="right"))   # segment j starts at event j-1 (or t0)
            p0 = o.turn_path[j]
            prev = o.events[j - 1] if j > 0 else -1.0
            nxt = o.turn_path[j + 1] if j + 1 < len(o.turn_path) else None
            if nxt is not None:
                seg_t = o.events[j] - prev
                v = (nxt - p0) / seg_t
            else:
                v = np.zeros(2)
            ux, uy = p0[0] + v[0] * (t - prev), p0[1] + v[1] * (t - prev)
            x = float(_bounce(ux, 0.0, 0.0, lo_x, hi_x))
            y = float(_bounce(uy, 0.0, 0.0, lo_y, hi_y))
        else:
            x = float(_bounce(o.start[0], o.velocity[0], t, lo_x, hi_x))
            if event == "bounce":   # hops whose landings are the events; the floor drifts slowly
                j = int(np.searchsorted(o.events, t, side="right"))
                a = o.events[j - 1] if j > 0 else t - 0.5
                b = o.events[j] if j < len(o.events) else a + 0.7
                s = min(max((t - a) / max(b - a, 1e-3), 0.0), 1.0)
                hop = 2.2 * o.radius * 4 * s * (1 - s)
                floor = float(_bounce(o.start[1], 0.25 * o.velocity[1], t, lo_y + 2.2 * o.radius, hi_y))
                y = floor - hop
            else:
                y = float(_bounce(o.start[1], o.velocity[1], t, lo_y, hi_y))
        if event == "jolt":   # knocked sideways (across its heading) and back
            speed = math.hypot(*o.velocity) + 1e-9
            x -= 0.9 * o.radius * active * o.velocity[1] / speed
            y += 0.9 * o.radius * active * o.velocity[0] / speed
        r = o.radius * (1.0 + 0.45 * active) if event == "pulse" else o.radius
        sx, sy, z = self._to_screen(x, y, t)
        return sx, sy, r * z, active

    def _check_frame(self, i: int) -> int:
        if not 0 <= int(i) < self.n_frames:
            raise IndexError(f"frame {i} is outside the clip (0…{self.n_frames - 1})")
        return int(i)

    # ------------------------------------------------------------------ video
    def _background_at(self, t: float) -> np.ndarray:
        import cv2
        dx, dy, z = self.camera(t)
        H, W = self._world.shape[:2]
        # world → screen: s = (p − c − d)·z + c, with the picture's centre c at the world's centre
        ox, oy = (W - self.width) / 2, (H - self.height) / 2
        cx, cy = self.width / 2, self.height / 2
        m = np.array([[z, 0.0, (-cx - dx - ox) * z + cx], [0.0, z, (-cy - dy - oy) * z + cy]], np.float32)
        return cv2.warpAffine(self._world, m, (self.width, self.height), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT)

    def frame(self, i: int) -> np.ndarray:
        i = self._check_frame(i)
        t = i / self.fps
        img = self._background_at(t)
        event = self.styles["event"]
        for k, o in enumerate(self.objects):
            x, y, r, active = self.object_state(k, t)
            x0, x1 = max(0, int(x - r - 2)), min(self.width, int(x + r + 3))
            y0, y1 = max(0, int(y - r - 2)), min(self.height, int(y + r + 3))
            if x1 <= x0 or y1 <= y0:
                continue
            dx = self._xx[y0:y1, x0:x1] - x
            dy = self._yy[y0:y1, x0:x1] - y
            if event == "bounce" and active > 0:   # squashed on landing
                dy = dy * (1.0 + 0.5 * active)
                dx = dx * (1.0 - 0.25 * active)
            cover, shade = _shape(o.kind, dx, dy, r)
            half = 0.8 * max(active - 0.1, 0.0) / 0.9 if event == "open" else 0.0   # shut once faded
            if half > 0:   # a wedge opens towards its heading, like a mouth
                off = np.arctan2(dy, dx) - math.atan2(o.velocity[1], o.velocity[0])
                off = np.abs((off + np.pi) % (2 * np.pi) - np.pi)
                cover = cover * np.clip(np.hypot(dx, dy) * (off - half) + 0.5, 0.0, 1.0)
            col = np.asarray(o.color, np.float32) * shade[..., None]
            if event == "flash":
                col = col + active * (255.0 - col) * 0.8
            img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - cover[..., None]) + col * cover[..., None]
        img *= self.gain(t)
        noise = np.random.default_rng([self.seed, 1, i]).normal(0.0, 2.0, size=img.shape[:2])
        img += noise[..., None].astype(np.float32)
        return np.clip(img + 0.5, 0, 255).astype(np.uint8)

    # ------------------------------------------------------------------ audio
    def audio(self) -> np.ndarray:
        if self._audio is None:
            self._audio = self._render_audio()
        return self._audio

    def audio_between(self, t0: float, t1: float) -> np.ndarray:
        """Samples ``round(t0·sr)`` … ``round(t1·sr) − 1``; silence outside the clip."""
        sr = self.sample_rate
        n0, n1 = int(round(t0 * sr)), int(round(t1 * sr))
        if n1 < n0:
            raise ValueError(f"audio_between: t1 ({t1}) is before t0 ({t0})")
        whole = self.audio()
        out = np.zeros(n1 - n0, np.float32)
        a, b = max(n0, 0), min(n1, len(whole))
        if b > a:
            out[a - n0:b - n0] = whole[a:b]
        return out

    def _render_audio(self) -> np.ndarray:
        sr = self.sample_rate
        n = int(round(self.duration * sr))
        sig = self._ambience(n)
        kind = self.styles["sound"]
        for j, onset in enumerate(self.sound_onsets):
            rng = np.random.default_rng([self.seed, 5, j])
            snd = _sound(kind, rng, sr) * float(rng.uniform(*SOUND_RMS))
            s0 = int(round(onset * sr))
            a, b = max(s0, 0), min(s0 + len(snd), n)
            if b > a:
                sig[a:b] += snd[a - s0:b - s0]
        return np.clip(sig, -1.0, 1.0).astype(np.float32)

    def _ambience(self, n: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 6])
        kind = self.styles["ambience"]
        level = float(rng.uniform(*AMBIENCE_RMS))
        white = rng.normal(0.0, 1.0, n)
        if kind == "hiss":
            return level * white
        if kind == "music":   # slow chords whose changes happen when nothing on screen does
            t = np.arange(n) / self.sample_rate
            out = np.zeros(n)
            changes = np.concatenate([[0.0], np.sort(rng.uniform(0, self.duration, int(rng.integers(1, 5)))), [np.inf]])
            for a, b in zip(changes[:-1], changes[1:]):
                root = float(np.exp(rng.uniform(np.log(110), np.log(330))))
                on = (t >= a) & (t < b)
                fade = np.minimum((t[on] - a) / 0.3, 1.0)   # a soft attack: no onset to hear
                out[on] = fade * sum(np.sin(2 * np.pi * root * r * t[on]) for r in (1.0, 1.26, 1.5))
            return level * (out / (out.std() + 1e-9) + 0.2 * white)
        if kind == "rumble":   # brown-ish noise: leaky integration of white noise, rescaled
            from scipy.signal import lfilter
            x = lfilter([1.0], [1.0, -0.995], white)
            return level * x / (x.std() + 1e-9)
        t = np.arange(n) / self.sample_rate   # "hum": mains hum and its harmonics, a little hiss
        f = 50.0 if rng.random() < 0.5 else 60.0
        hum = sum(a * np.sin(2 * np.pi * f * h * t + rng.uniform(0, 2 * np.pi))
                  for h, a in ((1, 1.0), (2, 0.5), (3, 0.3), (5, 0.15)))
        return level * (hum / np.sqrt(0.5 * (1 + 0.25 + 0.09 + 0.0225)) + 0.3 * white)

    # ------------------------------------------------------------------ ground truth
    def _blobs(self, t: float, video_only: bool) -> list[tuple[float, float, float, float]]:
        states = [self.object_state(k, t) for k in range(len(self.objects))]
        if video_only or self.offscreen:
            share = (1.0 - CENTRE_MASS) / len(states)
            return [(x, y, r, share) for x, y, r, _ in states]
        n_dis = len(states) - 1
        return [(x, y, r, SOURCE_MASS if o.sounding else MOTION_MASS / n_dis)
                for (x, y, r, _), o in zip(states, self.objects)]

    def density(self, i: int) -> np.ndarray:
        t = self._check_frame(i) / self.fps
        return mixture_density(self._centre, self._xx, self._yy, self._blobs(t, video_only=False),
                               partly_outside=True)

    def fixations(self, i: int) -> np.ndarray:
        return sample_fixations(self.density(i), self.seed, int(i), self.n_observers)

    def references(self, i: int) -> dict[str, np.ndarray]:
        """Reference maps computed from the ground truth: ``equal-blob``, the centre bias and an
        equal blob on every moving object (the video-only density; the best a model can do
        without the sound)."""
        t = self._check_frame(i) / self.fps
        return {"equal-blob": mixture_density(self._centre, self._xx, self._yy, self._blobs(t, video_only=True),
                                              partly_outside=True)}

    def describe(self) -> dict:
        return {"seed": self.seed, "style": self.style, "offscreen": self.offscreen, "styles": dict(self.styles),
                "size": [self.width, self.height], "fps": self.fps, "sample_rate": self.sample_rate,
                "n_frames": self.n_frames, "source_index": self.source_index,
                "objects": [{"kind": o.kind, "color": list(o.color), "radius": o.radius, "sounding": o.sounding,
                             "n_events": int(np.sum((o.events >= 0) & (o.events < self.duration)))}
                            for o in self.objects]}


def _shape(kind: str, dx: np.ndarray, dy: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray]:
    """Coverage in [0, 1] (1-px anti-aliased edge) and a brightness factor per pixel for an
    object of ``kind`` and size ``r`` at offsets (dx, dy) from its centre."""
    shade = np.ones_like(dx)
    if kind == "disc":
        d = np.sqrt(dx * dx + dy * dy)
    elif kind == "square":
        d = np.maximum(np.abs(dx), np.abs(dy)) * 1.1
    elif kind == "diamond":
        d = (np.abs(dx) + np.abs(dy)) * 0.8
    elif kind == "ring":           # an outline: only a band around 0.8·r is covered
        d = np.abs(np.sqrt(dx * dx + dy * dy) - 0.8 * r) + 0.75 * r
    elif kind == "triangle":       # upward triangle: the largest of three edge distances
        d = np.maximum.reduce([dy * 1.0, -0.866 * dx - 0.5 * dy, 0.866 * dx - 0.5 * dy]) * 1.5
    elif kind == "cross":
        d = np.minimum(np.maximum(np.abs(dx), 3 * np.abs(dy)), np.maximum(3 * np.abs(dx), np.abs(dy)))
    elif kind == "outline":        # a hollow square: only a band along its edge is covered
        d = np.abs(np.maximum(np.abs(dx), np.abs(dy)) * 1.1 - 0.8 * r) + 0.75 * r
    elif kind == "striped":        # a disc painted with horizontal stripes
        d = np.sqrt(dx * dx + dy * dy)
        shade = np.where(np.floor(dy / max(r / 2.5, 2.0)) % 2 == 0, 1.0, 0.4).astype(dx.dtype)
    elif kind == "star":           # five points: the radius swings with the angle
        reach = 0.62 + 0.38 * np.cos(5 * np.arctan2(dx, -dy))
        d = np.sqrt(dx * dx + dy * dy) / reach
    elif kind == "stick":          # a stick figure: head, body, arms, legs
        d = r + _stick_distance(dx / r, dy / r) * r - max(0.11 * r, 1.2)
    else:                          # "textured": a disc painted with a fine checker pattern
        d = np.sqrt(dx * dx + dy * dy)
        cell = max(r / 3.0, 2.0)
        shade = np.where((np.floor(dx / cell) + np.floor(dy / cell)) % 2 == 0, 1.0, 0.45).astype(dx.dtype)
    return np.clip(r - d + 0.5, 0.0, 1.0), shade


# Stick figure in units of its size r: segments (x0, y0, x1, y1) and a head circle (x, y, radius).
_STICK_SEGMENTS = ((0.0, -0.38, 0.0, 0.3), (-0.55, -0.12, 0.55, -0.12), (0.0, 0.3, -0.42, 0.95),
                   (0.0, 0.3, 0.42, 0.95))
_STICK_HEAD = (0.0, -0.66, 0.28)


def _stick_distance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Distance (in units of r) from (x, y) to the nearest stroke of the stick figure."""
    hx, hy, hr = _STICK_HEAD
    best = np.abs(np.hypot(x - hx, y - hy) - hr)
    for x0, y0, x1, y1 in _STICK_SEGMENTS:
        vx, vy = x1 - x0, y1 - y0
        u = np.clip(((x - x0) * vx + (y - y0) * vy) / (vx * vx + vy * vy), 0.0, 1.0)
        best = np.minimum(best, np.hypot(x - x0 - u * vx, y - y0 - u * vy))
    return best


def _sound(kind: str, rng: np.random.Generator, sr: int) -> np.ndarray:
    """One sound event of ``kind``, starting at sample 0, with unit RMS over its first 50 ms
    (short clicks and long tones equally loud where they start); its pitch or band is drawn
    fresh for every event."""
    if kind == "tone":
        dur, tau = 0.4, float(rng.uniform(0.08, 0.2))
        t = np.arange(int(dur * sr)) / sr
        f = float(np.exp(rng.uniform(np.log(200), np.log(2000))))
        x = sum(a * np.sin(2 * np.pi * f * h * t) for h, a in ((1, 1.0), (2, rng.uniform(0, 0.6)),
                                                               (3, rng.uniform(0, 0.4))) if f * h < 0.45 * sr)
        env = np.minimum(t / 0.005, 1.0) * np.exp(-t / tau)
    elif kind == "noise":           # a band of noise around a random centre frequency
        dur, tau = 0.3, float(rng.uniform(0.04, 0.12))
        t = np.arange(int(dur * sr)) / sr
        spec = np.fft.rfft(rng.normal(0.0, 1.0, len(t)))
        freqs = np.fft.rfftfreq(len(t), 1 / sr)
        fc = float(np.exp(rng.uniform(np.log(400), np.log(5000))))
        spec *= np.exp(-0.5 * (np.log(np.maximum(freqs, 1.0) / fc) / 0.4) ** 2)
        x = np.fft.irfft(spec, len(t))
        env = np.minimum(t / 0.003, 1.0) * np.exp(-t / tau)
    elif kind == "vowel":           # a voiced syllable: a glottal pulse train through two formants
        from scipy.signal import lfilter
        dur = float(rng.uniform(0.12, 0.28))   # over before the next event (≥ 0.35 s later) starts
        t = np.arange(int(dur * sr)) / sr
        f0 = float(rng.uniform(90, 260)) * (1 + 0.1 * t / dur * rng.choice([-1, 1]))
        x = np.diff(np.floor(np.cumsum(f0) / sr), prepend=0.0)          # one impulse per period
        for fc, bw in ((rng.uniform(300, 900), 80.0), (rng.uniform(900, 2500), 120.0)):
            rad = np.exp(-np.pi * bw / sr)
            x = lfilter([1.0 - rad], [1.0, -2 * rad * np.cos(2 * np.pi * fc / sr), rad * rad], x)
        env = np.minimum(t / 0.02, 1.0) * np.minimum((dur - t) / 0.05, 1.0)
    elif kind == "pluck":           # a plucked string: harmonics that die away, the high ones first
        dur = 0.5
        t = np.arange(int(dur * sr)) / sr
        f = float(np.exp(rng.uniform(np.log(110), np.log(880))))
        x = sum(np.sin(2 * np.pi * f * h * t) * np.exp(-t * (4.0 + 3.0 * h)) / h
                for h in range(1, 8) if f * h < 0.45 * sr)
        env = np.minimum(t / 0.002, 1.0)
    elif kind == "knock":           # a few damped low resonances after a short click
        dur = 0.25
        t = np.arange(int(dur * sr)) / sr
        x = sum(np.sin(2 * np.pi * float(rng.uniform(100, 600)) * t) * np.exp(-t / float(rng.uniform(0.015, 0.06)))
                for _ in range(3))
        x = x + 2.0 * rng.normal(0.0, 1.0, len(t)) * np.exp(-t / 0.002)
        env = np.ones_like(t)
    elif kind == "chirp":           # a sweep up or down between two random pitches
        dur = float(rng.uniform(0.12, 0.25))
        t = np.arange(int(dur * sr)) / sr
        f0, f1 = np.exp(rng.uniform(np.log(300), np.log(3000), 2))
        f = f0 * (f1 / f0) ** (t / dur)
        x = np.sin(2 * np.pi * np.cumsum(f) / sr)
        env = np.minimum(t / 0.005, 1.0) * np.minimum((dur - t) / 0.03, 1.0)
    elif kind == "click":           # a broadband impulse with a very short tail
        dur = 0.06
        t = np.arange(int(dur * sr)) / sr
        x = rng.normal(0.0, 1.0, len(t))
        env = np.exp(-t / float(rng.uniform(0.008, 0.02)))
    else:
        raise ValueError(f"unknown sound kind {kind!r}")
    y = np.asarray(x, np.float64) * env
    return y / (np.sqrt(np.mean(y[:int(0.05 * sr)] ** 2)) + 1e-9)
