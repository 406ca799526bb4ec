"""The ``stylevar grpo`` command: data, starting model, reward and launch around :class:`~.grpo.GRPOTrainer`.

``stylevar grpo DATA [DATA ...] --init SFT_CHECKPOINT -o RUN_DIR [--reward "dreamsim:5"] [flags]``

DATA is read, checked and split as by ``stylevar sft`` (the split goes to ``RUN_DIR/split.json``;
the validation part gives the held-out reward). ``--init`` is anything
:func:`~stylevar.checkpoints.load_pretrained` reads (our folder, an upstream ``.pth``, a Hub id;
LoRA-only files with ``--base``). Under ``torchrun`` each process rolls out its own conditions.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..cli import _alpha_arg
from ..errors import ConfigError
from .sft_cli import Say, _jsonable, add_config_flags, launch, on_rank0, prepare_data

#: help of the flags that set :class:`GRPOConfig` fields (defaults come from the dataclass)
_HELP = {
    "epochs": "passes over the training conditions (--max-steps overrides)",
    "max_steps": "stop after this many steps (0 = by epochs)",
    "batch_size": "conditions per process per step",
    "group_size": "G rollouts per condition",
    "micro_batch": "rollouts per teacher-forced forward/backward",
    "rollout_batch": "rollouts per generate call (0 = all of a step's)",
    "ppo_epochs": "optimisation passes per rollout batch (> 1 lets the PPO clip act)",
    "num_workers": "data-loading processes",
    "lr": "AdamW learning rate (constant)",
    "weight_decay": "AdamW weight decay",
    "grad_clip": "max gradient norm (0 = off)",
    "beta": "KL coefficient",
    "kl_direction": "k3 estimator direction: ref/policy (DeepSeek) or policy/ref (published)",
    "clip_eps": "PPO clip range",
    "std_floor": "advantages divide by max(group std, floor)",
    "panw_gamma": "PANW exponent: token weight (h*w)^-gamma (0 = plain mean)",
    "kl_spike": "drop a rollout whose weighted raw KL exceeds this (0 = never)",
    "logprob_dist": "score the full softmax (paper) or the sampled (top-k/top-p, temperature) distribution",
    "top_k": "rollout top-k (0 = off)",
    "top_p": "rollout top-p (0 = off)",
    "temperature": "rollout temperature",
    "lora_rank": "LoRA rank",
    "lora_alpha": "LoRA alpha (scaling alpha/rank)",
    "ema_decay": "reward EMA decay",
    "merge_cooldown": "steps before a normal merge (0 = no iterative reference update)",
    "merge_min_gain": "reward-EMA gain over the last merge needed to merge",
    "merge_patience": "steps without a new EMA peak before merging",
    "merge_kl_threshold": "emergency merge above this raw KL (0 = off)",
    "merge_emergency_cooldown": "steps between emergency merges",
    "vmr_scale": "VMR: first suffix scale index (-1 = the middle resolution)",
    "vmr_k": "VMR: continuations per prefix",
    "vmr_prefix_updates": "VMR: prefix steps per suffix step",
    "vmr_tau": "VMR: 0 = mean continuation reward, > 0 = soft value tau log mean exp(R/tau)",
    "mask_propagation": "off, reward_grad (|dR/dx|) or error (|x - target|) token weighting",
    "mp_mix": "Mask Propagation: multiplier = (1 - mix) + mix * relevance",
    "precision": "fp32 (paper) or bf16 autocast for rollouts and forward",
    "seed": "seed of the data order, rollouts and LoRA init",
    "save_every": "checkpoints/last.pt and a rolling step-N.pt every N steps (0 = at the end)",
    "keep_rolling": "rolling checkpoints kept",
    "log_every": "metrics.jsonl every N steps",
    "eval_every": "held-out reward every N steps (0 = at start and end)",
    "eval_pairs": "held-out conditions in the evaluation",
    "eval_samples": "samples per held-out condition",
}
_CHOICES = {
    "kl_direction": ("ref/policy", "policy/ref"),
    "logprob_dist": ("full", "sampled"),
    "mask_propagation": ("off", "reward_grad", "error"),
    "precision": ("fp32", "bf16"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .grpo import GRPOConfig

    p.add_argument(
        "data", nargs="+", metavar="DATA", help="OmniStyle/ImagePulse roots or CSV/JSONL manifests"
    )
    p.add_argument("-o", "--output", required=True, metavar="RUN_DIR", help="run folder")
    g = p.add_argument_group("start and reward")
    g.add_argument(
        "--init", required=True, metavar="CHECKPOINT", help="the SFT model: folder, .pth or Hub id"
    )
    g.add_argument("--base", default=None, help="base checkpoint when --init is a LoRA-only file")
    g.add_argument(
        "--vae", default=None, help="VQ-VAE .pth when --init is an upstream file without one beside it"
    )
    g.add_argument("--variant", choices=("grpo", "sft"), default=None, help="with a Hub id: which release")
    g.add_argument(
        "--alpha", type=_alpha_arg, default=None, help="per-scale alpha (default: the checkpoint's)"
    )
    g.add_argument("--trust-checkpoint", action="store_true", help="allow pickled .pth files (trusted only)")
    g.add_argument(
        "--reward",
        default="dreamsim:5",
        help='reward spec "name[@ref][:weight],...": dreamsim, clip, lpips, ssim, pixel, mse, gram, tv '
        '(default "dreamsim:5" = -5 DreamSim vs target, the paper; "ssim" and "pixel:-1" need no weights)',
    )
    g.add_argument("--dreamsim-dir", default=None, help="DreamSim weights cache (dino_vitb16 files)")
    g.add_argument("--clip-model", default=None, help="CLIP folder or Hub id (openai/clip-vit-base-patch32)")
    g.add_argument("--vgg-weights", default=None, help="torchvision vgg19-dcbe5be3.pth (gram reward)")
    g.add_argument("--lpips-net", choices=("vgg", "alex"), default="vgg")
    g.add_argument("--download", action="store_true", help="let reward models download missing weights")
    g = p.add_argument_group("data")
    g.add_argument("--layout", choices=("auto", "omnistyle", "imagepulse", "manifest"), default="auto")
    g.add_argument("--on-bad-file", choices=("fail", "skip"), default="fail")
    g.add_argument("--full-check", action="store_true", help="decode every image in the check (slow)")
    g.add_argument("--val-fraction", type=float, default=0.05, help="held-out share of each source")
    g.add_argument("--split-seed", type=int, default=42)
    g.add_argument(
        "--val",
        nargs="+",
        default=None,
        metavar="VAL_DATA",
        help="held-out triplets for the evaluation reward (default: the --val-fraction split of DATA)",
    )
    g.add_argument("--fit", choices=("squash", "crop"), default="squash")
    g = p.add_argument_group("GRPO (GRPOConfig)")
    add_config_flags(g, GRPOConfig, _HELP, _CHOICES)
    g.add_argument("--full-finetune", action="store_true", help="train all transformer weights, no LoRA")
    g.add_argument("--vmr", action="store_true", help="Value as Middle Return (VAR RL Done Right)")
    g.add_argument("--no-restore-peak", action="store_true", help="merge the current LoRA, not the peak's")
    g.add_argument("--cuda-graphs", action="store_true", help="rollouts replay per-scale CUDA graphs")
    g = p.add_argument_group("run")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    g.add_argument("--resume", action="store_true", help="continue RUN_DIR/checkpoints/last.pt")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def grpo_config(args: argparse.Namespace):
    from .grpo import GRPOConfig

    values = {name: getattr(args, name) for name in _HELP}
    return GRPOConfig(
        **values,
        lora=not args.full_finetune,
        vmr=args.vmr,
        restore_peak=not args.no_restore_peak,
        cuda_graphs=args.cuda_graphs,
    )


@dataclass
class GRPORun:
    run_dir: Path
    final: Path | None
    step: int
    total_steps: int
    rank: int
    eval_start: float | None
    eval_end: float | None


def run_grpo(args: argparse.Namespace, say: Say = lambda _m: None) -> GRPORun:
    """Everything ``stylevar grpo`` does, from parsed flags; ``say`` gets progress lines (rank 0)."""
    return launch(_run, args, say)


def _base_ref(init: str) -> str:
    """Where the adapter's base lives: the absolute path of a local ``--init``, else the Hub id as given."""
    p = Path(init).expanduser()
    return str(p.resolve()) if p.exists() else str(init)


