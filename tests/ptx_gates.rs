//! Static gates on the generated CUDA kernels, checked without a GPU (NVRTC from PyPI in CI):
//!
//! - **Products use tensor cores**: every `attnc::gemm` instantiation the example specs use,
//!   compiled alone on shared-memory tiles for sm_90, issues `mma.sync` (3xTF32) when its shape
//!   allows (M % 16, K % 8, N % 8 = 0); built with `ATTNC_NO_MMA` (the FP32-pipe fallback) it
//!   issues at least 4 `fma.rn.f32` per shared-memory load instruction (a float4 load counts
//!   as one).
//! - **No spills**: ptxas (`--ptxas-options=-v` through NVRTC) reports 0 bytes of spill stores
//!   and loads for every kernel of every example spec, each shared-memory class's kernels
//!   compiled for its architecture (sm_90, sm_80, sm_86, sm_75).
//! - **Occupancy**: at least 2 blocks of 256 threads fit one SM by registers (64K per SM),
//!   shared memory and threads (the class's limits, 1 KiB reserved per block from sm_80 on): on
//!   sm_90 every kernel, on sm_80 all but [`SM80_ONE_BLOCK`]; at least 1 everywhere.
//! - **Workspace**: a `forward` call's workspaces at (B 8, H 16, N 4096) stay within 3.25 KiB per
//!   token x head on every class, and no kernel puts tiles in global scratch but on sm_75 (runs
//!   without NVRTC).
//! - **Bank conflicts**: run in the host emulation with its bank counter (a C++ compiler, no
//!   NVRTC), no warp instruction of the tile library on shared memory touches more than 2
//!   distinct words of one bank in one phase, in any kernel of the example specs, with the
//!   products on tensor cores and on the SIMT fallback.
//!
//! Each test prints its table (`-- --nocapture`); BENCHMARKS.md and the issue notes quote it.

mod common;

use attnc::prelude::*;
use attnc::spec::Normalize;
use attnc::{CudaLaunch, Grid, SmemClass};
use common::cuda_emu;
use common::{Inputs, Rng};
use std::collections::BTreeMap;

/// The architecture of the per-product gate.
const ARCH: &str = "sm_90";
/// fma.rn.f32 per ld.shared in a product's PTX.
const MIN_FMA_PER_LOAD: f64 = 4.0;

fn nvrtc_or_skip(test: &str) -> bool {
    if attnc::cuda::nvrtc_available() {
        return true;
    }
    let required = std::env::var("ATTNC_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{test}: ATTNC_REQUIRE_NVRTC=1 but libnvrtc.so.12 cannot be loaded (.ci/install-nvrtc.sh)"
    );
    println!("SKIP: {test}: NVRTC is not loadable on this machine");
    false
}

#[attention(head_dim = 64, feature_map = elu_plus_one, normalize = sum, chunk = 64)]
struct LinearAttention;
#[attention(head_dim = 64, update = gated, qk_norm = l2, chunk = 64)]
struct Retention;
#[attention(head_dim = 64, value_dim = 32, feature_map = relu, mask = none, layout = bnhd)]
struct Bidirectional;
#[attention(head_dim = 64, update = delta, qk_norm = l2, chunk = 64)]
struct DeltaNet;
#[attention(head_dim = 64, update = gated_delta, qk_norm = l2, chunk = 64)]
struct GatedDeltaNet;
#[attention(head_dim = 16, feature_map = favor(features = 64), normalize = sum, chunk = 16)]
struct Performer;
#[attention(head_dim = 64, feature_map = softmax, chunk = 64)]
struct Softmax;
#[attention(head_dim = 128, update = gated_delta, qk_norm = l2, chunk = 64)]
struct GatedDeltaNet128;
#[attention(head_dim = 64, update = gated_delta, qk_norm = l2, short_conv = 4, chunk = 64)]
struct GatedDeltaNetConv;

/// One example spec: its name in the tables, the spec, its launch and its CUDA source.
type Example = (
    &'static str,
    &'static Spec,
    &'static CudaLaunch,
    &'static str,
);

macro_rules! example {
    ($name:literal, $attn:ty) => {
        (
            $name,
            <$attn>::spec(),
            &<$attn>::CUDA_LAUNCH,
            <$attn>::CUDA_SOURCE,
        )
    };
}

/// The example specs.
fn specs() -> Vec<Example> {
    vec![
        example!("linear elu+1 sum", LinearAttention),
        example!("retention gated l2", Retention),
        example!("bidirectional bnhd", Bidirectional),
        example!("deltanet", DeltaNet),
        example!("gated deltanet", GatedDeltaNet),
        example!("performer", Performer),
        example!("softmax", Softmax),
        example!("gated deltanet d128", GatedDeltaNet128),
        example!("gated deltanet conv", GatedDeltaNetConv),
    ]
}

