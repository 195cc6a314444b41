//! The CUDA host emulation (tests/common/cuda_emu.rs) on hand-written kernels whose results are
//! known exactly, plus the errors it must report.

mod common;

use attnc_codegen::abi::{
    ClassKernels, CudaLaunch, Grid, KernelInfo, Layout, Signature, SmemClass,
};
use common::cuda_emu::{self, EmuInputs};
use std::borrow::Cow;

const THREADS: u32 = 64;
const CHUNK: usize = 8;
const D: usize = 4; // dk = dv = f

/// Kernel 1, one block per (chunk, bh): reverses the chunk of q through dynamic shared memory
/// into out and leaves the chunk's sum in `work`. Kernel 2, one block per bh: block-wide sums
/// (a tree in dynamic shared memory, several barriers; blocks run two at a time) of v and of kernel 1's chunk sums, added to
/// the state, and one value of `proj` (so the 13 pointers are checked in order). The last
/// kernels break the rules on purpose.
const SOURCE: &str = r#"
#ifndef ATTNC_HOST_EMULATION
#define ATTNC_DYN_SMEM(name) extern __shared__ float name[]
#endif

#define ATTNC_PARAMS const float* q, const float* k, const float* v, const float* beta, \
    const float* g, const float* proj, float* out, float* s, float* z, float* chunk_s, \
    float* chunk_z, float* work, float* scratch, const float* conv_q, const float* conv_k, \
    const float* conv_v, float* tail_q, float* tail_k, float* tail_v, float* mom_s, \
    float* mom_z, int n, int heads

extern "C" __global__ void selftest_reverse(ATTNC_PARAMS) {
  ATTNC_DYN_SMEM(tile);
  const int C = 8, D = 4;
  int chunk = blockIdx.x, bh = blockIdx.y;
  int t0 = chunk * C;
  int len = (n - t0 < C ? n - t0 : C) * D;
  const float* src = q + ((size_t)bh * n + t0) * D;
  for (int i = threadIdx.x; i < len; i += blockDim.x) tile[i] = src[i];
  __syncthreads();
  float* dst = out + ((size_t)bh * n + t0) * D;
  for (int i = threadIdx.x; i < len; i += blockDim.x) dst[i] = tile[len - 1 - i];
  if (threadIdx.x == 0) {
    float acc = 0.0f;
    for (int i = 0; i < len; ++i) acc += tile[i];
    work[bh * gridDim.x + chunk] = acc;
  }
}

template <int T>
__device__ __forceinline__ float block_sum(float* red, float x) {
  red[threadIdx.x] = x;
  __syncthreads();
  for (int stride = T / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) red[threadIdx.x] += red[threadIdx.x + stride];
    __syncthreads();
  }
  float r = red[0];
  __syncthreads();  // everyone has read red[0] before the next call overwrites it
  return r;
}

extern "C" __global__ void selftest_sum(ATTNC_PARAMS) {
  ATTNC_DYN_SMEM(red);
  const int C = 8, D = 4;
  int bh = blockIdx.x;
  float part = 0.0f;
  for (int i = threadIdx.x; i < n * D; i += blockDim.x) part += v[(size_t)bh * n * D + i];
  float total = block_sum<64>(red, part);
  int chunks = (n + C - 1) / C;
  float chunk_total = block_sum<64>(red, threadIdx.x < chunks ? work[bh * chunks + threadIdx.x] : 0.0f);
  if (threadIdx.x == 0) {
    s[bh * D * D + 0] += total;
    s[bh * D * D + 1] = chunk_total;
    s[bh * D * D + 2] = (float)(bh % heads);
    s[bh * D * D + 3] = proj[5];
    z[bh * D] = expf(z[bh * D]) + rsqrtf(4.0f) + tanhf(0.5f) + fmaxf(fabsf(-2.0f), 1.0f);
  }
}

