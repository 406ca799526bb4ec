"""``stylevar demo``: the whole pipeline, trained from nothing on synthetic triplets, on a CPU.

1. :func:`stylevar.data.synthetic.make_synthetic` writes a training set and a held-out set
   (new contents *and* new styles: another seed) in the OmniStyle layout.
2. A small multi-scale VQ-VAE is trained on every image of the training triplets
   (:class:`stylevar.training.tokenizer.TokenizerTrainer`).
3. A small StyleVAR is trained from scratch on the triplets with the SFT trainer
   (:class:`stylevar.training.sft.SFTTrainer`), the VQ-VAE frozen.
4. The model stylizes the held-out pairs, and, as controls, the same pairs with the style image
   swapped for another pair's and with the content image swapped for another pair's. The
   metrics file compares each with the target (SSIM, PSNR, L1, and :func:`figure_scores`: does
   the content's figure come through, in the style's colours?), next to the content image, the
   style image and the tokenizer's own reconstruction of the target (the ceiling); every pair is
   written under ``samples/``.

Everything is seeded; the stages write their usual run folders, so each can be inspected with
``stylevar plot`` or resumed like any run.

The package, by job: :mod:`~stylevar.demo.config` (:class:`DemoConfig`), :mod:`~stylevar.demo.stages`
(tokenizer, SFT, its processes), :mod:`~stylevar.demo.scoring` (the synthetic task's truth-based scores),
:mod:`~stylevar.demo.heldout` (the last stage), :mod:`~stylevar.demo.run` (:func:`run_demo`).
"""

from .config import DemoConfig, resolve_precision, sft_processes
from .heldout import GOALS, evaluate_heldout
from .run import run_demo
from .scoring import figure_pixels, figure_scores, heldout_truth, leakage_scores

__all__ = [
    "GOALS",
    "DemoConfig",
    "evaluate_heldout",
    "figure_pixels",
    "figure_scores",
    "heldout_truth",
    "leakage_scores",
    "resolve_precision",
    "run_demo",
    "sft_processes",
]
