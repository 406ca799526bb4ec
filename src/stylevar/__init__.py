"""stylevar: reference-based image style transfer with visual autoregressive models (StyleVAR).

    from stylevar import StyleVARPipeline
    pipe = StyleVARPipeline.from_pretrained()        # the released GRPO weights from the Hub
    pipe("photo.jpg", "painting.png", seed=0).images[0].save("out.png")

Names are imported on first use (``import stylevar`` alone loads no torch), so the command line
answers ``--help`` at once.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ALPHA_PRESETS": "config",
    "Sampling": "config",
    "StylizeSettings": "stylize.settings",
    "StyleVARConfig": "config",
    "VQVAEConfig": "config",
    "CheckpointError": "errors",
    "ConfigError": "errors",
    "ImageError": "errors",
    "StyleVARError": "errors",
    "VQVAE": "models",
    "Conditioning": "models",
    "GenerationOutput": "models",
    "StyleVAR": "models",
    "StyleVARPipeline": "stylize.pipeline",
    "StylizeOutput": "stylize.pipeline",
    "PairResult": "stylize.stream",
    "Pair": "stylize.pairs",
    "Blend": "stylize.pairs",
    "read_manifest": "stylize.pairs",
    "Checkpoint": "io",
    "load_pretrained": "io",
    "save_pretrained": "io",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
