//! Which device runs the kernels, and why.

use crate::error::{Error, Result};
use crate::isa::CpuIsa;

/// Where kernels run. Pick with [`Device::auto`]; print [`Device::describe`] to see why.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Device {
    /// The CPU, with the instruction-set variant the kernels use.
    Cpu {
        /// The kernel variant.
        isa: CpuIsa,
        /// Why this device (and variant) was chosen.
        reason: String,
    },
}

impl Device {
    /// Picks the device: `ATTNC_DEVICE=cpu|cuda` if set, else the best one present.
    ///
    /// This build has no CUDA backend yet, so `auto` picks the CPU and says so;
    /// `ATTNC_DEVICE=cuda` returns an error rather than silently running on the CPU.
    ///
    /// ```
    /// let dev = attnc_runtime::Device::auto().unwrap();
    /// println!("{}", dev.describe());
    /// ```
    pub fn auto() -> Result<Device> {
        match std::env::var("ATTNC_DEVICE").ok().as_deref().map(str::trim) {
            None | Some("") => Device::cpu_because("no CUDA backend in this build (CPU chosen)"),
            Some("cpu") => Device::cpu_because("ATTNC_DEVICE=cpu"),
            Some("cuda") => Err(Error::Device(
                "ATTNC_DEVICE=cuda was asked for but this build of attnc has no CUDA backend; \
                 unset ATTNC_DEVICE or set it to cpu"
                    .into(),
            )),
            Some(other) => Err(Error::Device(format!(
                "ATTNC_DEVICE={other:?} is not a device; use cpu or cuda"
            ))),
        }
    }

    /// The CPU, with the selected instruction-set variant.
    pub fn cpu() -> Result<Device> {
        Device::cpu_because("asked for the CPU")
    }

    fn cpu_because(why: &str) -> Result<Device> {
        let isa = CpuIsa::selected()?;
        let how = if std::env::var("ATTNC_CPU_ISA").is_ok_and(|v| !v.trim().is_empty()) {
            "forced by ATTNC_CPU_ISA".to_string()
        } else {
            let names: Vec<_> = CpuIsa::available().iter().map(|i| i.name()).collect();
            format!("the best this CPU supports of {}", names.join(", "))
        };
        Ok(Device::Cpu {
            isa,
            reason: format!("{why}; {isa} kernels, {how}"),
        })
    }

    /// One line naming the device, the kernel variant, the thread count and the reason.
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu { isa, reason } => format!(
                "CPU ({isa}, {} threads): {reason}",
                rayon::current_num_threads()
            ),
        }
    }
}
