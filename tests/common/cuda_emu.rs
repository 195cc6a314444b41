//! Host emulation of the generated CUDA kernels: compiles a CUDA C source with the host C++
//! compiler against tests/cuda_emu/attnc_emu.h and runs its kernels on CPU threads
//! (tests/cuda_emu/harness.cpp), so the tests check the CUDA kernels' numbers without a GPU.
//!
//! The kernels run as a GPU would schedule them (every block of each grid, in a shuffled order
//! since a GPU promises none, the threads of a block in parallel with `__syncthreads()` as a
//! real barrier), on the launch configuration the runtime uses ([`CudaLaunch`]). Memory a kernel should never read before writing (workspaces,
//! `out`, dynamic shared memory) starts as NaN, and writes outside a buffer, beyond the declared
//! dynamic shared memory or a `__syncthreads()` reached by only some threads are errors.
#![allow(dead_code)]

use super::{to_bnhd, Inputs};
use attnc::spec::{Layout, Spec};
use attnc_codegen::abi::{ClassKernels, CudaLaunch, Grid, KernelInfo, SmemClass};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Inputs in the kernels' layouts (q, k, v in the spec's layout; beta/g empty when unused; proj
/// FAVOR+'s projection (F, DK) or empty; s (B,H,F,DV) and z (B,H,F) the initial state, z empty
/// when not normalised).
#[derive(Clone, Debug, Default)]
pub struct EmuInputs {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub beta: Vec<f32>,
    pub g: Vec<f32>,
    pub proj: Vec<f32>,
    pub s: Vec<f32>,
    pub z: Vec<f32>,
    /// `short_conv`'s weights (H, D, w) and tails (B, H, w - 1, D): q, k, v; empty when unused.
    pub conv: [Vec<f32>; 3],
    pub tails: [Vec<f32>; 3],
    /// Momentum's m (B, H, F, DV) and n (B, H, F); empty when unused.
    pub mom_s: Vec<f32>,
    pub mom_z: Vec<f32>,
    /// At most this many blocks along x for per-chunk kernels (`Grid::Chunks`), which then loop
    /// over chunks, as kernels with scratch do at scale; `None`: the launch's own grid.
    pub grid_cap: Option<u32>,
    /// Count shared-memory bank conflicts ([`EmuOutputs::banks`]); slower.
    pub count_banks: bool,
}

/// Bank conflicts at one access site of the tile library in one kernel (counted when
/// [`EmuInputs::count_banks`]): its warp instructions, the wavefronts they took (one per phase
/// when conflict-free) and the most one phase of one instruction took ("n-way").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BankSite {
    pub kernel: String,
    pub op: String,
    pub line: u32,
    pub instructions: u64,
    pub wavefronts: u64,
    pub worst: u32,
}

/// What the kernels left in `out` (v's length), `s` and `z` (the inputs' lengths; empty when the
/// input was empty).
#[derive(Clone, Debug)]
pub struct EmuOutputs {
    pub out: Vec<f32>,
    pub s: Vec<f32>,
    pub z: Vec<f32>,
    /// The tails and momentum buffers after the call (empty when the input was empty).
    pub tails: [Vec<f32>; 3],
    pub mom_s: Vec<f32>,
    pub mom_z: Vec<f32>,
    /// Per access site, when [`EmuInputs::count_banks`]; else empty.
    pub banks: Vec<BankSite>,
}

/// `x` and the initial state (`s`, and `z` or empty) in the kernels' layout, for `spec`.
pub fn inputs(spec: &Spec, x: &Inputs, s: &[f32], z: &[f32]) -> EmuInputs {
    let lay = |data: &[f32], d: usize| match spec.layout {
        Layout::Bhnd => data.to_vec(),
        Layout::Bnhd => to_bnhd(data, x.b, x.h, x.n, d),
    };
    EmuInputs {
        q: lay(&x.q, x.dk),
        k: lay(&x.k, x.dk),
        v: lay(&x.v, x.dv),
        beta: if spec.has_beta() {
            lay(&x.beta, 1)
        } else {
            Vec::new()
        },
        g: if spec.has_gate() {
            lay(&x.g, 1)
        } else {
            Vec::new()
        },
        // FAVOR+'s projection: (F, DK) as the user passes it, in any layout.
        proj: x.proj.clone(),
        s: s.to_vec(),
        z: z.to_vec(),
        ..EmuInputs::default()
    }
}

