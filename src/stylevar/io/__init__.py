"""Every on-disk format of stylevar, and safe reading.

Layers inside the package (each imports only the ones above it):

* :mod:`~stylevar.io.safe` -- reading files with ``weights_only=True`` (pickled code only on request),
  strict state-dict loading, atomic writes;
* :mod:`~stylevar.io.folders` -- the one versioned reader/writer of our folders (checkpoint, tokenizer,
  LoRA adapter); :mod:`~stylevar.io.run_files` -- training-run checkpoints;
* :mod:`~stylevar.io.state` -- from state dicts to models (kind, configuration off the shapes, strict
  build); :mod:`~stylevar.io.hub` -- the Hugging Face Hub;
* one module per format: :mod:`~stylevar.io.checkpoint` (ours), :mod:`~stylevar.io.adapters` (LoRA:
  our folder and the published GRPO forms), :mod:`~stylevar.io.upstream` (the published ``.pth`` files),
  :mod:`~stylevar.io.vqvae` (the tokenizer, and the one VQ-VAE loader);
* :mod:`~stylevar.io.loader` -- :func:`load_pretrained`, which tells what it was given and dispatches.
"""

from .adapters import (
    apply_lora_to_plain_state,
    bake_wrapped_state,
    is_lora_dir,
    load_lora,
    lora_hparams,
    lora_hparams_from_checkpoint,
    save_lora,
    save_upstream_grpo,
)
from .checkpoint import Checkpoint, load_checkpoint_dir, save_pretrained
from .folders import ADAPTER_CONFIG, ADAPTER_WEIGHTS, CONFIG_NAME, MODEL_WEIGHTS, VAE_WEIGHTS
from .hub import DEFAULT_REPO, HubUnreachableError, hub_download
from .loader import (
    MERGE_FORMATS,
    check_available,
    convert_upstream,
    load_pretrained,
    load_upstream,
    merge_lora_checkpoint,
)
from .run_files import load_training_checkpoint, resume_path, save_checkpoint
from .safe import PICKLE_FLAG, atomic_save, load_strict, read_file, read_state_dict, write_weights_dir
from .state import (
    build_stylevar,
    build_vqvae,
    classify,
    extract_state_dict,
    infer_stylevar_config,
    infer_vqvae_config,
)
from .upstream import VAE_FILENAME, VARIANT_FILES
from .vqvae import load_vqvae, save_vqvae

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "CONFIG_NAME",
    "DEFAULT_REPO",
    "MERGE_FORMATS",
    "MODEL_WEIGHTS",
    "PICKLE_FLAG",
    "VAE_FILENAME",
    "VAE_WEIGHTS",
    "VARIANT_FILES",
    "Checkpoint",
    "HubUnreachableError",
    "apply_lora_to_plain_state",
    "atomic_save",
    "bake_wrapped_state",
    "build_stylevar",
    "build_vqvae",
    "check_available",
    "classify",
    "convert_upstream",
    "extract_state_dict",
    "hub_download",
    "infer_stylevar_config",
    "infer_vqvae_config",
    "is_lora_dir",
    "load_checkpoint_dir",
    "load_lora",
    "load_pretrained",
    "load_strict",
    "load_training_checkpoint",
    "load_upstream",
    "load_vqvae",
    "lora_hparams",
    "lora_hparams_from_checkpoint",
    "merge_lora_checkpoint",
    "read_file",
    "read_state_dict",
    "resume_path",
    "save_checkpoint",
    "save_lora",
    "save_pretrained",
    "save_upstream_grpo",
    "save_vqvae",
    "write_weights_dir",
]
