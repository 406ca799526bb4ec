from __future__ import annotations

import pytest
import torch

from helpers import art_inception_state, tiny_models, torchvision_inception_state, write_upstream

# Random-weight stand-ins for the pretrained metric/reward models (shared by test_rewards and test_evaluate).


@pytest.fixture(autouse=True, scope="session")
def _threads():
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny():
    """A tiny StyleVAR (depth 2, C 64, patch_nums 1-4, 64x64 images) and its VQ-VAE."""
    return tiny_models()


@pytest.fixture(scope="session")
def upstream_dir(tmp_path_factory, tiny):
    """Upstream-format files of the tiny model: StyleVAR-GRPO.pth ({'model': sd}) + vae_ch160v4096z32.pth."""
    folder = tmp_path_factory.mktemp("upstream")
    write_upstream(*tiny, folder)
    return folder


@pytest.fixture(scope="session")
def ours_dir(tmp_path_factory, tiny):
    """The tiny model in our format (config.json + safetensors)."""
    from stylevar.io import save_pretrained

    out = tmp_path_factory.mktemp("ours") / "ckpt"
    save_pretrained(out, *tiny, info={"variant": "test"})
    return out


# ---------------------------------------------------------------------------------------------------
# Tiny random weights for the pretrained metric models


def _random_vgg_features(arch: str, folder, fname: str):
    """Random weights in torchvision's own key layout (``features.*``) for ``arch``, saved as ``fname``."""
    import torchvision.models as tvm

    with torch.device("meta"):  # torchvision's architecture and keys, without initialising 140M params
        features = getattr(tvm, arch)(weights=None).features
    features = features.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, v in features.state_dict().items():
        if k.endswith("weight"):
            sd[f"features.{k}"] = torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5
        else:
            sd[f"features.{k}"] = torch.randn(v.shape, generator=g) * 0.01
    path = folder / fname
    torch.save(sd, path)
    return path


@pytest.fixture(scope="session")
def vgg_file(tmp_path_factory):
    """VGG-19 (style/content losses): random weights as torchvision's vgg19-dcbb9e9d.pth."""
    return _random_vgg_features("vgg19", tmp_path_factory.mktemp("vgg"), "vgg19-dcbb9e9d.pth")


@pytest.fixture(scope="session")
def vgg16_file(tmp_path_factory):
    """VGG-16 (LPIPS-VGG's trunk): random weights as torchvision's vgg16-397923af.pth."""
    return _random_vgg_features("vgg16", tmp_path_factory.mktemp("vgg16"), "vgg16-397923af.pth")


@pytest.fixture(scope="session")
def dreamsim_dir(tmp_path_factory):
    """A DreamSim cache folder with a tiny DINO ViT (32 wide, the 12 blocks dreamsim reads), a tiny DINO
    head and a LoRA adapter saved by peft against dreamsim's own module tree."""
    pytest.importorskip("dreamsim")
    peft = pytest.importorskip("peft")
    from functools import partial

    from dreamsim.config import dreamsim_args
    from dreamsim.feature_extraction.vision_transformer import VisionTransformer
    from dreamsim.model import PerceptualModel

    d = tmp_path_factory.mktemp("dreamsim")
    (d / "checkpoints").mkdir()
    torch.manual_seed(0)
    vit = VisionTransformer(
        embed_dim=32, depth=12, num_heads=1, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)
    )
    torch.save(vit.state_dict(), d / "checkpoints" / "dino_vitbase16_pretrain.pth")
    h = "module.head."
    head = {h + "mlp.0.weight": torch.randn(64, 32), h + "mlp.0.bias": torch.zeros(64)}
    head |= {h + "mlp.2.weight": torch.randn(64, 64), h + "mlp.2.bias": torch.zeros(64)}
    head |= {h + "mlp.4.weight": torch.randn(16, 64), h + "mlp.4.bias": torch.zeros(16)}
    head |= {h + "last_layer.weight": torch.randn(40, 16)}
    torch.save({"student": head}, d / "dino_vitb16_pretrain.pth")
    from stylevar.perceptual.dreamsim_distance import _local_dino_builder

    with _local_dino_builder():
        base = PerceptualModel(
            **dreamsim_args["model_config"]["dino_vitb16"],
            device="cpu",
            load_dir=str(d),
            normalize_embeds=True,
        )
    lora = peft.get_peft_model(
        base, peft.LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, bias="none", target_modules=["qkv"])
    )
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_()
    lora.save_pretrained(str(d / "dino_vitb16_single_lora"))
    return d


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory):
    """A tiny CLIPModel (16-wide; one text layer, two vision layers, 224-pixel 32-patch vision tower), saved."""
    transformers = pytest.importorskip("transformers")
    text = dict(
        vocab_size=99,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    vision = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,  # a clip_resampler model reads hidden state -2: one layer of it
        num_attention_heads=2,
        image_size=224,
        patch_size=32,
    )
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("clip") / "tiny-clip"
    transformers.CLIPModel(config).save_pretrained(str(d))
    return d


@pytest.fixture(scope="session")
def inception_file(tmp_path_factory):
    """Inception-v3 (FID): random weights in the layout of torchvision's inception_v3_google-0cc3c7bd.pth
    (AuxLogits.* and fc.* included), which is also the trunk layout of pytorch-fid's FID Inception."""
    path = tmp_path_factory.mktemp("inception") / "inception_v3_google-0cc3c7bd.pth"
    torch.save(torchvision_inception_state(seed=0), path)
    return path


@pytest.fixture(scope="session")
def art_inception_file(tmp_path_factory):
    """ArtFID's Inception: random weights in art_inception.pth's key layout (two heads)."""
    path = tmp_path_factory.mktemp("art_inception") / "art_inception.pth"
    torch.save(art_inception_state(seed=5), path)
    return path


@pytest.fixture(scope="session")
def alexnet_file(tmp_path_factory):
    """AlexNet (LPIPS-Alex trunk): random weights as torchvision's alexnet-owt-7be5be79.pth."""
    return _random_vgg_features("alexnet", tmp_path_factory.mktemp("alex"), "alexnet-owt-7be5be79.pth")


@pytest.fixture(scope="session")
def adain_dir(tmp_path_factory):
    """AdaIN: random vgg_normalised.pth (the full released 53-layer layout) and decoder.pth in one folder."""
    from stylevar.eval.adain import DECODER_FILE, ENCODER_FILE, adain_decoder, vgg_normalised

    d = tmp_path_factory.mktemp("adain")
    for seed, (build, fname) in enumerate(((vgg_normalised, ENCODER_FILE), (adain_decoder, DECODER_FILE))):
        with torch.device("meta"):
            seq = build()
        g = torch.Generator().manual_seed(seed)
        sd = {}
        for k, v in seq.state_dict().items():
            if k.endswith("weight"):
                sd[k] = torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5
            else:
                sd[k] = 0.05 * torch.randn(v.shape, generator=g)
        torch.save(sd, d / fname)
    return d


@pytest.fixture(scope="module")
def pipe(tiny):
    """A CPU pipeline on a copy of the tiny model (a pipeline freezes its model: not the shared one)."""
    import copy

    from stylevar.stylize.pipeline import StyleVARPipeline

    return StyleVARPipeline(*copy.deepcopy(tiny), device="cpu")
