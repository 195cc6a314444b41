//! CPU instruction-set variants. Generated kernels are generic over an [`Isa`] marker; the
//! runtime instantiates each under `#[target_feature]` and picks one per process, once.

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
        CpuIsa::ALL.into_iter().filter(|i| i.is_available()).collect()
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

/// Compile-time marker for the instruction set a kernel instance is built for.
pub trait Isa: Copy + Send + Sync + 'static {
    /// `a * b + c`, fused where the ISA has FMA (so it vectorises to vfmadd).
    fn fma(a: f32, b: f32, c: f32) -> f32;
}

/// Marker: no FMA assumed.
#[derive(Clone, Copy, Debug)]
pub struct Portable;
/// Marker: AVX2 + FMA.
#[derive(Clone, Copy, Debug)]
pub struct Avx2;
/// Marker: AVX-512.
#[derive(Clone, Copy, Debug)]
pub struct Avx512;

impl Isa for Portable {
    #[inline(always)]
    fn fma(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

impl Isa for Avx2 {
    #[inline(always)]
    fn fma(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

impl Isa for Avx512 {
    #[inline(always)]
    fn fma(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}
