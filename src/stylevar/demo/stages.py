"""The demo's stages: train (or reuse) the tokenizer, build the StyleVAR and its SFT trainer, run SFT in
several processes (through ``torchrun``), and the model configs the demo's sizes give."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..files import atomic_write_json
from .config import ADDED_LATER, TOKENIZER_FIELDS, DemoConfig, ModelBudget, resolve_precision, sft_processes


def train_tokenizer(cfg: ModelBudget, images: list[Path], out: Path, precision: dict, device, progress, say):
    """The demo's tokenizer trained on ``images`` (files and folders) into ``out/tokenizer``; returns it frozen."""
    from ..data import ImageFolderDataset
    from ..training.config import TokenizerConfig
    from ..training.tokenizer import TokenizerTrainer

    stage(
        f"2/4 tokenizer: {cfg.tokenizer_steps} steps of {cfg.tokenizer_batch} images ({precision['tokenizer']})",
        say,
    )
    from ..models import VQVAE

    torch.manual_seed(cfg.seed)
    vae = VQVAE(vqvae_config(cfg))
    image_set = ImageFolderDataset(
        images,
        cfg.size,
        seed=cfg.seed,
        cache_images=True,  # small images, each read many times: decoded once
    )
    tok = TokenizerTrainer(
        vae,
        image_set,
        out / "tokenizer",
        TokenizerConfig(
            max_steps=cfg.tokenizer_steps,
            batch=cfg.tokenizer_batch,
            lr=cfg.tokenizer_lr,
            betas=(0.9, 0.99),
            recon_loss="l1+l2",
            dead_code_steps=25,
            warmup_steps=20,
            seed=cfg.seed,
            save_every=0,
            log_every=25,
            num_workers=0,
            precision=precision["tokenizer"],
            # channels_last would step 1.1x faster here, but its tokenizers (another rounding, so other
            # codes) gave StyleVAR a worse figure colour on both data draws measured (docs/demo.md, lever table)
        ),
        device=device,
    )
    tok.fit(progress=progress)
    stop_if_signalled(tok)
    return tok.vae.eval().requires_grad_(False)


def reused_tokenizer(earlier: Path, cfg: DemoConfig, out: Path, precision: dict, timings: dict, say):
    from ..io import load_vqvae

    try:
        before = json.loads((earlier / "metrics.json").read_text())
    except (OSError, ValueError):
        raise ConfigError(
            f"{earlier} is not a finished demo (no readable metrics.json) to reuse a tokenizer from"
        ) from None
    now = cfg.to_dict()
    diff = [k for k in TOKENIZER_FIELDS if before["config"].get(k, ADDED_LATER.get(k)) != now[k]]
    if before.get("precision", {}).get("tokenizer") != precision["tokenizer"]:
        diff.append("the tokenizer's resolved precision")
    if diff:
        raise ConfigError(
            f"{earlier}'s tokenizer was trained with other settings ({', '.join(diff)}): train it anew"
        )
    stage(f"2/4 tokenizer: reused from {earlier}", say)
    shutil.copytree(earlier / "tokenizer" / "final", out / "tokenizer" / "final", dirs_exist_ok=True)
    timings["tokenizer_reused_s"] = before["timings"].get(
        "tokenizer_s", before["timings"].get("tokenizer_reused_s")
    )
    return load_vqvae(out / "tokenizer" / "final").eval().requires_grad_(False)


