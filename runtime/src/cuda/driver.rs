//! The CUDA backend (feature `cuda`): cudarc, with libcuda and libnvrtc loaded at run time.
//!
//! cudarc panics when a library is missing, so every entry point checks `is_culib_present`
//! first; calls that could meet a library lacking a symbol run under `catch_unwind`.

use super::api::{Params, SystemsBufs, WorkspaceKey};
use super::launch::{CudaLaunch, Grid, KernelInfo};
use super::{CudaDevice, Unavailable};
use crate::error::{Error, Result};
use cudarc::driver::sys::{CUevent_flags, CUfunction_attribute, CUresult};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DriverError, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::{result as nvrtc_result, sys as nvrtc_sys, Ptx};
use std::collections::hash_map::{Entry, HashMap};
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// Dynamic shared memory a kernel may use without opting in.
const DEFAULT_SMEM: u32 = 48 * 1024;
/// The largest grid extent on the y and z axes.
const MAX_GRID_YZ: usize = 65_535;
/// The largest grid extent on the x axis.
const MAX_GRID_X: usize = i32::MAX as usize;

/// Whether libcuda can be loaded (checked once).
pub(crate) fn driver_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: loads the system's CUDA driver library, whose initialisers are sound to run.
    *PRESENT.get_or_init(|| unsafe { cudarc::driver::sys::is_culib_present() })
}

/// Whether libnvrtc can be loaded (checked once).
pub(crate) fn nvrtc_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: loads NVRTC, whose initialisers are sound to run.
    *PRESENT.get_or_init(|| unsafe { nvrtc_sys::is_culib_present() })
}

/// Runs `f`, turning a cudarc panic (a loaded library without a function cudarc asks for) into
/// an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(Error::Cuda(format!(
            "cudarc panicked while {what}: the installed CUDA library lacks a function this \
             build of attnc needs (it is built against CUDA 12.4); update the NVIDIA driver \
             and NVRTC"
        )))
    })
}

/// A driver error as [`Error::Cuda`], saying what was being done.
fn cuda_error(what: &str, e: DriverError) -> Error {
    let hint = match e.0 {
        CUresult::CUDA_ERROR_OUT_OF_MEMORY => "; the GPU is out of memory: use smaller batches",
        _ => "",
    };
    Error::Cuda(format!("{what} failed: {e:?}{hint}"))
}

fn no_nvrtc() -> Error {
    Unavailable::no_nvrtc().into_error()
}

/// NVRTC's version.
pub(crate) fn nvrtc_version() -> Result<(i32, i32)> {
    if !nvrtc_present() {
        return Err(no_nvrtc());
    }
    guarded("asking NVRTC its version", || {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: two valid out-pointers.
        unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }
            .result()
            .map_err(|e| Error::Cuda(format!("nvrtcVersion failed: {e:?}")))?;
        Ok((major, minor))
    })
}

/// Text of a NUL-terminated buffer NVRTC filled.
fn c_text(buf: &[c_char]) -> String {
    let bytes: Vec<u8> = buf
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// An NVRTC program, destroyed on drop.
struct Program(nvrtc_sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by nvrtcCreateProgram and destroyed only here.
        let _ = unsafe { nvrtc_result::destroy_program(self.0) };
    }
}

/// Compiles `source` for `arch` with `options`; NVRTC's own errors carry its log.
///
/// Uses NVRTC's result-level API rather than cudarc's `compile_ptx_with_opts`, which unwraps
/// (a NUL byte in the source, a failing log query).
pub(crate) fn nvrtc_compile(source: &str, arch: &str, options: &[String]) -> Result<String> {
    nvrtc_compile_with_log(source, arch, options).map(|(ptx, _)| ptx)
}

