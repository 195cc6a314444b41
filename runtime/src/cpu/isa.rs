//! CPU instruction-set variants. Generated kernels are generic over an [`Isa`] marker; the
//! runtime instantiates each under `#[target_feature]` and picks one per process, once.

use crate::cpu::tile::{Product, Tile};
use crate::error::{Error, Result};
use std::sync::OnceLock;

/// The instruction-set variants kernels are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CpuIsa {
    /// Plain Rust, whatever the target's baseline is (SSE2 on x86-64, NEON on aarch64).
    Portable,
    /// AVX2 with FMA (x86-64).
    Avx2,
    /// AVX-512 F/VL/BW/DQ with FMA (x86-64).
    Avx512,
}

impl CpuIsa {
    /// Every variant, fastest last.
    pub const ALL: [CpuIsa; 3] = [CpuIsa::Portable, CpuIsa::Avx2, CpuIsa::Avx512];

    /// The name used by `ATTNC_CPU_ISA`.
    pub fn name(self) -> &'static str {
        match self {
            CpuIsa::Portable => "portable",
            CpuIsa::Avx2 => "avx2",
            CpuIsa::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run the variant.
    pub fn is_available(self) -> bool {
        match self {
            CpuIsa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            CpuIsa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            CpuIsa::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The variants this CPU can run.
    pub fn available() -> Vec<CpuIsa> {
        CpuIsa::ALL
            .into_iter()
            .filter(|i| i.is_available())
            .collect()
    }

    /// The fastest variant this CPU can run.
    pub fn best() -> CpuIsa {
        CpuIsa::ALL
            .into_iter()
            .rev()
            .find(|i| i.is_available())
            .unwrap_or(CpuIsa::Portable)
    }

    /// Parses an `ATTNC_CPU_ISA` value and checks the CPU supports it.
    pub fn from_name(name: &str) -> Result<CpuIsa> {
        let isa = CpuIsa::ALL
            .into_iter()
            .find(|i| i.name() == name.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                Error::Isa(format!(
                    "ATTNC_CPU_ISA={name:?} is not a known variant; use portable, avx2 or avx512"
                ))
            })?;
        if isa.is_available() {
            Ok(isa)
        } else {
            Err(Error::Isa(format!(
                "ATTNC_CPU_ISA={name} was asked for but this CPU lacks it; available here: {}",
                CpuIsa::available()
                    .iter()
                    .map(|i| i.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    }

    /// Runs `f` with kernels called from this thread forced to `isa` (for side-by-side
    /// comparisons of variants in one process, e.g. tests and benchmarks).
    ///
    /// ```
    /// # use attnc_runtime as attnc;
    /// use attnc::CpuIsa;
    /// let used = CpuIsa::Portable.run_with(|| CpuIsa::selected()).unwrap().unwrap();
    /// assert_eq!(used, CpuIsa::Portable);
    /// ```
    pub fn run_with<T>(self, f: impl FnOnce() -> T) -> Result<T> {
        if !self.is_available() {
            return Err(Error::Isa(format!("{self} kernels cannot run on this CPU")));
        }
        let previous = OVERRIDE.with(|o| o.replace(Some(self)));
        let result = f();
        OVERRIDE.with(|o| o.set(previous));
        Ok(result)
    }

    /// The variant kernels called from this thread use: the [`CpuIsa::run_with`] override,
    /// else `ATTNC_CPU_ISA` if set, else the best available. The environment is read once.
    pub fn selected() -> Result<CpuIsa> {
        if let Some(isa) = OVERRIDE.with(|o| o.get()) {
            return Ok(isa);
        }
        static SELECTED: OnceLock<Result<CpuIsa>> = OnceLock::new();
        SELECTED
            .get_or_init(|| match std::env::var("ATTNC_CPU_ISA") {
                Ok(name) if !name.trim().is_empty() => CpuIsa::from_name(&name),
                _ => Ok(CpuIsa::best()),
            })
            .clone()
    }
}

impl std::fmt::Display for CpuIsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

thread_local! {
    static OVERRIDE: std::cell::Cell<Option<CpuIsa>> = const { std::cell::Cell::new(None) };
}

/// An instruction set a kernel instance is compiled for, as a value: holding one proves the CPU
/// has the features (only the runtime's dispatch, after detection, can make the SIMD ones), so
/// the safe methods below may execute those instructions.
///
/// Vectors are 16 f32 lanes whatever the ISA (one AVX-512 register, two AVX2 registers, or an
/// array the compiler vectorises as it can), so kernels are written once.
pub trait Isa: Copy + Send + Sync + 'static {
    /// 16 f32 lanes.
    type V: Copy;
    /// Whether the ISA has 32 wide registers (AVX-512): micro-kernels then keep more
    /// accumulators live.
    const WIDE: bool;
    /// `a * b + c`, fused where the ISA has FMA.
    fn fma(self, a: f32, b: f32, c: f32) -> f32;
    /// All lanes zero.
    fn zero(self) -> Self::V;
    /// All lanes `x`.
    fn splat(self, x: f32) -> Self::V;
    /// Loads 16 values.
    fn load(self, src: &[f32; 16]) -> Self::V;
    /// Stores 16 values.
    fn store(self, v: Self::V, dst: &mut [f32; 16]);
    /// Lane-wise `a * b + c`.
    fn vfma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// [`tile::gemm`](crate::cpu::tile::gemm), compiled with this ISA's features once per tile
    /// shape (an outlined function rather than a copy inlined at every call site).
    fn gemm<const M: usize, const K: usize, const N: usize>(
        self,
        a: &Tile<M, K>,
        b: &Tile<K, N>,
        c: &mut Tile<M, N>,
        product: Product,
    );
    /// `dst = src^T`, whole tiles, compiled once per ISA and tile shape.
    fn transpose<const R: usize, const C: usize>(self, src: &Tile<R, C>, dst: &mut Tile<C, R>);
    /// `dst = src` for outputs nothing reads again soon: with AVX-512, non-temporal stores on
    /// dst's 64-byte-aligned lines, which skip reading each line into the cache before writing
    /// it. Copies `min(src.len(), dst.len())` floats.
    #[inline(always)]
    fn stream(self, src: &[f32], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        dst[..n].copy_from_slice(&src[..n]);
    }
}

/// Defines `Isa::gemm` for an ISA as a call of an outlined function, `$outlined`, whose
/// attributes (`#[target_feature]`) the caller gives.
macro_rules! outlined_gemm {
    ($isa:ty, $outlined:ident, $(#[$attr:meta])* ) => {
        $(#[$attr])*
        #[inline(never)]
        fn $outlined<const M: usize, const K: usize, const N: usize>(
            isa: $isa,
            a: &Tile<M, K>,
            b: &Tile<K, N>,
            c: &mut Tile<M, N>,
            product: Product,
        ) {
            crate::cpu::tile::gemm_kernel(isa, a, b, c, product);
        }
    };
}

outlined_gemm!(Portable, gemm_portable,);

/// No SIMD assumed beyond what the compiler does with plain loops.
#[derive(Clone, Copy, Debug, Default)]
pub struct Portable;

/// AVX2 + FMA. Constructed only by [`Avx2::detect`].
#[derive(Clone, Copy, Debug)]
pub struct Avx2 {
    _proof: (),
}

/// AVX-512 (F, VL, BW, DQ) + FMA. Constructed only by [`Avx512::detect`].
#[derive(Clone, Copy, Debug)]
pub struct Avx512 {
    _proof: (),
}

impl Avx2 {
    /// `Some` when this CPU has AVX2 and FMA.
    pub fn detect() -> Option<Avx2> {
        CpuIsa::Avx2.is_available().then_some(Avx2 { _proof: () })
    }
}

impl Avx512 {
    /// `Some` when this CPU has the AVX-512 subsets attnc uses.
    pub fn detect() -> Option<Avx512> {
        CpuIsa::Avx512
            .is_available()
            .then_some(Avx512 { _proof: () })
    }
}

impl Isa for Portable {
    type V = [f32; 16];
    const WIDE: bool = false;
    #[inline(always)]
    fn fma(self, a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
    #[inline(always)]
    fn zero(self) -> Self::V {
        [0.0; 16]
    }
    #[inline(always)]
    fn splat(self, x: f32) -> Self::V {
        [x; 16]
    }
    #[inline(always)]
    fn load(self, src: &[f32; 16]) -> Self::V {
        *src
    }
    #[inline(always)]
    fn store(self, v: Self::V, dst: &mut [f32; 16]) {
        *dst = v;
    }
    #[inline(always)]
    fn vfma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        let mut out = c;
        for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
            *o += x * y;
        }
        out
    }
    #[inline(always)]
    fn gemm<const M: usize, const K: usize, const N: usize>(
        self,
        a: &Tile<M, K>,
        b: &Tile<K, N>,
        c: &mut Tile<M, N>,
        product: Product,
    ) {
        gemm_portable(self, a, b, c, product);
    }
    #[inline(always)]
    fn transpose<const R: usize, const C: usize>(self, src: &Tile<R, C>, dst: &mut Tile<C, R>) {
        crate::cpu::tile::transpose_elements(src, dst, 0, 0);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Avx2, Avx512, Isa};
    use crate::cpu::tile::{Product, Tile};
    use std::arch::x86_64::*;

    outlined_gemm!(Avx2, gemm_avx2, #[target_feature(enable = "avx2,fma")]);
    outlined_gemm!(
        Avx512,
        gemm_avx512,
        #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
    );

    /// `dst = src^T` in 8 x 8 blocks (unpack, shuffle, lane permute: 24 shuffles per block),
    /// element by element at the edges.
    #[target_feature(enable = "avx2,fma")]
    #[inline(never)]
    fn transpose_avx2<const R: usize, const C: usize>(src: &Tile<R, C>, dst: &mut Tile<C, R>) {
        let (rb, cb) = (R / 8 * 8, C / 8 * 8);
        for r0 in (0..rb).step_by(8) {
            for c0 in (0..cb).step_by(8) {
                let rows: [__m256; 8] = std::array::from_fn(|i| {
                    let row: &[f32; 8] = src[r0 + i][c0..c0 + 8].try_into().unwrap_or(&[0.0; 8]);
                    // SAFETY: eight floats behind a reference.
                    unsafe { _mm256_loadu_ps(row.as_ptr()) }
                });
                let cols = transpose8(rows);
                for (j, col) in cols.into_iter().enumerate() {
                    if let Some(out) = dst[c0 + j].get_mut(r0..r0 + 8) {
                        // SAFETY: eight floats behind a mutable reference.
                        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), col) };
                    }
                }
            }
        }
        crate::cpu::tile::transpose_elements(src, dst, rb, cb);
    }

    /// `Isa::stream` with AVX-512: plain copies before dst's first 64-byte boundary and after its
    /// last, non-temporal stores between, then a store fence so the output is visible to other
    /// threads in order once the kernel's join publishes it.
    #[target_feature(enable = "avx512f")]
    #[inline(never)]
    fn stream_avx512(src: &[f32], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let (src, dst) = (&src[..n], &mut dst[..n]);
        let head = dst.as_ptr().align_offset(64).min(n);
        let body = head + (n - head) / 16 * 16;
        dst[..head].copy_from_slice(&src[..head]);
        for (d, s) in dst[head..body]
            .chunks_exact_mut(16)
            .zip(src[head..body].chunks_exact(16))
        {
            // SAFETY: `d` is 16 floats starting on a 64-byte boundary (the chunks start at
            // `head` and step by 64 bytes), `s` is 16 floats.
            unsafe { _mm512_stream_ps(d.as_mut_ptr(), _mm512_loadu_ps(s.as_ptr())) };
        }
        dst[body..].copy_from_slice(&src[body..]);
        _mm_sfence();
    }

    /// The columns of an 8 x 8 block given as 8 rows.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let t = [
            _mm256_unpacklo_ps(r[0], r[1]),
            _mm256_unpackhi_ps(r[0], r[1]),
            _mm256_unpacklo_ps(r[2], r[3]),
            _mm256_unpackhi_ps(r[2], r[3]),
            _mm256_unpacklo_ps(r[4], r[5]),
            _mm256_unpackhi_ps(r[4], r[5]),
            _mm256_unpacklo_ps(r[6], r[7]),
            _mm256_unpackhi_ps(r[6], r[7]),
        ];
        let u = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        [
            _mm256_permute2f128_ps::<0x20>(u[0], u[4]),
            _mm256_permute2f128_ps::<0x20>(u[1], u[5]),
            _mm256_permute2f128_ps::<0x20>(u[2], u[6]),
            _mm256_permute2f128_ps::<0x20>(u[3], u[7]),
            _mm256_permute2f128_ps::<0x31>(u[0], u[4]),
            _mm256_permute2f128_ps::<0x31>(u[1], u[5]),
            _mm256_permute2f128_ps::<0x31>(u[2], u[6]),
            _mm256_permute2f128_ps::<0x31>(u[3], u[7]),
        ]
    }

    /// `Isa::gemm` through an outlined target-feature function.
    macro_rules! call_outlined {
        ($outlined:ident) => {
            #[inline(always)]
            fn gemm<const M: usize, const K: usize, const N: usize>(
                self,
                a: &Tile<M, K>,
                b: &Tile<K, N>,
                c: &mut Tile<M, N>,
                product: Product,
            ) {
                // SAFETY: `self` proves the CPU has the features the function enables.
                unsafe { $outlined(self, a, b, c, product) }
            }
            #[inline(always)]
            fn transpose<const R: usize, const C: usize>(
                self,
                src: &Tile<R, C>,
                dst: &mut Tile<C, R>,
            ) {
                // SAFETY: as above (AVX-512 machines have AVX2 and FMA).
                unsafe { transpose_avx2(src, dst) }
            }
        };
    }

    // SAFETY (every `unsafe` below): an `Avx2` / `Avx512` value exists only after
    // `is_x86_feature_detected!` confirmed the features, and the loads/stores go through
    // references to exactly 16 f32s.

    impl Isa for Avx2 {
        type V = (__m256, __m256);
        const WIDE: bool = false;
        #[inline(always)]
        fn fma(self, a: f32, b: f32, c: f32) -> f32 {
            a.mul_add(b, c)
        }
        #[inline(always)]
        fn zero(self) -> Self::V {
            unsafe { (_mm256_setzero_ps(), _mm256_setzero_ps()) }
        }
        #[inline(always)]
        fn splat(self, x: f32) -> Self::V {
            unsafe { (_mm256_set1_ps(x), _mm256_set1_ps(x)) }
        }
        #[inline(always)]
        fn load(self, src: &[f32; 16]) -> Self::V {
            unsafe {
                (
                    _mm256_loadu_ps(src.as_ptr()),
                    _mm256_loadu_ps(src.as_ptr().add(8)),
                )
            }
        }
        #[inline(always)]
        fn store(self, v: Self::V, dst: &mut [f32; 16]) {
            unsafe {
                _mm256_storeu_ps(dst.as_mut_ptr(), v.0);
                _mm256_storeu_ps(dst.as_mut_ptr().add(8), v.1);
            }
        }
        #[inline(always)]
        fn vfma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V {
            unsafe {
                (
                    _mm256_fmadd_ps(a.0, b.0, c.0),
                    _mm256_fmadd_ps(a.1, b.1, c.1),
                )
            }
        }
        call_outlined!(gemm_avx2);
    }

    impl Isa for Avx512 {
        type V = __m512;
        const WIDE: bool = true;
        #[inline(always)]
        fn fma(self, a: f32, b: f32, c: f32) -> f32 {
            a.mul_add(b, c)
        }
        #[inline(always)]
        fn zero(self) -> Self::V {
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        fn splat(self, x: f32) -> Self::V {
            unsafe { _mm512_set1_ps(x) }
        }
        #[inline(always)]
        fn load(self, src: &[f32; 16]) -> Self::V {
            unsafe { _mm512_loadu_ps(src.as_ptr()) }
        }
        #[inline(always)]
        fn store(self, v: Self::V, dst: &mut [f32; 16]) {
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), v) }
        }
        #[inline(always)]
        fn vfma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn stream(self, src: &[f32], dst: &mut [f32]) {
            // SAFETY: `self` proves the CPU has AVX-512F.
            unsafe { stream_avx512(src, dst) }
        }
        call_outlined!(gemm_avx512);
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod other {
    use super::{Avx2, Avx512, Isa, Portable};
    use crate::cpu::tile::{Product, Tile};
    // Never constructed off x86-64 (`detect` returns None); delegate to the portable code.
    macro_rules! delegate {
        ($t:ty) => {
            impl Isa for $t {
                type V = [f32; 16];
                const WIDE: bool = false;
                fn fma(self, a: f32, b: f32, c: f32) -> f32 {
                    Portable.fma(a, b, c)
                }
                fn zero(self) -> Self::V {
                    Portable.zero()
                }
                fn splat(self, x: f32) -> Self::V {
                    Portable.splat(x)
                }
                fn load(self, s: &[f32; 16]) -> Self::V {
                    Portable.load(s)
                }
                fn store(self, v: Self::V, d: &mut [f32; 16]) {
                    Portable.store(v, d)
                }
                fn vfma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V {
                    Portable.vfma(a, b, c)
                }
                fn gemm<const M: usize, const K: usize, const N: usize>(
                    self,
                    a: &Tile<M, K>,
                    b: &Tile<K, N>,
                    c: &mut Tile<M, N>,
                    product: Product,
                ) {
                    Portable.gemm(a, b, c, product)
                }
                fn transpose<const R: usize, const C: usize>(
                    self,
                    src: &Tile<R, C>,
                    dst: &mut Tile<C, R>,
                ) {
                    Portable.transpose(src, dst)
                }
            }
        };
    }
    delegate!(Avx2);
    delegate!(Avx512);
}
