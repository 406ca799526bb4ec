"""The published FID networks (pytorch-fid's FID Inception, ArtFID's art_inception) and StyleID's CFSD,
checked against the packages' own code or a direct implementation, on random weights made here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from helpers import art_inception_state, random_inception_state
from stylevar import perceptual as P
from stylevar.errors import CheckpointError, MissingWeightsError

pytorch_fid_inception = pytest.importorskip("pytorch_fid.inception")


@pytest.fixture(scope="module")
def pytorch_fid_model():
    """pytorch-fid's own InceptionV3 (its builder, its blocks, its strict load) on random weights: its
    download is replaced by the randomised state dict of the very network its builder made."""
    mod = pytorch_fid_inception
    built = []
    original = mod._inception_v3

    def capture(*a, **kw):
        built.append(original(*a, **kw))
        return built[-1]

    def fake_download(url, *a, **kw):
        assert url == P.inception.FID_URL  # we look for the file pytorch-fid downloads
        return random_inception_state(built[-1].state_dict(), seed=1)

    mp = pytest.MonkeyPatch()
    mp.setattr(mod, "_inception_v3", capture)
    mp.setattr(mod, "load_state_dict_from_url", fake_download)
    try:
        model = mod.InceptionV3([mod.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    finally:
        mp.undo()
    sd = {k: v.clone() for k, v in built[-1].state_dict().items()}  # what pytorch-fid loaded (strictly)
    return model, sd


def test_fid_inception_loads_pytorch_fids_state_dict_strictly_and_matches_its_features(
    pytorch_fid_model, tmp_path
):
    model, sd = pytorch_fid_model
    assert "fc.weight" in sd and sd["fc.weight"].shape[0] == 1008  # the TF network's 1008 classes
    path = tmp_path / P.inception.FID_FILE
    torch.save(sd, path)
    ours = P.FIDInceptionFeatures(tmp_path)  # a folder holding the file, as torch hub's cache does
    torch.manual_seed(0)
    for size in (299, 96):  # 96: both resize to 299 inside
        x = torch.rand(2, 3, size, size)
        with torch.no_grad():
            want = model(x)[0].flatten(1)
            got = ours(x)
        assert got.shape == (2, 2048)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # the blocks differ from torchvision's: torchvision's network on the same weights gives other features
    tv = P.InceptionFeatures({k: v for k, v in sd.items() if not k.startswith("fc.")})
    with torch.no_grad():
        assert (tv(x) - ours(x)).abs().max() > 1e-3


def test_fid_inception_refuses_other_weights_in_one_line(pytorch_fid_model, tmp_path):
    _, sd = pytorch_fid_model
    broken = {k: v for k, v in sd.items() if not k.startswith("Mixed_7c.branch_pool")}
    with pytest.raises(CheckpointError) as e:
        P.FIDInceptionFeatures(broken)
    assert "\n" not in str(e.value) and "Mixed_7c.branch_pool" in str(e.value)
    with pytest.raises(MissingWeightsError) as e:
        P.FIDInceptionFeatures(tmp_path / "nowhere")
    msg = str(e.value)
    assert "\n" not in msg and P.inception.FID_FILE in msg and P.inception.FID_URL in msg


def _torchvision_state(aux_logits: bool, seed: int) -> dict:
    """Random weights in torchvision's Inception-v3 layout (1000 classes), with or without AuxLogits."""
    from torchvision.models import inception_v3

    with torch.device("meta"):
        model = inception_v3(weights=None, aux_logits=aux_logits, init_weights=False)
    return random_inception_state(model.to_empty(device="cpu").state_dict(), seed)


