"""Training and evaluation data: (content, style, target) triplets in the published layouts and
users' own manifests, deterministic splits, validation passes, the image transforms, and plain image
collections (the tokenizer's data)."""

from .datasets import TripletDataset, TripletTransform, UnpairedDataset, unpaired_pairs
from .folders import ImageFolderDataset, collect_images, split_images
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
    "ImageFolderDataset",
    "Triplet",
    "TripletDataset",
    "TripletTransform",
    "UnpairedDataset",
    "ValidationReport",
    "collect_images",
    "load_split",
    "read_manifest",
    "save_split",
    "scan",
    "scan_imagepulse",
    "scan_omnistyle",
    "split_images",
    "split_triplets",
    "unpaired_pairs",
    "validate_triplets",
    "write_manifest",
]
