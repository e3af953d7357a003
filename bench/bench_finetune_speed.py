"""Fine-tune speed: one user with 100 labels, and many users batched vs a sequential loop.

Part 1 (``--threads 2``): ``finetune_user`` for one simulated user with 100 labels, the replay bank
and MNIST probe already cached (as in a running worker); reports the training time (trunk
features + head steps) and the whole call (+ calibration, MNIST gate), median of ``--repeats``,
plus the cold first call (MNIST loading, replay bank and probe features).
Part 2: ``--users`` users with 100 labels each, same steps: the batched path
(core.personal.batched_finetune, one trunk pass, stacked heads, vmap) against a sequential loop of
``finetune_user`` in the same run (both include calibration and the MNIST gate); users per
minute for both. CUDA is used when available.

    .venv/bin/python bench/bench_finetune_speed.py --threads 2 --users 16
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import time

import torch

from core.model.network import load_base, pick_device
from core.personal.batched_finetune import UserSamples, finetune_users
from core.personal.finetune import FinetuneConfig, finetune_user
from core.sim.crop_writers import simulated_users


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--users", type=int, default=16, help="users for the batched vs loop part (0: skip)")
    parser.add_argument("--loop-users", type=int, default=None,
                        help="users for the sequential loop (default: --users); rates are per user")
    parser.add_argument("--chunk", type=int, default=None, help="users per batched chunk (default: 256 CUDA, 32 CPU)")
    parser.add_argument("--profile", action="store_true", help="cProfile the batched call, top 25 by cumulative time")
    parser.add_argument("--phases", action="store_true", help="time the batched phases (synchronises the GPU)")
    parser.add_argument("--kernels", action="store_true", help="CUDA kernel table for one batched chunk, then stop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device()
    print(f"device {device}, torch threads {torch.get_num_threads()}, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs visible")

    base = load_base()
    config = FinetuneConfig()
    user = simulated_users("dev", n=120)[0]
    images, labels = user.images[:100], user.labels[:100]

    started = time.perf_counter()
    finetune_user(base, images, labels, config=config, device=device)
    print(f"cold first call (loads MNIST, builds replay bank + probe): {time.perf_counter() - started:.2f} s")
    train, total, cpu = [], [], []
    for _ in range(args.repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        result = finetune_user(base, images, labels, config=config, device=device)
        total.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
        train.append(result.metrics.train_seconds or 0.0)
    # CPU seconds of this process (all its threads): on a machine shared with other work the wall
    # time measures the neighbours too; with --threads 1 the CPU time is the wall time on an idle core
    print(f"one user, 100 labels, {config.folds} folds + final model, {config.steps} steps x "
          f"{config.user_batch}+{config.replay_batch}: training {statistics.median(train):.2f} s, whole call "
          f"incl. calibration + gate {statistics.median(total):.2f} s wall, {statistics.median(cpu):.2f} s CPU "
          f"(median of {args.repeats}; wall {[round(t, 2) for t in total]}, CPU {[round(t, 2) for t in cpu]})")

    if args.users <= 0:
        return
    pool = simulated_users("dev", n=120)
    many = [UserSamples(pool[i % len(pool)].images[:100], pool[i % len(pool)].labels[:100])
            for i in range(args.users)]
    loop_users = many[:args.loop_users] if args.loop_users else many
    started = time.perf_counter()
    alone = [finetune_user(base, u.images, u.labels, config=config, device=device) for u in loop_users]
    loop_seconds = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.synchronize()
    # warm-up at the timed chunk size: torch.compile traces, kernels load, caches fill
    warm_started = time.perf_counter()
    finetune_users(base, many[:args.chunk or len(many)], config=config, device=device, chunk_size=args.chunk)
    print(f"warm-up (compilation included): {time.perf_counter() - warm_started:.1f} s")
    if args.kernels:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as kernels:
            finetune_users(base, many[:args.chunk or len(many)], config=config, device=device, chunk_size=args.chunk)
        print(kernels.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=70))
        return
    profiler = cProfile.Profile() if args.profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    phases: dict[str, float] = {}
    batched = finetune_users(base, many, config=config, device=device, chunk_size=args.chunk,
                             timings=phases if args.phases else None)
    if device.type == "cuda":
        torch.cuda.synchronize()
    batched_seconds = time.perf_counter() - started
    if profiler:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    if phases:
        print("batched phases: " + ", ".join(f"{k} {v:.2f} s" for k, v in phases.items()))
    loop_rate = 60 * len(loop_users) / loop_seconds
    batched_rate = 60 * len(many) / batched_seconds
    print(f"sequential loop: {len(loop_users)} users x 100 labels in {loop_seconds:.1f} s ({loop_rate:,.0f} users/min)")
    agree = sum(a.decision.promote == b.decision.promote for a, b in zip(alone, batched, strict=False))
    gaps = {k: max(abs((getattr(a.metrics, k) or 0) - (getattr(b.metrics, k) or 0))
                   for a, b in zip(alone, batched, strict=False))
            for k in ("heldout_before", "heldout_after", "mnist_accuracy", "mnist_combined_accuracy")}
    print(f"batched vs one-user path on the first {len(alone)} users: same gate decision for {agree}; "
          "largest differences " + ", ".join(f"{k} {v:.4f}" for k, v in gaps.items()))
    print(f"batched: {len(many)} users x 100 labels in {batched_seconds:.1f} s ({batched_rate:,.0f} users/min), "
          f"speed-up {batched_rate / loop_rate:.1f}x")


if __name__ == "__main__":
    main()
