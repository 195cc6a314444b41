//! ISA dispatch: one kernel program run through a `#[target_feature]` trampoline of the
//! instruction set picked for the process.

use crate::cpu::isa::{Avx2, Avx512, CpuIsa, Isa, Portable};
use crate::cpu::kernel::{Kernel, Phase, PhaseTask, Recurrent, Task};
use crate::error::Result;
use std::marker::PhantomData;

/// One call of a kernel program, runnable with any ISA marker.
pub(crate) trait Job {
    /// Runs the program. Implementations are `inline(always)`: they must be compiled inside the
    /// trampolines' target features, like the kernels they call (else every intrinsic becomes a
    /// call).
    fn run<I: Isa>(self, isa: I) -> Result<()>;
}

/// Kernel `K`'s chunk program on one (batch, head).
pub(super) struct Forward<'a, K>(pub Task<'a>, pub PhantomData<K>);

/// Kernel `K`'s step program on one (batch, head).
pub(super) struct Step<'a, K>(pub Task<'a>, pub PhantomData<K>);

/// One phase of kernel `K`'s chunk-parallel schedule on a run of chunks.
pub(super) struct PhaseRun<'a, K>(pub Phase, pub PhaseTask<'a>, pub PhantomData<K>);

impl<K: Kernel> Job for Forward<'_, K> {
    #[inline(always)]
    fn run<I: Isa>(self, isa: I) -> Result<()> {
        K::forward(isa, self.0)
    }
}

impl<K: Recurrent> Job for Step<'_, K> {
    #[inline(always)]
    fn run<I: Isa>(self, isa: I) -> Result<()> {
        K::step(isa, self.0)
    }
}

impl<K: Recurrent> Job for PhaseRun<'_, K> {
    #[inline(always)]
    fn run<I: Isa>(self, isa: I) -> Result<()> {
        K::phase(isa, self.0, self.1)
    }
}

// The trampolines: the generic kernels are `#[inline(always)]`, so they are compiled here with
// these target features.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
fn run_avx512<J: Job>(isa: Avx512, job: J) -> Result<()> {
    job.run(isa)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_avx2<J: Job>(isa: Avx2, job: J) -> Result<()> {
    job.run(isa)
}

/// The portable variant, outlined like the others: `dispatch` reaches it from three arms, and
/// inlined there it was compiled three times (40% of the LLVM IR of a crate of 10 specs).
#[inline(never)]
fn run_portable<J: Job>(job: J) -> Result<()> {
    job.run(Portable)
}

/// Runs one kernel program with the given ISA variant.
pub(crate) fn dispatch<J: Job>(isa: CpuIsa, job: J) -> Result<()> {
    match isa {
        // SAFETY: the marker exists only if the CPU has the features the trampoline enables.
        #[cfg(target_arch = "x86_64")]
        CpuIsa::Avx512 => match Avx512::detect() {
            Some(m) => unsafe { run_avx512(m, job) },
            None => run_portable(job),
        },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        CpuIsa::Avx2 => match Avx2::detect() {
            Some(m) => unsafe { run_avx2(m, job) },
            None => run_portable(job),
        },
        _ => run_portable(job),
    }
}