extern "C" __global__ void selftest_divergent(ATTNC_PARAMS) {
  if (threadIdx.x == 3) return;
  __syncthreads();
}

extern "C" __global__ void selftest_overrun(ATTNC_PARAMS) {
  if (threadIdx.x == 0) out[(size_t)gridDim.y * n * 4 + 1] = 1.0f;
}

// Two blocks that each wait for the other's flag: they finish only if both are resident at
// once (as on a GPU), not one after the other. The wait is bounded, so a sequential emulation
// reports -1 instead of hanging.
extern "C" __global__ void selftest_resident(ATTNC_PARAMS) {
  volatile float* flag = work;
  const int me = blockIdx.x, other = 1 - me;
  if (threadIdx.x == 0) {
    flag[me] = 1.0f;
    long spins = 0;
    while (flag[other] != 1.0f && spins < 400000000L) ++spins;
    out[me] = flag[other] == 1.0f ? 1.0f : -1.0f;
  }
}

extern "C" __global__ void selftest_smem_overrun(ATTNC_PARAMS) {
  ATTNC_DYN_SMEM(tile);
  tile[threadIdx.x + 4] = 0.0f;
}
"#;

const KERNELS: &[KernelInfo] = &[
    KernelInfo {
        name: "selftest_reverse",
        class: SmemClass::Sm90,
        grid: Grid::Chunks,
        smem_bytes: (CHUNK * D * 4) as u32,
        scratch_floats: 0,
    },
    KernelInfo {
        name: "selftest_sum",
        class: SmemClass::Sm90,
        grid: Grid::Heads,
        smem_bytes: THREADS * 4,
        scratch_floats: 0,
    },
];

fn launch(forward: &'static [KernelInfo]) -> CudaLaunch {
    CudaLaunch {
        signature: Signature {
            layout: Layout::Bhnd,
            chunk: CHUNK,
            dk: D,
            dv: D,
            f: D,
            normalized: true,
            uses_beta: false,
            uses_gates: false,
            uses_projection: true,
            heads: None,
            conv: 0,
            momentum: false,
            rpe: false,
        },
        threads: THREADS,
        classes: Cow::Owned(vec![ClassKernels {
            class: SmemClass::Sm90,
            forward: Cow::Borrowed(forward),
            step: Cow::Borrowed(&[]),
        }]),
        work_per_chunk: 1,
        chunk_states: false,
    }
}

fn inputs(bh: usize, n: usize) -> EmuInputs {
    let mut rng = common::Rng::new(7);
    EmuInputs {
        q: rng.normals(bh * n * D),
        k: rng.normals(bh * n * D),
        v: rng.normals(bh * n * D),
        s: rng.normals(bh * D * D),
        z: rng.normals(bh * D),
        proj: rng.normals(D * D),
        ..EmuInputs::default()
    }
}

/// What `block_sum<64>` computes, in its order of float additions.
fn block_sum(parts: &[f32]) -> f32 {
    let mut red = parts.to_vec();
    let mut stride = red.len() / 2;
    while stride > 0 {
        for t in 0..stride {
            red[t] += red[t + stride];
        }
        stride /= 2;
    }
    red[0]
}