/// As [`nvrtc_compile`], also returning NVRTC's log of a successful compilation (with
/// `--ptxas-options=-v` it holds ptxas's registers, spills and shared memory per kernel).
pub(crate) fn nvrtc_compile_with_log(
    source: &str,
    arch: &str,
    options: &[String],
) -> Result<(String, String)> {
    if !nvrtc_present() {
        return Err(no_nvrtc());
    }
    let fail = |log: String| Error::Nvrtc {
        arch: arch.to_string(),
        log,
    };
    let src =
        CString::new(source).map_err(|_| fail("the CUDA source contains a NUL byte".into()))?;
    if options.iter().any(|o| o.contains('\0')) {
        return Err(fail("an NVRTC option contains a NUL byte".into()));
    }
    guarded("compiling with NVRTC", || {
        let prog = nvrtc_result::create_program(&src, Some(c"attnc.cu"))
            .map_err(|e| fail(format!("nvrtcCreateProgram failed: {e:?}")))?;
        let prog = Program(prog);
        // SAFETY: `prog` is live until `Program` drops it, after these calls.
        let compiled = unsafe { nvrtc_result::compile_program(prog.0, options) };
        // SAFETY: as above.
        let log = unsafe { nvrtc_result::get_program_log(prog.0) }
            .map(|l| c_text(&l))
            .unwrap_or_default();
        if let Err(e) = compiled {
            return Err(fail(format!("{e:?}\n{log}")));
        }
        // SAFETY: as above; the program compiled.
        let ptx = unsafe { nvrtc_result::get_ptx(prog.0) }
            .map_err(|e| fail(format!("nvrtcGetPTX failed: {e:?}\n{log}")))?;
        let ptx = c_text(&ptx);
        if ptx.trim().is_empty() {
            return Err(fail(format!("NVRTC returned no PTX\n{log}")));
        }
        Ok((ptx, log))
    })
}

/// A device's context, the stream attnc uses on it, and a one-float buffer passed for unused
/// pointer parameters.
pub(crate) struct Ctx {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    dummy: CudaSlice<f32>,
    /// Workspaces of recent calls, by their key, for the next call of the same shape.
    workspaces: Mutex<Vec<(WorkspaceKey, [Buf; 4])>>,
}

/// Workspaces kept per device: the shapes of a few recent calls (a model's layers share one).
const CACHED_WORKSPACES: usize = 8;

/// A device buffer of `len` floats (at least one is allocated: CUDA refuses empty allocations).
pub(crate) struct Buf {
    slice: CudaSlice<f32>,
    len: usize,
}

/// An opened device.
pub(crate) struct Opened {
    pub(crate) ctx: Ctx,
    pub(crate) name: String,
    pub(crate) arch: String,
}

/// Opens device `ordinal` (its primary context), or says why it cannot be used.
pub(crate) fn open(ordinal: usize) -> std::result::Result<Opened, Unavailable> {
    if !driver_present() {
        return Err(Unavailable::no_driver());
    }
    let generic = |e: Error| Unavailable {
        why: format!("CUDA device {ordinal} could not be opened ({e})"),
        fix: "check the NVIDIA driver installation (nvidia-smi)".into(),
    };
    if i32::try_from(ordinal).is_err() {
        return Err(Unavailable {
            why: format!("there is no CUDA device {ordinal}"),
            fix: "pick a device ordinal below the device count".into(),
        });
    }
    let opened = guarded("opening the CUDA device", || {
        Ok(CudaContext::new(ordinal).map_err(|e| context_error(ordinal, e)))
    })
    .map_err(generic)?;
    let ctx = opened?;
    let described = guarded("reading the CUDA device's properties", || {
        let name = ctx
            .name()
            .map_err(|e| cuda_error("reading the device name", e))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| cuda_error("reading the compute capability", e))?;
        // SAFETY: attnc issues everything on the one (default) stream, so buffers need no
        // cross-stream events; turning tracking off saves two events per allocation.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let dummy = stream
            .alloc_zeros::<f32>(1)
            .map_err(|e| cuda_error("allocating on the GPU", e))?;
        Ok((name, format!("sm_{major}{minor}"), stream, dummy))
    });
    let (name, arch, stream, dummy) = described.map_err(generic)?;
    Ok(Opened {
        ctx: Ctx {
            ctx,
            stream,
            dummy,
            workspaces: Mutex::new(Vec::new()),
        },
        name,
        arch,
    })
}

/// Why `CudaContext::new(ordinal)` failed, in words.
fn context_error(ordinal: usize, e: DriverError) -> Unavailable {
    match e.0 {
        CUresult::CUDA_ERROR_NO_DEVICE => Unavailable {
            why: "the CUDA driver sees no GPU (CUDA_ERROR_NO_DEVICE)".into(),
            fix: "check that a GPU is attached and that CUDA_VISIBLE_DEVICES does not hide it"
                .into(),
        },
        CUresult::CUDA_ERROR_INVALID_DEVICE => {
            let count = CudaContext::device_count()
                .map(|c| format!("{c} visible"))
                .unwrap_or_else(|_| "device count unknown".into());
            Unavailable {
                why: format!("there is no CUDA device {ordinal} ({count})"),
                fix: "pick a device ordinal below the device count".into(),
            }
        }
        _ => Unavailable {
            why: format!("CUDA device {ordinal} could not be opened ({e:?})"),
            fix: "check the NVIDIA driver installation (nvidia-smi)".into(),
        },
    }
}

