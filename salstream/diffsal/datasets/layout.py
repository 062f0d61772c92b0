"""On-disk saliency datasets: the STAViS audio-visual layout and the DHF1K layout.

Audio-visual (AVAD, DIEM, Coutrot1/2, ETMD, SumMe as released with STAViS, and the
synthetic benchmark written by :func:`diffsal.datasets.synthetic_writer.write_synthetic`)::

    <root>/video_frames/<DS>/<vid>/img_%05d.jpg          (1-based)
    <root>/video_audio/<DS>/<vid>/<vid>.wav
    <root>/annotations/<DS>/<vid>/maps/eyeMap_%05d.jpg   (continuous density, 8-bit)
    <root>/annotations/<DS>/<vid>/fixMap_%05d.mat        (binary fixations, variable ``eyeMap``)
    <root>/fold_lists/<DS>_list_{train,test}_{1,2,3}_fps.txt   lines "name n_frames fps"
    <root>/fold_lists/DIEM_list_{train,test}_fps.txt           (DIEM: one fixed split)

Fixation maps as ``fixMap_%05d.png`` are read as well (non-zero = fixated).

DHF1K (video only, 30 fps)::

    <root>/<vid>/images/%04d.png   <root>/<vid>/maps/%04d.png   <root>/<vid>/fixation/%04d.png

optionally under ``<root>/train`` and ``<root>/val``; otherwise videos are split by
number (1–600 train, 601–700 val, spec §6.2).

Loaders hand out raw material (uint8 RGB frames, float32 maps in [0, 1], boolean
fixations, mono float32 audio with its rate); turning it into model inputs is the
profile's preprocessing, so real and synthetic data share one path. Frame indices in
this API are 0-based; file names stay 1-based like the releases.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from PIL import Image

from salstream.errors import SalstreamError

# Short name -> folder name in the STAViS release.
AV_DATASETS: dict[str, str] = {
    "AVAD": "AVAD",
    "DIEM": "DIEM",
    "Coutrot1": "Coutrot_db1",
    "Coutrot2": "Coutrot_db2",
    "ETMD": "ETMD_av",
    "SumMe": "SumMe",
}
SINGLE_SPLIT = {"DIEM"}   # one train/test list shared by all folds
FOLDS = (1, 2, 3)


class DatasetError(SalstreamError):
    """A dataset directory that does not match the expected layout."""


@dataclass(frozen=True)
class VideoEntry:
    name: str
    n_frames: int
    fps: float


def dataset_folder(name: str) -> str:
    """Folder of a dataset given its short name (``Coutrot1``) or folder name (``Coutrot_db1``)."""
    if name in AV_DATASETS:
        return AV_DATASETS[name]
    if name in AV_DATASETS.values():
        return name
    return name  # custom datasets (e.g. the synthetic one) use their own folder name


def split_file(root: Path | str, dataset: str, split: str, fold: int = 1) -> Path:
    if split not in ("train", "val", "test"):
        raise DatasetError(f"split must be 'train', 'val' or 'test', got {split!r}")
    folder = dataset_folder(dataset)
    if folder in SINGLE_SPLIT:
        return Path(root) / "fold_lists" / f"{folder}_list_{split}_fps.txt"
    if fold not in FOLDS:
        raise DatasetError(f"fold must be one of {FOLDS}, got {fold}")
    return Path(root) / "fold_lists" / f"{folder}_list_{split}_{fold}_fps.txt"


def read_split_file(path: Path | str) -> list[VideoEntry]:
    """Parse a STAViS split list: one ``name n_frames fps`` per line."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"split list {path} not found; expected lines 'name n_frames fps' "
                           f"(STAViS fold_lists layout)")
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise DatasetError(f"{path}:{lineno}: expected 'name n_frames fps', got {line!r}")
        try:
            out.append(VideoEntry(parts[0], int(parts[1]), float(parts[2])))
        except ValueError:
            raise DatasetError(f"{path}:{lineno}: n_frames must be an integer and fps a number, got {line!r}") from None
    return out