#[test]
fn kernels_run_in_order_with_shared_memory_and_barriers() {
    if !cuda_emu::available_or_skip("kernels_run_in_order_with_shared_memory_and_barriers") {
        return;
    }
    // 2 x 3 heads; 21 tokens, so the last chunk is partial.
    let (heads, bh, n) = (3, 6, 21);
    let x = inputs(bh, n);
    let launch = launch(KERNELS);
    let got = cuda_emu::run(&launch, SOURCE, KERNELS, bh, heads, n, &x).unwrap();

    let chunks = n.div_ceil(CHUNK);
    let mut out = vec![0.0; x.v.len()];
    let mut s = x.s.clone();
    let mut z = x.z.clone();
    for h in 0..bh {
        let mut chunk_sums = Vec::new();
        for c in 0..chunks {
            let lo = (h * n + c * CHUNK) * D;
            let hi = (h * n + (c * CHUNK + CHUNK).min(n)) * D;
            for (o, q) in out[lo..hi].iter_mut().zip(x.q[lo..hi].iter().rev()) {
                *o = *q;
            }
            chunk_sums.push(x.q[lo..hi].iter().fold(0.0, |a, b| a + b));
        }
        chunk_sums.resize(THREADS as usize, 0.0); // threads past the chunks add 0
        let mut parts = vec![0.0f32; THREADS as usize];
        for (i, v) in x.v[h * n * D..(h + 1) * n * D].iter().enumerate() {
            parts[i % THREADS as usize] += v;
        }
        s[h * D * D] += block_sum(&parts);
        s[h * D * D + 1] = block_sum(&chunk_sums);
        s[h * D * D + 2] = (h % heads) as f32;
        s[h * D * D + 3] = x.proj[5];
        z[h * D] = z[h * D].exp() + 0.5 + 0.5f32.tanh() + 2.0;
    }
    assert_eq!(got.out, out);
    assert_eq!(got.s, s);
    for (i, (a, b)) in got.z.iter().zip(&z).enumerate() {
        assert!((a - b).abs() <= 1e-6 * b.abs(), "z[{i}]: {a} vs {b}");
    }

    // The cached binary gives the same answer.
    let again = cuda_emu::run(&launch, SOURCE, KERNELS, bh, heads, n, &x).unwrap();
    assert_eq!(again.out, got.out);
}

#[test]
fn blocks_of_a_launch_run_at_the_same_time() {
    if !cuda_emu::available_or_skip("blocks_of_a_launch_run_at_the_same_time") {
        return;
    }
    static RESIDENT: [KernelInfo; 1] = [KernelInfo {
        name: "selftest_resident",
        class: SmemClass::Sm90,
        grid: Grid::Heads,
        smem_bytes: 0,
        scratch_floats: 0,
    }];
    let (heads, bh, n) = (2, 2, 9);
    let launch = launch(&RESIDENT);
    let got = cuda_emu::run(&launch, SOURCE, &RESIDENT, bh, heads, n, &inputs(bh, n)).unwrap();
    assert_eq!(
        &got.out[..2],
        &[1.0, 1.0],
        "each block saw the other's flag"
    );
}

fn run_err(kernels: &'static [KernelInfo], source: &str) -> String {
    let (heads, bh, n) = (2, 2, 9);
    let launch = launch(kernels);
    match cuda_emu::run(&launch, source, kernels, bh, heads, n, &inputs(bh, n)) {
        Ok(_) => panic!("{} should have failed", kernels[0].name),
        Err(e) => e,
    }
}

const fn one(name: &'static str, smem_bytes: u32) -> [KernelInfo; 1] {
    [KernelInfo {
        name,
        class: SmemClass::Sm90,
        grid: Grid::Chunks,
        smem_bytes,
        scratch_floats: 0,
    }]
}

#[test]
fn errors_are_reported() {
    if !cuda_emu::available_or_skip("errors_are_reported") {
        return;
    }
    const BROKEN: &str = "extern \"C\" __global__ void broken() { undeclared_thing = 1; }\n";
    static BROKEN_KERNEL: [KernelInfo; 1] = one("broken", 0);
    let e = run_err(&BROKEN_KERNEL, BROKEN);
    assert!(e.contains("undeclared_thing") && e.contains("error"), "{e}");

    static MISSING: [KernelInfo; 1] = one("attnc_missing", 0);
    let e = run_err(&MISSING, SOURCE);
    assert!(e.contains("no kernel named attnc_missing"), "{e}");

    static DIVERGENT: [KernelInfo; 1] = one("selftest_divergent", 0);
    let e = run_err(&DIVERGENT, SOURCE);
    assert!(e.contains("__syncthreads() reached by only some"), "{e}");

    static OVERRUN: [KernelInfo; 1] = one("selftest_overrun", 0);
    let e = run_err(&OVERRUN, SOURCE);
    assert!(e.contains("wrote outside `out`"), "{e}");

    static SMEM: [KernelInfo; 1] = one("selftest_smem_overrun", 16);
    let e = run_err(&SMEM, SOURCE);
    assert!(e.contains("beyond its smem_bytes"), "{e}");

    static TOO_MUCH_SMEM: [KernelInfo; 1] = one("selftest_reverse", 300 * 1024);
    let e = run_err(&TOO_MUCH_SMEM, SOURCE);
    assert!(e.contains("dynamic shared memory"), "{e}");
}

