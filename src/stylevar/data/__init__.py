"""Training and evaluation data: (content, style, target) triplets in the published layouts and
users' own manifests, deterministic splits, validation passes and the image transforms."""

from .datasets import TripletDataset, TripletTransform, UnpairedDataset, unpaired_pairs
from .triplets import (
    Triplet,
    ValidationReport,
    load_split,
    read_manifest,
    save_split,
    scan,
    scan_imagepulse,
    scan_omnistyle,
    split_triplets,
    validate_triplets,
    write_manifest,
)

__all__ = [
    "Triplet",
    "TripletDataset",
    "TripletTransform",
    "UnpairedDataset",
    "ValidationReport",
    "load_split",
    "read_manifest",
    "save_split",
    "scan",
    "scan_imagepulse",
    "scan_omnistyle",
    "split_triplets",
    "unpaired_pairs",
    "validate_triplets",
    "write_manifest",
]