def write_split_file(path: Path | str, entries: list[VideoEntry]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{e.name} {e.n_frames} {e.fps:g}\n" for e in entries))


# ---------------------------------------------------------------------- readers
def read_rgb(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"frame {path} is missing")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def read_map(path: Path) -> np.ndarray:
    """8-bit grayscale density image -> float32 in [0, 1] (÷255, no renormalisation, spec §1.2)."""
    if not path.is_file():
        raise DatasetError(f"saliency map {path} is missing")
    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def read_fixations(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"fixation map {path} is missing")
    if path.suffix == ".mat":
        from scipy.io import loadmat
        mat = loadmat(str(path))
        key = "eyeMap" if "eyeMap" in mat else next((k for k in mat if not k.startswith("__")), None)
        if key is None:
            raise DatasetError(f"{path} holds no array (expected a binary map named 'eyeMap')")
        return np.asarray(mat[key]) > 0
    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 127


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the native rate (channels averaged)."""
    from scipy.io import wavfile
    if not path.is_file():
        raise DatasetError(f"audio track {path} is missing")
    try:
        rate, data = wavfile.read(str(path))
    except ValueError as exc:
        raise DatasetError(f"{path} is not a readable PCM wav file ({exc})") from None
    if data.dtype == np.int16:
        x = data.astype(np.float32) / 32768.0
    elif data.dtype == np.int32:
        x = data.astype(np.float32) / 2147483648.0
    elif data.dtype == np.uint8:
        x = (data.astype(np.float32) - 128.0) / 128.0
    else:
        x = data.astype(np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    return x, int(rate)


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    from scipy.io import wavfile
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.clip(np.round(np.asarray(samples, np.float64) * 32767.0), -32768, 32767).astype(np.int16)
    wavfile.write(str(path), int(rate), pcm)


# ---------------------------------------------------------------------- videos
class Video:
    """One annotated video: frames, density maps, fixations and (maybe) audio."""
    dataset: str
    name: str
    n_frames: int
    fps: float
    has_audio: bool = False

    def frame(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def density(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def fixations(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def audio(self) -> tuple[np.ndarray, int]:
        raise DatasetError(f"{self.dataset}/{self.name} has no audio track")

    def references(self, i: int) -> dict[str, np.ndarray]:
        """Reference maps of frame ``i`` computed from the ground truth (name -> map), scored
        beside the model by ``salstream eval``; recorded datasets have none."""
        return {}

    def _check(self, i: int) -> int:
        if not 0 <= i < self.n_frames:
            raise IndexError(f"{self.dataset}/{self.name}: frame {i} outside 0…{self.n_frames - 1}")
        return i

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dataset}/{self.name}, {self.n_frames} frames @ {self.fps:g} fps)"


class AVVideo(Video):
    has_audio = True

    def __init__(self, root: Path | str, dataset: str, entry: VideoEntry):
        self.root = Path(root)
        self.dataset = dataset_folder(dataset)
        self.name, self.n_frames, self.fps = entry.name, entry.n_frames, entry.fps
        self.frames_dir = self.root / "video_frames" / self.dataset / self.name
        self.annot_dir = self.root / "annotations" / self.dataset / self.name
        self.wav_path = self.root / "video_audio" / self.dataset / self.name / f"{self.name}.wav"
        self._audio: Optional[tuple[np.ndarray, int]] = None

    def frame(self, i: int) -> np.ndarray:
        return read_rgb(self.frames_dir / f"img_{self._check(i) + 1:05d}.jpg")

    def density(self, i: int) -> np.ndarray:
        return read_map(self.annot_dir / "maps" / f"eyeMap_{self._check(i) + 1:05d}.jpg")

    def fixations(self, i: int) -> np.ndarray:
        i = self._check(i)
        for cand in (f"fixMap_{i + 1:05d}.mat", f"fixMap_{i + 1:05d}.png"):
            if (self.annot_dir / cand).is_file():
                return read_fixations(self.annot_dir / cand)
        raise DatasetError(f"fixation map fixMap_{i + 1:05d}.mat (or .png) is missing in {self.annot_dir}")

    def audio(self) -> tuple[np.ndarray, int]:
        if self._audio is None:
            self._audio = read_wav(self.wav_path)
        return self._audio

    def check(self) -> None:
        """Raise :class:`DatasetError` naming the first missing piece of this video."""
        for p, what in ((self.frames_dir, "frame folder"), (self.annot_dir / "maps", "map folder"),
                        (self.wav_path, "audio track")):
            if not p.exists():
                raise DatasetError(f"{self.dataset}/{self.name}: {what} {p} is missing")


class ClipVideo(Video):
    """A generated clip (:class:`~diffsal.datasets.synthetic.SyntheticClip`,
    :class:`~diffsal.datasets.randomized.RandomizedClip`) as a video, rendered on demand:
    nothing is written to disk and no JPEG round trip touches frames or maps."""
    has_audio = True

    def __init__(self, clip, dataset: str, name: str):
        self.clip, self.dataset, self.name = clip, dataset, name
        self.n_frames, self.fps = clip.n_frames, clip.fps

    def frame(self, i: int) -> np.ndarray:
        return self.clip.frame(self._check(i))

    def density(self, i: int) -> np.ndarray:
        return self.clip.density(self._check(i))

    def fixations(self, i: int) -> np.ndarray:
        return self.clip.fixations(self._check(i))

    def audio(self) -> tuple[np.ndarray, int]:
        return self.clip.audio(), self.clip.sample_rate

    def references(self, i: int) -> dict[str, np.ndarray]:
        refs = getattr(self.clip, "references", None)
        return refs(self._check(i)) if refs is not None else {}


class DHF1KVideo(Video):
    def __init__(self, video_dir: Path | str, fps: float = 30.0):
        self.dir = Path(video_dir)
        self.dataset, self.name, self.fps = "DHF1K", self.dir.name, fps
        imgs = self.dir / "images"
        if not imgs.is_dir():
            raise DatasetError(f"DHF1K video {self.dir} has no images/ folder")
        self.n_frames = len([p for p in os.listdir(imgs) if p.endswith(".png")])
        if self.n_frames == 0:
            raise DatasetError(f"DHF1K video {self.dir}: images/ holds no %04d.png frames")

    def frame(self, i: int) -> np.ndarray:
        return read_rgb(self.dir / "images" / f"{self._check(i) + 1:04d}.png")

    def density(self, i: int) -> np.ndarray:
        return read_map(self.dir / "maps" / f"{self._check(i) + 1:04d}.png")

    def fixations(self, i: int) -> np.ndarray:
        return read_fixations(self.dir / "fixation" / f"{self._check(i) + 1:04d}.png")


# ---------------------------------------------------------------------- datasets
def load_av_dataset(root: Path | str, dataset: str, split: str, fold: int = 1) -> list[AVVideo]:
    """The videos of one AV dataset's split list (fold 1–3; DIEM has one split)."""
    root = Path(root)
    entries = read_split_file(split_file(root, dataset, split, fold))
    videos = [AVVideo(root, dataset, e) for e in entries]
    for v in videos:
        v.check()
    return videos


def load_dhf1k(root: Path | str, split: str) -> list[DHF1KVideo]:
    """DHF1K videos of ``split`` (``train`` = 1–600, ``val`` = 601–700)."""
    root = Path(root)
    if split not in ("train", "val"):
        raise DatasetError(f"DHF1K split must be 'train' or 'val' (test has no public maps), got {split!r}")
    if (root / split).is_dir():
        dirs = sorted(p for p in (root / split).iterdir() if p.is_dir())
    else:
        lo, hi = (1, 600) if split == "train" else (601, 700)
        dirs = sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit() and lo <= int(p.name) <= hi)
    if not dirs:
        raise DatasetError(f"no DHF1K videos for split {split!r} under {root} "
                           f"(expected <vid>/images/%04d.png, maps/, fixation/)")
    return [DHF1KVideo(d) for d in dirs]