/// The products of the prelude (`attnc::gemm`), on the three paths a GPU can take: tensor cores
/// with 3xTF32 (sm_80+, the default), plain TF32 (`ATTNC_MMA_PASSES 1`) and the SIMT fallback
/// (`ATTNC_NO_MMA`). Block 0 computes `q k` (64 x 64 x 64) over 61 live rows; block 1 the
/// lower-triangular form (`a` masked to k <= row) over 53 rows and depth 53; block 2 `q kᵀ`
/// reading k as stored (`gemm_bt`, the scores' product) over 59 rows and depth 62, lower part
/// only (LOWER_OUT).
const PRODUCTS: &str = r#"
extern "C" __global__ void selftest_products(ATTNC_PARAMS) {
  ATTNC_DYN_SMEM(sm);
  constexpr int P = attnc::pitch(64), T = 64 * P;  // tiles' rows are P floats apart
  const long base = (long)blockIdx.x * 64 * 64;
  for (int i = threadIdx.x; i < 64 * 64; i += blockDim.x) {
    sm[i / 64 * P + i % 64] = q[base + i];
    sm[T + i / 64 * P + i % 64] = k[base + i];
  }
  __syncthreads();
  if (blockIdx.x == 0) attnc::gemm<64, 64, 64, attnc::FULL, false>(sm, sm + T, sm + 2 * T, 61, 64);
  else if (blockIdx.x == 1) attnc::gemm<64, 64, 64, attnc::LOWER_A, false>(sm, sm + T, sm + 2 * T, 53, 53);
  else attnc::gemm_bt<64, 64, 64, attnc::LOWER_OUT, false>(sm, sm + T, sm + 2 * T, 59, 62);
  __syncthreads();
  for (int i = threadIdx.x; i < 64 * 64; i += blockDim.x) out[base + i] = sm[2 * T + i / 64 * P + i % 64];
}
"#;

/// SOURCE's parameter-list macro, for kernels that bring the prelude's own definitions.
fn params() -> &'static str {
    let start = SOURCE.find("#define ATTNC_PARAMS").unwrap_or(0);
    let end = SOURCE.find("extern \"C\"").unwrap_or(start);
    &SOURCE[start..end]
}

/// `products(defines, a, b)`: the two blocks' outputs, emulated.
fn products(defines: &str, a: &[f32], b: &[f32]) -> Vec<f32> {
    static KERNEL: [KernelInfo; 1] = [KernelInfo {
        name: "selftest_products",
        class: SmemClass::Sm90,
        grid: Grid::Heads,
        smem_bytes: 3 * 64 * 68 * 4,
        scratch_floats: 0,
    }];
    let mut launch = launch(&KERNEL);
    launch.threads = 256;
    launch.signature.chunk = 64;
    (launch.signature.dk, launch.signature.dv, launch.signature.f) = (64, 64, 64);
    launch.signature.uses_projection = false;
    launch.signature.normalized = false;
    let source = format!(
        "{defines}\n{}\n{}{PRODUCTS}",
        attnc_codegen::cuda::PRELUDE,
        params()
    );
    let x = EmuInputs {
        q: a.to_vec(),
        k: b.to_vec(),
        v: vec![0.0; a.len()],
        s: vec![0.0; BLOCKS * 64 * 64],
        ..EmuInputs::default()
    };
    cuda_emu::run(&launch, &source, &KERNEL, BLOCKS, BLOCKS, 64, &x)
        .unwrap()
        .out
}

