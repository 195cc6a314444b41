//! CUDA: attnc's own statically shaped device tensors, NVRTC compilation through an on-disk PTX
//! cache, and the launches the generated code calls ([`forward_cuda`], [`step_cuda`]).
//!
//! This module is always compiled, so code generated into users' crates builds with or without
//! the `cuda` feature. Without it every constructor returns [`Error::Device`]. With it, cudarc
//! loads the driver (`libcuda`) and NVRTC (`libnvrtc`) at run time: their absence is an error
//! saying what to install, never a panic, and attnc builds on machines without CUDA.
//!
//! ```
//! # mod attnc { pub use attnc_runtime::cuda::CudaDevice; }
//! use attnc::CudaDevice;
//! use dfdx::prelude::*;
//!
//! match CudaDevice::new(0) {
//!     Ok(gpu) => {
//!         let x: Tensor<Rank2<2, 3>, f32, Cpu> = Cpu::default().ones();
//!         let on_gpu = gpu.upload(&x).unwrap();
//!         assert_eq!(on_gpu.download().unwrap().array(), [[1.0; 3]; 2]);
//!     }
//!     Err(e) => println!("no GPU here: {e}"),
//! }
//! ```
//!
//! dfdx 0.13 exposes no public access to its CUDA storage, so GPU tensors are attnc's own
//! [`CudaTensor`]s, converted to and from dfdx CPU tensors explicitly ([`CudaDevice::upload`],
//! [`CudaTensor::download`]).

mod api;
mod cache;
pub mod launch;
mod systems;

#[cfg(feature = "cuda")]
#[path = "driver.rs"]
mod backend;
#[cfg(not(feature = "cuda"))]
#[path = "stub.rs"]
mod backend;

#[cfg(test)]
mod tests;

pub use api::{forward_cuda, step_cuda};
pub use cache::cache_dir;
pub use systems::{
    rpe_forward_cuda, systems_forward_cuda, systems_step_cuda, ConvWeights, CudaExtState, Extras,
};

use crate::check::checked;
use crate::cpu::marshal::contiguous_data;
use crate::error::{Error, Result};
use crate::state::State;
use dfdx::shapes::{Const, Dim, HasShape, Shape};
use dfdx::tensor::{Cpu, Tensor, TensorFromVec};
use std::fmt;
use std::sync::Arc;

/// Why CUDA cannot be used: a short reason (for [`crate::Device::describe`]) and what to do.
#[derive(Clone, Debug)]
pub(crate) struct Unavailable {
    /// What is missing or failed, e.g. "no CUDA driver library (libcuda) found".
    pub(crate) why: String,
    /// What to do about it.
    pub(crate) fix: String,
}

impl Unavailable {
    /// This build has no CUDA backend.
    #[cfg_attr(feature = "cuda", allow(dead_code))]
    pub(crate) fn no_feature() -> Unavailable {
        Unavailable {
            why: "this build of attnc has no CUDA backend (the `cuda` feature is off)".into(),
            fix: "rebuild attnc with its `cuda` feature (on by default)".into(),
        }
    }

    /// The driver library cannot be loaded.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn no_driver() -> Unavailable {
        Unavailable {
            why: "no CUDA driver library (libcuda) found".into(),
            fix: "install the NVIDIA driver to run on a GPU".into(),
        }
    }

    /// NVRTC cannot be loaded.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn no_nvrtc() -> Unavailable {
        Unavailable {
            why: "NVRTC (libnvrtc) not found, so attnc cannot compile its CUDA kernels".into(),
            fix: "install the CUDA toolkit, or `pip install nvidia-cuda-nvrtc-cu12` and put its \
                  nvidia/cuda_nvrtc/lib directory on LD_LIBRARY_PATH"
                .into(),
        }
    }

    /// As an [`Error::Device`].
    pub(crate) fn into_error(self) -> Error {
        Error::Device(format!("{}; {}", self.why, self.fix))
    }
}

/// A CUDA GPU: its context, the stream every attnc operation runs on (the context's default
/// stream, so operations run in the order they are issued), its ordinal, name and architecture.
///
/// Cheap to clone (the context is shared) and usable from any thread.
#[derive(Clone)]
pub struct CudaDevice {
    inner: Arc<Inner>,
    /// The architecture kernels are compiled for: the GPU's own, or an older one chosen with
    /// [`CudaDevice::targeting`].
    target: Arc<str>,
}

struct Inner {
    ordinal: usize,
    name: String,
    arch: String,
    ctx: backend::Ctx,
}