def detect_layout(root: Path | str) -> str:
    """``"av"`` (STAViS layout), ``"dhf1k"``, or a :class:`DatasetError` saying what is missing."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset directory {root} does not exist")
    if (root / "fold_lists").is_dir() and (root / "video_frames").is_dir():
        return "av"
    probe = [root] + [root / s for s in ("train", "val") if (root / s).is_dir()]
    for base in probe:
        if any((d / "images").is_dir() and (d / "maps").is_dir() for d in base.iterdir() if d.is_dir()):
            return "dhf1k"
    raise DatasetError(f"{root} matches no known layout: expected fold_lists/ + video_frames/ + annotations/ + "
                       f"video_audio/ (audio-visual) or <vid>/images, maps, fixation (DHF1K)")


def av_datasets_in(root: Path | str) -> list[str]:
    """Dataset folders under ``<root>/video_frames`` that have a split list."""
    root = Path(root)
    names = sorted(p.name for p in (root / "video_frames").iterdir() if p.is_dir())
    return [n for n in names if any((root / "fold_lists").glob(f"{n}_list_*_fps.txt"))]


def load_videos(root: Path | str, split: str, fold: int = 1,
                datasets: Optional[list[str]] = None) -> dict[str, list[Video]]:
    """Every dataset found under ``root`` for ``split`` -> {dataset: videos}.

    For the AV layout ``split`` is ``train`` or ``test``; for DHF1K ``test`` means the
    public validation set (601–700).
    """
    layout = detect_layout(root)
    if layout == "dhf1k":
        return {"DHF1K": load_dhf1k(root, "train" if split == "train" else "val")}
    names = [dataset_folder(d) for d in datasets] if datasets else av_datasets_in(root)
    if not names:
        raise DatasetError(f"{root}: no dataset under video_frames/ has a split list in fold_lists/")
    return {n: load_av_dataset(root, n, split, fold) for n in names}


def iter_frames(videos: list[Video]) -> Iterator[tuple[Video, int]]:
    for v in videos:
        for i in range(v.n_frames):
            yield v, i
