//! Tile primitives: the CPU lowering of the kernel plan's tile ops.
//!
//! Every function works on statically shaped tiles (`[[f32; COLS]; ROWS]`) with a runtime count of
//! live rows (`rows <= ROWS`, shorter only in the sequence's last chunk), is `#[inline(always)]`
//! so it is compiled inside the caller's `#[target_feature]` context, and is written so LLVM
//! vectorises it: inner loops run over contiguous, compile-time-sized rows, and reductions keep
//! independent per-lane accumulators (strict IEEE order forbids LLVM from reassociating a plain
//! sum). Tiles past `rows` are kept at zero by [`load_rows`], so ops may read whole tiles.
//!
//! This module holds the [`Tile`] type, its views of flat buffers and the loads and stores; the
//! primitives are grouped by family in private submodules and re-exported here, the one path
//! generated kernels name (`tile::gemm`, `tile::decay_scores`, ...).

use crate::cpu::isa::Isa;
use crate::error::{Error, Result};

mod decay;
mod elementwise;
mod feature_maps;
mod gemm;
mod softmax;
mod step;
mod transpose;

pub use decay::{cumsum, decay_cols_to_end, decay_rows, decay_scores, decay_tile};
pub use elementwise::{
    add_assign, add_col_sums, divide_rows, dot, dot_rows, exp, l2_normalize_rows, map_rows,
    row_sums, scale_rows, sub_from,
};
pub use feature_maps::{dpfp_rows, favor_rows, taylor2_rows};
pub(crate) use gemm::gemm_kernel;
pub use gemm::{forward_substitute, gemm, row_combination, Product};
pub use softmax::{mask_above_diagonal, online_softmax, softmax_init};
pub use step::step_update;
pub use transpose::transpose;
pub(crate) use transpose::transpose_elements;

/// A row-major tile of `R` rows and `C` columns.
pub type Tile<const R: usize, const C: usize> = [[f32; C]; R];

/// Allocates a zeroed tile on the heap (tiles of 256 x 256 do not belong on a thread's stack).
pub fn boxed_tile<const R: usize, const C: usize>() -> Result<Box<Tile<R, C>>> {
    vec![[0.0f32; C]; R]
        .into_boxed_slice()
        .try_into()
        .map_err(|_| Error::Internal("tile allocation has the wrong length"))
}

/// Views a flat buffer as a tile of exactly `R x C` values.
pub fn as_tile_mut<const R: usize, const C: usize>(flat: &mut [f32]) -> Result<&mut Tile<R, C>> {
    let (rows, rest) = flat.as_chunks_mut::<C>();
    if !rest.is_empty() {
        return Err(Error::Internal(
            "state buffer is not a whole number of rows",
        ));
    }
    rows.try_into()
        .map_err(|_| Error::Internal("state buffer has the wrong row count"))
}

/// Views a flat buffer as a vector of exactly `R` values.
pub fn as_vec_mut<const R: usize>(flat: &mut [f32]) -> Result<&mut [f32; R]> {
    flat.try_into()
        .map_err(|_| Error::Internal("vector buffer has the wrong length"))
}

/// Views a flat buffer as a shared tile of exactly `R x C` values (the FAVOR+ projection).
pub fn as_tile<const R: usize, const C: usize>(flat: &[f32]) -> Result<&Tile<R, C>> {
    let (rows, rest) = flat.as_chunks::<C>();
    if !rest.is_empty() {
        return Err(Error::Internal(
            "projection buffer is not a whole number of rows",
        ));
    }
    rows.try_into()
        .map_err(|_| Error::Internal("projection buffer has the wrong row count"))
}

/// Copies rows `first..first + rows` of a contiguous `(tokens, C)` buffer into the tile and zeroes
/// the rest of it.
#[inline(always)]
pub fn load_rows<const R: usize, const C: usize>(
    src: &[f32],
    first: usize,
    rows: usize,
    dst: &mut Tile<R, C>,
) -> Result<()> {
    prefetch_next(src, (first + R) * C, R * C);
    let Some(src) = src.get(first * C..(first + rows) * C) else {
        return Err(Error::Internal("chunk reads past the end of an input"));
    };
    let (src_rows, _) = src.as_chunks::<C>();
    for (d, s) in dst.iter_mut().zip(src_rows) {
        *d = *s;
    }
    for d in dst.iter_mut().skip(rows) {
        *d = [0.0; C];
    }
    Ok(())
}

/// Rows `first..first + rows` of a contiguous `(tokens, C)` buffer as a tile: the buffer itself
/// when the chunk is whole (`rows == R`: no copy), else [`load_rows`] into `scratch`. For tiles
/// the chunk program only reads after loading (the plan marks those loads `in_place`).
#[inline(always)]
pub fn view_rows<'a, const R: usize, const C: usize>(
    src: &'a [f32],
    first: usize,
    rows: usize,
    scratch: &'a mut Tile<R, C>,
) -> Result<&'a Tile<R, C>> {
    prefetch_next(src, (first + R) * C, R * C);
    if rows == R {
        let Some(whole) = src.get(first * C..(first + R) * C) else {
            return Err(Error::Internal("chunk reads past the end of an input"));
        };
        let (tile, _) = whole.as_chunks::<C>();
        return tile
            .try_into()
            .map_err(|_| Error::Internal("a whole chunk has the wrong row count"));
    }
    load_rows(src, first, rows, scratch)?;
    Ok(scratch)
}