/// Most distinct words of one bank that one warp instruction may touch in one phase.
const MAX_BANK_WAYS: u32 = 2;

/// The products' two paths: tensor cores (sm_80+, the default) and the SIMT register tiles
/// (older GPUs, or `ATTNC_NO_MMA`).
const PRODUCT_PATHS: [(&str, &str); 2] = [("mma", ""), ("simt", "#define ATTNC_NO_MMA 1\n")];

/// Every kernel of every example spec (`forward` over two chunks of one head, and `step`), run
/// in the host emulation with bank counting, on both product paths ([`PRODUCT_PATHS`]; the
/// table sums them, the gate holds for each). Per (kernel, op) of the tile library: warp
/// instructions, wavefronts per instruction (ideal: 1 for 4-byte accesses, 2 for float2, 4 for
/// float4), and the worst phase.
#[test]
fn shared_memory_accesses_are_at_most_two_way() {
    if !cuda_emu::available_or_skip("shared_memory_accesses_are_at_most_two_way") {
        return;
    }
    let mut failures = Vec::new();
    println!(
        "{:<22} {:<14} {:<20} {:>9} {:>8} {:>6}",
        "spec", "kernel", "op", "instrs", "waves/i", "worst"
    );
    for (name, spec, launch, source) in specs() {
        let mut sites: BTreeMap<(String, String), (u64, u64, u32)> = BTreeMap::new();
        let runs = cuda_emu::distinct_classes(launch)
            .into_iter()
            .flat_map(|c| [(&c.forward, 2 * spec.chunk), (&c.step, 1)]);
        for (kernels, n) in runs {
            let inputs = bank_inputs(spec, n);
            for (path, defines) in PRODUCT_PATHS {
                let source = format!("{defines}{source}");
                let got = cuda_emu::run(launch, &source, kernels, 1, 1, n, &inputs)
                    .unwrap_or_else(|e| panic!("{name}, {path}, n = {n}: {e}"));
                for site in got.banks {
                    if site.worst > MAX_BANK_WAYS {
                        failures.push(format!(
                            "{name}, {path}: {}, {} (line {} of the source): {}-way",
                            site.kernel, site.op, site.line, site.worst
                        ));
                    }
                    let e = sites.entry((site.kernel, site.op)).or_default();
                    e.0 += site.instructions;
                    e.1 += site.wavefronts;
                    e.2 = e.2.max(site.worst);
                }
            }
        }
        for ((kernel, op), (instrs, waves, worst)) in sites {
            println!(
                "{name:<22} {kernel:<14} {op:<20} {instrs:>9} {:>8.2} {worst:>6}",
                waves as f64 / instrs.max(1) as f64
            );
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// One head of random inputs for `spec` at `n` tokens, with an initial state (and short_conv's
/// weights and tails), counting bank conflicts.
fn bank_inputs(spec: &Spec, n: usize) -> cuda_emu::EmuInputs {
    let x = Inputs::random(1, 1, n, spec.head_dim, spec.value_dim, 11).for_spec(spec, 5);
    let (f, dv) = (spec.feature_dim(), spec.value_dim);
    let mut rng = Rng::new(12);
    let s0 = rng.normals(f * dv);
    let z0 = match spec.normalize {
        Normalize::Sum => (0..f).map(|_| 0.5 + rng.uniform()).collect(),
        _ => Vec::new(),
    };
    let mut inputs = cuda_emu::inputs(spec, &x, &s0, &z0);
    if let Some(w) = spec.short_conv {
        let dims = [spec.head_dim, spec.head_dim, dv];
        inputs.conv = dims.map(|d| rng.normals(d * w).iter().map(|x| 0.5 * x).collect());
        inputs.tails = dims.map(|d| rng.normals((w - 1) * d));
    }
    inputs.count_banks = true;
    inputs
}

/// Every product a source calls, as `gemm<M, K, N, TRI, ACC>` or `gemm_bt<...>` (the product
/// that reads its right operand transposed).
fn gemm_shapes(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    for name in ["gemm", "gemm_bt"] {
        for part in source.split(&format!("attnc::{name}<")).skip(1) {
            if let Some(end) = part.find(">(") {
                out.push(format!("{name}<{}>", &part[..end]));
            }
        }
    }
    out
}

/// PTX instruction counts of one entry function: (fma.rn.f32, mma.sync, ld.shared).
fn counts(ptx: &str, entry: &str) -> (usize, usize, usize) {
    let start = ptx
        .find(&format!(".entry {entry}("))
        .unwrap_or_else(|| panic!("no entry {entry} in the PTX"));
    let body = &ptx[start..];
    let body = &body[..body.find("\n}\n").map_or(body.len(), |e| e + 2)];
    let fma = body.matches("fma.rn.f32").count();
    let mma = body.matches("mma.sync.aligned.m16n8k8").count();
    let lds = body.matches("ld.shared.").count();
    (fma, mma, lds)
}

/// (M, K, N) of a product's template arguments.
fn dims(shape: &str) -> [usize; 3] {
    let args = shape.split_once('<').map_or(shape, |(_, args)| args);
    let mut d = args.split(',').map(|x| x.trim().parse().unwrap_or(1));
    [(); 3].map(|_| d.next().unwrap_or(1))
}

/// Every product of the example specs, compiled alone on shared-memory tiles for sm_90: by
/// default (tensor cores: `mma.sync` must be there for every shape that allows it) and with
/// `ATTNC_NO_MMA` (the SIMT register-tiled product: at least 4 fma per shared load).
#[test]
fn products_use_tensor_cores_or_register_tiles() {
    if !nvrtc_or_skip("products_use_tensor_cores_or_register_tiles") {
        return;
    }
    let mut shapes: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (name, _, _, source) in specs() {
        for s in gemm_shapes(source) {
            shapes.entry(s).or_default().push(name);
        }
    }
    let mut kernels = String::new();
    for (i, shape) in shapes.keys().enumerate() {
        let [m, k, n] = dims(shape);
        kernels.push_str(&format!(
            "extern \"C\" __global__ void product_{i}(int rows, int depth) {{\n\
             \x20 ATTNC_DYN_SMEM(sm);\n\
             \x20 attnc::{shape}(sm, sm + {ak}, sm + {bk}, rows, depth);\n}}\n",
            ak = m * (k + 4),
            bk = m * (k + 4) + k.max(n) * (k.max(n) + 4),
        ));
    }
    let prelude = attnc_codegen::cuda::PRELUDE;
    let compile = |defines: &str| {
        attnc::cuda::compile_ptx_uncached(&format!("{defines}{prelude}{kernels}"), ARCH)
            .expect("the products compile")
    };
    let (tensor, simt) = (compile(""), compile("#define ATTNC_NO_MMA 1\n"));
    let mut failures = Vec::new();
    println!(
        "{:<44} {:>5} {:>6} {:>9} | {:>5} {:>6} {:>6}  used by",
        "product<M, K, N, TRI, ACC>", "mma", "ld.sh", "mma/ld.sh", "fma", "ld.sh", "fma/ld"
    );
    for (i, (shape, users)) in shapes.iter().enumerate() {
        let entry = format!("product_{i}");
        let (_, mma, lds) = counts(&tensor, &entry);
        let (fma, _, simt_lds) = counts(&simt, &entry);
        let ratio = fma as f64 / simt_lds.max(1) as f64;
        let [m, k, n] = dims(shape);
        println!(
            "{shape:<44} {mma:>5} {lds:>6} {:>9.2} | {fma:>5} {simt_lds:>6} {ratio:>6.2}  {}",
            mma as f64 / lds.max(1) as f64,
            users.join(", ")
        );
        if m % 16 == 0 && k % 8 == 0 && n % 8 == 0 && mma == 0 {
            failures.push(format!("{shape}: no mma.sync"));
        }
        if [m, k, n].iter().all(|d| d % 4 == 0) && ratio < MIN_FMA_PER_LOAD {
            failures.push(format!("{shape}, SIMT: {ratio:.2} fma per shared load"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// ptxas's report per kernel: (registers, spill stores + loads in bytes).
fn ptxas_report(log: &str) -> BTreeMap<String, (usize, usize)> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut spills = 0;
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            current = rest.split('\'').next().map(str::to_string);
            spills = 0;
        }
        if line.contains("spill stores") {
            spills = line
                .split(',')
                .filter(|p| p.contains("spill"))
                .filter_map(|p| p.split_whitespace().next()?.parse::<usize>().ok())
                .sum();
        }
        if let (Some(name), Some(regs)) = (&current, line.split("Used ").nth(1)) {
            let regs = regs
                .split_whitespace()
                .next()
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            out.insert(name.clone(), (regs, spills));
        }
    }
    out
}

/// The architecture each class's kernels are compiled for, and whether the class promises two
/// blocks per SM (the others' budgets are too small for a d = 64 chunk's tiles at two blocks).
const CLASS_ARCHS: [(SmemClass, &str, bool); 4] = [
    (SmemClass::Sm90, "sm_90", true),
    (SmemClass::Sm80, "sm_80", true),
    (SmemClass::Sm86, "sm_86", false),
    (SmemClass::Sm75, "sm_75", false),
];

/// sm_80 kernels that hold one block per SM: their tiles, all staged in shared memory, exceed
/// 81 KiB at every value-column blocking (d = 128's chunk tiles are 33 KiB each).
const SM80_ONE_BLOCK: [(&str, &str); 3] = [
    ("gated deltanet d128", "attnc_intra"),
    ("gated deltanet d128", "attnc_scan"),
    ("gated deltanet d128", "attnc_output"),
];

/// Per class, every kernel of every example spec compiled for the class's architecture (sm_75:
/// the SIMT products): no spills; blocks per SM by registers (64K per SM), shared memory and
/// threads (the class's limits): at least 2 on sm_90, and on sm_80 but for
/// [`SM80_ONE_BLOCK`], at least 1 everywhere.
#[test]
fn kernels_do_not_spill_and_two_blocks_fit_an_sm() {
    if !nvrtc_or_skip("kernels_do_not_spill_and_two_blocks_fit_an_sm") {
        return;
    }
    let mut failures = Vec::new();
    println!(
        "{:<6} {:<22} {:<18} {:>5} {:>7} {:>9} {:>7}",
        "arch", "spec", "kernel", "regs", "spills", "smem (B)", "blk/SM"
    );
    for (class, arch, two_blocks) in CLASS_ARCHS {
        for (name, _, launch, source) in specs() {
            let (_, log) = attnc::cuda::compile_report(source, arch).expect("the spec compiles");
            let report = ptxas_report(&log);
            let Some(kernels) = launch.kernels(class) else {
                failures.push(format!("{name}: no kernels for {class:?}"));
                continue;
            };
            for k in kernels.forward.iter().chain(kernels.step.iter()) {
                let Some(&(regs, spills)) = report.get(k.name) else {
                    failures.push(format!("{name}: no ptxas report for {}:\n{log}", k.name));
                    continue;
                };
                let threads = launch.threads as usize;
                let by_regs = 65536 / (regs.max(1).next_multiple_of(8) * threads);
                let blocks = by_regs.min(k.blocks_per_sm(launch.threads));
                println!(
                    "{arch:<6} {name:<22} {:<18} {regs:>5} {spills:>7} {:>9} {blocks:>7}",
                    k.name, k.smem_bytes
                );
                if spills > 0 {
                    failures.push(format!("{arch}, {name}: {} spills {spills} bytes", k.name));
                }
                let exempt = class == SmemClass::Sm80 && SM80_ONE_BLOCK.contains(&(name, k.name));
                if blocks < if two_blocks && !exempt { 2 } else { 1 } {
                    failures.push(format!(
                        "{arch}, {name}: {}: {blocks} block(s) per SM",
                        k.name
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Bytes of workspace (chunk states, spilled tiles, per-block scratch) per token and head at
/// (B 8, H 16, N 4096): the memory a `forward` call allocates beyond its inputs and output.
#[test]
fn workspace_bytes_per_token_and_head_are_bounded() {
    let (bh, n) = (8 * 16, 4096);
    let mut worst = (0.0f64, String::new());
    let mut spilled = Vec::new();
    for (class, arch, _) in CLASS_ARCHS {
        for (name, _, launch, _) in specs() {
            let kernels = launch.kernels(class).expect("every class has kernels");
            let w = launch.workspace(&kernels.forward, bh, n);
            let floats = w.chunk_s + w.chunk_z + w.work + w.scratch;
            let per = 4.0 * floats as f64 / (bh * n) as f64;
            let blocks: Vec<String> = kernels
                .forward
                .iter()
                .map(|k| {
                    let scratch = k.scratch_floats * 4 / 1024;
                    let split = match k.grid {
                        Grid::ChunkColumns(b) | Grid::Columns(b) => format!(" x{b}"),
                        _ => String::new(),
                    };
                    format!(
                        "{}{split} {} KiB + {scratch} ({}/SM)",
                        k.name.trim_start_matches("attnc_"),
                        k.smem_bytes / 1024,
                        k.blocks_per_sm(launch.threads)
                    )
                })
                .collect();
            println!(
                "{arch:<6} {name:<22} {per:>6.0} B/token x head; per block: {}",
                blocks.join(", ")
            );
            if per > worst.0 {
                worst = (per, format!("{arch}, {name}"));
            }
            // The smallest class (64 KiB per SM) may put d = 128's tiles in scratch.
            if class == SmemClass::Sm75 {
                continue;
            }
            for k in kernels.forward.iter().chain(kernels.step.iter()) {
                if k.scratch_floats > 0 {
                    spilled.push(format!(
                        "{arch}, {name}: {} puts {} KiB of tiles in scratch",
                        k.name,
                        k.scratch_floats * 4 / 1024
                    ));
                }
            }
        }
    }
    // Every tile of the example specs (Gated DeltaNet at d = 128 included) in shared memory.
    assert!(spilled.is_empty(), "{spilled:#?}");
    assert!(
        worst.0 <= 3328.0,
        "{}: {:.0} bytes per token x head",
        worst.1,
        worst.0
    );
}