impl Ctx {
    /// Copies `data` to a new buffer.
    pub(crate) fn upload(&self, data: &[f32]) -> Result<Buf> {
        if data.is_empty() {
            return self.zeros(0);
        }
        let slice = self
            .stream
            .clone_htod(data)
            .map_err(|e| cuda_error("copying to the GPU", e))?;
        Ok(Buf {
            slice,
            len: data.len(),
        })
    }

    /// A zeroed buffer of `len` floats.
    pub(crate) fn zeros(&self, len: usize) -> Result<Buf> {
        let slice = self
            .stream
            .alloc_zeros::<f32>(len.max(1))
            .map_err(|e| cuda_error(&format!("allocating {len} floats on the GPU"), e))?;
        Ok(Buf { slice, len })
    }

    /// The four workspaces (`chunk_s`, `chunk_z`, `work`, `scratch`) of a call, `key` floats
    /// long: a cached set when an earlier call returned one of these lengths, else new
    /// allocations. Not zeroed: every kernel writes a workspace before reading it (the host
    /// emulation fills them with NaN to check exactly that).
    pub(crate) fn take_workspaces(&self, key: WorkspaceKey) -> Result<[Buf; 4]> {
        let mut cache = self
            .workspaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = cache.iter().position(|(k, _)| *k == key) {
            return Ok(cache.swap_remove(i).1);
        }
        drop(cache);
        let alloc = |len: usize| -> Result<Buf> {
            // SAFETY: the memory is left unset; the kernels write every workspace float they
            // read before reading it (see above), and nothing else reads these buffers.
            let slice = unsafe { self.stream.alloc::<f32>(len.max(1)) }
                .map_err(|e| cuda_error(&format!("allocating {len} floats on the GPU"), e))?;
            Ok(Buf { slice, len })
        };
        Ok([
            alloc(key[0])?,
            alloc(key[1])?,
            alloc(key[2])?,
            alloc(key[3])?,
        ])
    }

    /// Keeps a call's workspaces for the next call of the same lengths (the oldest beyond
    /// [`CACHED_WORKSPACES`] are freed).
    pub(crate) fn give_back_workspaces(&self, key: WorkspaceKey, bufs: [Buf; 4]) {
        let mut cache = self
            .workspaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        cache.push((key, bufs));
        if cache.len() > CACHED_WORKSPACES {
            cache.remove(0);
        }
    }

    /// Copies a buffer to the host, after the work issued before.
    pub(crate) fn download(&self, buf: &Buf) -> Result<Vec<f32>> {
        if buf.len == 0 {
            return Ok(Vec::new());
        }
        let view = buf.slice.try_slice(..buf.len).ok_or(Error::Internal(
            "a device buffer is shorter than its length",
        ))?;
        let data = self
            .stream
            .clone_dtoh(&view)
            .map_err(|e| cuda_error("copying from the GPU", e))?;
        self.synchronize()?;
        Ok(data)
    }

    /// A copy of a buffer, on the device.
    pub(crate) fn copy(&self, buf: &Buf) -> Result<Buf> {
        let slice = self
            .stream
            .clone_dtod(&buf.slice)
            .map_err(|e| cuda_error("copying on the GPU", e))?;
        Ok(Buf {
            slice,
            len: buf.len,
        })
    }

