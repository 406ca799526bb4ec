"""``stylevar grpo DATA... --init SFT_CHECKPOINT -o RUN_DIR [--reward "dreamsim:5"] [flags]``.

Flags -> :class:`~stylevar.training.jobs.GRPOJob` (the GRPO flags are made from
:class:`~stylevar.training.config.GRPOConfig`'s fields) -> :func:`~stylevar.training.jobs.run_grpo`.
"""

from __future__ import annotations

import argparse

from ..training.config import GRPOConfig
from .common import (
    VGG19_FILE,
    add_config_flags,
    add_triplet_data_args,
    alpha_arg,
    config_values,
    data_options,
    examples,
    report_training,
    say,
)


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return build_parser(
        sub,
        "grpo",
        help="reinforcement fine-tuning (GRPO + LoRA) of a StyleVAR against a perceptual reward",
        description="GRPO from an SFT checkpoint (--init) on triplets: G rollouts per (content, style), a reward "
        "(default -5 DreamSim vs target), PPO clip + KL to the LoRA-off reference, PANW token weights, "
        "iterative reference merges; options for VAR RL Done Right's middle return (--vmr) and mask "
        "propagation. Under torchrun each process rolls out its own conditions.",
    )


def build_parser(sub: argparse._SubParsersAction, name: str, *, help: str, description: str):
    """The GRPO command's parser under ``name`` (``stylevar dpo`` shares every flag, and its examples)."""
    epilog = examples(
        (
            "from an SFT run, with the default reward (-5 DreamSim against the target)",
            f"stylevar {name} data/OmniStyle-150K --init runs/sft/final -o runs/{name}",
        ),
        (
            "a reward that needs no extra weights, on 2 GPUs (one process each)",
            f"torchrun --nproc-per-node 2 -m stylevar {name} data/OmniStyle-150K --init runs/sft/final "
            f"-o runs/{name} --reward ssim",
        ),
        (
            "continue a stopped run (the same command with --resume)",
            f"stylevar {name} data/OmniStyle-150K --init runs/sft/final -o runs/{name} --resume",
        ),
    )
    p = sub.add_parser(name, help=help, description=description, epilog=epilog)
    g = add_triplet_data_args(p)
    g.add_argument(
        "--val",
        nargs="+",
        default=None,
        metavar="VAL_DATA",
        help="held-out triplets for the evaluation reward (default: the --val-fraction split of DATA)",
    )
    p.add_argument("-o", "--output", required=True, metavar="RUN_DIR", help="run folder")
    g = p.add_argument_group("start and reward")
    g.add_argument(
        "--init", required=True, metavar="CHECKPOINT", help="the SFT model: folder, .pth or Hub id"
    )
    g.add_argument(
        "--base", default=None, help="base checkpoint when --init is a LoRA-only file (default: none)"
    )
    g.add_argument(
        "--vae",
        default=None,
        help="VQ-VAE .pth when --init is an upstream file (default: vae_ch160v4096z32.pth beside it)",
    )
    g.add_argument(
        "--variant",
        choices=("grpo", "sft"),
        default=None,
        help="with a Hub id: which release (default: grpo)",
    )
    g.add_argument(
        "--alpha", type=alpha_arg, default=None, help="per-scale alpha (default: the checkpoint's)"
    )
    g.add_argument("--trust-checkpoint", action="store_true", help="allow pickled .pth files (trusted only)")
    g.add_argument(
        "--reward",
        default="dreamsim:5",
        help='reward spec "name[@ref][:weight],...": dreamsim, clip, lpips, ssim, pixel, mse, gram, tv '
        '(default "dreamsim:5" = -5 DreamSim vs target, the paper; "ssim" and "pixel:-1" need no weights)',
    )
    g.add_argument(
        "--dreamsim-dir",
        default=None,
        help="DreamSim weights cache, dino_vitb16 files (default: ~/.cache/stylevar/dreamsim)",
    )
    g.add_argument(
        "--clip-model", default=None, help="CLIP folder or Hub id (default: openai/clip-vit-base-patch32)"
    )
    g.add_argument(
        "--vgg-weights",
        default=None,
        help=f"torchvision's {VGG19_FILE}, for the gram reward (default: the torch hub cache)",
    )
    g.add_argument(
        "--lpips-net",
        choices=("vgg", "alex"),
        default="vgg",
        help="the lpips reward's trunk: vgg (default, the paper's metric) or alex (upstream's reward)",
    )
    g.add_argument("--download", action="store_true", help="let reward models download missing weights")
    g = p.add_argument_group("GRPO (GRPOConfig)")
    add_config_flags(g, GRPOConfig)
    g.add_argument("--full-finetune", action="store_true", help="train all transformer weights, no LoRA")
    g.add_argument("--vmr", action="store_true", help="Value as Middle Return (VAR RL Done Right)")
    g.add_argument("--no-restore-peak", action="store_true", help="merge the current LoRA, not the peak's")
    g.add_argument("--cuda-graphs", action="store_true", help="rollouts replay per-scale CUDA graphs")
    g = p.add_argument_group("run")
    g.add_argument(
        "--device",
        default="auto",
        help="auto (cuda:LOCAL_RANK when CUDA is present, else cpu), cpu, cuda, cuda:N (default: auto)",
    )
    g.add_argument("--resume", action="store_true", help="continue RUN_DIR/checkpoints/last.pt")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def job_from_args(args: argparse.Namespace):
    """The :class:`~stylevar.training.jobs.GRPOJob` of parsed flags."""
    from ..training.jobs import GRPOJob, RewardOptions

    config = GRPOConfig(
        **config_values(args, GRPOConfig),
        lora=not args.full_finetune,
        vmr=args.vmr,
        restore_peak=not args.no_restore_peak,
        cuda_graphs=args.cuda_graphs,
    )
    rewards = RewardOptions(
        reward=args.reward,
        dreamsim_dir=args.dreamsim_dir,
        clip_model=args.clip_model,
        vgg_weights=args.vgg_weights,
        lpips_net=args.lpips_net,
        download=args.download,
    )
    return GRPOJob(
        data=list(args.data),
        output=args.output,
        init=args.init,
        base=args.base,
        vae=args.vae,
        variant=args.variant,
        alpha=args.alpha,
        trust_checkpoint=args.trust_checkpoint,
        rewards=rewards,
        config=config,
        data_options=data_options(args),
        val=args.val,
        device=args.device,
        resume=args.resume,
        progress=not args.quiet,
    )


def run(args: argparse.Namespace) -> int:
    from ..errors import OtherRankFailed
    from ..training.jobs import run_grpo

    try:
        result = run_grpo(job_from_args(args), say=say)
    except OtherRankFailed:
        return 1
    if result.rank == 0 and result.eval_start is not None and result.eval_end is not None:
        print(f"held-out reward: {result.eval_start:.4f} -> {result.eval_end:.4f}")
    report_training(result, "final model (LoRA merged)")
    return 0
