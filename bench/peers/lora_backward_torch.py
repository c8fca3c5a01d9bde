#!/usr/bin/env python3
"""PyTorch side of the LoRA backward comparison (bench/peers/lora-backward-vs-torch.sh).

Times, at the same shapes and thread counts as `peft bench lora`, the LoRA backward written as
explicit matmuls, the way PyTorch's autograd (and Hugging Face PEFT's LoRA layer) computes it:
    dh = s·dy·B          [n, r]
    dB = s·dyᵀ·h         [out, r]
    dA = dhᵀ·x           [r, in]
    dx = dy·W + dh·A     [n, in]
with x [n, in], W [out, in], A [r, in], B [out, r], h = x·Aᵀ [n, r], dy [n, out], fp32, s = 2,
and the base GEMM y = x·Wᵀ of the same shape. Output buffers are preallocated (out=), so no
allocation is timed. One RESULT line per op, shape and thread count: the median of --repeats
rounds after one warm-up (base, backward in turn). FLOPs match bench/Shapes.cs.

Usage: lora_backward_torch.py --threads 1 2 --shape 256x768x2048r16 ... [--repeats 15]
"""
import argparse
import re
import time

import torch


def parse_shape(text):
    m = re.fullmatch(r"(\d+)x(\d+)x(\d+)r(\d+)", text)
    if not m or min(int(g) for g in m.groups()) <= 0:
        raise SystemExit(f"--shape '{text}': expected NxINxOUTrR with positive integers, e.g. 256x768x2048r16")
    return tuple(int(g) for g in m.groups())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--shape", nargs="+", default=["256x768x768r16", "256x768x2048r16", "256x2048x768r16",
                                                  "512x4096x4096r16", "2048x4096x4096r16"])
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    shapes = [parse_shape(s) for s in args.shape]
    s = 2.0
    for threads in args.threads:
        torch.set_num_threads(threads)
        for n, d_in, d_out, r in shapes:
            g = torch.Generator().manual_seed(1)
            u = lambda *size: torch.rand(*size, generator=g) * 2 - 1
            x, w, a, b, dy = u(n, d_in), u(d_out, d_in), u(r, d_in), u(d_out, r), u(n, d_out)
            h = x @ a.t()
            y, dh, db, da, dx = (torch.empty(n, d_out), torch.empty(n, r), torch.empty(d_out, r),
                                 torch.empty(r, d_in), torch.empty(n, d_in))

            def base():
                torch.matmul(x, w.t(), out=y)

            def backward():
                torch.matmul(dy, b, out=dh).mul_(s)
                torch.matmul(dy.t(), h, out=db).mul_(s)
                torch.matmul(dh.t(), x, out=da)
                torch.matmul(dy, w, out=dx)
                dx.addmm_(dh, a)

            fns = [base, backward]
            for f in fns:
                f()
            samples = [[] for _ in fns]
            for _ in range(args.repeats):
                for i, f in enumerate(fns):
                    t0 = time.perf_counter()
                    f()
                    samples[i].append((time.perf_counter() - t0) * 1e3)
            base_flops = 2.0 * n * d_in * d_out
            flops = [base_flops, base_flops + 2.0 * n * r * (2 * d_in + 2 * d_out)]
            for op, f, t in zip(["base_gemm", "backward"], flops, samples):
                ms = sorted(t)[len(t) // 2]
                print(f"RESULT side=torch op={op} threads={threads} shape={n}x{d_in}x{d_out}r{r} median_ms={ms:.3f} "
                      f"gflops={f / ms / 1e6:.1f} torch={torch.__version__}", flush=True)


if __name__ == "__main__":
    main()
