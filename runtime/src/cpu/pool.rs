//! The buffer pool: spare input copies and workspaces kept for the next call.

/// Spare buffers, kept for the next call: a fresh multi-MB allocation is mapped by the OS on
/// first touch, and those page faults cost as much as the copy itself (perf, plain N = 4096: a
/// third of a call). Holds at most [`POOL_SLOTS`] buffers, the largest offered.
struct Pool(std::sync::Mutex<Vec<Vec<f32>>>);

impl Pool {
    const fn new() -> Pool {
        Pool(std::sync::Mutex::new(Vec::new()))
    }

    /// The buffers, even if a thread panicked while holding them (they are only spares).
    fn spares(&self) -> std::sync::MutexGuard<'_, Vec<Vec<f32>>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A buffer of `len` floats (contents unspecified): the smallest spare that fits, or new.
    fn take(&self, len: usize) -> Vec<f32> {
        // Small buffers (a step's tokens; absent z or spills) come straight from the allocator,
        // which serves them without page faults and without the lock.
        if len < POOL_MIN_LEN {
            return vec![0.0; len];
        }
        let reused = {
            let mut spares = self.spares();
            let best = spares
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            best.map(|i| spares.swap_remove(i))
        };
        match reused {
            Some(mut buf) => {
                // Within capacity: no reallocation; only growth past the old length is written.
                buf.resize(len, 0.0);
                buf
            }
            None => vec![0.0; len],
        }
    }

    /// Keeps the largest [`POOL_SLOTS`] of the spares and `bufs`.
    fn put(&self, bufs: impl IntoIterator<Item = Vec<f32>>) {
        let mut spares = self.spares();
        spares.extend(bufs.into_iter().filter(|b| b.capacity() >= POOL_MIN_LEN));
        spares.sort_by_key(|b| std::cmp::Reverse(b.capacity()));
        spares.truncate(POOL_SLOTS);
    }
}

/// The process's pool: input copies and workspaces of earlier calls. Shared by all threads,
/// because the inputs are copied on several threads at once.
static POOL: Pool = Pool::new();

/// Buffers the pool keeps: the most one call holds at once, a traced call's backward (q, k, v,
/// dL/do and dq, dk, dv); the chunk-parallel forward holds q, k, v and three workspaces.
const POOL_SLOTS: usize = 7;

/// Buffers shorter than this (64 KiB) bypass the pool.
const POOL_MIN_LEN: usize = 16 << 10;

/// A buffer of `len` floats (contents unspecified) from the pool, or a new one.
pub fn pooled_buffer(len: usize) -> Vec<f32> {
    POOL.take(len)
}

/// Returns buffers to the pool (the largest `POOL_SLOTS` are kept).
pub fn recycle(bufs: impl IntoIterator<Item = Vec<f32>>) {
    POOL.put(bufs);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_buffers_have_the_asked_length_and_are_reused() {
        let pool = Pool::new();
        let big = 2 * POOL_MIN_LEN;
        let a = pool.take(big);
        assert_eq!(a.len(), big);
        let ptr = a.as_ptr();
        pool.put([a]);
        // A smaller request reuses the same allocation.
        let b = pool.take(POOL_MIN_LEN);
        assert_eq!((b.len(), b.as_ptr()), (POOL_MIN_LEN, ptr));
        pool.put([b]);
        // Small and empty requests leave the spares alone, and small buffers are not kept.
        assert_eq!(pool.take(0).capacity(), 0);
        assert_eq!(pool.take(10).len(), 10);
        pool.put([vec![0.0; 10]]);
        assert_eq!(pool.spares().len(), 1);
        pool.put((1..=POOL_SLOTS).map(|i| vec![0.0; POOL_MIN_LEN + i]));
        let caps: Vec<usize> = pool.spares().iter().map(|b| b.capacity()).collect();
        assert_eq!(caps.len(), POOL_SLOTS);
        assert!(
            caps.contains(&big),
            "the largest buffers are kept: {caps:?}"
        );
    }
}
