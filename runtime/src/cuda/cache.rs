//! The on-disk PTX cache: one file per (source, architecture, NVRTC version, options), named by
//! the hex SHA-256 of those, written atomically (temporary file, then rename).

use super::{check_arch, compile_ptx_uncached, nvrtc_options, nvrtc_version};
use crate::error::Result;
use sha2::{Digest, Sha256};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where compiled PTX is cached: `ATTNC_CACHE_DIR`, else `$XDG_CACHE_HOME/attnc`, else
/// `$HOME/.cache/attnc` (`%LOCALAPPDATA%\attnc` on Windows without `HOME`); `None` when none of
/// these is set.
pub fn cache_dir() -> Option<PathBuf> {
    cache_dir_from(|name| std::env::var_os(name))
}

/// [`cache_dir`] with the environment passed in (tests).
pub(crate) fn cache_dir_from(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let set = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    set("ATTNC_CACHE_DIR")
        .or_else(|| {
            set("XDG_CACHE_HOME")
                .filter(|p| p.is_absolute())
                .map(|p| p.join("attnc"))
        })
        .or_else(|| set("HOME").map(|p| p.join(".cache").join("attnc")))
        .or_else(|| set("LOCALAPPDATA").map(|p| p.join("attnc")))
}

/// The cache key: hex SHA-256 of the length-prefixed source, architecture, NVRTC version and
/// options (length prefixes keep distinct tuples distinct).
pub(crate) fn key(source: &str, arch: &str, nvrtc: (i32, i32), options: &[String]) -> String {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(b"attnc-ptx-1");
    field(source.as_bytes());
    field(arch.as_bytes());
    field(format!("{}.{}", nvrtc.0, nvrtc.1).as_bytes());
    for o in options {
        field(o.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// [`super::compile_ptx`] with the cache directory passed in (`None`: no cache).
pub(crate) fn compile_in(dir: Option<&Path>, source: &str, arch: &str) -> Result<String> {
    check_arch(arch)?;
    let key = key(source, arch, nvrtc_version()?, &nvrtc_options(arch));
    cached(dir, &key, || compile_ptx_uncached(source, arch))
}

/// The PTX under `key` in `dir` if a readable, plausible file is there; else `compile()`'s,
/// stored for next time when `dir` can be written.
pub(crate) fn cached(
    dir: Option<&Path>,
    key: &str,
    compile: impl FnOnce() -> Result<String>,
) -> Result<String> {
    let Some(dir) = dir else {
        return compile();
    };
    let path = dir.join(format!("{key}.ptx"));
    if let Ok(ptx) = std::fs::read_to_string(&path) {
        if looks_like_ptx(&ptx) {
            return Ok(ptx);
        }
    }
    let ptx = compile()?;
    store(dir, key, &path, &ptx);
    Ok(ptx)
}

/// A truncated or foreign file is recompiled rather than handed to the driver.
fn looks_like_ptx(text: &str) -> bool {
    text.contains(".version") && text.contains(".target")
}

/// Writes `ptx` to `path` through a temporary file in the same directory and a rename, so a
/// reader never sees a partial file. Failures are ignored: the cache is an optimisation.
fn store(dir: &Path, key: &str, path: &Path, ptx: &str) {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = dir.join(format!(
        ".{key}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = std::fs::write(&tmp, ptx).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}