/// Asks for `len` floats of `src` from `at` on (clipped to its end) to be brought into the cache:
/// the next chunk's rows, requested while this chunk computes. The hardware prefetchers alone
/// leave the first reads of each chunk waiting on memory (perf: the transposes and products that
/// first touch an input take the misses).
#[inline(always)]
fn prefetch_next(src: &[f32], at: usize, len: usize) {
    let Some(next) = src.get(at..(at + len).min(src.len())) else {
        return;
    };
    #[cfg(target_arch = "x86_64")]
    for line in next.chunks(16) {
        // SAFETY: a prefetch is only a hint; the address lies inside `src`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = next;
}

/// Copies `first..first + rows` of a contiguous per-token buffer into a vector, zeroing the rest.
#[inline(always)]
pub fn load_vec<const R: usize>(
    src: &[f32],
    first: usize,
    rows: usize,
    dst: &mut [f32; R],
) -> Result<()> {
    let Some(src) = src.get(first..first + rows) else {
        return Err(Error::Internal(
            "chunk reads past the end of a per-token input",
        ));
    };
    *dst = [0.0; R];
    for (d, s) in dst.iter_mut().zip(src) {
        *d = *s;
    }
    Ok(())
}

/// Tiles at least this large (a chunk's outputs, 16 KiB at C = d = 64) are stored with
/// [`Isa::stream`]; a step's single row is read back by the caller at once, and the store fence
/// after non-temporal stores costs more than the row (perf: `decode_step` 1.6x slower).
const STREAM_MIN_FLOATS: usize = 1024;

/// Writes the first `rows` rows of the tile to rows `first..` of a contiguous `(tokens, C)` buffer,
/// with [`Isa::stream`] for chunk tiles: this call does not read its output again.
#[inline(always)]
pub fn store_rows<I: Isa, const R: usize, const C: usize>(
    isa: I,
    src: &Tile<R, C>,
    rows: usize,
    dst: &mut [f32],
    first: usize,
) -> Result<()> {
    let Some(dst) = dst.get_mut(first * C..(first + rows) * C) else {
        return Err(Error::Internal("chunk writes past the end of the output"));
    };
    let src = src.as_flattened();
    if R * C >= STREAM_MIN_FLOATS {
        isa.stream(src, dst);
    } else {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = *s;
        }
    }
    Ok(())
}

/// Copies a tile's flat data into `buf` at `at` (a chunk's slot of the chunk-parallel schedule).
#[inline(always)]
pub fn save(src: &[f32], buf: &mut [f32], at: usize) -> Result<()> {
    let Some(dst) = buf.get_mut(at..at + src.len()) else {
        return Err(Error::Internal(
            "a chunk slot lies past the end of its workspace",
        ));
    };
    dst.copy_from_slice(src);
    Ok(())
}

/// Copies `dst.len()` floats of `buf` at `at` back into a tile's flat data.
#[inline(always)]
pub fn restore(dst: &mut [f32], buf: &[f32], at: usize) -> Result<()> {
    let Some(src) = buf.get(at..at + dst.len()) else {
        return Err(Error::Internal(
            "a chunk slot lies past the end of its workspace",
        ));
    };
    dst.copy_from_slice(src);
    Ok(())
}

/// The live rows of a tile as one contiguous slice.
#[inline(always)]
fn live<const R: usize, const C: usize>(t: &mut Tile<R, C>, rows: usize) -> &mut [f32] {
    let rows = rows.min(R);
    t[..rows].as_flattened_mut()
}

#[inline(always)]
fn lanes16<const N: usize>(row: &[f32; N], at: usize) -> Option<&[f32; 16]> {
    row.get(at..at + 16).and_then(|s| s.try_into().ok())
}

#[inline(always)]
fn lanes16_mut<const N: usize>(row: &mut [f32; N], at: usize) -> Option<&mut [f32; 16]> {
    row.get_mut(at..at + 16).and_then(|s| s.try_into().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::isa::{Avx2, Avx512, Portable};

    fn check_stream<I: Isa>(isa: I) {
        let src: Vec<f32> = (0..300).map(|i| i as f32).collect();
        for offset in 0..17 {
            for len in [0, 1, 15, 16, 17, 31, 100, 300] {
                let mut dst = vec![-1.0f32; offset + len + 20];
                isa.stream(&src[..len], &mut dst[offset..offset + len]);
                assert_eq!(&dst[offset..offset + len], &src[..len], "{offset} {len}");
                assert!(dst[..offset]
                    .iter()
                    .chain(&dst[offset + len..])
                    .all(|&x| x == -1.0));
            }
        }
    }

    #[test]
    fn streamed_stores_equal_a_copy_at_every_alignment() {
        check_stream(Portable);
        if let Some(isa) = Avx2::detect() {
            check_stream(isa);
        }
        if let Some(isa) = Avx512::detect() {
            check_stream(isa);
        }
    }

    #[test]
    fn whole_chunks_are_viewed_in_place_and_partial_ones_copied_with_zero_rows() {
        let src: Vec<f32> = (0..5 * 4).map(|i| i as f32).collect();
        let mut scratch = [[7.0f32; 4]; 2];
        let whole = view_rows(&src, 2, 2, &mut scratch).expect("in bounds");
        assert_eq!(whole.as_flattened().as_ptr(), src[8..].as_ptr());
        let part = view_rows(&src, 4, 1, &mut scratch).expect("in bounds");
        assert_eq!(*part, [[16.0, 17.0, 18.0, 19.0], [0.0; 4]]);
        assert!(view_rows(&src, 4, 2, &mut scratch).is_err());
    }
}
