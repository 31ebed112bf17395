"""Datasets, splits, samplers and on-device batched augmentation."""

from ..batch import Batch, DataRequirements
from .loader import DataModule
from .memory import TrainLoader
from .samplers import IndexBatch, PairSampler, ShuffleSampler
from .sources import DATASETS, DataError, RawData, Split, list_datasets, register_dataset
from .splits import make_splits
from .transforms import crop_flip, normalize, sample_crop_flip

__all__ = [
    "DATASETS", "Batch", "DataError", "DataModule", "DataRequirements", "IndexBatch", "PairSampler", "RawData",
    "ShuffleSampler", "Split", "TrainLoader", "crop_flip", "list_datasets", "make_splits", "normalize",
    "register_dataset", "sample_crop_flip",
]
