"""Datasets: the synthetic audio-visual benchmark and loaders for the real layouts."""
from salstream.diffsal.datasets.layout import (
                     AV_DATASETS,
                     AVVideo,
                     DatasetError,
                     DHF1KVideo,
                     Video,
                     VideoEntry,
                     detect_layout,
                     load_av_dataset,
                     load_dhf1k,
                     load_videos,
                     read_split_file,
)
from salstream.diffsal.datasets.synthetic import SPLIT_SEEDS, SyntheticClip, split_seed, write_synthetic

__all__ = ["AV_DATASETS", "AVVideo", "DatasetError", "DHF1KVideo", "Video", "VideoEntry", "detect_layout",
           "load_av_dataset", "load_dhf1k", "load_videos", "read_split_file", "SPLIT_SEEDS", "SyntheticClip",
           "split_seed", "write_synthetic"]