impl fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CudaDevice")
            .field("ordinal", &self.inner.ordinal)
            .field("name", &self.inner.name)
            .field("arch", &self.inner.arch)
            .field("target", &self.target)
            .finish()
    }
}

/// Two handles are equal when they name the same GPU (same ordinal and name) and compile for
/// the same architecture.
impl PartialEq for CudaDevice {
    fn eq(&self, other: &Self) -> bool {
        (self.ordinal(), self.name(), self.arch()) == (other.ordinal(), other.name(), other.arch())
    }
}

impl Eq for CudaDevice {}

impl CudaDevice {
    /// Opens GPU `ordinal` (0 for the first): an error, never a panic, when this build has no
    /// CUDA backend, the driver library is missing, or there is no such device.
    ///
    /// NVRTC is not needed to open a device (only to run kernels).
    pub fn new(ordinal: usize) -> Result<CudaDevice> {
        CudaDevice::open(ordinal).map_err(Unavailable::into_error)
    }

    /// [`CudaDevice::new`] with the reason kept apart from the advice.
    pub(crate) fn open(ordinal: usize) -> std::result::Result<CudaDevice, Unavailable> {
        let opened = backend::open(ordinal)?;
        Ok(CudaDevice {
            target: Arc::from(opened.arch.as_str()),
            inner: Arc::new(Inner {
                ordinal,
                name: opened.name,
                arch: opened.arch,
                ctx: opened.ctx,
            }),
        })
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.inner.ordinal
    }

    /// The device name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The architecture NVRTC compiles for: the GPU's own from its compute capability ("sm_90"
    /// for 9.0), unless this handle was made by [`CudaDevice::targeting`].
    pub fn arch(&self) -> &str {
        &self.target
    }

    /// The GPU's own architecture, from its compute capability ("sm_90" for 9.0).
    pub fn native_arch(&self) -> &str {
        &self.inner.arch
    }

    /// A handle to the same GPU (same context, stream and buffers) whose kernels are compiled
    /// for the older architecture `arch` ("sm_80"), so they are the versions that GPU class
    /// runs: its shared-memory budgets ([`CudaDevice::smem_class`]), and the SIMT products
    /// instead of tensor cores below sm_80. The driver runs PTX of an older architecture on a
    /// newer GPU, so one GPU can test the kernels every class gets.
    ///
    /// `arch` is `sm_` and the compute capability's digits ("sm_75", "sm_86", "sm_90"); an
    /// error when it does not read as one or is newer than the GPU's own.
    ///
    /// ```no_run
    /// # mod attnc { pub use attnc_runtime::cuda::CudaDevice; }
    /// # fn main() -> Result<(), attnc_runtime::Error> {
    /// let h100 = attnc::CudaDevice::new(0)?;
    /// let as_a100 = h100.targeting("sm_80")?; // the kernels an A100 runs, on the H100
    /// assert_eq!(as_a100.smem_class(), attnc_runtime::cuda::launch::SmemClass::Sm80);
    /// # Ok(())
    /// # }
    /// ```
    pub fn targeting(&self, arch: &str) -> Result<CudaDevice> {
        let own = self.native_arch();
        match (plain_arch_number(arch), plain_arch_number(own)) {
            (Some(wanted), Some(have)) if wanted <= have => Ok(CudaDevice {
                inner: Arc::clone(&self.inner),
                target: Arc::from(arch),
            }),
            (Some(_), _) => Err(Error::Device(format!(
                "cannot target {arch} on {} ({own}): PTX runs only on its own architecture \
                 or newer; pick one at or below {own}",
                self.name()
            ))),
            (None, _) => Err(Error::Device(format!(
                "{arch:?} is not an architecture to target: pass `sm_` and the compute \
                 capability's digits, like \"sm_80\""
            ))),
        }
    }

    /// The shared-memory class of the architecture kernels are compiled for ([`Self::arch`]):
    /// which version of each kernel runs (the generated source selects the same one from
    /// `__CUDA_ARCH__`).
    pub fn smem_class(&self) -> launch::SmemClass {
        // The arch is made from the compute capability; an unreadable one gets the smallest
        // budgets, whose kernels fit every GPU.
        launch::SmemClass::of_arch(self.arch()).unwrap_or(launch::SmemClass::Sm75)
    }

    pub(crate) fn ctx(&self) -> &backend::Ctx {
        &self.inner.ctx
    }