    /// Waits for everything issued on the stream.
    pub(crate) fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| cuda_error("synchronising the GPU", e))
    }

    /// Milliseconds per run of `f` on this device's stream, `runs` runs between two CUDA events.
    pub(crate) fn time_ms(&self, runs: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let event = |what| move |e| cuda_error(what, e);
        let start = self
            .stream
            .record_event(flags)
            .map_err(event("recording a CUDA event"))?;
        for _ in 0..runs {
            f()?;
        }
        let end = self
            .stream
            .record_event(flags)
            .map_err(event("recording a CUDA event"))?;
        let ms = start
            .elapsed_ms(&end)
            .map_err(event("reading a CUDA event's time"))?;
        Ok(f64::from(ms) / runs.max(1) as f64)
    }

    /// Launches `kernels` in order on `bh` (batch x heads) and `n` tokens with `p` as their
    /// parameters. Grids and int parameters are checked before anything is launched.
    pub(crate) fn run(
        &self,
        dev: &CudaDevice,
        source: &'static str,
        launch: &CudaLaunch,
        kernels: &[KernelInfo],
        (bh, n, heads): (usize, usize, usize),
        p: Params<'_>,
    ) -> Result<()> {
        if bh == 0 || kernels.is_empty() {
            return Ok(());
        }
        if !(1..=1024).contains(&launch.threads) {
            return Err(Error::Internal(
                "a spec's CUDA block size is not in 1..=1024",
            ));
        }
        let n_arg = i32::try_from(n).map_err(|_| {
            Error::Cuda(format!(
                "N = {n} tokens does not fit the kernels' int parameter; split the sequence"
            ))
        })?;
        let heads_arg = i32::try_from(heads).map_err(|_| {
            Error::Cuda(format!(
                "{heads} heads do not fit the kernels' int parameter"
            ))
        })?;
        let grids = kernels
            .iter()
            .map(|k| grid(launch, k, bh, n))
            .collect::<Result<Vec<_>>>()?;
        let functions = self.functions(dev, source, kernels)?;

        let Params {
            q,
            k,
            v,
            beta,
            g,
            proj,
            out,
            s,
            mut z,
            chunk_s,
            chunk_z,
            work,
            scratch,
            systems,
        } = p;
        let SystemsBufs {
            conv,
            mut tails,
            mut mom_s,
            mut mom_z,
        } = systems;
        let beta = beta.map_or(&self.dummy, |b| &b.slice);
        let g = g.map_or(&self.dummy, |b| &b.slice);
        let proj = proj.map_or(&self.dummy, |b| &b.slice);
        for ((kernel, function), grid) in kernels.iter().zip(&functions).zip(grids) {
            let cfg = LaunchConfig {
                grid_dim: grid,
                block_dim: (launch.threads, 1, 1),
                shared_mem_bytes: kernel.smem_bytes,
            };
            let mut args = self.stream.launch_builder(function);
            args.arg(&q.slice)
                .arg(&k.slice)
                .arg(&v.slice)
                .arg(beta)
                .arg(g)
                .arg(proj)
                .arg(&mut out.slice)
                .arg(&mut s.slice);
            match z.as_deref_mut() {
                Some(z) => args.arg(&mut z.slice),
                None => args.arg(&self.dummy),
            };
            args.arg(&mut chunk_s.slice)
                .arg(&mut chunk_z.slice)
                .arg(&mut work.slice)
                .arg(&mut scratch.slice);
            match conv {
                Some([cq, ck, cv]) => args.arg(&cq.slice).arg(&ck.slice).arg(&cv.slice),
                None => args.arg(&self.dummy).arg(&self.dummy).arg(&self.dummy),
            };
            match tails.as_mut() {
                Some([tq, tk, tv]) => args
                    .arg(&mut tq.slice)
                    .arg(&mut tk.slice)
                    .arg(&mut tv.slice),
                None => args.arg(&self.dummy).arg(&self.dummy).arg(&self.dummy),
            };
            for buf in [mom_s.as_deref_mut(), mom_z.as_deref_mut()] {
                match buf {
                    Some(b) => args.arg(&mut b.slice),
                    None => args.arg(&self.dummy),
                };
            }
            args.arg(&n_arg).arg(&heads_arg);
            // SAFETY: the arguments are the parameter list every attnc kernel has (`attnc_codegen::abi`):
            // twenty-one float pointers, then `int n, int heads`. Inputs hold their shapes' floats;
            // out, s and z were allocated for the problem's sizes, the workspaces with
            // `CudaLaunch::workspace` for these kernels, and the dummy stands only for
            // parameters the spec does not use.
            unsafe { args.launch(cfg) }
                .map_err(|e| cuda_error(&format!("launching kernel `{}`", kernel.name), e))?;
        }
        Ok(())
    }

    /// The kernels' functions: the module is compiled and loaded once per process, device and
    /// source (the cache holds it, and so the context, for the life of the process).
    fn functions(
        &self,
        dev: &CudaDevice,
        source: &'static str,
        kernels: &[KernelInfo],
    ) -> Result<Vec<Arc<CudaFunction>>> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| cuda_error("binding the CUDA context", e))?;
        let key = (
            dev.ordinal(),
            Arc::clone(&dev.target),
            source.as_ptr() as usize,
            source.len(),
        );
        // The lock is held while compiling so that threads wanting the same module wait for
        // one compilation rather than each running NVRTC.
        let mut modules = modules().lock().unwrap_or_else(PoisonError::into_inner);
        let loaded = match modules.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(Loaded {
                module: self.load_module(source, dev.arch())?,
                functions: HashMap::new(),
            }),
        };
        kernels.iter().map(|k| loaded.function(k)).collect()
    }

    /// Compiles (through the PTX cache) and loads `source`.
    fn load_module(&self, source: &str, arch: &str) -> Result<Arc<CudaModule>> {
        let ptx = super::compile_ptx(source, arch)?;
        if ptx.contains('\0') {
            return Err(Error::Internal("NVRTC's PTX contains a NUL byte"));
        }
        guarded("loading PTX", || {
            self.ctx
                .load_module(Ptx::from_src(ptx))
                .map_err(module_error)
        })
    }
}

