"""Time one GRPO step with batched rollouts against rollouts generated one at a time (same G, same model).

A step = encode B conditions, G rollouts each (``generate``), the reward, the teacher-forced
passes (policy with gradients, reference without) and the optimizer step. The only difference
between the two rows is ``GRPOConfig.rollout_batch``: 0 generates all B*G rollouts in one call
(ours), 1 generates them one per call (the published loop, docs/upstream.md §6.2). Both draw the
same tokens (one seeded generator per rollout), so the rewards and the update are the same too.

    python benchmarks/bench_grpo_step.py                                   # the demo's model size, CPU
    python benchmarks/bench_grpo_step.py --depth 16 --resolution 256 --group-size 16 --batch-size 1 \\
        --device cuda --precision bf16                                      # the paper's scale on a GPU

Random weights (nothing is downloaded); reward: SSIM against the target. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from stylevar.config import DEFAULT_PATCH_NUMS, StyleVARConfig, VQVAEConfig
from stylevar.models import VQVAE, StyleVAR
from stylevar.training.config import GRPOConfig
from stylevar.training.grpo import GRPOTrainer
from stylevar.training.rewards import build_reward


class RandomConditions(torch.utils.data.Dataset):
    def __init__(self, n: int, res: int):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 3, 3, res, res, generator=g) * 2 - 1

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        c, s, t = self.x[i]
        return {"content": c, "style": s, "target": t, "index": i}


def build(args) -> tuple[StyleVAR, VQVAE]:
    if args.resolution == 32:  # the demo's tokenizer and transformer
        pns, vcfg = (1, 2, 3, 4, 6, 8), dict(vocab_size=128, z_channels=8, ch=64, ch_mult=(1, 1, 2, 2))
    else:
        pns, vcfg = DEFAULT_PATCH_NUMS, {}
    vae = VQVAE(VQVAEConfig(patch_nums=pns, **vcfg))
    width = args.width or 64 * args.depth
    model = StyleVAR(
        StyleVARConfig(
            depth=args.depth,
            embed_dim=width,
            num_heads=max(1, width // 64),
            drop_path_rate=0.0,
            vocab_size=vae.config.vocab_size,
            z_channels=vae.config.z_channels,
            patch_nums=pns,
        )
    )
    model.init_weights()
    return model.eval(), vae.eval()


#: what each --modes entry changes in GRPOConfig
MODES = {
    "batched": {"rollout_batch": 0},
    "serial": {"rollout_batch": 1},
    "vmr": {"vmr": True, "vmr_k": 4},  # timed steps 1-3: prefix, prefix, suffix
    "mp-grad": {"mask_propagation": "reward_grad"},
    "ppo3": {"ppo_epochs": 3},
}


def time_steps(args, mode: str, device: torch.device) -> dict:
    torch.manual_seed(0)
    model, vae = build(args)
    res = vae.config.resolution
    cfg = GRPOConfig(
        max_steps=args.steps + 1,
        batch_size=args.batch_size,
        group_size=args.group_size,
        micro_batch=args.micro_batch or args.batch_size * args.group_size,
        lora_rank=args.lora_rank,
        lora_alpha=2 * args.lora_rank,
        top_k=args.top_k,
        top_p=args.top_p,
        num_workers=0,
        save_every=0,
        merge_cooldown=0,
        precision=args.precision,
        **MODES[mode],
    )
    data = RandomConditions(args.batch_size * (args.steps + 1), res)
    tr = GRPOTrainer(
        model,
        vae,
        data,
        build_reward("ssim", device=device),
        args.out / mode,
        cfg,
        device=device,
    )
    batches = list(tr._batches(0, 0))
    recs, walls = [], []
    for i, mb in enumerate(batches[: args.steps + 1]):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        rec = tr.train_step(mb)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i > 0:  # the first step warms up (allocations, kernels)
            walls.append(time.perf_counter() - t0)
            recs.append(rec)
        tr.state.step += 1
    return {
        "step_s": statistics.median(walls),
        "rollout_s": statistics.median(r["rollout_s"] for r in recs),
        "reward_s": statistics.median(r["reward_s"] for r in recs),
        "update_s": statistics.median(r["update_s"] for r in recs),
        "reward_mean": [r["reward_mean"] for r in recs],
        "rollouts": statistics.median(r["rollouts"] for r in recs),
        "phases": [r["phase"] for r in recs],
        "per_phase_step_s": {
            ph: statistics.median(w for w, r in zip(walls, recs) if r["phase"] == ph)
            for ph in {r["phase"] for r in recs}
        },
        "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--width", type=int, default=128, help="embedding width (0: 64 x depth)")
    ap.add_argument("--resolution", type=int, default=32, choices=(32, 256))
    ap.add_argument("--batch-size", type=int, default=4, help="conditions per step")
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--micro-batch", type=int, default=0, help="rollouts per teacher-forced pass (0: all)")
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=0.0)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--modes", default="batched,serial", help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_grpo_step"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = {}
    for mode in args.modes.split(","):
        rows[mode] = time_steps(args, mode, device)
    n = args.batch_size * args.group_size
    print(
        f"GRPO step: depth {args.depth}, width {args.width or 64 * args.depth}, {args.resolution} px, "
        f"{args.batch_size} conditions x G {args.group_size} = {n} rollouts, {args.precision}, {device} "
        f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)\n"
    )
    print("| rollouts | step (s) | rollouts (s) | reward (s) | update (s) | rollouts/s |")
    print("|---|---|---|---|---|---|")
    for mode, r in rows.items():
        print(
            f"| {mode} | {r['step_s']:.2f} | {r['rollout_s']:.2f} | {r['reward_s']:.2f} | {r['update_s']:.2f} "
            f"| {r['rollouts'] / r['rollout_s']:.1f} |"
        )
    for mode, r in rows.items():
        if len(r["per_phase_step_s"]) > 1:
            print(
                f"\n{mode}: step time per phase "
                + ", ".join(f"{k} {v:.2f} s" for k, v in r["per_phase_step_s"].items())
            )
    if "batched" in rows and "serial" in rows:
        diff = max(abs(x - y) for x, y in zip(rows["batched"]["reward_mean"], rows["serial"]["reward_mean"]))
        speedup = rows["serial"]["step_s"] / rows["batched"]["step_s"]
        print(
            f"\nspeed-up of the step: {speedup:.1f}x; largest difference of a step's mean reward: {diff:.1e}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
