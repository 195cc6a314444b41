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