    /// Copies a CPU tensor (any layout: permuted and broadcast views are read in logical order)
    /// to the GPU as a contiguous row-major tensor of the same shape.
    ///
    /// With finite checking on ([`crate::set_finite_check`]) a NaN or infinity returns
    /// [`Error::NonFinite`] here: device tensors are not checked again by the CUDA entry points.
    pub fn upload<S: Shape>(&self, t: &Tensor<S, f32, Cpu>) -> Result<CudaTensor<S>> {
        let data = checked("uploaded tensor", contiguous_data(t))?;
        let buf = self.ctx().upload(&data)?;
        Ok(CudaTensor::wrap(buf, *t.shape(), self))
    }

    /// An all-zero tensor of `shape` on the GPU.
    pub fn zeros<S: Shape>(&self, shape: S) -> Result<CudaTensor<S>> {
        let buf = self.ctx().zeros(shape.num_elements())?;
        Ok(CudaTensor::wrap(buf, shape, self))
    }

    /// Copies a CPU state to the GPU.
    pub fn upload_state<B: Dim, H: Dim, const F: usize, const DV: usize>(
        &self,
        st: &State<B, H, F, DV>,
    ) -> Result<CudaState<B, H, F, DV>> {
        Ok(CudaState {
            s: self.upload(&st.s)?,
            z: match &st.z {
                Some(z) => Some(self.upload(z)?),
                None => None,
            },
        })
    }

    /// Milliseconds per run of `f` (`runs` runs, after none: warm up first), measured between
    /// two CUDA events on attnc's stream of this device, so host work between launches counts
    /// only where it delays the GPU. For benchmarks (`attnc-bench --gpu`).
    pub fn time_ms(&self, runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        self.ctx().time_ms(runs, &mut f)
    }

    /// Waits until everything issued on this device has finished, returning any error a kernel
    /// raised asynchronously.
    pub fn synchronize(&self) -> Result<()> {
        self.ctx().synchronize()
    }
}

/// A statically shaped f32 tensor on a GPU, contiguous row-major (the standard layout).
///
/// Made by [`CudaDevice::upload`], [`CudaDevice::zeros`] or the CUDA entry points; read back with
/// [`CudaTensor::download`]. Its memory is freed when it is dropped.
pub struct CudaTensor<S: Shape> {
    buf: backend::Buf,
    shape: S,
    device: CudaDevice,
}

impl<S: Shape> fmt::Debug for CudaTensor<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CudaTensor")
            .field("shape", &self.shape)
            .field("device", &self.device.ordinal())
            .finish()
    }
}

impl<S: Shape> CudaTensor<S> {
    pub(crate) fn wrap(buf: backend::Buf, shape: S, device: &CudaDevice) -> CudaTensor<S> {
        CudaTensor {
            buf,
            shape,
            device: device.clone(),
        }
    }

    pub(crate) fn buf(&self) -> &backend::Buf {
        &self.buf
    }

    /// Its shape.
    pub fn shape(&self) -> &S {
        &self.shape
    }

    /// The GPU it lives on.
    pub fn device(&self) -> &CudaDevice {
        &self.device
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.num_elements()
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies it to a CPU tensor of the same shape (waits for the work that writes it).
    pub fn download(&self) -> Result<Tensor<S, f32, Cpu>> {
        let data = self.device.ctx().download(&self.buf)?;
        Cpu::default()
            .try_tensor_from_vec(data, self.shape)
            .map_err(|e| Error::Tensor(format!("{e:?}")))
    }

    /// A copy on the same GPU.
    pub fn try_clone(&self) -> Result<CudaTensor<S>> {
        let buf = self.device.ctx().copy(&self.buf)?;
        Ok(CudaTensor::wrap(buf, self.shape, &self.device))
    }
}

/// The recurrent state ([`State`]) on a GPU: `S` (B, H, F, DV) and, for `normalize = sum`, `z`
/// (B, H, F). `forward_cuda` returns it and `step_cuda` updates it.
#[derive(Debug)]
pub struct CudaState<B: Dim, H: Dim, const F: usize, const DV: usize> {
    /// `S`, shape (B, H, F, DV).
    pub s: CudaTensor<(B, H, Const<F>, Const<DV>)>,
    /// `z`, shape (B, H, F); `Some` only for `normalize = sum`.
    pub z: Option<CudaTensor<(B, H, Const<F>)>>,
}

impl<B: Dim, H: Dim, const F: usize, const DV: usize> CudaState<B, H, F, DV> {
    /// An all-zero state on `dev`, with `z` when `normalized`.
    pub fn zeros(dev: &CudaDevice, batch: B, heads: H, normalized: bool) -> Result<Self> {
        Ok(CudaState {
            s: dev.zeros((batch, heads, Const::<F>, Const::<DV>))?,
            z: match normalized {
                true => Some(dev.zeros((batch, heads, Const::<F>))?),
                false => None,
            },
        })
    }