def sft_trainer(
    cfg: ModelBudget, vae, train_source: Path, held_source: Path, out: Path, precision, device, world
):
    """The demo's StyleVAR and its SFT trainer (each process's share of a batch: ``sft_batch / world``);
    ``train_source`` / ``held_source``: a triplet folder or manifest (:func:`stylevar.data.scan`)."""
    from ..config import StyleVARConfig
    from ..data import TripletDataset, TripletTransform, scan
    from ..models import StyleVAR
    from ..training.config import SFTConfig
    from ..training.sft import SFTTrainer

    sft_seed = cfg.seed if cfg.sft_seed is None else cfg.sft_seed
    torch.manual_seed(sft_seed)
    model = StyleVAR(
        StyleVARConfig(
            depth=cfg.depth,
            embed_dim=cfg.embed_dim,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            drop_path_rate=0.0,
            vocab_size=cfg.vocab_size,
            z_channels=cfg.z_channels,
            patch_nums=cfg.patch_nums,
            style_enc_dim=cfg.style_enc_dim,
            content_residual=cfg.content_residual,
            **style_encoder_fields(cfg),
        )
    )
    model.init_weights()
    tf = TripletTransform(resolution=cfg.size)
    # 3600 files of 32 px: decoded once (each step would otherwise decode 96 PNGs, ~8 % of its time)
    train_set = TripletDataset(scan(train_source), tf, train=True, seed=sft_seed, cache_images=True)
    held_set = TripletDataset(scan(held_source), tf, cache_images=True)
    sft = SFTTrainer(
        model,
        vae,
        train_set,
        out / "sft",
        SFTConfig(
            max_steps=cfg.sft_steps,
            micro_batch=cfg.sft_batch // world,
            grad_accum=1,
            lr=cfg.sft_lr,
            schedule="cosine",
            warmup_steps=20,
            seed=sft_seed,
            save_every=0,
            log_every=25,
            num_workers=0,
            # the ResNets start random: batch statistics keep them normalised (each process's own batch)
            encoder_bn="train",
            cache_tokens=True,  # 3000 triplets of 600 contents/styles: each file tokenized once
            precision=precision["sft"],
            scale_weight_power=cfg.sft_scale_weight_power,
            style_noise=cfg.sft_style_noise,
        ),
        val_set=held_set,
        device=device,
    )
    return sft, held_set


