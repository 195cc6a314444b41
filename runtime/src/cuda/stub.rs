//! The backend of a build without the `cuda` feature: no device can be opened, so no context or
//! buffer is ever made; their operations still return the "no CUDA backend" error.

// Nothing here is constructed in this build; the types only keep the generic code compiling.
#![allow(dead_code)]

use super::api::Params;
use super::launch::{CudaLaunch, KernelInfo};
use super::{CudaDevice, Unavailable};
use crate::error::Result;

/// Never constructed: no device can be opened.
pub(crate) struct Ctx(());

/// Never constructed: buffers come from a [`Ctx`].
pub(crate) struct Buf(());

fn no_backend<T>() -> Result<T> {
    Err(Unavailable::no_feature().into_error())
}

/// An opened device (never, in this build).
pub(crate) struct Opened {
    pub(crate) ctx: Ctx,
    pub(crate) name: String,
    pub(crate) arch: String,
}

pub(crate) fn driver_present() -> bool {
    false
}

pub(crate) fn nvrtc_present() -> bool {
    false
}

pub(crate) fn nvrtc_version() -> Result<(i32, i32)> {
    Err(Unavailable::no_feature().into_error())
}

pub(crate) fn nvrtc_compile(_source: &str, _arch: &str, _options: &[String]) -> Result<String> {
    Err(Unavailable::no_feature().into_error())
}

pub(crate) fn nvrtc_compile_with_log(
    _source: &str,
    _arch: &str,
    _options: &[String],
) -> Result<(String, String)> {
    Err(Unavailable::no_feature().into_error())
}

pub(crate) fn open(_ordinal: usize) -> std::result::Result<Opened, Unavailable> {
    Err(Unavailable::no_feature())
}

impl Ctx {
    pub(crate) fn upload(&self, _data: &[f32]) -> Result<Buf> {
        no_backend()
    }

    pub(crate) fn zeros(&self, _len: usize) -> Result<Buf> {
        no_backend()
    }

    pub(crate) fn download(&self, _buf: &Buf) -> Result<Vec<f32>> {
        no_backend()
    }

    pub(crate) fn copy(&self, _buf: &Buf) -> Result<Buf> {
        no_backend()
    }

    pub(crate) fn synchronize(&self) -> Result<()> {
        no_backend()
    }

    pub(crate) fn take_workspaces(&self, _key: super::api::WorkspaceKey) -> Result<[Buf; 4]> {
        no_backend()
    }

    pub(crate) fn give_back_workspaces(&self, _key: super::api::WorkspaceKey, _bufs: [Buf; 4]) {}

    pub(crate) fn time_ms(&self, _runs: usize, _f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        no_backend()
    }

    pub(crate) fn run(
        &self,
        _dev: &CudaDevice,
        _source: &'static str,
        _launch: &CudaLaunch,
        _kernels: &[KernelInfo],
        _sizes: (usize, usize, usize),
        _p: Params<'_>,
    ) -> Result<()> {
        no_backend()
    }
}
