//! The machine's limits, measured in the same run as everything else: a raw FMA-throughput loop
//! (the physical peak) and a well-tuned sgemm (the `gemm` crate, AVX-512 kernels) on 1024^3.

use std::time::Instant;

/// Independent accumulators: enough to cover the FMA latency on both FMA ports.
const ACC: usize = 12;

/// GFLOP/s of a loop of independent vector FMAs on one thread, with the widest ISA present.
pub fn fma_peak_one_thread() -> (f64, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked above).
            return (unsafe { fma_loop_avx512(40_000_000) }, "avx512");
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return (unsafe { fma_loop_avx2(40_000_000) }, "avx2");
        }
    }
    (0.0, "none")
}

/// The same loop on `threads` threads at once, summed.
pub fn fma_peak(threads: usize) -> f64 {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| s.spawn(|| fma_peak_one_thread().0))
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).sum()
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_loop_avx512(iters: usize) -> f64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(0.0); ACC];
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    let t0 = Instant::now();
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm512_fmadd_ps(*x, a, b);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let sink: f32 = acc.iter().map(|x| _mm512_reduce_add_ps(*x)).sum();
    std::hint::black_box(sink);
    (iters * ACC * 16 * 2) as f64 / secs / 1e9
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop_avx2(iters: usize) -> f64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_set1_ps(0.0); ACC];
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    let t0 = Instant::now();
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let mut lanes = [0.0f32; 8];
    for x in acc {
        let mut l = [0.0f32; 8];
        _mm256_storeu_ps(l.as_mut_ptr(), x);
        for (s, v) in lanes.iter_mut().zip(l) {
            *s += v;
        }
    }
    std::hint::black_box(lanes);
    (iters * ACC * 8 * 2) as f64 / secs / 1e9
}

/// GFLOP/s of the `gemm` crate's sgemm on n x n x n, best of 3, on `threads` threads.
pub fn sgemm(n: usize, threads: usize) -> f64 {
    let a = vec![1.0f32; n * n];
    let b = vec![0.5f32; n * n];
    let mut c = vec![0.0f32; n * n];
    let par = if threads <= 1 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(threads)
    };
    let mut best = f64::INFINITY;
    for _ in 0..4 {
        let t0 = Instant::now();
        // SAFETY: a, b, c are n x n row-major buffers; the strides below stay inside them.
        unsafe {
            gemm::gemm(
                n,
                n,
                n,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                n as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
        best = best.min(t0.elapsed().as_secs_f64());
    }
    std::hint::black_box(&c);
    2.0 * (n * n * n) as f64 / best / 1e9
}

/// calib's best variant ("the limit"): a hand-written fused kernel for plain causal linear
/// attention at B = 1, H = 8, N = 4096, d = 64, chunk 64 (`bench/calib`, a copy of the team's
/// yardstick), built and run as a subprocess in the same run as attnc.
#[derive(Clone, Copy, Debug)]
pub struct Calib {
    /// Milliseconds on 1 and 2 threads.
    pub ms: [f64; 2],
}

/// calib's problem: heads and tokens (d = 64, chunk 64).
pub const CALIB_HEADS: usize = 8;
/// calib's sequence length.
pub const CALIB_TOKENS: usize = 4096;
/// The variant the harness runs: the fastest in calib's README.
const CALIB_VARIANT: &str = "v6 +spread prefetch R=6 NT";

impl Calib {
    /// The limit on `threads` (1 or 2) scaled to `heads * tokens` (calib's work is linear in
    /// both: the chunkwise algorithm costs the same per token).
    pub fn scaled_ms(&self, threads: usize, heads: usize, tokens: usize) -> f64 {
        let ms = if threads <= 1 { self.ms[0] } else { self.ms[1] };
        ms * (heads * tokens) as f64 / (CALIB_HEADS * CALIB_TOKENS) as f64
    }
}

/// Builds `bench/calib` (into `target/calib`, `target-cpu=native` from its own cargo config)
/// and runs its best variant. `Err` says why there is no limit: no AVX-512 (calib needs it),
/// or the build or the run failed.
pub fn calib() -> Result<Calib, String> {
    let bench = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = bench.join("calib");
    let target = std::env::var_os("CALIB_TARGET")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| bench.join("../target/calib"));
    let out = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
        .args([
            "run",
            "--release",
            "--quiet",
            "--bin",
            "calib",
            "--",
            CALIB_VARIANT,
        ])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", &target)
        // The harness's own flags (if any) are not calib's: its .cargo/config.toml sets them.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .map_err(|e| format!("cannot run cargo for {}: {e}", dir.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("no output");
        return Err(format!("calib did not run ({}): {last}", out.status));
    }
    parse_calib(&text).ok_or_else(|| format!("calib's output was not understood:\n{text}"))
}

/// Reads the variant's line of calib's output.
fn parse_calib(text: &str) -> Option<Calib> {
    // "  v6 ... NT   1T   7.802 ms  137.6 GF/s (...) | 2T   4.721 ms  227.4 GF/s (...)"
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(CALIB_VARIANT))?;
    let ms = numbers_after(line, "ms")?;
    Some(Calib { ms })
}

/// The two numbers that stand right before each of the first two occurrences of ` unit`.
fn numbers_after(line: &str, unit: &str) -> Option<[f64; 2]> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut found = words
        .windows(2)
        .filter(|w| w[1].trim_end_matches(',') == unit)
        .filter_map(|w| w[0].parse::<f64>().ok());
    Some([found.next()?, found.next()?])
}

/// Milliseconds of the copy attnc cannot avoid: `floats` f32 from one buffer into another (both
/// already touched), split over `threads` threads, best of 5. dfdx 0.13 lends no borrowed view
/// of a tensor's storage, so a forward first copies q, k and v out of their tensors.
pub fn copy_ms(floats: usize, threads: usize) -> f64 {
    use rayon::prelude::*;
    let src = vec![1.0f32; floats];
    let mut dst = vec![0.0f32; floats];
    let part = floats.div_ceil(threads.max(1)).max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .unwrap_or_else(|e| panic!("cannot build a {threads}-thread pool: {e}"));
    let mut best = f64::INFINITY;
    for _ in 0..6 {
        let t0 = Instant::now();
        pool.install(|| {
            dst.par_chunks_mut(part)
                .zip(src.par_chunks(part))
                .for_each(|(d, s)| d.copy_from_slice(s));
        });
        best = best.min(t0.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    best * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_calibs_output() {
        let text = "raw zmm FMA peak: 1T 117.4 GF/s, 2T 234.6 GF/s\n\
            problem: B=1 H=8 N=4096 d=64 C=64  nominal FLOPs = 1.0737 GFLOP\n  \
            v6 +spread prefetch R=6 NT               1T   7.802 ms  137.6 GF/s (109.9 real) | 2T   4.721 ms  227.4 GF/s (181.6 real)\n";
        let c = parse_calib(text).expect("parsed");
        assert_eq!(c.ms, [7.802, 4.721]);
        assert_eq!(c.scaled_ms(2, 1, 65536), 4.721 * 2.0);
    }
}