/// A module load failure, with the usual cause when the driver rejects the PTX.
fn module_error(e: DriverError) -> Error {
    match e.0 {
        CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION
        | CUresult::CUDA_ERROR_INVALID_PTX
        | CUresult::CUDA_ERROR_NO_BINARY_FOR_GPU => {
            let nvrtc = nvrtc_version()
                .map(|(a, b)| format!("{a}.{b}"))
                .unwrap_or_else(|_| "?".into());
            let mut driver = 0;
            // SAFETY: one valid out-pointer; the driver library is loaded.
            let driver = match unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) } {
                CUresult::CUDA_SUCCESS => format!("{}.{}", driver / 1000, driver % 1000 / 10),
                _ => "?".into(),
            };
            Error::Cuda(format!(
                "the NVIDIA driver (CUDA {driver}) cannot load the PTX NVRTC {nvrtc} made \
                 ({e:?}); use an NVRTC no newer than the driver, or update the driver"
            ))
        }
        _ => cuda_error("loading the kernels' PTX", e),
    }
}

/// The grid of `kernel`, checked against CUDA's limits before `CudaLaunch::grid` (which
/// narrows to u32) computes it.
pub(crate) fn grid(
    launch: &CudaLaunch,
    kernel: &KernelInfo,
    bh: usize,
    n: usize,
) -> Result<(u32, u32, u32)> {
    let (x, y) = match kernel.grid {
        Grid::Chunks | Grid::ChunkColumns(_) => (launch.chunks(n), bh),
        Grid::Columns(blocks) => (blocks as usize, bh),
        Grid::Heads => (bh, 1),
    };
    if x == 0 {
        return Err(Error::Internal("a CUDA kernel's grid has no blocks"));
    }
    if y > MAX_GRID_YZ {
        return Err(Error::Cuda(format!(
            "batch x heads = {bh} is more than the {MAX_GRID_YZ} blocks CUDA allows on a grid's \
             y axis (kernel `{}`); split the batch into calls with batch x heads <= {MAX_GRID_YZ}",
            kernel.name
        )));
    }
    if x > MAX_GRID_X {
        return Err(Error::Cuda(format!(
            "kernel `{}` would need {x} blocks, more than CUDA allows; split the call",
            kernel.name
        )));
    }
    Ok(launch.grid(kernel, bh, n))
}

/// A loaded module and the functions taken from it, with the dynamic shared memory each was
/// opted in to.
struct Loaded {
    module: Arc<CudaModule>,
    functions: HashMap<&'static str, (Arc<CudaFunction>, u32)>,
}

impl Loaded {
    fn function(&mut self, k: &KernelInfo) -> Result<Arc<CudaFunction>> {
        let (function, smem) = match self.functions.entry(k.name) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                if k.name.contains('\0') {
                    return Err(Error::Internal("a kernel name contains a NUL byte"));
                }
                let f = self.module.load_function(k.name).map_err(|err| {
                    cuda_error(&format!("finding kernel `{}` in the module", k.name), err)
                })?;
                e.insert((Arc::new(f), DEFAULT_SMEM))
            }
        };
        if k.smem_bytes > *smem {
            let bytes = i32::try_from(k.smem_bytes)
                .map_err(|_| Error::Internal("a kernel's shared memory size overflows i32"))?;
            function
                .set_attribute(
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    bytes,
                )
                .map_err(|e| {
                    Error::Cuda(format!(
                        "kernel `{}` needs {} bytes of shared memory, more than this GPU \
                         allows ({e:?}); the spec's chunk or head dims are too large for it",
                        k.name, k.smem_bytes
                    ))
                })?;
            *smem = k.smem_bytes;
        }
        Ok(function.clone())
    }
}

/// Loaded modules by (device ordinal, target architecture, address and length of the
/// `'static` source).
type ModuleKey = (usize, Arc<str>, usize, usize);

fn modules() -> &'static Mutex<HashMap<ModuleKey, Loaded>> {
    static MODULES: OnceLock<Mutex<HashMap<ModuleKey, Loaded>>> = OnceLock::new();
    MODULES.get_or_init(|| Mutex::new(HashMap::new()))
}
