"""Micro-benchmark (GPU): one training step of U stacked conv3+fc heads, three formulations.

    python -m bench.gpu_head_variants --users 1024 --batch 64
"""

from __future__ import annotations

import argparse

import torch
from torch.func import vmap
from torch.nn import functional as F


def make(users: int, dtype: torch.dtype, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(0)
    shapes = {"w3": (128, 64, 3, 3), "s3": (128,), "b3": (128,), "w1": (256, 1152), "b1": (256,),
              "w2": (10, 256), "b2": (10,)}
    return {k: (torch.randn(users, *s, generator=g) * 0.05).to(device).requires_grad_(True) for k, s in shapes.items()}


def head_one(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    h = F.conv2d(x, p["w3"], padding=1) * p["s3"][:, None, None] + p["b3"][:, None, None]
    h = F.max_pool2d(F.relu(h), 2).flatten(1)
    return F.linear(F.relu(F.linear(h, p["w1"], p["b1"])), p["w2"], p["b2"])


def head_vmap(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return vmap(head_one)(p, x)


def _fc(p: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    h = torch.relu(torch.baddbmm(p["b1"][:, None, :], h, p["w1"].transpose(1, 2)))
    return torch.baddbmm(p["b2"][:, None, :], h, p["w2"].transpose(1, 2))


def head_unfold(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    u, b, c = x.shape[:3]
    cols = F.unfold(x.reshape(u * b, c, 7, 7), 3, padding=1).view(u, b, c * 9, 49)
    cols = cols.transpose(2, 3).reshape(u, b * 49, c * 9)
    h = torch.bmm(cols, p["w3"].reshape(u, 128, c * 9).transpose(1, 2))
    h = torch.relu(h * p["s3"][:, None, :] + p["b3"][:, None, :])
    h = F.max_pool2d(h.view(u * b, 7, 7, 128).permute(0, 3, 1, 2), 2)
    return _fc(p, h.reshape(u, b, 128 * 9))


def head_grouped(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    u, b, c = x.shape[:3]
    xg = x.transpose(0, 1).reshape(b, u * c, 7, 7).contiguous(memory_format=torch.channels_last)
    h = F.conv2d(xg, p["w3"].reshape(u * 128, c, 3, 3), padding=1, groups=u)  # (b, u*128, 7, 7)
    h = h.view(b, u, 128, 7, 7) * p["s3"][None, :, :, None, None] + p["b3"][None, :, :, None, None]
    h = F.max_pool2d(torch.relu(h).reshape(b, u * 128, 7, 7), 2).reshape(b, u, 128 * 9).transpose(0, 1)
    return _fc(p, h)


def head_channels_last(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """x (U,B,7,7,C) channels-last: 9 shifted slices side by side make the conv one bmm per user."""
    u, b, c = x.shape[0], x.shape[1], x.shape[-1]
    padded = F.pad(x, (0, 0, 1, 1, 1, 1))  # (U,B,9,9,C)
    cols = torch.cat([padded[:, :, dy:dy + 7, dx:dx + 7] for dy in range(3) for dx in range(3)], dim=-1)
    w = p["w3"].permute(0, 3, 4, 2, 1).reshape(u, 9 * c, 128)  # (ky,kx,c) rows, as cols
    h = torch.bmm(cols.view(u, b * 49, 9 * c), w)
    h = torch.relu(h * p["s3"][:, None, :] + p["b3"][:, None, :]).view(u, b, 7, 7, 128)
    h = h[:, :, :6, :6].reshape(u, b, 3, 2, 3, 2, 128).amax(dim=(3, 5))  # 2x2 max-pool, floor
    h = h.permute(0, 1, 4, 2, 3).reshape(u, b, 128 * 9)  # (c,h,w) order as fc1 expects
    return _fc(p, h)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    device = "cuda"
    x32 = torch.randn(args.users, args.batch, 64, 7, 7, device=device)
    y = torch.randint(10, (args.users, args.batch), device=device)
    xcl = x32.permute(0, 1, 3, 4, 2).contiguous()
    compiled = torch.compile(head_channels_last)
    variants = (("vmap", head_vmap, x32), ("grouped", head_grouped, x32), ("cl", head_channels_last, xcl),
                ("cl+compile", compiled, xcl))
    for name, fn, xin in variants:
        for dtype in (torch.float32, torch.bfloat16):
            p = make(args.users, torch.float32, device)
            ref = head_vmap(p, x32).float()

            def step(fn=fn, xin=xin, dtype=dtype, p=p) -> torch.Tensor:  # type: ignore[no-untyped-def]
                with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                    out = fn(p, xin.to(dtype) if dtype != torch.float32 else xin)
                    loss = F.cross_entropy(out.float().flatten(0, 1), y.flatten())
                loss.backward()
                return out
            try:
                out = step().float()
                err = float((out - ref).detach().norm() / ref.detach().norm())
                for _ in range(3):
                    step()
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(10):
                    step()
                end.record()
                torch.cuda.synchronize()
                ms = start.elapsed_time(end) / 10
                flops = 3 * args.users * args.batch * (49 * 576 * 128 * 2 + 1152 * 256 * 2 + 2560 * 2)
                print(f"{name:8s} {dtype!s:15s} {ms:8.2f} ms/step  {flops / ms / 1e9:7.1f} TFLOP/s  "
                      f"rel.err {err:.1e}  peak mem {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
            except Exception as exc:
                print(f"{name:8s} {dtype!s:15s} failed: {type(exc).__name__}: {str(exc)[:200]}")
            torch.cuda.reset_peak_memory_stats()
            if args.profile and name in ("grouped", "cl") and dtype == torch.bfloat16:
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                    step()
                    torch.cuda.synchronize()
                print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8))


if __name__ == "__main__":
    main()