const SHIM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cuda_emu/attnc_emu.h");
const HARNESS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cuda_emu/harness.cpp");
/// Parameter indices (`attnc_codegen::abi`'s order) the harness writes back.
const OUT: u32 = 6;
const S: u32 = 7;
const Z: u32 = 8;
const TAILS: [u32; 3] = [16, 17, 18];
const MOM_S: u32 = 19;
const MOM_Z: u32 = 20;
/// Pointer parameters of every kernel (`attnc_codegen::abi`).
const BUFFERS: usize = 21;
/// The compiler's flags before the sources (then `-x c++ SRC -x c++ HARNESS -ldl -o BIN`).
const FLAGS: [&str; 7] = [
    "-std=c++20",
    "-O2",
    // Tiles are read as float4 as well as float, as CUDA code does.
    "-fno-strict-aliasing",
    "-pthread",
    "-rdynamic",
    "-include",
    SHIM,
];

/// Whether a C++20 compiler is available (`c++`/`g++`); tests print a SKIP line when not, unless
/// ATTNC_REQUIRE_EMULATION=1.
pub fn compiler_available() -> bool {
    compiler().is_some()
}

/// For tests: true when the emulation can run; otherwise prints `SKIP: <test> ...` and returns
/// false, or panics when ATTNC_REQUIRE_EMULATION=1 (CI that must not skip silently).
pub fn available_or_skip(test: &str) -> bool {
    if compiler_available() {
        return true;
    }
    let msg = format!("{test}: no C++20 compiler (c++/g++) for the CUDA host emulation");
    if std::env::var("ATTNC_REQUIRE_EMULATION").as_deref() == Ok("1") {
        panic!("{msg}, and ATTNC_REQUIRE_EMULATION=1");
    }
    println!("SKIP: {msg}");
    false
}

