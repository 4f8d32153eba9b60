"""Public benchmark datasets: a registry of mirrors and checksums, and a resumable verified download.

``python -m pipeline.datasets fetch trento`` lays the files out under ``data/trento/``, where
``catalogs/trento.yaml`` reads them.
"""

from pipeline.datasets.download import DownloadError, download_file, sha256_of
from pipeline.datasets.fetch import (
    FileState,
    dataset_dir,
    dataset_status,
    default_root,
    fetch_dataset,
)
from pipeline.datasets.registry import DATASETS, Dataset, DatasetFile, get_dataset

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetFile",
    "DownloadError",
    "FileState",
    "dataset_dir",
    "dataset_status",
    "default_root",
    "download_file",
    "fetch_dataset",
    "get_dataset",
    "sha256_of",
]
