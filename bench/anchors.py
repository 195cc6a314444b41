#!/usr/bin/env python3
"""External anchors: CPU timings of published linear-attention implementations.

These numbers are reference points ("anchors") for attnc's own kernels: the
same shapes, float32, on the same machine and thread count; forward only by
default, forward + backward with --train (below).

Implementations timed (forward, torch.no_grad(), best of --reps after one
warm-up, wall clock):

  ft.causal_dot_product           fast-transformers' C++/OpenMP CPU kernel,
                                  (B, H, N, d) inputs already mapped by elu+1
  ft.CausalLinearAttention        fast-transformers' module, (B, N, H, d), its
                                  default elu+1 feature map and normaliser
  fla.naive_chunk_linear_attn     flash-linear-attention's pure-PyTorch chunked
                                  references (fla-core, fla/ops/*/naive.py):
  fla.naive_chunk_linear_attn+norm    plain causal linear attention (elu+1 inputs),
  fla.naive_chunk_simple_gla          without / with the normaliser; simple GLA
  fla.delta_rule_chunkwise            (scalar per-token decay g <= 0); delta rule
  fla.naive_chunk_gated_delta_rule    and gated delta rule (l2-normalised q, k,
                                      beta in (0, 1))
  torch.sdpa(causal)              torch.nn.functional.scaled_dot_product_attention,
                                  is_causal=True, (B, H, N, d)

Shapes: B = 1, H = 8, d = 64, N in 512 ... 16384, plus B = 1, H = 1,
N = 65536 for the linear-time implementations. A case is skipped when its
memory estimate exceeds --max-gb or when its time, extrapolated from the
previous N of the same implementation, exceeds --max-seconds.

Training mode (--train): forward + backward under torch autograd, for
ft.causal_dot_product (the C++ kernel's own backward), the five fla naive
chunk forms above and torch.sdpa(causal); B = 1, H = 8, N = 4096 by default
(--quick: 512 and 4096; --all-n: the list above; --n N: any). Every input
(q, k, v and, where used, g and beta, already feature-mapped / normalised as
above) is a leaf with requires_grad=True; the loss is (o * do).sum() with a
fixed random do, then loss.backward(), gradients reset to None before each
step. Two columns, each the best of --reps after one warm-up: "forward" (the
forward with autograd recording, graph dropped without a backward) and
"forward+backward" (one whole step). The correctness checks then also compare
each timed backward's input gradients with an independent autograd reference
(dense masked torch, fla's token-by-token recurrences, explicit softmax).

Setup (a virtualenv outside the repository; only PyPI is needed):

    python3 -m venv /tmp/anchors-venv
    /tmp/anchors-venv/bin/pip install -r bench/requirements-anchors.txt
    # fast-transformers compiles C++ extensions against the installed torch,
    # so it needs torch present and no build isolation (CPU-only without nvcc;
    # about 4-5 minutes on 2 cores):
    /tmp/anchors-venv/bin/pip install --no-build-isolation pytorch-fast-transformers==0.4.0

The CPU-only torch wheel (pip install torch --index-url
https://download.pytorch.org/whl/cpu) avoids the CUDA runtime wheels where that
index is reachable; the plain PyPI wheel works the same on the CPU.

Run (from the repository root):

    /tmp/anchors-venv/bin/python bench/anchors.py            # full run, 2 threads
    /tmp/anchors-venv/bin/python bench/anchors.py --quick    # N = 512 and 4096 only
    /tmp/anchors-venv/bin/python bench/anchors.py --threads 1 --json bench-out/anchors-1t.json
    /tmp/anchors-venv/bin/python bench/anchors.py --wait-idle 300 --impl fla. --impl ft.
    /tmp/anchors-venv/bin/python bench/anchors.py --train            # fwd and fwd+bwd, N = 4096
    /tmp/anchors-venv/bin/python bench/anchors.py --train --quick    # N = 512 and 4096

It prints a markdown table and writes JSON (default bench-out/anchors.json;
bench-out/anchors-train.json with --train).
The "others" column is how many cores other processes kept busy during a
case's timed runs: anything well above 0 means the number is contaminated.
On a shared machine, --wait-idle SECONDS waits (up to that long) before each
case for the CPU to go idle.
Any implementation whose package is missing is reported as unavailable and
the others still run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import warnings


def _early_threads() -> int:
    """Read --threads before torch is imported so OpenMP starts with it."""
    for i, a in enumerate(sys.argv):
        if a == "--threads" and i + 1 < len(sys.argv):
            return int(sys.argv[i + 1])
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
    return 2


os.environ.setdefault("OMP_NUM_THREADS", str(_early_threads()))
os.environ.setdefault("MKL_NUM_THREADS", str(_early_threads()))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

D = 64
MAIN_NS = [512, 1024, 2048, 4096, 8192, 16384]
QUICK_NS = [512, 4096]
LONG_N = 65536


# --------------------------------------------------------------------------
# Optional imports: each implementation records why it is unavailable.
# --------------------------------------------------------------------------

UNAVAILABLE: dict[str, str] = {}

try:
    from fast_transformers.causal_product import causal_dot_product as ft_causal_dot_product
    from fast_transformers.attention.causal_linear_attention import CausalLinearAttention
    from fast_transformers.masking import LengthMask, TriangularCausalMask
except Exception as e:  # ImportError, or a broken compiled extension
    ft_causal_dot_product = CausalLinearAttention = None
    UNAVAILABLE["fast-transformers"] = f"{type(e).__name__}: {e}"

try:
    with warnings.catch_warnings():
        # "Triton is not supported on current platform, roll back to CPU."
        warnings.simplefilter("ignore")
        from fla.ops.linear_attn.naive import naive_chunk_linear_attn
        from fla.ops.simple_gla.naive import naive_chunk_simple_gla, naive_recurrent_simple_gla
        from fla.ops.delta_rule.naive import delta_rule_chunkwise, delta_rule_recurrence
        from fla.ops.gated_delta_rule.naive import (
            naive_chunk_gated_delta_rule,
            naive_recurrent_gated_delta_rule,
        )
except Exception as e:
    naive_chunk_linear_attn = None
    UNAVAILABLE["fla-core"] = f"{type(e).__name__}: {e}"


# --------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------


def elu1(x: torch.Tensor) -> torch.Tensor:
    """The feature map of Katharopoulos et al. (2020): elu(x) + 1."""
    return F.elu(x) + 1.0


def randn(*shape: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float32)


def decay_logits(*shape: int, gen: torch.Generator) -> torch.Tensor:
    """Per-token log decay g <= 0 (log-sigmoid of a normal draw)."""
    return F.logsigmoid(randn(*shape, gen=gen))


def betas(*shape: int, gen: torch.Generator) -> torch.Tensor:
    """Delta-rule learning rates in (0, 1)."""
    return torch.sigmoid(randn(*shape, gen=gen))


# --------------------------------------------------------------------------
# Implementations. Each make_* builds its inputs (outside the timed region)
# and returns (op, inputs): op(*inputs) runs one forward pass. inputs[2] is
# always v, whose shape the output has. The forward-only mode times
# op(*inputs) under torch.no_grad(); --train makes every input a leaf that
# requires grad (the inputs are already feature-mapped / normalised, so only
# the attention operator itself is differentiated) and times forward and
# forward + backward (see train_callables).
# --------------------------------------------------------------------------


def make_ft_causal_dot_product(B, H, N, gen):
    """fast-transformers' CPU kernel on (B, H, N, d), elu+1 applied beforehand.

    The kernel parallelises over B * H with OpenMP and loops over N inside,
    keeping a d x d state: with B * H = 1 it runs on one thread.
    """
    q = elu1(randn(B, H, N, D, gen=gen))
    k = elu1(randn(B, H, N, D, gen=gen))
    v = randn(B, H, N, D, gen=gen)
    return ft_causal_dot_product, (q, k, v)


def make_ft_causal_linear_attention(B, H, N, gen):
    """fast-transformers' CausalLinearAttention on (B, N, H, d).

    Includes its elu+1 feature map, the key-length masking, the normaliser
    and the (B, N, H, d) <-> (B, H, N, d) permutes it does around the kernel.
    """
    attn = CausalLinearAttention(query_dimensions=D)
    q = randn(B, N, H, D, gen=gen)
    k = randn(B, N, H, D, gen=gen)
    v = randn(B, N, H, D, gen=gen)
    attn_mask = TriangularCausalMask(N)
    lengths = LengthMask(torch.full((B,), N, dtype=torch.int64), max_len=N)
    return (lambda q, k, v: attn(q, k, v, attn_mask, lengths, lengths)), (q, k, v)


def make_fla_linear_attn(B, H, N, gen, normalize=False):
    """fla naive_chunk_linear_attn on (B, N, H, d), chunk 64 (fixed there).

    Inputs are elu+1-mapped and scale=1.0, so the unnormalised output equals
    ft.causal_dot_product's and the normalised one CausalLinearAttention's.
    """
    q = elu1(randn(B, N, H, D, gen=gen))
    k = elu1(randn(B, N, H, D, gen=gen))
    v = randn(B, N, H, D, gen=gen)
    return (lambda q, k, v: naive_chunk_linear_attn(q, k, v, scale=1.0, normalize=normalize)), (q, k, v)


def make_fla_linear_attn_norm(B, H, N, gen):
    return make_fla_linear_attn(B, H, N, gen, normalize=True)


def make_fla_simple_gla(B, H, N, gen):
    """fla naive_chunk_simple_gla on (B, N, H, d), g: (B, N, H) <= 0, chunk 64."""
    q = randn(B, N, H, D, gen=gen)
    k = randn(B, N, H, D, gen=gen)
    v = randn(B, N, H, D, gen=gen)
    g = decay_logits(B, N, H, gen=gen)
    return (lambda q, k, v, g: naive_chunk_simple_gla(q, k, v, g, chunk_size=64)), (q, k, v, g)


def make_fla_delta_rule(B, H, N, gen):
    """fla delta_rule_chunkwise on (B, H, N, d), beta: (B, H, N), chunk 32 (its default)."""
    q = F.normalize(randn(B, H, N, D, gen=gen), p=2, dim=-1)
    k = F.normalize(randn(B, H, N, D, gen=gen), p=2, dim=-1)
    v = randn(B, H, N, D, gen=gen)
    beta = betas(B, H, N, gen=gen)
    return delta_rule_chunkwise, (q, k, v, beta)


def make_fla_gated_delta_rule(B, H, N, gen):
    """fla naive_chunk_gated_delta_rule on (B, N, H, d), g, beta: (B, N, H), chunk 64."""
    q = F.normalize(randn(B, N, H, D, gen=gen), p=2, dim=-1)
    k = F.normalize(randn(B, N, H, D, gen=gen), p=2, dim=-1)
    v = randn(B, N, H, D, gen=gen)
    g = decay_logits(B, N, H, gen=gen)
    beta = betas(B, N, H, gen=gen)
    return (lambda q, k, v, g, beta: naive_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=64)), (q, k, v, g, beta)


def make_sdpa(B, H, N, gen):
    """torch scaled_dot_product_attention, is_causal=True, (B, H, N, d)."""
    q = randn(B, H, N, D, gen=gen)
    k = randn(B, H, N, D, gen=gen)
    v = randn(B, H, N, D, gen=gen)
    return (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)), (q, k, v)


# name -> (factory, package it needs, time exponent in N, extra notes)
IMPLS = {
    "ft.causal_dot_product": (make_ft_causal_dot_product, "fast-transformers", 1,
                              "elu+1 inputs; OpenMP over B*H"),
    "ft.CausalLinearAttention": (make_ft_causal_linear_attention, "fast-transformers", 1,
                                 "elu+1 map + normaliser inside"),
    "fla.naive_chunk_linear_attn": (make_fla_linear_attn, "fla-core", 1,
                                    "elu+1 inputs, unnormalised, chunk 64"),
    "fla.naive_chunk_linear_attn+norm": (make_fla_linear_attn_norm, "fla-core", 1,
                                         "elu+1 inputs, normalize=True, chunk 64"),
    "fla.naive_chunk_simple_gla": (make_fla_simple_gla, "fla-core", 1,
                                   "scalar decay g<=0, chunk 64"),
    "fla.delta_rule_chunkwise": (make_fla_delta_rule, "fla-core", 1,
                                 "l2 q/k, beta in (0,1), chunk 32"),
    "fla.naive_chunk_gated_delta_rule": (make_fla_gated_delta_rule, "fla-core", 1,
                                         "l2 q/k, beta, g<=0, chunk 64"),
    "torch.sdpa(causal)": (make_sdpa, "torch", 2, "softmax attention, quadratic"),
}

# The implementations --train times (forward + backward under autograd).
# ft.CausalLinearAttention is left out: its cost is ft.causal_dot_product's
# plus torch element-wise work.
TRAIN_IMPLS = [
    "ft.causal_dot_product",  # the C++ kernel's own backward (CausalDotProduct)
    "fla.naive_chunk_linear_attn",
    "fla.naive_chunk_linear_attn+norm",
    "fla.naive_chunk_simple_gla",
    "fla.delta_rule_chunkwise",
    "fla.naive_chunk_gated_delta_rule",
    "torch.sdpa(causal)",
]
TRAIN_NS = [4096]


def first(out):
    """The output tensor (fla's naive functions return (o, final_state))."""
    return out[0] if isinstance(out, tuple) else out


def forward_callable(op, inputs):
    """One forward pass (the caller wraps it in torch.no_grad())."""
    return lambda: op(*inputs)


def train_callables(op, inputs, gen):
    """(forward, forward + backward) callables for --train.

    Every floating-point input becomes a leaf with requires_grad=True; the
    loss is (o * do).sum() with a fixed random do of o's shape (v's), so the
    backward pass starts from a dense upstream gradient. Gradients are reset
    to None before each step, so no accumulation is timed. The forward
    callable builds the autograd graph and drops it without a backward.
    """
    leaves = tuple(x.detach().clone().requires_grad_() if torch.is_tensor(x) and x.is_floating_point()
                   else x for x in inputs)
    grads = [x for x in leaves if torch.is_tensor(x) and x.requires_grad]
    do = randn(*inputs[2].shape, gen=gen)

    def fwd():
        with torch.enable_grad():
            return first(op(*leaves))

    def step():
        for x in grads:
            x.grad = None
        with torch.enable_grad():
            o = first(op(*leaves))
            (o * do).sum().backward()
        return o

    return fwd, step


# --------------------------------------------------------------------------
# Memory estimate, timing, skipping
# --------------------------------------------------------------------------


def sdpa_backend(B: int, H: int, N: int) -> str:
    """Which SDPA backend torch picks for these CPU inputs (without running it)."""
    x = torch.empty(B, H, N, D)
    try:
        choice = int(torch._fused_sdp_choice(x, x, x, is_causal=True))
    except Exception:
        return "unknown"
    return {0: "math", 1: "flash", 2: "efficient", 3: "cudnn"}.get(choice, f"#{choice}")


def memory_estimate_gb(name: str, B: int, H: int, N: int, train: bool = False) -> float:
    """Rough peak working set: ~16 (B,H,N,d) tensors plus chunk-sized extras;
    the math SDPA backend also materialises two (B,H,N,N) matrices. With
    --train, autograd keeps the forward's intermediates: 4x the linear part
    (the gated delta rule's per-row clones of 64 x 64 chunk blocks dominate),
    and the math backend's probabilities plus their gradients (4 N x N)."""
    linear = 4 * B * H * N * (16 * D + 4 * 64)
    quadratic = 0
    if name == "torch.sdpa(causal)" and sdpa_backend(B, H, N) == "math":
        quadratic = (4 if train else 2) * 4 * B * H * N * N
    if train:
        linear *= 4
    return (linear + quadratic) / 1e9


def busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def time_case(fn, reps: int, max_seconds: float) -> tuple[list[float], str, float | None]:
    """Wall-clock seconds of `reps` runs after one warm-up (fewer if over budget),
    and how many cores other processes kept busy on average meanwhile."""
    t0 = time.perf_counter()
    fn()
    warm = time.perf_counter() - t0
    if warm > max_seconds:
        return [warm], f"warm-up took {warm:.1f} s > {max_seconds:.0f} s: no repeats", None
    times = []
    busy0, own0, wall0 = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    busy1, own1, wall1 = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    others = None
    if busy0 is not None and busy1 is not None:
        others = max(0.0, ((busy1 - busy0) - (own1 - own0)) / (wall1 - wall0))
    return times, "", others


def wait_until_idle(max_wait: float, threshold: float = 0.2, window: float = 2.0) -> float:
    """Wait (at most max_wait seconds) until other processes use less than
    `threshold` cores over a `window`-second sample; returns the last sample."""
    start = time.monotonic()
    last_note = start
    while True:
        b0, o0, t0 = busy_cpu_seconds(), own_cpu_seconds(), time.monotonic()
        if b0 is None:
            return float("nan")
        time.sleep(window)
        used = ((busy_cpu_seconds() - b0) - (own_cpu_seconds() - o0)) / (time.monotonic() - t0)
        now = time.monotonic()
        if used < threshold or now - start >= max_wait:
            return used
        if now - last_note >= 30:
            print(f"  waiting for an idle machine ({now - start:.0f} s): other processes "
                  f"use {used:.2f} cores", file=sys.stderr, flush=True)
            last_note = now


def predicted_seconds(prev: dict | None, H: int, N: int, exponent: int) -> float | None:
    """Extrapolate from the previous measured case of the same implementation
    (work ~ H * N**exponent)."""
    if prev is None:
        return None
    return prev["seconds"] * (H / prev["H"]) * (N / prev["N"]) ** exponent


# --------------------------------------------------------------------------
# Sanity checks: the argument layouts above compute what they claim
# --------------------------------------------------------------------------


def sanity_checks() -> list[dict]:
    """Small cross-checks between implementations (and fla's own recurrent
    references); max abs differences are printed and stored in the JSON."""
    gen = torch.Generator().manual_seed(1)
    B, H, N = 1, 2, 256
    out = []

    def record(what, a, b):
        diff = (a - b).abs().max().item()
        scale = b.abs().max().item()
        out.append({"check": what, "max_abs_diff": diff, "max_abs_ref": scale})

    q0, k0, v0 = (randn(B, N, H, D, gen=gen) for _ in range(3))
    to_bhnd = lambda x: x.transpose(1, 2).contiguous()  # noqa: E731
    if ft_causal_dot_product is not None:
        ref = ft_causal_dot_product(to_bhnd(elu1(q0)), to_bhnd(elu1(k0)), to_bhnd(v0))
        attn = CausalLinearAttention(query_dimensions=D)
        lengths = LengthMask(torch.full((B,), N, dtype=torch.int64), max_len=N)
        ref_norm = attn(q0, k0, v0, TriangularCausalMask(N), lengths, lengths)
        # plain-torch O(N^2) reference for the kernel itself
        qf, kf = to_bhnd(elu1(q0)), to_bhnd(elu1(k0))
        dense = ((qf @ kf.transpose(-1, -2)).tril()) @ to_bhnd(v0)
        record("ft.causal_dot_product vs dense masked (torch)", ref, dense)
        if naive_chunk_linear_attn is not None:
            o = naive_chunk_linear_attn(elu1(q0), elu1(k0), v0, scale=1.0)
            record("fla.naive_chunk_linear_attn vs ft.causal_dot_product", to_bhnd(o), ref)
            o = naive_chunk_linear_attn(elu1(q0), elu1(k0), v0, scale=1.0, normalize=True)
            record("fla.naive_chunk_linear_attn+norm vs ft.CausalLinearAttention", o, ref_norm)
    if naive_chunk_linear_attn is not None:
        N2 = 128
        q, k, v = (randn(B, N2, H, D, gen=gen) for _ in range(3))
        g = decay_logits(B, N2, H, gen=gen)
        o, _ = naive_chunk_simple_gla(q, k, v, g)
        r, _ = naive_recurrent_simple_gla(q, k, v, g)
        record("fla.naive_chunk_simple_gla vs naive_recurrent_simple_gla", o, r)
        qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        beta = betas(B, N2, H, gen=gen)
        o, _ = naive_chunk_gated_delta_rule(qn, kn, v, g, beta)
        r, _ = naive_recurrent_gated_delta_rule(qn, kn, v, beta, g)
        record("fla.naive_chunk_gated_delta_rule vs naive_recurrent_gated_delta_rule", o, r)
        o, _ = delta_rule_chunkwise(to_bhnd(qn), to_bhnd(kn), to_bhnd(v), to_bhnd(beta))
        r, _ = delta_rule_recurrence(to_bhnd(qn), to_bhnd(kn), to_bhnd(v), to_bhnd(beta))
        record("fla.delta_rule_chunkwise vs delta_rule_recurrence", o, r)
    return out


def input_grads(op, inputs, do) -> torch.Tensor:
    """d (op(*inputs) * do).sum() / d inputs, flattened and concatenated."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    with torch.enable_grad():
        (first(op(*leaves)) * do).sum().backward()
    return torch.cat([x.grad.flatten() for x in leaves])


def gradient_checks() -> list[dict]:
    """--train: each timed backward against an independent autograd reference
    (dense masked torch, or fla's token-by-token recurrences), on small shapes.
    The diff is over the gradients of all inputs together."""
    gen = torch.Generator().manual_seed(2)
    B, H, N = 1, 2, 128
    out = []

    def record(what, a, b):
        out.append({"check": what, "max_abs_diff": (a - b).abs().max().item(),
                    "max_abs_ref": b.abs().max().item()})

    def dense(q, k, v, normalize=False):  # (B, H, N, d), scale 1
        a = (q @ k.transpose(-1, -2)).tril()
        o = a @ v
        return o / (a.sum(-1, keepdim=True) + 1e-10) if normalize else o

    to_bhnd = lambda x: x.transpose(1, 2)  # noqa: E731
    qf, kf = elu1(randn(B, H, N, D, gen=gen)), elu1(randn(B, H, N, D, gen=gen))
    v = randn(B, H, N, D, gen=gen)
    do = randn(B, H, N, D, gen=gen)
    ref = input_grads(dense, (qf, kf, v), do)
    if ft_causal_dot_product is not None:
        record("grad: ft.causal_dot_product vs dense masked (torch)",
               input_grads(ft_causal_dot_product, (qf, kf, v), do), ref)
    if naive_chunk_linear_attn is not None:
        # fla takes (B, N, H, d): permute its q, k, v gradients back to (B, H, N, d)
        bnhd = [to_bhnd(x).contiguous() for x in (qf, kf, v, do)]
        n = B * H * N * D

        def fla_grads(normalize):
            g = input_grads(lambda q, k, v: naive_chunk_linear_attn(q, k, v, scale=1.0, normalize=normalize),
                            bnhd[:3], bnhd[3])
            return torch.cat([to_bhnd(g[i * n:(i + 1) * n].view(B, N, H, D)).flatten() for i in range(3)])

        record("grad: fla.naive_chunk_linear_attn vs dense masked (torch)", fla_grads(False), ref)
        ref_n = input_grads(lambda q, k, v: dense(q, k, v, normalize=True), (qf, kf, v), do)
        record("grad: fla.naive_chunk_linear_attn+norm vs dense normalised (torch)", fla_grads(True), ref_n)

        q, k, v2 = (randn(B, N, H, D, gen=gen) for _ in range(3))
        gl = decay_logits(B, N, H, gen=gen)
        do2 = randn(B, N, H, D, gen=gen)
        record("grad: fla.naive_chunk_simple_gla vs naive_recurrent_simple_gla",
               input_grads(lambda q, k, v, g: naive_chunk_simple_gla(q, k, v, g, chunk_size=64),
                           (q, k, v2, gl), do2),
               input_grads(naive_recurrent_simple_gla, (q, k, v2, gl), do2))
        qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        beta = betas(B, N, H, gen=gen)
        record("grad: fla.naive_chunk_gated_delta_rule vs naive_recurrent_gated_delta_rule",
               input_grads(lambda q, k, v, g, b: naive_chunk_gated_delta_rule(q, k, v, g, b, chunk_size=64),
                           (qn, kn, v2, gl, beta), do2),
               input_grads(lambda q, k, v, g, b: naive_recurrent_gated_delta_rule(q, k, v, b, g),
                           (qn, kn, v2, gl, beta), do2))
        hb = [to_bhnd(x).contiguous() for x in (qn, kn, v2, beta, do2)]
        record("grad: fla.delta_rule_chunkwise vs delta_rule_recurrence",
               input_grads(delta_rule_chunkwise, hb[:4], hb[4]),
               input_grads(delta_rule_recurrence, hb[:4], hb[4]))
    q, k = randn(B, H, N, D, gen=gen), randn(B, H, N, D, gen=gen)

    def softmax_ref(q, k, v):
        s = (q @ k.transpose(-1, -2)) * D ** -0.5
        s = s.masked_fill(torch.ones(N, N, dtype=torch.bool).triu(1), float("-inf"))
        return s.softmax(-1) @ v

    record("grad: torch.sdpa(causal) vs explicit softmax (torch)",
           input_grads(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), (q, k, v), do),
           input_grads(softmax_ref, (q, k, v), do))
    return out


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("fla-core", "pytorch-fast-transformers", "einops", "triton"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(f for f in ("avx2", "fma", "avx512f", "avx512_bf16") if f in flags)
    except OSError:
        pass
    return []


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (other processes skew the timings)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cases(args) -> list[tuple[int, int, int]]:
    """(B, H, N) cases. Forward-only: MAIN_NS plus (1, 1, LONG_N), or QUICK_NS
    with --quick. --train: N = 4096 (TRAIN_NS), QUICK_NS with --quick, the
    forward-only list with --all-n. --n overrides the B = 1, H = 8 list in
    either mode (and drops the long case)."""
    if args.n:
        return [(1, 8, n) for n in args.n]
    if args.train and not args.all_n:
        ns = QUICK_NS if args.quick else TRAIN_NS
        return [(1, 8, n) for n in ns]
    ns = QUICK_NS if args.quick else MAIN_NS
    out = [(1, 8, n) for n in ns]
    if not args.quick:
        out.append((1, 1, LONG_N))
    return out


def train_case(name, row, factory, B, H, N, gen, args) -> dict:
    """--train: time the forward (with autograd recording) and forward +
    backward of one case; the row carries both (fwd_ms, fwd_bwd_ms)."""
    try:
        fwd, step = train_callables(*factory(B, H, N, gen), gen)
        f_times, f_why, f_others = time_case(fwd, args.reps, args.max_seconds)
        if f_why:
            # the forward alone is over budget: do not start a backward
            return {**row, "status": "over-budget", "fwd_ms": min(f_times) * 1e3,
                    "fwd_all_ms": [t * 1e3 for t in f_times], "reason": f"forward {f_why}"}
        s_times, s_why, s_others = time_case(step, args.reps, args.max_seconds)
    except Exception as e:  # report, keep going
        print(f"  {name:36s} H={H} N={N:6d}  ERROR {e}", file=sys.stderr, flush=True)
        return {**row, "status": "error", "reason": f"{type(e).__name__}: {e}"}
    finally:
        fwd = step = None
    others = [o for o in (f_others, s_others) if o is not None]
    others = max(others) if others else None
    rec = {**row, "status": "ok" if not s_why else "over-budget",
           "fwd_ms": min(f_times) * 1e3, "fwd_bwd_ms": min(s_times) * 1e3,
           "fwd_all_ms": [t * 1e3 for t in f_times], "fwd_bwd_all_ms": [t * 1e3 for t in s_times],
           "other_processes_cores": None if others is None else round(others, 3)}
    if s_why:
        rec["reason"] = f"forward + backward {s_why}"
    busy = "" if others is None else f"  (others busy: {others:.2f} cores)"
    print(f"  {name:36s} H={H} N={N:6d}  fwd {rec['fwd_ms']:10.2f} ms  fwd+bwd {rec['fwd_bwd_ms']:10.2f} ms{busy}",
          file=sys.stderr, flush=True)
    return rec


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    load_before = load_average()
    pool = TRAIN_IMPLS if args.train else list(IMPLS)
    selected = [n for n in pool if not args.impl or any(s in n for s in args.impl)]
    results = []
    last_ok: dict[str, dict] = {}

    for name in selected:
        factory, package, exponent, note = IMPLS[name]
        for B, H, N in cases(args):
            row = {"impl": name, "B": B, "H": H, "N": N, "d": D, "note": note}
            if name == "torch.sdpa(causal)":
                row["note"] = f"{note}; backend {sdpa_backend(B, H, N)}"
            if package in UNAVAILABLE:
                results.append({**row, "status": "unavailable", "reason": UNAVAILABLE[package]})
                continue
            if N == LONG_N and exponent != 1:
                results.append({**row, "status": "skipped",
                                "reason": "quadratic: the N = 65536 case is for linear-time implementations"})
                continue
            mem = memory_estimate_gb(name, B, H, N, args.train)
            row["mem_estimate_gb"] = round(mem, 3)
            if mem > args.max_gb:
                results.append({**row, "status": "skipped",
                                "reason": f"memory estimate {mem:.1f} GB > {args.max_gb} GB"})
                continue
            pred = predicted_seconds(last_ok.get(name), H, N, exponent)
            if pred is not None and pred > args.max_seconds:
                results.append({**row, "status": "skipped",
                                "reason": f"predicted {pred:.0f} s per run > {args.max_seconds:.0f} s"})
                continue
            if args.wait_idle > 0:
                wait_until_idle(args.wait_idle, window=2.0)
            gen = torch.Generator().manual_seed(0)
            if args.train:
                rec = train_case(name, row, factory, B, H, N, gen, args)
                results.append(rec)
                if "fwd_bwd_ms" in rec:
                    last_ok[name] = {"seconds": rec["fwd_bwd_ms"] / 1e3, "H": H, "N": N}
                continue
            with torch.no_grad():
                try:
                    fn = forward_callable(*factory(B, H, N, gen))
                    times, why, others = time_case(fn, args.reps, args.max_seconds)
                except Exception as e:  # report, keep going
                    results.append({**row, "status": "error", "reason": f"{type(e).__name__}: {e}"})
                    print(f"  {name:36s} H={H} N={N:6d}  ERROR {e}", file=sys.stderr, flush=True)
                    continue
                del fn
            best = min(times)
            rec = {**row, "status": "ok" if not why else "over-budget", "ms": best * 1e3,
                   "all_ms": [t * 1e3 for t in times],
                   "other_processes_cores": None if others is None else round(others, 3)}
            if why:
                rec["reason"] = why
            results.append(rec)
            last_ok[name] = {"seconds": best, "H": H, "N": N}
            busy = "" if others is None else f"  (others busy: {others:.2f} cores)"
            print(f"  {name:36s} H={H} N={N:6d}  {best * 1e3:10.2f} ms{busy}", file=sys.stderr, flush=True)

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "flags": cpu_flags(), "cores": os.cpu_count(),
                    "platform": platform.platform()},
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "threads": args.threads,
        "torch_num_threads": torch.get_num_threads(),
        "reps": args.reps,
        "mode": "train" if args.train else "forward",
        "method": (f"wall clock, best of {args.reps} after 1 warm-up, float32, autograd: forward "
                   "(graph built, no backward) and forward + backward of (o * do).sum(), "
                   "all inputs requires_grad" if args.train else
                   f"wall clock, best of {args.reps} after 1 warm-up, torch.no_grad(), float32"),
        "versions": versions(),
        "unavailable": UNAVAILABLE,
        "results": results,
    }


def markdown(report: dict) -> str:
    """Results as a markdown table; 'others' is how many cores other processes
    kept busy during the timed runs (near 0 means the numbers are clean)."""
    if report.get("mode") == "train":
        return markdown_train(report)
    lines = ["| implementation | B x H | N | ms | others | notes |",
             "|---|---|---:|---:|---:|---|"]
    for r in report["results"]:
        ms = f"{r['ms']:.2f}" if "ms" in r else "-"
        others = r.get("other_processes_cores")
        others = "-" if others is None else f"{others:.2f}"
        notes = r.get("note", "")
        if r["status"] != "ok":
            notes = f"{r['status']}: {r.get('reason', notes)}"
        lines.append(f"| {r['impl']} | {r['B']} x {r['H']} | {r['N']} | {ms} | {others} | {notes} |")
    return "\n".join(lines)


def markdown_train(report: dict) -> str:
    """--train results: forward (autograd recording) and forward + backward."""
    lines = ["| implementation | B x H | N | forward ms | forward+backward ms | others | notes |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in report["results"]:
        fwd = f"{r['fwd_ms']:.2f}" if "fwd_ms" in r else "-"
        step = f"{r['fwd_bwd_ms']:.2f}" if "fwd_bwd_ms" in r else "-"
        others = r.get("other_processes_cores")
        others = "-" if others is None else f"{others:.2f}"
        notes = r.get("note", "")
        if r["status"] != "ok":
            notes = f"{r['status']}: {r.get('reason', notes)}"
        lines.append(f"| {r['impl']} | {r['B']} x {r['H']} | {r['N']} | {fwd} | {step} | {others} | {notes} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads (default 2)")
    p.add_argument("--quick", action="store_true", help="N = 512 and 4096 only")
    p.add_argument("--train", action="store_true",
                   help="time forward and forward + backward under autograd (default N = 4096)")
    p.add_argument("--all-n", action="store_true",
                   help="with --train: the forward-only N list (512 ... 16384 and H = 1, N = 65536)")
    p.add_argument("--n", type=int, action="append", metavar="N",
                   help="only this N, with B = 1, H = 8 (repeatable; overrides --quick / --all-n)")
    p.add_argument("--json", default=None,
                   help="where to write the JSON (default bench-out/anchors.json, "
                        "bench-out/anchors-train.json with --train)")
    p.add_argument("--reps", type=int, default=3, help="timed runs after the warm-up (best is kept)")
    p.add_argument("--max-seconds", type=float, default=60.0, help="skip cases predicted to take longer per run")
    p.add_argument("--max-gb", type=float, default=8.0, help="skip cases whose memory estimate is larger")
    p.add_argument("--impl", action="append", help="only implementations whose name contains this (repeatable)")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                   help="before each case, wait up to SECONDS for other processes to leave the CPU idle")
    p.add_argument("--no-check", action="store_true", help="skip the small correctness cross-checks")
    args = p.parse_args(argv)
    if args.json is None:
        args.json = "bench-out/anchors-train.json" if args.train else "bench-out/anchors.json"

    torch.set_num_threads(args.threads)
    load = load_average()
    if load and os.cpu_count() and load[0] > 0.5:
        print(f"warning: 1-minute load average is {load[0]} on {os.cpu_count()} cores: "
              "other processes will skew the timings", file=sys.stderr)
    for pkg, why in UNAVAILABLE.items():
        print(f"unavailable: {pkg}: {why}", file=sys.stderr)

    checks = []
    if not args.no_check:
        with torch.no_grad():
            checks = sanity_checks()
        if args.train:
            checks += gradient_checks()
        for c in checks:
            print(f"check: {c['check']}: max |diff| = {c['max_abs_diff']:.2e} "
                  f"(max |ref| = {c['max_abs_ref']:.2e})", file=sys.stderr)

    report = run(args)
    report["checks"] = checks

    v = report["versions"]
    print(f"\ntorch {v['torch']}, fla-core {v['fla-core']}, "
          f"pytorch-fast-transformers {v['pytorch-fast-transformers']}; "
          f"{report['machine']['cpu']}, {args.threads} threads; {report['method']}; "
          f"load average before/after {report['load_average_before']} / {report['load_average_after']}\n")
    print(markdown(report))

    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nJSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