    /// Copies the state to the CPU.
    pub fn download(&self) -> Result<State<B, H, F, DV>> {
        Ok(State {
            s: self.s.download()?,
            z: match &self.z {
                Some(z) => Some(z.download()?),
                None => None,
            },
        })
    }

    /// A copy on the same GPU.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(CudaState {
            s: self.s.try_clone()?,
            z: match &self.z {
                Some(z) => Some(z.try_clone()?),
                None => None,
            },
        })
    }

    /// Batch size.
    pub fn batch(&self) -> usize {
        self.s.shape().0.size()
    }

    /// Head count.
    pub fn heads(&self) -> usize {
        self.s.shape().1.size()
    }

    /// The GPU it lives on.
    pub fn device(&self) -> &CudaDevice {
        self.s.device()
    }
}

/// Whether the CUDA driver library (libcuda) can be loaded (always false without the `cuda`
/// feature).
pub fn driver_available() -> bool {
    backend::driver_present()
}

/// Whether NVRTC (libnvrtc) can be loaded (always false without the `cuda` feature).
pub fn nvrtc_available() -> bool {
    backend::nvrtc_present()
}

/// NVRTC's version, (major, minor); an error when NVRTC cannot be loaded.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    backend::nvrtc_version()
}

/// The NVRTC options attnc compiles with for `arch`: IEEE-exact arithmetic (no fast math), so
/// results match the CPU kernels to 1e-4.
pub(crate) fn nvrtc_options(arch: &str) -> Vec<String> {
    vec![format!("--gpu-architecture={arch}"), "-std=c++17".into()]
}

/// The number of a plain architecture name: 80 for "sm_80", 120 for "sm_120"; `None` for
/// anything else (suffixed "sm_90a" runs only on its own GPU, so it cannot be targeted).
fn plain_arch_number(arch: &str) -> Option<u32> {
    let digits = arch.strip_prefix("sm_")?;
    let plain = (2..=3).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit());
    plain.then(|| digits.parse().ok()).flatten()
}

/// Checks that `arch` reads like an NVRTC GPU architecture (`sm_80`, `sm_90a`, `compute_89`).
pub(crate) fn check_arch(arch: &str) -> Result<()> {
    let ok = launch::SmemClass::of_arch(arch).is_some();
    if ok {
        Ok(())
    } else {
        Err(Error::Nvrtc {
            arch: arch.to_string(),
            log: format!(
                "{arch:?} is not a GPU architecture: pass one like \"sm_80\" \
                 (CudaDevice::arch gives a device's)"
            ),
        })
    }
}

/// Compiles CUDA C to PTX for `arch` ("sm_80"), through the on-disk cache ([`cache_dir`]):
/// the PTX is keyed by the source, the architecture, the NVRTC version and the options, so a
/// second call (in any process) reads the file instead of compiling. A cache directory that
/// cannot be created or written is not an error: the source is compiled and the call goes on.
pub fn compile_ptx(source: &str, arch: &str) -> Result<String> {
    cache::compile_in(cache_dir().as_deref(), source, arch)
}

/// Same as [`compile_ptx`], never touching the cache (CI uses it to compile every spec).
///
/// A compile error returns [`Error::Nvrtc`] with NVRTC's log; a missing NVRTC returns
/// [`Error::Device`] saying what to install.
pub fn compile_ptx_uncached(source: &str, arch: &str) -> Result<String> {
    check_arch(arch)?;
    backend::nvrtc_compile(source, arch, &nvrtc_options(arch))
}

/// Compiles like [`compile_ptx_uncached`] with `--ptxas-options=-v` and returns the PTX and
/// NVRTC's log, which for a real architecture (`sm_90`) holds ptxas's report per kernel:
/// registers, spill stores and loads, shared memory. The static gates of the CUDA kernels
/// (tests/ptx_gates.rs) read it; no GPU is needed.
pub fn compile_report(source: &str, arch: &str) -> Result<(String, String)> {
    check_arch(arch)?;
    let mut options = nvrtc_options(arch);
    options.push("--ptxas-options=-v".into());
    backend::nvrtc_compile_with_log(source, arch, &options)
}
