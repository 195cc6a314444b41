//! Which device runs the kernels, and why.

use crate::cpu::CpuIsa;
use crate::cuda::{self, CudaDevice, Unavailable};
use crate::error::{Error, Result};

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
    /// A CUDA GPU (with a driver and NVRTC to compile the kernels).
    Cuda {
        /// The GPU.
        device: CudaDevice,
        /// Why this device was chosen.
        reason: String,
    },
}

impl Device {
    /// Picks the device: `ATTNC_DEVICE=cpu|cuda|cuda:N` if set, else the first CUDA GPU when a
    /// driver, a device and NVRTC are usable, else the CPU, saying why.
    ///
    /// Absence of CUDA is never a panic: unset, it picks the CPU and says what was missing;
    /// `ATTNC_DEVICE=cuda` returns an error saying why CUDA cannot be used rather than silently
    /// running on the CPU.
    ///
    /// ```
    /// # use attnc_runtime as attnc;
    /// let dev = attnc::Device::auto().unwrap();
    /// println!("{}", dev.describe());
    /// ```
    pub fn auto() -> Result<Device> {
        let choice = std::env::var("ATTNC_DEVICE").ok();
        match choice.as_deref().map(str::trim) {
            None | Some("") => match Device::usable_cuda(0) {
                Ok(device) => Ok(Device::Cuda {
                    device,
                    reason: "a CUDA driver, GPU and NVRTC are present (GPU chosen; \
                             ATTNC_DEVICE=cpu forces the CPU)"
                        .into(),
                }),
                Err(u) => Device::cpu_because(&format!("{} (CPU chosen)", u.why)),
            },
            Some("cpu") => Device::cpu_because("ATTNC_DEVICE=cpu"),
            Some(cuda) if cuda == "cuda" || cuda.starts_with("cuda:") => {
                let ordinal = match cuda.strip_prefix("cuda:") {
                    None => 0,
                    Some(n) => n.trim().parse::<usize>().map_err(|_| {
                        Error::Device(format!(
                            "ATTNC_DEVICE={cuda:?} is not a device; use cpu, cuda or cuda:N \
                             with N a GPU ordinal"
                        ))
                    })?,
                };
                match Device::usable_cuda(ordinal) {
                    Ok(device) => Ok(Device::Cuda {
                        device,
                        reason: format!("ATTNC_DEVICE={cuda}"),
                    }),
                    Err(u) => Err(Error::Device(format!(
                        "ATTNC_DEVICE={cuda} was asked for but {}; {}, or unset ATTNC_DEVICE \
                         (or set it to cpu) to use the CPU",
                        u.why, u.fix
                    ))),
                }
            }
            Some(other) => Err(Error::Device(format!(
                "ATTNC_DEVICE={other:?} is not a device; use cpu, cuda or cuda:N"
            ))),
        }
    }

    /// The CPU, with the selected instruction-set variant.
    pub fn cpu() -> Result<Device> {
        Device::cpu_because("asked for the CPU")
    }

    /// CUDA GPU `ordinal`: an error saying why when there is no CUDA backend, driver, such
    /// device or NVRTC (needed to compile the kernels).
    pub fn cuda(ordinal: usize) -> Result<Device> {
        let device = Device::usable_cuda(ordinal).map_err(Unavailable::into_error)?;
        Ok(Device::Cuda {
            device,
            reason: format!("asked for CUDA device {ordinal}"),
        })
    }

    /// The GPU, if this is one.
    pub fn cuda_device(&self) -> Option<&CudaDevice> {
        match self {
            Device::Cuda { device, .. } => Some(device),
            Device::Cpu { .. } => None,
        }
    }

    /// GPU `ordinal` if it can run kernels: it opens and NVRTC loads.
    fn usable_cuda(ordinal: usize) -> std::result::Result<CudaDevice, Unavailable> {
        let device = CudaDevice::open(ordinal)?;
        if !cuda::nvrtc_available() {
            return Err(Unavailable::no_nvrtc());
        }
        Ok(device)
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

    /// One line naming the device and the reason: for the CPU the kernel variant and thread
    /// count, for a GPU its ordinal, name and architecture.
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu { isa, reason } => format!(
                "CPU ({isa}, {} threads): {reason}",
                rayon::current_num_threads()
            ),
            Device::Cuda { device, reason } => format!(
                "CUDA device {} ({}, {}): {reason}",
                device.ordinal(),
                device.name(),
                device.arch()
            ),
        }
    }
}
