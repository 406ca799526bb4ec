"""Deprecated: checkpoint reading and writing moved to :mod:`stylevar.io`.

``from stylevar import load_pretrained, save_pretrained`` (or ``from stylevar.io import ...``); the old
names here still work and warn.
"""

from ._deprecated import moved

__getattr__ = moved(
    __name__,
    {
        name: f"stylevar.io:{name}"
        for name in (
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
            "atomic_save",
            "build_stylevar",
            "build_vqvae",
            "classify",
            "convert_upstream",
            "extract_state_dict",
            "hub_download",
            "infer_stylevar_config",
            "infer_vqvae_config",
            "load_pretrained",
            "load_upstream",
            "merge_lora_checkpoint",
            "read_file",
            "save_pretrained",
            "save_upstream_grpo",
            "write_weights_dir",
        )
    },
)