def test_each_fid_network_takes_its_own_weights_and_refuses_the_others(pytorch_fid_model, tmp_path):
    """The trunks share one key layout, so a torchvision file loads into pytorch-fid's network without a
    missing key: only the heads tell them apart (fc of 1008 rows vs 1000), and each network refuses the
    other's file in one line naming the file, what it looks like and the --fid-inception it fits."""
    from safetensors.torch import save_file

    _, fid_sd = pytorch_fid_model  # the state dict pytorch-fid's own builder made (no AuxLogits)
    fid_file = tmp_path / P.inception.FID_FILE
    torch.save(fid_sd, fid_file)
    tv_file = tmp_path / "inception_v3_google-0cc3c7bd.pth"  # the released layout: AuxLogits and fc
    torch.save(_torchvision_state(aux_logits=True, seed=4), tv_file)
    tv_noaux = tmp_path / "torchvision_noaux.safetensors"
    save_file({k: v.contiguous() for k, v in _torchvision_state(aux_logits=False, seed=5).items()}, tv_noaux)
    art_file = tmp_path / "art_inception.pth"
    torch.save(art_inception_state(seed=6), art_file)
    layout = P.inception.inception_layout
    assert layout(fid_sd) == "pytorch-fid" and layout(torch.load(tv_file, weights_only=True)) == "torchvision"

    x = torch.rand(1, 3, 80, 80)
    assert P.FIDInceptionFeatures(fid_file)(x).shape == (1, 2048)  # its own
    for path in (tv_file, tv_noaux):
        assert P.InceptionFeatures(path)(x).shape == (1, 2048)
        with pytest.raises(CheckpointError) as e:
            P.FIDInceptionFeatures(path)
        msg = str(e.value)
        assert "\n" not in msg and str(path) in msg and "torchvision's ImageNet Inception-v3" in msg
        assert "fc of 1000 rows" in msg and "--fid-inception torchvision" in msg
    with pytest.raises(CheckpointError) as e:
        P.InceptionFeatures(fid_file)
    msg = str(e.value)
    assert "\n" not in msg and str(fid_file) in msg and "fc of 1008 rows" in msg
    assert "--fid-inception pytorch-fid" in msg
    # ArtFID's file fits neither FID network; neither FID file fits ArtFID's network
    for build in (P.FIDInceptionFeatures, P.InceptionFeatures):
        with pytest.raises(CheckpointError, match="--art-inception-weights") as e:
            build(art_file)
        assert str(art_file) in str(e.value)
    for path, fits in ((fid_file, "pytorch-fid"), (tv_file, "torchvision")):
        with pytest.raises(CheckpointError, match=f"--fid-inception {fits}"):
            P.ArtInceptionFeatures(path)
    # a bare trunk cannot be told from torchvision's: pytorch-fid's network refuses it, torchvision's takes it
    trunk = {k: v for k, v in fid_sd.items() if not k.startswith("fc.")}
    with pytest.raises(CheckpointError, match="without its fc layer"):
        P.FIDInceptionFeatures(trunk)
    # a DataParallel prefix changes nothing
    assert layout({f"module.{k}": v for k, v in fid_sd.items()}) == "pytorch-fid"


def test_frechet_distance_matches_pytorch_fid(pytorch_fid_model):
    from pytorch_fid.fid_score import calculate_frechet_distance

    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 64, generator=g, dtype=torch.float64)
    b = 0.8 * torch.randn(200, 64, generator=g, dtype=torch.float64) + 0.3
    want = calculate_frechet_distance(
        a.mean(0).numpy(), np.cov(a.numpy(), rowvar=False), b.mean(0).numpy(), np.cov(b.numpy(), rowvar=False)
    )
    assert P.frechet_distance(a, b) == pytest.approx(float(want), rel=1e-6)


def test_art_inception_loads_artfids_layout_and_takes_raw_pixels(tmp_path):
    from torchvision.models import inception_v3

    sd = art_inception_state(seed=2)
    assert {"fc1.weight", "fc2.weight", "AuxLogits1.fc.weight", "AuxLogits2.fc.weight"} <= set(sd)
    torch.save(sd, tmp_path / "art_inception.pth")
    ours = P.ArtInceptionFeatures(tmp_path / "art_inception.pth")
    # art-fid's network: torchvision's architecture, no input transform, images at their own size
    ref = inception_v3(weights=None, init_weights=False, aux_logits=False, transform_input=False).eval()
    ref.fc = torch.nn.Identity()
    ref.load_state_dict({k: v for k, v in sd.items() if not k.startswith(("fc", "AuxLogits"))})
    torch.manual_seed(0)
    x = torch.rand(2, 3, 128, 160)  # not square, not 299: art-fid resizes nothing
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="at least 75x75"):
        ours(torch.rand(1, 3, 64, 64))