/// Blocks of PRODUCTS, one product each.
const BLOCKS: usize = 3;

/// The same three products in f64, with their masks (rows past the live ones, and block 2's
/// entries above the diagonal, are zero).
fn products_f64(a: &[f32], b: &[f32]) -> Vec<f64> {
    let mut out = vec![0.0; BLOCKS * 64 * 64];
    let blocks = [
        (61, 64, false, false),
        (53, 53, true, false),
        (59, 62, false, true),
    ];
    for (blk, (rows, depth, lower_a, bt)) in blocks.into_iter().enumerate() {
        let base = blk * 64 * 64;
        for r in 0..rows {
            for c in 0..if bt { r + 1 } else { 64 } {
                let kend = if lower_a { depth.min(r + 1) } else { depth };
                let b_at = |k: usize| {
                    if bt {
                        b[base + c * 64 + k]
                    } else {
                        b[base + k * 64 + c]
                    }
                };
                out[base + r * 64 + c] = (0..kend)
                    .map(|k| a[base + r * 64 + k] as f64 * b_at(k) as f64)
                    .sum();
            }
        }
    }
    out
}

/// Largest |got - want| over the largest |a| |b| row-column product, so entries near zero do
/// not dominate.
fn product_error(got: &[f32], want: &[f64], a: &[f32], b: &[f32]) -> f64 {
    let scale: f64 = a.iter().map(|x| x.abs() as f64).fold(0.0, f64::max)
        * b.iter().map(|x| x.abs() as f64).fold(0.0, f64::max)
        * 64.0;
    got.iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).abs() / scale)
        .fold(0.0, f64::max)
}

#[test]
fn products_on_tensor_cores_match_their_contract() {
    if !cuda_emu::available_or_skip("products_on_tensor_cores_match_their_contract") {
        return;
    }
    let paths = [
        ("3xTF32", ""),
        ("TF32", "#define ATTNC_MMA_PASSES 1"),
        ("SIMT", "#define ATTNC_NO_MMA 1"),
    ];
    // Small integers are exact in TF32 and their sums exact in f32: every path must give the
    // exact product, which pins the fragment layout (a lane's values in the wrong place change
    // some sum).
    let mut rng = common::Rng::new(11);
    let mut ints = |len: usize| -> Vec<f32> {
        (0..len)
            .map(|_| (rng.uniform() * 17.0).floor() - 8.0)
            .collect()
    };
    let (a, b) = (ints(BLOCKS * 64 * 64), ints(BLOCKS * 64 * 64));
    let want: Vec<f32> = products_f64(&a, &b).iter().map(|x| *x as f32).collect();
    for (name, defines) in paths {
        assert_eq!(products(defines, &a, &b), want, "{name}: integer products");
    }
    // Random normals: 3xTF32 and SIMT at fp32's accuracy, plain TF32 visibly coarser (so the
    // tensor-core path is the one that ran) yet within its documented tolerance.
    let mut rng = common::Rng::new(12);
    let (a, b) = (rng.normals(BLOCKS * 64 * 64), rng.normals(BLOCKS * 64 * 64));
    let want = products_f64(&a, &b);
    let errors: Vec<f64> = paths
        .iter()
        .map(|(_, defines)| product_error(&products(defines, &a, &b), &want, &a, &b))
        .collect();
    println!(
        "product errors: 3xTF32 {:.2e}, TF32 {:.2e}, SIMT {:.2e}",
        errors[0], errors[1], errors[2]
    );
    assert!(errors[0] < 1e-6 && errors[2] < 1e-6, "{errors:?}");
    assert!(
        errors[1] > 100.0 * errors[0] && errors[1] < 5e-3,
        "{errors:?}"
    );
}
