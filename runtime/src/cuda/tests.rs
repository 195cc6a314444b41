//! Tests of the CUDA module that run without a GPU: device selection and its errors, NVRTC
//! (skipped, with `SKIP:`, when libnvrtc cannot be loaded unless `ATTNC_REQUIRE_NVRTC=1`), the
//! PTX cache, and the argument checks of the entry points.
//!
//! Tests that need environment variables run in a child process (this test binary, asked for
//! one test), so they never race the others.

use super::api::{check_forward, check_step, ForwardShapes, StepShapes};
use super::cache::{cache_dir_from, cached, compile_in, key};
use super::launch::{ClassKernels, CudaLaunch, Grid, KernelInfo, SmemClass};
use super::*;
use crate::cpu::marshal::contiguous_data;
use crate::Device;
use attnc_codegen::abi::{Layout, Signature};
use dfdx::shapes::Rank3;
use dfdx::tensor::{AsArray, Cpu, TensorFrom};
use dfdx::tensor_ops::{BroadcastTo, PermuteTo};
use std::borrow::Cow;
use std::cell::Cell;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

/// Set in the child processes [`run_child`] starts.
const CHILD: &str = "ATTNC_RUNTIME_TEST_CHILD";

/// Runs test `name` (its path under `cuda::tests`) of this binary alone in a child process with
/// `env` applied (`None`: removed); panics with the child's output if it fails.
fn run_child(name: &str, env: &[(&str, Option<&str>)]) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = Command::new(exe);
    cmd.args([
        &format!("cuda::tests::{name}"),
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD, "1");
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = cmd.output().expect("run the test binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "child test {name} with {env:?} failed:\n{text}"
    );
    assert!(
        text.contains("1 passed"),
        "child test {name} did not run:\n{text}"
    );
    print!("{text}");
}

fn in_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

