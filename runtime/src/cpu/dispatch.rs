//! ISA dispatch: one kernel program run through a `#[target_feature]` trampoline of the
//! instruction set picked for the process.

use crate::cpu::isa::{Avx2, Avx512, CpuIsa, Isa, Portable};
use crate::cpu::kernel::{Kernel, Phase, PhaseTask, Task};
use crate::error::Result;

/// One call of a kernel program.
pub(super) enum Job<'a> {
    Forward(Task<'a>),
    Step(Task<'a>),
    Phase(Phase, PhaseTask<'a>),
}

/// `inline(always)`: it must be compiled inside the trampolines' target features, like the
/// kernels it calls (else every intrinsic becomes a call).
#[inline(always)]
fn run_program<K: Kernel, I: Isa>(isa: I, job: Job<'_>) -> Result<()> {
    match job {
        Job::Forward(task) => K::forward(isa, task),
        Job::Step(task) => K::step(isa, task),
        Job::Phase(phase, task) => K::phase(isa, phase, task),
    }
}

// The trampolines: the generic kernels are `#[inline(always)]`, so they are compiled here with
// these target features.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
fn run_avx512<K: Kernel>(isa: Avx512, job: Job<'_>) -> Result<()> {
    run_program::<K, _>(isa, job)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_avx2<K: Kernel>(isa: Avx2, job: Job<'_>) -> Result<()> {
    run_program::<K, _>(isa, job)
}

/// The portable variant, outlined like the others: `dispatch` reaches it from three arms, and
/// inlined there it was compiled three times (40% of the LLVM IR of a crate of 10 specs).
#[inline(never)]
fn run_portable<K: Kernel>(job: Job<'_>) -> Result<()> {
    run_program::<K, _>(Portable, job)
}

/// Runs one kernel program with the given ISA variant.
pub(super) fn dispatch<K: Kernel>(isa: CpuIsa, job: Job<'_>) -> Result<()> {
    match isa {
        // SAFETY: the marker exists only if the CPU has the features the trampoline enables.
        #[cfg(target_arch = "x86_64")]
        CpuIsa::Avx512 => match Avx512::detect() {
            Some(m) => unsafe { run_avx512::<K>(m, job) },
            None => run_portable::<K>(job),
        },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        CpuIsa::Avx2 => match Avx2::detect() {
            Some(m) => unsafe { run_avx2::<K>(m, job) },
            None => run_portable::<K>(job),
        },
        _ => run_portable::<K>(job),
    }
}