/// The first of `c++`, `g++` that compiles the harness (which needs C++20's <barrier>).
fn compiler() -> Option<&'static str> {
    static CXX: OnceLock<Option<&'static str>> = OnceLock::new();
    *CXX.get_or_init(|| {
        ["c++", "g++"].into_iter().find(|cxx| {
            Command::new(cxx)
                .args([
                    "-std=c++20",
                    "-fsyntax-only",
                    "-include",
                    SHIM,
                    "-x",
                    "c++",
                    HARNESS,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    })
}

/// FNV-1a: a hash that stays the same across Rust releases, for the on-disk cache.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        for &b in part.as_bytes().iter().chain(&[0xff]) {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn cache_dir() -> Result<PathBuf, String> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda_emu");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

/// A path prefix no other thread or process uses: files are written there, then renamed into
/// place (atomic), so concurrent tests compiling the same source never see a half-written file.
fn unique(dir: &Path, key: u64) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{key:016x}-{}-{count}", std::process::id()))
}

fn io<T>(what: &str, path: &Path, r: std::io::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{what} {}: {e}", path.display()))
}

/// Compiles `source` with the shim and harness, or returns the cached binary.
fn compile(source: &str) -> Result<PathBuf, String> {
    let cxx = compiler().ok_or("no C++20 compiler (c++/g++) for the CUDA host emulation")?;
    let shim = io("reading", Path::new(SHIM), std::fs::read_to_string(SHIM))?;
    let harness = io(
        "reading",
        Path::new(HARNESS),
        std::fs::read_to_string(HARNESS),
    )?;
    // The key covers everything that goes into the binary, so editing the shim rebuilds.
    let key = fnv1a(&[&[cxx, source, &shim, &harness], &FLAGS[..]].concat());
    let dir = cache_dir()?;
    let bin = dir.join(format!("{key:016x}.bin"));
    if bin.exists() {
        return Ok(bin);
    }
    // The source stays next to the binary so compile errors can be looked up.
    let src = dir.join(format!("{key:016x}.cu"));
    let tmp = unique(&dir, key);
    let (tmp_src, tmp_bin) = (tmp.with_extension("cu"), tmp.with_extension("bin"));
    io("writing", &tmp_src, std::fs::write(&tmp_src, source))?;
    io("renaming", &tmp_src, std::fs::rename(&tmp_src, &src))?;
    let output = Command::new(cxx)
        .args(FLAGS)
        .args(["-x", "c++"])
        .arg(&src)
        .args(["-x", "c++", HARNESS, "-ldl", "-o"])
        .arg(&tmp_bin)
        .output()
        .map_err(|e| format!("running {cxx}: {e}"))?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&tmp_bin);
        return Err(format!(
            "{cxx} failed on {} ({}):\n{}",
            src.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    io("renaming", &tmp_bin, std::fs::rename(&tmp_bin, &bin))?;
    Ok(bin)
}

/// Checks the inputs' lengths against the launch, so a wrong test fails with a message rather
/// than as a kernel reading out of bounds.
fn check_inputs(launch: &CudaLaunch, bh: usize, n: usize, x: &EmuInputs) -> Result<(), String> {
    let want = |name: &str, got: usize, want: usize| {
        if got == want {
            Ok(())
        } else {
            Err(format!("{name} has {got} floats, expected {want}"))
        }
    };
    want("q", x.q.len(), bh * n * launch.signature.dk)?;
    want("k", x.k.len(), bh * n * launch.signature.dk)?;
    want("v", x.v.len(), bh * n * launch.signature.dv)?;
    if launch.signature.uses_beta {
        want("beta", x.beta.len(), bh * n)?;
    }
    if launch.signature.uses_gates {
        want("g", x.g.len(), bh * n)?;
    }
    if launch.signature.uses_projection {
        want(
            "proj",
            x.proj.len(),
            launch.signature.f * launch.signature.dk,
        )?;
    }
    if !x.s.is_empty() {
        want(
            "s",
            x.s.len(),
            bh * launch.signature.f * launch.signature.dv,
        )?;
    }
    if launch.signature.normalized || !x.z.is_empty() {
        want("z", x.z.len(), bh * launch.signature.f)?;
    }
    Ok(())
}

/// The classes whose kernels differ (in shared memory, scratch or grid) from every class
/// before them: the others run the same kernels.
pub fn distinct_classes(launch: &CudaLaunch) -> Vec<&ClassKernels> {
    let facts = |c: &ClassKernels| -> Vec<(&str, Grid, u32, usize)> {
        c.forward
            .iter()
            .chain(c.step.iter())
            .map(|k| (k.name, k.grid, k.smem_bytes, k.scratch_floats))
            .collect()
    };
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for c in launch.classes.iter() {
        let f = facts(c);
        if !seen.contains(&f) {
            seen.push(f);
            out.push(c);
        }
    }
    out
}

/// Compiles `source` (cached by a hash of source in env!("CARGO_TARGET_TMPDIR")/cuda_emu/) with
/// the shim and harness, then runs `kernels` in order for `bh` = batch*heads, `heads`, `n`
/// tokens. `out` has v's length.
pub fn run(
    launch: &CudaLaunch,
    source: &str,
    kernels: &[KernelInfo],
    bh: usize,
    heads: usize,
    n: usize,
    inputs: &EmuInputs,
) -> Result<EmuOutputs, String> {
    check_inputs(launch, bh, n, inputs)?;
    // The kernels' shared-memory class selects their versions in the source, as __CUDA_ARCH__
    // does on a GPU.
    let class = kernels.first().map_or(SmemClass::Sm90, |k| k.class);
    if kernels.iter().any(|k| k.class != class) {
        return Err("the kernels of one run come from one shared-memory class".into());
    }
    let bin = compile(&format!(
        "#define ATTNC_SMEM_CLASS {}\n{source}",
        class.cuda_arch()
    ))?;

    // Unused or empty pointers still get a valid (NaN) allocation, as the launch contract says.
    fn or_nan(x: &[f32]) -> &[f32] {
        if x.is_empty() {
            &[f32::NAN]
        } else {
            x
        }
    }
    let ws = launch.workspace(kernels, bh, n);
    let [chunk_s, chunk_z, work, scratch, out] =
        [ws.chunk_s, ws.chunk_z, ws.work, ws.scratch, inputs.v.len()]
            .map(|len| vec![f32::NAN; len.max(1)]);
    let x = inputs;
    let buffers: [&[f32]; BUFFERS] = [
        or_nan(&x.q),
        or_nan(&x.k),
        or_nan(&x.v),
        or_nan(&x.beta),
        or_nan(&x.g),
        or_nan(&x.proj),
        &out,
        or_nan(&x.s),
        or_nan(&x.z),
        &chunk_s,
        &chunk_z,
        &work,
        &scratch,
        or_nan(&x.conv[0]),
        or_nan(&x.conv[1]),
        or_nan(&x.conv[2]),
        or_nan(&x.tails[0]),
        or_nan(&x.tails[1]),
        or_nan(&x.tails[2]),
        or_nan(&x.mom_s),
        or_nan(&x.mom_z),
    ];
    let written = [OUT, S, Z, TAILS[0], TAILS[1], TAILS[2], MOM_S, MOM_Z];

    // The job file; its format is documented at the top of harness.cpp.
    let mut job = b"ATTNCJOB".to_vec();
    let u32s = |job: &mut Vec<u8>, xs: &[u32]| xs.iter().for_each(|x| job.extend(x.to_le_bytes()));
    u32s(&mut job, &[kernels.len() as u32]);
    for k in kernels {
        let (mut x, y, z) = launch.grid(k, bh, n);
        if let (Grid::Chunks, Some(cap)) = (k.grid, inputs.grid_cap) {
            x = x.min(cap);
        }
        u32s(&mut job, &[k.name.len() as u32]);
        job.extend(k.name.as_bytes());
        u32s(&mut job, &[x, y, z, launch.threads, k.smem_bytes]);
    }
    job.extend((n as i32).to_le_bytes());
    job.extend((heads as i32).to_le_bytes());
    for (i, b) in buffers.iter().enumerate() {
        u32s(&mut job, &[written.contains(&(i as u32)) as u32]);
        job.extend((b.len() as u64).to_le_bytes());
        b.iter().for_each(|x| job.extend(x.to_le_bytes()));
    }

    let tmp = unique(&cache_dir()?, 0);
    let (job_path, out_path) = (tmp.with_extension("job"), tmp.with_extension("out"));
    let banks_path = inputs.count_banks.then(|| tmp.with_extension("banks"));
    io("writing", &job_path, std::fs::write(&job_path, job))?;
    let result = execute(&bin, &job_path, &out_path, banks_path.as_deref());
    let _ = std::fs::remove_file(&job_path);
    let bytes = result
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|()| io("reading", &out_path, std::fs::read(&out_path)));
    let _ = std::fs::remove_file(&out_path);
    let banks = match &banks_path {
        Some(path) => {
            let text = result.and_then(|()| io("reading", path, std::fs::read_to_string(path)));
            let _ = std::fs::remove_file(path);
            parse_banks(&text?)?
        }
        None => Vec::new(),
    };
    let mut back = parse_output(&bytes?)?;
    let mut take = |index: u32, len: usize| {
        let mut x = back[index as usize].take().unwrap_or_default();
        x.truncate(len);
        x
    };
    Ok(EmuOutputs {
        out: take(OUT, inputs.v.len()),
        s: take(S, inputs.s.len()),
        z: take(Z, inputs.z.len()),
        tails: [0, 1, 2].map(|i| take(TAILS[i], inputs.tails[i].len())),
        mom_s: take(MOM_S, inputs.mom_s.len()),
        mom_z: take(MOM_Z, inputs.mom_z.len()),
        banks,
    })
}

/// The harness's bank report: tab-separated kernel, op, line, instructions, wavefronts, worst.
fn parse_banks(text: &str) -> Result<Vec<BankSite>, String> {
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let bad = || format!("bad line in the bank report: {line:?}");
            let [kernel, op, at, instructions, wavefronts, worst] = f[..] else {
                return Err(bad());
            };
            Ok(BankSite {
                kernel: kernel.into(),
                op: op.into(),
                line: at.parse().map_err(|_| bad())?,
                instructions: instructions.parse().map_err(|_| bad())?,
                wavefronts: wavefronts.parse().map_err(|_| bad())?,
                worst: worst.parse().map_err(|_| bad())?,
            })
        })
        .collect()
}

