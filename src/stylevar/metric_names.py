"""The names of the evaluation metrics and of their groups, in table order: one list that the metric
registry (:data:`stylevar.eval.suite.METRICS`, which says what each measures) and ``stylevar evaluate
--metrics`` both read. It imports nothing, so that ``stylevar evaluate --help`` lists the metrics
without loading torch (``stylevar.eval`` loads it).
"""

from __future__ import annotations

#: scored per image (against the style image, the content image or the reference)
PER_IMAGE_METRICS = (
    "style_loss",
    "content_loss",
    "lpips",
    "ssim",
    "dreamsim",
    "clip",
    "histogram",
    "lpips_alex",
    "cfsd",
    "leakage",
    "structure",
)
#: scored per set of outputs (Inception features against the style images)
SET_METRICS = ("fid", "fid_art", "artfid")
METRIC_NAMES = PER_IMAGE_METRICS + SET_METRICS
#: the paper's Table 2
PAPER_METRICS = ("style_loss", "content_loss", "lpips", "ssim", "dreamsim", "clip")
#: the metrics that need no optional package (``stylevar[rewards]``): VGG-19 and Inception are torchvision
TORCHVISION_METRICS = ("style_loss", "content_loss", "ssim", "histogram", "cfsd", "leakage", "structure")
#: what ``--metrics`` takes besides names
METRIC_GROUPS = {"paper": PAPER_METRICS, "all": METRIC_NAMES, "torchvision": TORCHVISION_METRICS}