def test_art_inception_missing_file_names_file_folders_and_url(monkeypatch, tmp_path):
    monkeypatch.setenv("STYLEVAR_CACHE", str(tmp_path / "cache"))
    (tmp_path / "tmp").mkdir()  # gettempdir() takes $TMPDIR only when it exists
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    with pytest.raises(MissingWeightsError) as e:
        P.ArtInceptionFeatures()
    msg = str(e.value)
    assert "\n" not in msg and "art_inception.pth" in msg and P.inception.ART_URL in msg
    assert str(tmp_path / "cache" / "art_fid") in msg and str(tmp_path / "tmp" / "art_fid") in msg
    # found in the folder art-fid downloads to
    (tmp_path / "tmp" / "art_fid").mkdir()
    torch.save(art_inception_state(seed=3), tmp_path / "tmp" / "art_fid" / "art_inception.pth")
    assert P.ArtInceptionFeatures().DIM == 2048
    sd = art_inception_state(seed=3)
    del sd["Mixed_6a.branch3x3.conv.weight"]
    with pytest.raises(CheckpointError, match="Mixed_6a.branch3x3.conv.weight"):
        P.ArtInceptionFeatures(sd)


# ------------------------------------------------------------------------------------------- CFSD
def _styleid_cfsd(out_feats: torch.Tensor, content_feats: torch.Tensor) -> torch.Tensor:
    """StyleID's PatchSimi, written out directly: whole hw x hw matrices, F.kl_div 'batchmean' (one image)."""

    def simi(x, log):
        b, c, h, w = x.size()
        f = torch.transpose(x, 1, 3).reshape(b, h * w, c).div(c)
        s = torch.bmm(f, f.transpose(1, 2))
        return (F.log_softmax(s, dim=-1) if log else F.softmax(s, dim=-1)).reshape(b, -1)

    return F.kl_div(simi(out_feats, True), simi(content_feats, False), reduction="batchmean")


def test_patch_similarity_kl_matches_styleids_formula():
    g = torch.Generator().manual_seed(0)
    for shape in ((1, 8, 5, 7), (1, 16, 12, 12)):
        a, b = torch.rand(shape, generator=g) * 3, torch.rand(shape, generator=g) * 3
        # StyleID's formula in float64, the exact value; ours works in fp32 (as StyleID does), where the KL of
        # two close distributions (log p - log q) keeps ~4e-5 relative rounding that depends on the CPU's
        # matrix kernels (an AMD EPYC; an AMX Xeon rounds to within 1e-5)
        want = _styleid_cfsd(b.double(), a.double())
        for rows in (1, 7, 4096):  # blocks of rows change nothing
            got = P.patch_similarity_kl(a, b, rows=rows)
            torch.testing.assert_close(got[0], want, rtol=2e-4, atol=1e-7)
    assert float(P.patch_similarity_kl(a, a)[0]) == pytest.approx(0, abs=1e-9)


def test_cfsd_uses_relu3_1_of_vgg19(vgg_file):
    from torchvision.models import vgg19

    # the random weights scaled up so relu3_1 has a real network's magnitude (similarities of order 1;
    # with tiny ones every softmax is near uniform and the KL is rounding noise)
    sd = torch.load(vgg_file, weights_only=True)
    sd = {k.removeprefix("features."): v * (4 if v.ndim == 4 else 1) for k, v in sd.items()}
    cfsd = P.CFSD(sd, rows=100)
    net = vgg19(weights=None).features[:12].eval()  # through relu3_1 (StyleID's layer "11")
    net.load_state_dict({k: v for k, v in sd.items() if int(k.split(".")[0]) < 12})
    torch.manual_seed(0)
    out, content = torch.rand(2, 3, 40, 48), torch.rand(2, 3, 40, 48)
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    with torch.no_grad():
        got = cfsd(out, content)
        want = torch.stack(
            [
                _styleid_cfsd(net((out[i : i + 1] - mean) / std), net((content[i : i + 1] - mean) / std))
                for i in range(2)
            ]
        )
    assert float(want.min()) > 0.1  # a KL that means something
    torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-6)
    assert float(cfsd(content, content).abs().max()) < 1e-5
    with pytest.raises(ValueError, match="one shape"):
        cfsd(out, torch.rand(2, 3, 32, 32))