/// Whether NVRTC tests can run: prints `SKIP: ...` and returns false when libnvrtc cannot be
/// loaded, unless `ATTNC_REQUIRE_NVRTC=1`, which makes that a failure.
fn nvrtc_or_skip(test: &str) -> bool {
    if nvrtc_available() {
        return true;
    }
    if std::env::var("ATTNC_REQUIRE_NVRTC").is_ok_and(|v| v.trim() == "1") {
        panic!(
            "{test}: ATTNC_REQUIRE_NVRTC=1 but NVRTC cannot be loaded (cuda feature on: {}); \
             put libnvrtc's directory on LD_LIBRARY_PATH",
            cfg!(feature = "cuda")
        );
    }
    println!("SKIP: {test}: NVRTC (libnvrtc) cannot be loaded");
    false
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir =
            std::env::temp_dir().join(format!("attnc-test-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }

    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .expect("read the temp dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A kernel with the parameter list every attnc kernel has (`attnc_codegen::abi`).
const TINY: &str = r#"
extern "C" __global__ void attnc_tiny(
    const float* q, const float* k, const float* v, const float* beta, const float* g,
    const float* proj, float* out, float* s, float* z, float* chunk_s, float* chunk_z,
    float* work, float* scratch, const float* conv_q, const float* conv_k,
    const float* conv_v, float* tail_q, float* tail_k, float* tail_v, float* mom_s,
    float* mom_z, int n, int heads)
{
    extern __shared__ float tile[];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        tile[threadIdx.x] = q[i] * k[i] + expf(v[i]);
        __syncthreads();
        out[i] = tile[threadIdx.x] / (float)heads;
    }
}
"#;

const BROKEN: &str = r#"
extern "C" __global__ void attnc_broken(float* out) { out[0] = attnc_undefined_name; }
"#;

// ---------------------------------------------------------------------------------------------
// Devices

#[test]
fn attnc_device_variable_in_child_processes() {
    for value in [
        None,
        Some(""),
        Some("cpu"),
        Some("cuda"),
        Some("cuda:7"),
        Some("cuda:x"),
        Some("tpu"),
    ] {
        run_child("device_choice_child", &[("ATTNC_DEVICE", value)]);
    }
}

/// Runs only in a child of [`attnc_device_variable_in_child_processes`]: checks `Device::auto`
/// against the `ATTNC_DEVICE` it was given.
#[test]
fn device_choice_child() {
    if !in_child() {
        return;
    }
    let value = std::env::var("ATTNC_DEVICE").unwrap_or_default();
    let gpu_usable = CudaDevice::new(0).is_ok() && nvrtc_available();
    let result = Device::auto();
    println!("ATTNC_DEVICE={value:?}: {result:?}");
    match value.trim() {
        "" => match result.expect("auto never fails without ATTNC_DEVICE") {
            Device::Cpu { reason, .. } => {
                assert!(!gpu_usable, "a usable GPU was passed over: {reason}");
                assert!(reason.contains("CUDA"), "{reason}");
                assert!(reason.contains("(CPU chosen)"), "{reason}");
                if !driver_available() {
                    let why = match cfg!(feature = "cuda") {
                        true => "no CUDA driver library (libcuda) found (CPU chosen)",
                        false => "the `cuda` feature is off",
                    };
                    assert!(reason.contains(why), "{reason}");
                }
            }
            Device::Cuda { device, .. } => {
                assert!(gpu_usable);
                assert_eq!(device.ordinal(), 0);
            }
        },
        "cpu" => {
            let dev = result.expect("ATTNC_DEVICE=cpu");
            assert!(matches!(dev, Device::Cpu { .. }));
            assert!(dev.describe().contains("ATTNC_DEVICE=cpu"));
        }
        "cuda" => match result {
            Ok(dev) => {
                assert!(gpu_usable);
                assert!(dev.describe().starts_with("CUDA device 0 ("));
            }
            Err(Error::Device(msg)) => {
                assert!(!gpu_usable);
                assert!(msg.contains("ATTNC_DEVICE=cuda was asked for but"), "{msg}");
                if !driver_available() && cfg!(feature = "cuda") {
                    assert!(msg.contains("libcuda"), "{msg}");
                }
            }
            Err(e) => panic!("expected Error::Device, got {e:?}"),
        },
        "cuda:7" => {
            if let Err(e) = result {
                assert!(matches!(e, Error::Device(_)), "{e:?}");
            }
        }
        "cuda:x" | "tpu" => {
            let e = result.expect_err("not a device");
            assert!(
                matches!(&e, Error::Device(m) if m.contains("is not a device")),
                "{e:?}"
            );
        }
        other => panic!("unexpected ATTNC_DEVICE={other:?}"),
    }
}

#[test]
fn opening_a_gpu_errs_cleanly_without_one() {
    let opened = CudaDevice::new(0);
    println!("CudaDevice::new(0): {opened:?}");
    match opened {
        Ok(dev) => {
            assert!(dev.arch().starts_with("sm_"));
            assert!(driver_available());
        }
        Err(Error::Device(msg)) => {
            if !cfg!(feature = "cuda") {
                assert!(msg.contains("the `cuda` feature is off"), "{msg}");
            } else if !driver_available() {
                assert!(
                    msg.contains("no CUDA driver library (libcuda) found"),
                    "{msg}"
                );
                assert!(msg.contains("install the NVIDIA driver"), "{msg}");
            }
        }
        Err(e) => panic!("expected Error::Device, got {e:?}"),
    }
    // A huge ordinal never panics either.
    let far = CudaDevice::new(usize::MAX);
    assert!(matches!(far, Err(Error::Device(_))), "{far:?}");
    match Device::cuda(0) {
        Ok(dev) => assert!(dev.cuda_device().is_some()),
        Err(e) => assert!(matches!(e, Error::Device(_)), "{e:?}"),
    }
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<CudaDevice>();
    check::<CudaTensor<(usize, Const<3>)>>();
    check::<CudaState<usize, Const<2>, 4, 4>>();
    check::<Device>();
}

#[test]
fn uploads_read_any_layout_in_logical_order() {
    let dev = Cpu::default();
    let t = dev.tensor([[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]]);
    assert_eq!(contiguous_data(&t), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let p = t.clone().permute::<_, dfdx::shapes::Axes2<1, 0>>();
    assert_eq!(contiguous_data(&p), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    let b: dfdx::tensor::Tensor<Rank3<2, 2, 3>, f32, Cpu> =
        t.broadcast::<_, dfdx::shapes::Axis<0>>();
    assert_eq!(
        contiguous_data(&b),
        [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; 2].concat()
    );
    let empty = dev.tensor_from_vec(Vec::<f32>::new(), (0usize, Const::<3>));
    assert!(contiguous_data(&empty).is_empty());
}

// ---------------------------------------------------------------------------------------------
// NVRTC

#[test]
fn nvrtc_compiles_the_kernel_signature() {
    if !nvrtc_or_skip("nvrtc_compiles_the_kernel_signature") {
        return;
    }
    let (major, minor) = nvrtc_version().unwrap();
    assert!(major >= 11, "NVRTC {major}.{minor}");
    let ptx = compile_ptx_uncached(TINY, "sm_80").unwrap();
    assert!(ptx.contains(".target sm_80"), "{ptx}");
    assert!(ptx.contains(".entry attnc_tiny"), "{ptx}");
    assert!(!ptx.contains('\0'));
}

#[test]
fn nvrtc_errors_carry_the_log() {
    if !nvrtc_or_skip("nvrtc_errors_carry_the_log") {
        return;
    }
    match compile_ptx_uncached(BROKEN, "sm_80") {
        Err(Error::Nvrtc { arch, log }) => {
            assert_eq!(arch, "sm_80");
            assert!(log.contains("attnc_undefined_name"), "{log}");
            let msg = Error::Nvrtc { arch, log }.to_string();
            println!("{msg}");
            assert!(
                msg.contains("sm_80") && msg.contains("attnc_undefined_name"),
                "{msg}"
            );
        }
        other => panic!("expected Error::Nvrtc, got {other:?}"),
    }
    // A NUL byte is an error, not a panic.
    assert!(matches!(
        compile_ptx_uncached("__global__ void f() {}\0", "sm_80"),
        Err(Error::Nvrtc { .. })
    ));
}

#[test]
fn without_nvrtc_compiling_is_an_error() {
    if nvrtc_available() {
        println!("SKIP: without_nvrtc_compiling_is_an_error: NVRTC is loadable here");
        return;
    }
    for result in [
        compile_ptx_uncached(TINY, "sm_80"),
        compile_ptx(TINY, "sm_80"),
    ] {
        let e = result.expect_err("no NVRTC");
        assert!(
            matches!(&e, Error::Device(m) if m.contains("NVRTC") || m.contains("`cuda` feature")),
            "{e:?}"
        );
    }
    assert!(nvrtc_version().is_err());
}

#[test]
fn only_plain_architectures_can_be_targeted() {
    for (arch, number) in [("sm_75", 75), ("sm_80", 80), ("sm_86", 86), ("sm_120", 120)] {
        assert_eq!(plain_arch_number(arch), Some(number), "{arch}");
    }
    // Suffixed PTX runs on its own GPU only; compute_ names virtual targets, not GPUs.
    for bad in ["sm_90a", "compute_80", "sm_8", "sm_1000", "sm_8x", "80", ""] {
        assert_eq!(plain_arch_number(bad), None, "{bad}");
    }
}

#[test]
fn architectures_are_checked_before_nvrtc() {
    for good in [
        "sm_80",
        "sm_90",
        "sm_90a",
        "compute_89",
        "sm_100",
        "sm_120a",
    ] {
        assert!(check_arch(good).is_ok(), "{good}");
    }
    for bad in [
        "", "sm80", "sm_", "sm_8", "sm_8x0", "sm_90ab", "gfx90a", "sm_1000", "-sm_80",
    ] {
        assert!(
            matches!(check_arch(bad), Err(Error::Nvrtc { ref arch, .. }) if arch == bad),
            "{bad}"
        );
        assert!(matches!(
            compile_ptx_uncached(TINY, bad),
            Err(Error::Nvrtc { .. })
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// The PTX cache

const FAKE_PTX: &str = ".version 8.0\n.target sm_80\n.address_size 64\n";

#[test]
fn cache_writes_one_file_then_reads_it() {
    let dir = TempDir::new("cache-fake");
    let compiles = Cell::new(0);
    let compile = || {
        compiles.set(compiles.get() + 1);
        Ok(FAKE_PTX.to_string())
    };
    let k = key("src", "sm_80", (12, 4), &nvrtc_options("sm_80"));
    assert_eq!(cached(Some(&dir.0), &k, compile).unwrap(), FAKE_PTX);
    assert_eq!(compiles.get(), 1);
    assert_eq!(dir.files(), vec![format!("{k}.ptx")]);
    assert_eq!(cached(Some(&dir.0), &k, compile).unwrap(), FAKE_PTX);
    assert_eq!(compiles.get(), 1, "the second call reads the file");
    // A truncated file is recompiled and replaced.
    std::fs::write(dir.0.join(format!("{k}.ptx")), ".vers").unwrap();
    assert_eq!(cached(Some(&dir.0), &k, compile).unwrap(), FAKE_PTX);
    assert_eq!(compiles.get(), 2);
    assert_eq!(dir.files(), vec![format!("{k}.ptx")]);
    // No directory: always compiles.
    assert_eq!(cached(None, &k, compile).unwrap(), FAKE_PTX);
    assert_eq!(compiles.get(), 3);
    // Compile errors are passed on and nothing is written.
    let other = key("src2", "sm_80", (12, 4), &[]);
    assert_eq!(
        cached(Some(&dir.0), &other, || Err(Error::Internal("boom"))),
        Err(Error::Internal("boom"))
    );
    assert_eq!(dir.files(), vec![format!("{k}.ptx")]);
}

#[test]
fn an_unwritable_cache_is_not_an_error() {
    let dir = TempDir::new("cache-unwritable");
    let file = dir.0.join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let below_a_file = file.join("cache");
    let compiles = Cell::new(0);
    for _ in 0..2 {
        let ptx = cached(Some(&below_a_file), "k", || {
            compiles.set(compiles.get() + 1);
            Ok(FAKE_PTX.to_string())
        });
        assert_eq!(ptx.unwrap(), FAKE_PTX);
    }
    assert_eq!(compiles.get(), 2);
    assert_eq!(dir.files(), vec!["a-file".to_string()]);
}

#[test]
fn cache_keys_cover_source_arch_version_and_options() {
    let base = key("src", "sm_80", (12, 4), &["-std=c++17".into()]);
    assert_eq!(base.len(), 64);
    assert!(base.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(base, key("src", "sm_80", (12, 4), &["-std=c++17".into()]));
    for other in [
        key("src ", "sm_80", (12, 4), &["-std=c++17".into()]),
        key("src", "sm_90", (12, 4), &["-std=c++17".into()]),
        key("src", "sm_80", (12, 9), &["-std=c++17".into()]),
        key("src", "sm_80", (12, 4), &[]),
        key("srcsm_80", "", (12, 4), &["-std=c++17".into()]),
    ] {
        assert_ne!(base, other);
    }
}

#[test]
fn cache_dir_follows_the_environment() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    };
    let all = env(&[
        ("ATTNC_CACHE_DIR", "/tmp/explicit"),
        ("XDG_CACHE_HOME", "/xdg"),
        ("HOME", "/home/u"),
    ]);
    assert_eq!(cache_dir_from(all), Some(PathBuf::from("/tmp/explicit")));
    let xdg = env(&[
        ("ATTNC_CACHE_DIR", ""),
        ("XDG_CACHE_HOME", "/xdg"),
        ("HOME", "/home/u"),
    ]);
    assert_eq!(cache_dir_from(xdg), Some(PathBuf::from("/xdg/attnc")));
    let relative_xdg = env(&[("XDG_CACHE_HOME", "rel"), ("HOME", "/home/u")]);
    assert_eq!(
        cache_dir_from(relative_xdg),
        Some(PathBuf::from("/home/u/.cache/attnc"))
    );
    assert_eq!(cache_dir_from(env(&[])), None);
}

#[test]
fn compile_ptx_caches_real_ptx() {
    if !nvrtc_or_skip("compile_ptx_caches_real_ptx") {
        return;
    }
    let dir = TempDir::new("cache-nvrtc");
    let first = compile_in(Some(&dir.0), TINY, "sm_80").unwrap();
    assert!(first.contains(".entry attnc_tiny"));
    let files = dir.files();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        files[0].ends_with(".ptx") && files[0].len() == 64 + 4,
        "{files:?}"
    );
    // Mark the cached file: the second call must return it as is, without compiling.
    let path = dir.0.join(&files[0]);
    let marked = format!("{first}\n// read from the cache\n");
    std::fs::write(&path, &marked).unwrap();
    assert_eq!(compile_in(Some(&dir.0), TINY, "sm_80").unwrap(), marked);
    // Another architecture is another file.
    let sm90 = compile_in(Some(&dir.0), TINY, "sm_90").unwrap();
    assert!(sm90.contains(".target sm_90"));
    assert_eq!(dir.files().len(), 2);
}

#[test]
fn compile_ptx_uses_attnc_cache_dir() {
    if !nvrtc_or_skip("compile_ptx_uses_attnc_cache_dir") {
        return;
    }
    let dir = TempDir::new("cache-env");
    let dir_text = dir.0.to_string_lossy().into_owned();
    run_child(
        "compile_ptx_cache_child",
        &[("ATTNC_CACHE_DIR", Some(dir_text.as_str()))],
    );
    let files = dir.files();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with(".ptx"));
}

/// Runs only in a child of [`compile_ptx_uses_attnc_cache_dir`].
#[test]
fn compile_ptx_cache_child() {
    if !in_child() {
        return;
    }
    let dir = cache_dir().expect("ATTNC_CACHE_DIR is set");
    let first = compile_ptx(TINY, "sm_80").unwrap();
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(files.len(), 1);
    assert_eq!(compile_ptx(TINY, "sm_80").unwrap(), first);
}

// ---------------------------------------------------------------------------------------------
// Argument checks of the entry points

/// The same kernels for every shared-memory class (these tests' kernels are written by hand, for
/// whatever GPU runs them).
fn every_class(
    forward: &'static [KernelInfo],
    step: &'static [KernelInfo],
) -> Cow<'static, [ClassKernels]> {
    let kernels = |class| ClassKernels {
        class,
        forward: Cow::Borrowed(forward),
        step: Cow::Borrowed(step),
    };
    Cow::Owned(SmemClass::ALL.map(kernels).to_vec())
}

const KERNELS: &[KernelInfo] = &[KernelInfo {
    name: "attnc_chunk",
    class: SmemClass::Sm90,
    grid: Grid::Chunks,
    smem_bytes: 0,
    scratch_floats: 0,
}];

fn launch(layout: Layout, normalized: bool, uses_beta: bool) -> CudaLaunch {
    CudaLaunch {
        signature: Signature {
            layout,
            chunk: 16,
            dk: 8,
            dv: 4,
            f: 8,
            normalized,
            uses_beta,
            uses_gates: false,
            uses_projection: false,
            heads: None,
            conv: 0,
            momentum: false,
            rpe: false,
        },
        threads: 128,
        classes: every_class(KERNELS, KERNELS),
        work_per_chunk: 0,
        chunk_states: false,
    }
}

fn forward_shapes(b: usize, h: usize, n: usize) -> ForwardShapes {
    ForwardShapes {
        q: [b, h, n, 8],
        k: [b, h, n, 8],
        v: [b, h, n, 4],
        beta: None,
        g: None,
        proj: None,
        state: None,
        out_bh: (b, h),
        f_dv: (8, 4),
    }
}

#[test]
fn forward_checks_match_the_cpu_errors() {
    let l = launch(Layout::Bhnd, false, false);
    let p = check_forward(&l, &forward_shapes(2, 3, 5)).unwrap();
    assert_eq!((p.batch, p.heads, p.tokens), (2, 3, 5));

    assert_eq!(
        check_forward(&l, &forward_shapes(2, 3, 0)).unwrap_err(),
        Error::EmptySequence
    );
    let mut x = forward_shapes(2, 3, 5);
    x.k = [2, 3, 6, 8];
    assert_eq!(
        check_forward(&l, &x).unwrap_err(),
        Error::ShapeMismatch {
            arg: "k",
            expected: vec![2, 3, 5, 8],
            got: vec![2, 3, 6, 8],
            axes: "(B, H, N, D)",
        }
    );
    let mut x = forward_shapes(2, 3, 5);
    x.v = [2, 3, 5, 8];
    assert!(matches!(
        check_forward(&l, &x),
        Err(Error::ShapeMismatch { arg: "v", .. })
    ));
    let mut x = forward_shapes(2, 3, 5);
    x.q = [2, 3, 5, 7];
    x.k = [2, 3, 5, 7];
    assert!(matches!(
        check_forward(&l, &x),
        Err(Error::ShapeMismatch { arg: "q", .. })
    ));

    // The state: batch and heads, then the normaliser.
    let mut x = forward_shapes(2, 3, 5);
    x.state = Some(((2, 4), None));
    assert_eq!(
        check_forward(&l, &x).unwrap_err(),
        Error::StateMismatch {
            batch: 2,
            heads: 3,
            got_batch: 2,
            got_heads: 4
        }
    );
    x.state = Some(((2, 3), Some((2, 3))));
    assert!(matches!(
        check_forward(&l, &x),
        Err(Error::StateNormalizer(m)) if m.contains("no normaliser")
    ));
    let normalized = launch(Layout::Bhnd, true, false);
    x.state = Some(((2, 3), None));
    assert!(matches!(
        check_forward(&normalized, &x),
        Err(Error::StateNormalizer(m)) if m.contains("normalize = sum")
    ));
    x.state = Some(((2, 3), Some((1, 3))));
    assert!(matches!(
        check_forward(&normalized, &x),
        Err(Error::StateMismatch { got_batch: 1, .. })
    ));
    x.state = Some(((2, 3), Some((2, 3))));
    assert!(check_forward(&normalized, &x).is_ok());
}

#[test]
fn forward_checks_follow_the_layout_and_scalars() {
    let l = launch(Layout::Bnhd, false, true);
    let mut x = forward_shapes(2, 5, 3); // (B, N, H, D): N = 5, H = 3
    x.beta = Some([2, 5, 3]);
    let p = check_forward(
        &l,
        &ForwardShapes {
            out_bh: (2, 3),
            ..x
        },
    )
    .unwrap();
    assert_eq!((p.batch, p.heads, p.tokens), (2, 3, 5));
    let mut x = forward_shapes(2, 5, 3);
    x.out_bh = (2, 3);
    x.beta = Some([2, 3, 5]);
    assert_eq!(
        check_forward(&l, &x).unwrap_err(),
        Error::ShapeMismatch {
            arg: "beta",
            expected: vec![2, 5, 3],
            got: vec![2, 3, 5],
            axes: "(B, N, H)",
        }
    );
    // Missing beta, wrong F/DV and state dims are the generated code's bugs.
    x.beta = None;
    assert!(matches!(check_forward(&l, &x), Err(Error::Internal(_))));
    let mut x = forward_shapes(2, 3, 5);
    x.f_dv = (8, 8);
    assert!(matches!(
        check_forward(&launch(Layout::Bhnd, false, false), &x),
        Err(Error::Internal(_))
    ));

    // FAVOR+'s projection: required by specs that read it, with their (F, DK) shape.
    let mut favor = launch(Layout::Bhnd, false, false);
    favor.signature.uses_projection = true;
    let mut x = forward_shapes(2, 3, 5);
    assert!(matches!(
        check_forward(&favor, &x),
        Err(Error::Internal(m)) if m.contains("projection but none")
    ));
    x.proj = Some([8, 4]);
    assert!(matches!(
        check_forward(&favor, &x),
        Err(Error::Internal(m)) if m.contains("shape")
    ));
    x.proj = Some([8, 8]);
    assert!(check_forward(&favor, &x).is_ok());
}

#[test]
fn step_checks_match_the_cpu_errors() {
    let l = launch(Layout::Bnhd, true, false);
    let ok = StepShapes {
        q: [2, 3, 8],
        k: [2, 3, 8],
        v: [2, 3, 4],
        beta: None,
        g: Some([2, 3]),
        proj: None,
        state: ((2, 3), Some((2, 3))),
        f_dv: (8, 4),
    };
    let p = check_step(&l, &ok).unwrap();
    assert_eq!((p.batch, p.heads, p.tokens), (2, 3, 1));
    assert_eq!(
        check_step(&l, &StepShapes { v: [2, 3, 5], ..ok }).unwrap_err(),
        Error::ShapeMismatch {
            arg: "v_t",
            expected: vec![2, 3, 4],
            got: vec![2, 3, 5],
            axes: "(B, H, D)",
        }
    );
    assert_eq!(
        check_step(
            &l,
            &StepShapes {
                g: Some([3, 2]),
                ..ok
            }
        )
        .unwrap_err(),
        Error::ShapeMismatch {
            arg: "g_t",
            expected: vec![2, 3],
            got: vec![3, 2],
            axes: "(B, H)",
        }
    );
    assert!(matches!(
        check_step(
            &l,
            &StepShapes {
                state: ((2, 3), None),
                ..ok
            }
        ),
        Err(Error::StateNormalizer(_))
    ));
    assert!(matches!(
        check_step(
            &l,
            &StepShapes {
                state: ((1, 3), Some((1, 3))),
                ..ok
            }
        ),
        Err(Error::StateMismatch { got_batch: 1, .. })
    ));
    let no_step = CudaLaunch {
        classes: every_class(KERNELS, &[]),
        ..l
    };
    assert!(matches!(check_step(&no_step, &ok), Err(Error::Internal(_))));
}

#[cfg(feature = "cuda")]
#[test]
fn grids_respect_cuda_limits() {
    let l = launch(Layout::Bhnd, false, false);
    let heads_grid = KernelInfo {
        name: "h",
        class: SmemClass::Sm90,
        grid: Grid::Heads,
        smem_bytes: 0,
        scratch_floats: 0,
    };
    assert_eq!(backend::grid(&l, &KERNELS[0], 6, 33).unwrap(), (3, 6, 1));
    assert_eq!(
        backend::grid(&l, &heads_grid, 70_000, 1).unwrap(),
        (70_000, 1, 1)
    );
    let too_many = backend::grid(&l, &KERNELS[0], 70_000, 33).unwrap_err();
    assert!(
        matches!(&too_many, Error::Cuda(m) if m.contains("split the batch")),
        "{too_many:?}"
    );
    let empty = KernelInfo {
        grid: Grid::Columns(0),
        ..KERNELS[0]
    };
    assert!(matches!(
        backend::grid(&l, &empty, 1, 1),
        Err(Error::Internal(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// On a GPU (skipped without one, unless ATTNC_REQUIRE_CUDA=1): transfers and the launch
// machinery, with test kernels that check the parameter order, the state copies, the
// workspaces and the opt-in to more than 48 KiB of shared memory.

/// GPU 0 with NVRTC, or `None` after printing `SKIP: ...` (a failure with
/// `ATTNC_REQUIRE_CUDA=1`).
fn gpu_or_skip(test: &str) -> Option<CudaDevice> {
    let why = match CudaDevice::new(0) {
        Ok(_) if !nvrtc_available() => "NVRTC cannot be loaded".to_string(),
        Ok(dev) => return Some(dev),
        Err(e) => e.to_string(),
    };
    if std::env::var("ATTNC_REQUIRE_CUDA").is_ok_and(|v| v.trim() == "1") {
        panic!("{test}: ATTNC_REQUIRE_CUDA=1 but no usable GPU: {why}");
    }
    println!("SKIP: {test}: no usable GPU: {why}");
    None
}

/// Kernels with attnc's parameter list. `attnc_test_heads` (one block per batch x head):
/// out = q[.., 0] + k[.., 1] + v + beta + g + proj[1] + heads, S += 1, z += 2, and marks `work` and
/// `scratch`. `attnc_test_chunks` (one block per chunk and batch x head, 64 KiB of dynamic
/// shared memory): adds 10 to the first value of each chunk's first token, read back through
/// the last float of shared memory, and writes one float per chunk state.
const TEST_KERNELS: &str = r#"
#define DK 2
#define DV 3
#define F 2
#define C 4
extern "C" __global__ void attnc_test_heads(
    const float* q, const float* k, const float* v, const float* beta, const float* g,
    const float* proj, float* out, float* s, float* z, float* chunk_s, float* chunk_z,
    float* work, float* scratch, const float* conv_q, const float* conv_k,
    const float* conv_v, float* tail_q, float* tail_k, float* tail_v, float* mom_s,
    float* mom_z, int n, int heads)
{
    int bh = blockIdx.x;
    for (int i = threadIdx.x; i < n * DV; i += blockDim.x) {
        int t = i / DV;
        long tok = (long)bh * n + t;
        out[(long)bh * n * DV + i] = q[tok * DK] + k[tok * DK + 1] + v[(long)bh * n * DV + i]
            + beta[tok] + g[tok] + proj[1] + (float)heads;
    }
    if (threadIdx.x == 0) {
        for (int j = 0; j < F * DV; ++j) s[bh * F * DV + j] += 1.0f;
        for (int j = 0; j < F; ++j) z[bh * F + j] += 2.0f;
        work[bh * ((n + C - 1) / C)] = 1.0f;
        scratch[bh] = 1.0f;
    }
}
extern "C" __global__ void attnc_test_chunks(
    const float* q, const float* k, const float* v, const float* beta, const float* g,
    const float* proj, float* out, float* s, float* z, float* chunk_s, float* chunk_z,
    float* work, float* scratch, const float* conv_q, const float* conv_k,
    const float* conv_v, float* tail_q, float* tail_k, float* tail_v, float* mom_s,
    float* mom_z, int n, int heads)
{
    extern __shared__ float tile[];
    const int last = 64 * 1024 / 4 - 1;
    int chunk = blockIdx.x, bh = blockIdx.y, chunks = gridDim.x;
    if (threadIdx.x == 0) tile[last] = 10.0f;
    __syncthreads();
    if (threadIdx.x == 0) {
        out[((long)bh * n + (long)chunk * C) * DV] += tile[last];
        chunk_s[((long)bh * chunks + chunk) * F * DV] = 1.0f;
        chunk_z[((long)bh * chunks + chunk) * F] = 1.0f;
    }
}
"#;

const TEST_FORWARD: &[KernelInfo] = &[
    KernelInfo {
        name: "attnc_test_heads",
        class: SmemClass::Sm90,
        grid: Grid::Heads,
        smem_bytes: 0,
        scratch_floats: 1,
    },
    KernelInfo {
        name: "attnc_test_chunks",
        class: SmemClass::Sm90,
        grid: Grid::Chunks,
        smem_bytes: 64 * 1024,
        scratch_floats: 1,
    },
];

/// The test kernels' launch.
fn test_launch() -> CudaLaunch {
    CudaLaunch {
        signature: Signature {
            layout: Layout::Bhnd,
            chunk: 4,
            dk: 2,
            dv: 3,
            f: 2,
            normalized: true,
            uses_beta: true,
            uses_gates: true,
            uses_projection: true,
            heads: None,
            conv: 0,
            momentum: false,
            rpe: false,
        },
        threads: 64,
        classes: every_class(TEST_FORWARD, TEST_FORWARD.split_at(1).0),
        work_per_chunk: 1,
        chunk_states: true,
    }
}

#[test]
fn test_kernels_compile() {
    if !nvrtc_or_skip("test_kernels_compile") {
        return;
    }
    let ptx = compile_ptx_uncached(TEST_KERNELS, "sm_80").unwrap();
    assert!(ptx.contains(".entry attnc_test_heads") && ptx.contains(".entry attnc_test_chunks"));
}

#[test]
fn gpu_transfers_round_trip() {
    let Some(gpu) = gpu_or_skip("gpu_transfers_round_trip") else {
        return;
    };
    println!("{}", Device::cuda(0).unwrap().describe());
    let cpu = Cpu::default();
    let t = cpu.tensor([[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]]);
    let on_gpu = gpu
        .upload(&t.clone().permute::<_, dfdx::shapes::Axes2<1, 0>>())
        .unwrap();
    assert_eq!(on_gpu.len(), 6);
    assert_eq!(
        on_gpu.download().unwrap().array(),
        [[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]]
    );
    assert_eq!(
        on_gpu.try_clone().unwrap().download().unwrap().as_vec(),
        on_gpu.download().unwrap().as_vec()
    );
    let empty = gpu.zeros((0usize, Const::<3>)).unwrap();
    assert!(empty.is_empty() && empty.download().unwrap().as_vec().is_empty());
    let st: CudaState<usize, Const<2>, 4, 3> = CudaState::zeros(&gpu, 3, Const, true).unwrap();
    assert_eq!((st.batch(), st.heads()), (3, 2));
    let back = st.download().unwrap();
    assert!(back.s.as_vec().iter().all(|&x| x == 0.0));
    assert_eq!(back.z.as_ref().map(|z| z.as_vec().len()), Some(3 * 2 * 4));
    let again = gpu.upload_state(&back).unwrap();
    assert!(again.z.is_some());
    gpu.synchronize().unwrap();
}

#[test]
fn gpu_launches_follow_the_contract() {
    let Some(gpu) = gpu_or_skip("gpu_launches_follow_the_contract") else {
        return;
    };
    type H = Const<3>;
    let (b, n) = (2usize, 5usize);
    let cpu = Cpu::default();
    let seq = |len: usize, scale: f32| (0..len).map(|i| i as f32 * scale).collect::<Vec<f32>>();
    let q = cpu.tensor_from_vec(seq(b * 3 * n * 2, 1.0), (b, H::default(), n, Const::<2>));
    let k = cpu.tensor_from_vec(seq(b * 3 * n * 2, 0.5), (b, H::default(), n, Const::<2>));
    let v = cpu.tensor_from_vec(seq(b * 3 * n * 3, 0.25), (b, H::default(), n, Const::<3>));
    let beta = cpu.tensor_from_vec(seq(b * 3 * n, 0.125), (b, H::default(), n));
    let g = cpu.tensor_from_vec(seq(b * 3 * n, -0.5), (b, H::default(), n));
    // The projection: (F, DK) = (2, 2); the kernel reads its second value.
    let pd = gpu
        .upload(&cpu.tensor([[0.0f32, 0.5], [0.0, 0.0]]))
        .unwrap();
    let (qd, kd, vd, bd, gd) = (
        gpu.upload(&q).unwrap(),
        gpu.upload(&k).unwrap(),
        gpu.upload(&v).unwrap(),
        gpu.upload(&beta).unwrap(),
        gpu.upload(&g).unwrap(),
    );

    let expected = |chunk_bonus: bool| {
        let (q, k, v, beta, g) = (
            q.as_vec(),
            k.as_vec(),
            v.as_vec(),
            beta.as_vec(),
            g.as_vec(),
        );
        let mut out = vec![0.0f32; b * 3 * n * 3];
        for (i, o) in out.iter_mut().enumerate() {
            let tok = i / 3;
            *o = q[tok * 2] + k[tok * 2 + 1] + v[i] + beta[tok] + g[tok] + 0.5 + 3.0;
            if chunk_bonus && i % 3 == 0 && (tok % n) % 4 == 0 {
                *o += 10.0;
            }
        }
        out
    };

    let (out, state) = forward_cuda::<usize, H, _, _, _, _, 2, 3>(
        &test_launch(),
        TEST_KERNELS,
        (b, H::default()),
        &qd,
        &kd,
        &vd,
        Some(&bd),
        Some(&gd),
        Some(&pd),
        None,
    )
    .unwrap();
    assert_eq!(out.shape(), vd.shape());
    assert_eq!(out.download().unwrap().as_vec(), expected(true));
    let host = state.download().unwrap();
    assert!(host.s.as_vec().iter().all(|&x| x == 1.0));
    assert!(host.z.as_ref().unwrap().as_vec().iter().all(|&x| x == 2.0));

    // From a given state: the kernels see it on entry; the caller's copy is untouched.
    let (_, state2) = forward_cuda::<usize, H, _, _, _, _, 2, 3>(
        &test_launch(),
        TEST_KERNELS,
        (b, H::default()),
        &qd,
        &kd,
        &vd,
        Some(&bd),
        Some(&gd),
        Some(&pd),
        Some(&state),
    )
    .unwrap();
    assert!(state2
        .download()
        .unwrap()
        .s
        .as_vec()
        .iter()
        .all(|&x| x == 2.0));
    assert!(state
        .download()
        .unwrap()
        .s
        .as_vec()
        .iter()
        .all(|&x| x == 1.0));

    // Step: one token, (B, H, D) inputs, the state updated in place.
    let mut st = state2;
    let qt = gpu
        .upload(&cpu.tensor_from_vec(seq(b * 3 * 2, 1.0), (b, H::default(), Const::<2>)))
        .unwrap();
    let vt = gpu
        .upload(&cpu.tensor_from_vec(seq(b * 3 * 3, 1.0), (b, H::default(), Const::<3>)))
        .unwrap();
    let bt = gpu
        .upload(&cpu.tensor_from_vec(seq(b * 3, 1.0), (b, H::default())))
        .unwrap();
    let ot = step_cuda(
        &test_launch(),
        TEST_KERNELS,
        &mut st,
        &qt,
        &qt,
        &vt,
        Some(&bt),
        Some(&bt),
        Some(&pd),
    )
    .unwrap();
    let ot = ot.download().unwrap().as_vec();
    let (qh, vh, bh) = (
        qt.download().unwrap().as_vec(),
        vt.download().unwrap().as_vec(),
        bt.download().unwrap().as_vec(),
    );
    for (i, o) in ot.iter().enumerate() {
        let tok = i / 3;
        assert_eq!(
            *o,
            qh[tok * 2] + qh[tok * 2 + 1] + vh[i] + 2.0 * bh[tok] + 0.5 + 3.0,
            "o_t[{i}]"
        );
    }
    let host = st.download().unwrap();
    assert!(host.s.as_vec().iter().all(|&x| x == 3.0));
    assert!(host.z.as_ref().unwrap().as_vec().iter().all(|&x| x == 6.0));

    // Errors leave the state alone.
    let err = step_cuda(
        &test_launch(),
        TEST_KERNELS,
        &mut st,
        &qt,
        &qt,
        &bad_v(&gpu, b),
        Some(&bt),
        Some(&bt),
        Some(&pd),
    );
    assert!(
        matches!(err, Err(Error::ShapeMismatch { arg: "v_t", .. })),
        "{err:?}"
    );
    assert!(st.download().unwrap().s.as_vec().iter().all(|&x| x == 3.0));
    gpu.synchronize().unwrap();
}

/// A v_t with the wrong value dim.
fn bad_v(gpu: &CudaDevice, b: usize) -> CudaTensor<(usize, Const<3>, Const<3>)> {
    gpu.zeros((b + 1, Const::<3>, Const::<3>)).unwrap()
}