/// Runs the binary, killing it after ATTNC_EMU_TIMEOUT_S seconds (600 by default): a kernel
/// that loops forever should fail the test, not hang it.
fn execute(bin: &Path, job: &Path, out: &Path, banks: Option<&Path>) -> Result<(), String> {
    let timeout = std::env::var("ATTNC_EMU_TIMEOUT_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let mut child = Command::new(bin)
        .arg(job)
        .arg(out)
        .args(banks)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {}: {e}", bin.display()))?;
    // Read stderr on the side so a chatty child never blocks on a full pipe.
    let mut pipe = child.stderr.take().expect("stderr is piped");
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() > Duration::from_secs(timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} ran past {timeout} s and was killed",
                    bin.display()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("waiting for {}: {e}", bin.display())),
        }
    };
    let stderr = stderr.join().unwrap_or_default();
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} failed ({status}):\n{stderr}", bin.display()))
    }
}

/// The harness's output: (u32 index, u64 len, len x f32) records, by parameter index.
fn parse_output(mut bytes: &[u8]) -> Result<Vec<Option<Vec<f32>>>, String> {
    fn split<'a>(bytes: &mut &'a [u8], len: usize) -> Result<&'a [u8], String> {
        if bytes.len() < len {
            return Err("the harness's output is truncated".into());
        }
        let (head, rest) = bytes.split_at(len);
        *bytes = rest;
        Ok(head)
    }
    let mut back = vec![None; BUFFERS];
    while !bytes.is_empty() {
        let index = u32::from_le_bytes(split(&mut bytes, 4)?.try_into().unwrap()) as usize;
        let len = u64::from_le_bytes(split(&mut bytes, 8)?.try_into().unwrap()) as usize;
        let data = split(&mut bytes, len * 4)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        *back
            .get_mut(index)
            .ok_or("bad buffer index in the harness's output")? = Some(data);
    }
    Ok(back)
}