def _run(args: argparse.Namespace, device: torch.device, rank: int, world: int, say: Say) -> GRPORun:
    from ..checkpoints import load_pretrained
    from ..data import TripletDataset, TripletTransform
    from .grpo import GRPOTrainer
    from .rewards import build_reward

    run_dir = Path(args.output).expanduser()
    last = run_dir / "checkpoints" / "last.pt"
    cfg = grpo_config(args)

    def prepare():
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"{run_dir} exists and is not a folder; choose another -o RUN_DIR")
        if last.exists() and not args.resume:
            raise ConfigError(
                f"{last} exists: pass --resume to continue that run, or choose another -o RUN_DIR"
            )
        resuming = args.resume and last.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        train, val, msg = prepare_data(args, run_dir, reuse_split=args.resume)
        if args.val:
            from ..data import scan, validate_triplets

            train = train + val  # DATA is all training data then
            val, report = validate_triplets(
                [t for d in args.val for t in scan(Path(d).expanduser(), args.layout)],
                on_bad=args.on_bad_file,
            )
            msg += f"; held-out set from --val: {len(val)} triplets ({report.summary()})"
        return resuming, train, val, msg

    ckpt = load_pretrained(
        args.init,
        vae=args.vae,
        base=args.base,
        variant=args.variant,
        alpha=args.alpha,
        allow_pickle=args.trust_checkpoint,
    )
    model, vae = ckpt.model, ckpt.vae
    say(f"model: {args.init} (depth {model.config.depth}, alpha {list(model.config.alpha)})")
    reward = build_reward(
        args.reward,
        device=device,
        dreamsim_dir=args.dreamsim_dir,
        clip_model=args.clip_model,
        lpips_net=args.lpips_net,
        vgg_weights=args.vgg_weights,
        download=args.download,
    )
    say(f"reward: {args.reward}")
    # the data last: a wrong --init or --reward fails in seconds, before the scan writes split.json
    resuming, train, val, data_msg = on_rank0(prepare, rank, world)
    say(f"data: {data_msg}")
    tf = TripletTransform(resolution=vae.config.resolution, fit=args.fit)
    train_set = TripletDataset(train, tf, on_bad=args.on_bad_file)
    val_set = TripletDataset(val, tf, on_bad=args.on_bad_file) if val else None
    trainer = GRPOTrainer(
        model,
        vae,
        train_set,
        reward,
        run_dir,
        cfg,
        val_set=val_set,
        device=device,
        info={"init": str(args.init), "base": _base_ref(args.init), "reward": args.reward},
    )
    if resuming:
        trainer.resume(last)
        say(f"resumed {last} at step {trainer.state.step} of {trainer.total_steps}")
    if rank == 0:
        resolved = {
            "args": _jsonable({k: v for k, v in vars(args).items() if k != "func"}),
            "device": str(device),
            "world_size": world,
            "total_steps": trainer.total_steps,
            "grpo": cfg.to_dict(),
            "stylevar": model.config.to_dict(),
            "data": {"train": len(train), "val": len(val)},
        }
        tmp = run_dir / ".grpo_args.json.tmp"
        tmp.write_text(json.dumps(resolved, indent=2) + "\n")
        os.replace(tmp, run_dir / "grpo_args.json")
    say(
        f"training: {trainer.total_steps} steps of {cfg.batch_size} conditions x {cfg.group_size} rollouts "
        f"x {world} process{'es' if world > 1 else ''}, lr {cfg.lr:g}, beta {cfg.beta:g}, on {device}"
        + (", LoRA" if cfg.lora else ", full fine-tuning")
        + (", VMR" if cfg.vmr else "")
        + (f", mask propagation {cfg.mask_propagation}" if cfg.mask_propagation != "off" else "")
    )
    state = trainer.fit(progress=not args.quiet)
    evals = [h["eval_reward"] for h in state.history if "eval_reward" in h]
    done = state.step >= trainer.total_steps
    return GRPORun(
        run_dir,
        run_dir / "final" if done else None,
        state.step,
        trainer.total_steps,
        rank,
        evals[0] if evals else None,
        evals[-1] if evals and done else None,
    )