def spawn_sft(
    cfg: ModelBudget, procs: int, out: Path, train_source, held_source, precision, progress
) -> None:
    """Run the SFT stage as ``procs`` CPU processes (DDP over gloo) and wait for them.

    The processes are started by ``torchrun`` (``python -m torch.distributed.run --standalone``), each running
    :mod:`stylevar.demo.sft_worker`, which enters the process group through
    :func:`stylevar.training.distributed.launch` like every training command under torchrun. Fresh
    interpreters, not ``multiprocessing`` children: a script that calls :func:`run_demo` without an
    ``if __name__ == "__main__"`` guard is not run again in them. Each process gets its share of the threads.
    """
    import subprocess
    import sys

    threads = max(1, torch.get_num_threads() // procs)
    job = dict(config=cfg.to_dict(), config_class=type(cfg).__name__, out=str(out))
    job.update(train_source=str(train_source), held_source=str(held_source))
    job.update(precision=precision, progress=bool(progress))
    job_file = out / "sft" / "job.json"
    atomic_write_json(job_file, job)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
    command += ["--monitor-interval=0.5", "-m", "stylevar.demo.sft_worker", str(job_file)]
    # torchrun would set OMP_NUM_THREADS=1 in every process; they share the cores instead
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    # its own process group: a stop here (Ctrl-C, SIGTERM) reaches torchrun, which stops its workers
    launcher = subprocess.Popen(command, env=env, start_new_session=True)
    try:
        code = launcher.wait()
    finally:
        if launcher.poll() is None:
            _stop_group(launcher)
    if code:
        raise RuntimeError(
            f"the SFT processes exited with {code}; their errors are above "
            "(set sft_processes=1 to train in this process)"
        )


def _stop_group(launcher) -> None:
    """SIGTERM to the launcher's process group (torchrun and its workers save and stop), then SIGKILL."""
    import signal
    import subprocess

    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(launcher.pid, sig)
        except ProcessLookupError:
            return
        try:
            launcher.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def style_encoder_fields(cfg: DemoConfig) -> dict[str, Any]:
    if cfg.style_encoder == "resnet":
        return {}
    return dict(
        style_encoder=cfg.style_encoder,
        clip_vision={**cfg.demo_clip, "image_size": cfg.size},
        style_tokens=cfg.style_tokens,
        resampler_depth=cfg.resampler_depth,
        resampler_dim=cfg.resampler_dim,
        style_vq_tokens=cfg.style_vq_tokens,
    )


def vqvae_config(cfg: DemoConfig):
    from ..config import VQVAEConfig

    levels = (cfg.size // cfg.patch_nums[-1]).bit_length()  # downsampling 2**(levels-1)
    ch_mult = tuple(min(2, 1 + i) for i in range(levels))  # ch, 2 ch, 2 ch, ... channels
    return VQVAEConfig(
        vocab_size=cfg.vocab_size,
        z_channels=cfg.z_channels,
        ch=cfg.tokenizer_ch,
        ch_mult=ch_mult,
        num_res_blocks=1,
        patch_nums=cfg.patch_nums,
        using_sa=False,
        using_mid_sa=False,
        norm_groups=cfg.norm_groups,
    )


def start_run(out_dir, cfg: ModelBudget, device) -> tuple[Path, torch.device, int, dict[str, str]]:
    """Everything a demo checks before it writes: the style encoder's package, no finished demo in
    ``out_dir``, the SFT processes for ``device``. Returns (the output folder, created; the device; the SFT
    processes; each trainer's resolved precision)."""
    if cfg.style_encoder == "clip_resampler":
        try:
            import transformers  # noqa: F401
        except ImportError:
            raise ConfigError(
                "the demo's CLIP-resampler style encoder needs transformers: pip install 'stylevar[rewards]', "
                "or run the demo with --style-encoder resnet"
            ) from None
    out = Path(out_dir).expanduser()
    if (out / "metrics.json").exists():
        raise ConfigError(f"{out} already holds a finished demo; choose another folder or delete it")
    device = torch.device(device)
    procs = sft_processes(cfg, device)
    if procs > 1 and device.type != "cpu":
        raise ConfigError(f"sft_processes {procs} trains on the CPU; on {device} use 1 (or 0, auto)")
    out.mkdir(parents=True, exist_ok=True)
    precision = {
        "tokenizer": resolve_precision(cfg.tokenizer_precision, device),
        "sft": resolve_precision(cfg.sft_precision, device),
    }
    return out, device, procs, precision


def train_sft(
    cfg: ModelBudget, vae, train_source, held_source, out: Path, precision, device, procs, progress, say
):
    """The SFT stage, in this process or in ``procs`` torchrun processes. Returns (the trained StyleVAR in
    eval mode on ``device``, its trainer, or None when other processes trained it: rank 0 exported the model
    and wrote ``sft/val.json``)."""
    how = f"{precision['sft']}" + (f", {procs} processes" if procs > 1 else "")
    stage(f"3/4 StyleVAR SFT: {cfg.sft_steps} steps of {cfg.sft_batch} triplets ({how})", say)
    if procs == 1:
        sft, _ = sft_trainer(cfg, vae, train_source, held_source, out, precision, device, world=1)
        sft.fit(progress=progress)
        stop_if_signalled(sft)
        return sft.model.eval(), sft
    spawn_sft(cfg, procs, out, train_source, held_source, precision, progress)
    from ..io import load_checkpoint_dir

    return load_checkpoint_dir(out / "sft" / "final").model.to(device).eval(), None


def stop_if_signalled(trainer) -> None:
    """End the demo where a stop signal ended a stage's training (its ``last.pt`` is saved): the next stage
    must not start on a half-trained model."""
    if trainer.stopped_by is not None:
        import signal

        from ..errors import Interrupted

        signum = int(trainer.stopped_by)
        raise Interrupted(signum, signal.Signals(signum).name)


def stage(name: str, say) -> None:
    say(f"[demo] {name}")
