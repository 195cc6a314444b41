"""The GPU baselines for `cargo run --release -p attnc-bench -- --gpu`: flash-linear-attention's
chunk kernels (linear attention, Gated DeltaNet) and FlashAttention (PyTorch's SDPA flash
backend) on the same GPU and shapes, timed with CUDA events after a warm-up.

    pip install torch fla-core     # a CUDA build of torch
    python bench/gpu_baselines.py

Prints one markdown table: ms per call at (B 8, H 16, N 4096, d 128) and (B 1, H 8, N 4096,
d 64), in fp32 where the kernel takes it and in bf16. A kernel that is missing or refuses a
dtype prints its error in the table instead of a time.
"""

import torch
import torch.nn.functional as F


def timed(fn, runs=None):
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    once = start.elapsed_time(end)
    runs = runs or max(3, min(100, int(200 / max(once, 0.01))))
    start.record()
    for _ in range(runs):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / runs


def cases(b, h, n, d, dtype):
    """(name, thunk) pairs; fla takes (B, N, H, D), SDPA (B, H, N, D)."""
    q, k, v = (torch.randn(b, n, h, d, device="cuda", dtype=dtype) for _ in range(3))
    beta = torch.rand(b, n, h, device="cuda", dtype=dtype)
    g = -torch.rand(b, n, h, device="cuda", dtype=torch.float32) * 0.1
    out = []
    try:
        from fla.ops.linear_attn import chunk_linear_attn

        out.append(("fla chunk_linear_attn (normalised)",
                    lambda: chunk_linear_attn(F.elu(q) + 1, F.elu(k) + 1, v, normalize=True)))
    except Exception as e:  # noqa: BLE001 - report, do not stop
        out.append(("fla chunk_linear_attn", e))
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule

        out.append(("fla chunk_gated_delta_rule",
                    lambda: chunk_gated_delta_rule(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)))
    except Exception as e:  # noqa: BLE001
        out.append(("fla chunk_gated_delta_rule", e))
    qh, kh, vh = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    out.append(("SDPA causal (flash backend in bf16)",
                lambda: F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)))
    return out


def main():
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}\n")
    print("| kernel | B, H, N, d | dtype | ms |\n|---|---|---|---:|")
    for b, h, n, d in [(8, 16, 4096, 128), (1, 8, 4096, 64)]:
        for dtype in (torch.float32, torch.bfloat16):
            for name, fn in cases(b, h, n, d, dtype):
                if isinstance(fn, Exception):
                    cell = f"unavailable: {fn}"
                else:
                    try:
                        cell = f"{timed(fn):.3f}"
                    except Exception as e:  # noqa: BLE001
                        cell = f"error: {type(e).__name__}: {str(e)[:80]}"
                print(f"| {name} | {b}, {h}, {n}, {d} | {str(dtype)[6:]} | {cell} |")


if __name__ == "__main__":
    main()
