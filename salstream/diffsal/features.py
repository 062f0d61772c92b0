"""Encoders never run twice for the same input: per-frame and per-slice features, cached.

Per-frame profiles (``lite``) encode each video frame and each audio slice on its own, and
a window's features are those of its 16 frames (9 slices) stacked on a time axis. Windows
overlap by all but their newest frame, so every user — the live scheduler, evaluation,
training and the benchmarks — keeps one :class:`FeatureCache` per encoder: features by
``(sequence, index)`` (a sequence is a stream or a video), computed once in batches, stacked
per window, forgotten when no later window can need them.
"""
from __future__ import annotations

from typing import Any, Callable, Hashable, Iterable, Optional, Sequence

import torch

from salstream.diffsal.models.base import stack_time

Features = Any    # a tensor or a tuple of tensors, batch axis first


def split_batch(feats: Features, n: int) -> list[Features]:
    """Per-item views (batch of 1) of batched features."""
    if isinstance(feats, torch.Tensor):
        return [feats[i:i + 1] for i in range(n)]
    parts = [split_batch(f, n) for f in feats]
    return [tuple(p[i] for p in parts) for i in range(n)]


def cat_batch(items: Sequence[Features]) -> Features:
    """Inverse of :func:`split_batch`: items (each with a batch axis) concatenated on it."""
    if isinstance(items[0], torch.Tensor):
        return torch.cat(list(items), dim=0)
    return tuple(torch.cat([it[i] for it in items], dim=0) for i in range(len(items[0])))


class FeatureCache:
    """Features of items (frames or slices) by ``(sequence key, index)``, encoded once.

    ``encode``: a batch of inputs ``(N, ...)`` -> features with batch axis ``N`` (a tensor or
    a tuple). ``batch_size``: most inputs per ``encode`` call (``None``: all at once).
    ``keep``: applied to each item's features before they are stored (e.g. a cast to
    float16 for a training set held in memory). An entry may be tied to the input object
    it was computed from (``need(..., same_input=True)``): a later request with a
    different input object for the same index recomputes it, so a stream whose indices
    start over never reuses stale features.
    """

    def __init__(self, encode: Callable[[torch.Tensor], Features], *, batch_size: Optional[int] = None,
                 keep: Optional[Callable[[Features], Features]] = None):
        self.encode = encode
        self.batch_size = batch_size
        self._keep = keep
        self._store: dict[Hashable, dict[int, tuple[Any, Features]]] = {}
        self.encoded = 0          # items encoded so far (what the cache saved is the rest)

    def need(self, requests: Iterable[tuple[Hashable, int, Any]], *, same_input: bool = False,
             on_batch: Optional[Callable[[int], None]] = None) -> int:
        """Encode every requested ``(key, index, input)`` not cached yet, batched across keys.

        ``input`` is a tensor, or a zero-argument callable returning one (built only on a miss).
        ``on_batch(n)`` is told after each encoder call (progress bars). Returns how many
        items were encoded.
        """
        todo: dict[tuple[Hashable, int], Any] = {}
        for key, index, x in requests:
            hit = self._store.get(key, {}).get(index)
            if hit is None or (same_input and hit[0] is not x):
                todo[(key, index)] = x
        if not todo:
            return 0
        keys = list(todo)
        step = self.batch_size or len(keys)
        for start in range(0, len(keys), step):
            part = keys[start:start + step]
            inputs = [todo[k] for k in part]
            batch = torch.stack([x() if callable(x) else x for x in inputs])
            with torch.inference_mode():
                feats = split_batch(self.encode(batch), len(part))
            for (key, index), x, f in zip(part, inputs, feats):
                self._store.setdefault(key, {})[index] = (x, self._keep(f) if self._keep else f)
            if on_batch is not None:
                on_batch(len(part))
        self.encoded += len(keys)
        return len(keys)

    def get(self, key: Hashable, index: int, input: Any = None) -> Optional[Features]:
        """The features of one item (``None`` when absent, or computed from another ``input`` object)."""
        hit = self._store.get(key, {}).get(index)
        if hit is None or (input is not None and hit[0] is not input):
            return None
        return hit[1]

    def items(self, key: Hashable, indices: Sequence[int]) -> list[Features]:
        """Features of ``indices`` in order (all must be cached)."""
        store = self._store[key]
        return [store[i][1] for i in indices]

    def stack(self, key: Hashable, indices: Sequence[int]) -> Features:
        """A window's features: those of ``indices`` stacked on a new time axis (dim 2)."""
        return stack_time(self.items(key, indices))

    def forget(self, key: Hashable, before: Optional[int] = None) -> None:
        """Drop ``key``'s items with an index below ``before`` (all of them when ``before`` is ``None``)."""
        if before is None:
            self._store.pop(key, None)
            return
        store = self._store.get(key, {})
        for i in [i for i in store if i < before]:
            del store[i]

    def indices(self, key: Hashable) -> list[int]:
        """The cached indices of ``key``, ascending."""
        return sorted(self._store.get(key, {}))

    def __len__(self) -> int:
        return sum(len(s) for s in self._store.values())

    def nbytes(self) -> int:
        def size(f: Features) -> int:
            return f.numel() * f.element_size() if isinstance(f, torch.Tensor) else sum(size(t) for t in f)
        return sum(size(f) for s in self._store.values() for _, f in s.values())
