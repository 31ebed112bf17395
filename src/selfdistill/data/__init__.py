"""Datasets, splits, samplers and on-device batched augmentation."""

from .augment import crop_flip, normalize, sample_crop_flip
from .loader import Batch, DataModule, DataRequirements, TrainLoader
from .samplers import IndexBatch, PairSampler, ShuffleSampler
from .sources import DATASETS, DataError, RawData, Split, list_datasets
from .splits import make_splits

__all__ = [
    "DATASETS", "Batch", "DataError", "DataModule", "DataRequirements", "IndexBatch", "PairSampler", "RawData",
    "ShuffleSampler", "Split", "TrainLoader", "crop_flip", "list_datasets", "make_splits", "normalize",
    "sample_crop_flip",
]
