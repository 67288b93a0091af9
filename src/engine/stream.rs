//! The streaming skeleton shared by every pass over the weights: the merge writes
//! chunks, the statistics passes (angles, non-finite counts) reduce them.
//!
//! A fixed number of workers (a local rayon pool, never the global one) take chunk
//! indices from one atomic counter, so the inputs are read front to back as a single
//! stream however many threads run. Each chunk's result is handed back *in chunk
//! order* (buffered while earlier chunks are still running), so reductions of floats
//! combine their per-chunk partial sums in a fixed order and give the same bits at
//! any thread count. Once a batch of consecutive chunks is done, their input pages
//! are released. The earliest failing chunk's error is reported, so errors do not
//! depend on the thread count either.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::engine::checkpoint::Checkpoint;
use crate::error::{Error, Result};

/// Chunks whose input pages are unmapped together: enough to make the system call
/// (and the TLB shootdown it costs every thread) rare, few enough that the mapped
/// inputs stay at a few MiB.
const RELEASE_BATCH: usize = 32;

/// Runs `work(i, state)` for every chunk `i` in `0..count` on `threads` workers
/// (0: one per core), each with its own `state` from `init`. Results reach
/// `in_order` in chunk order; `release` is called with ranges of consecutive
/// finished chunks whose input pages may be dropped. Stops at the first error (or
/// when `cancel` is set, with [`Error::Cancelled`]) and returns the error of the
/// earliest failing chunk.
pub(crate) fn run<S, T: Send>(
    threads: usize,
    count: usize,
    cancel: Option<&AtomicBool>,
    init: impl Fn() -> S + Sync,
    work: impl Fn(usize, &mut S) -> Result<T> + Sync,
    in_order: impl FnMut(usize, T) + Send,
    release: impl Fn(Range<usize>) + Sync,
) -> Result<()> {
    let threads = if threads == 0 { rayon::current_num_threads() } else { threads };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let next = AtomicUsize::new(0);
    // The lowest failing chunk so far: chunks before it still run, so the error
    // reported is the earliest one whatever the threads' timing.
    let failed_at = AtomicUsize::new(usize::MAX);
    let first_error: Mutex<Option<(usize, Error)>> = Mutex::new(None);
    let finished = Mutex::new(Finished::new(count, in_order));
    pool.scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|_| {
                let mut state = init();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count || i > failed_at.load(Ordering::Relaxed) {
                        break;
                    }
                    let cancelled = cancel.is_some_and(|c| c.load(Ordering::Relaxed));
                    let result =
                        if cancelled { Err(Error::Cancelled) } else { work(i, &mut state) };
                    match result {
                        Ok(value) => {
                            let due =
                                finished.lock().unwrap_or_else(|p| p.into_inner()).finish(i, value);
                            if let Some(range) = due {
                                release(range);
                            }
                        }
                        Err(e) => {
                            failed_at.fetch_min(i, Ordering::Relaxed);
                            let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
                            if slot.as_ref().is_none_or(|(j, _)| i < *j) {
                                *slot = Some((i, e));
                            }
                            break;
                        }
                    }
                }
            });
        }
    });
    match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// Results of finished chunks waiting for the ones before them, and how far the
/// in-order hand-over and the page release have got.
struct Finished<T, F> {
    /// `Some` for a chunk at or past `prefix` that is done; everything before
    /// `prefix` has been handed over.
    slots: Vec<Option<T>>,
    prefix: usize,
    /// Input pages of every chunk before this one have been released.
    released: usize,
    in_order: F,
}

impl<T, F: FnMut(usize, T)> Finished<T, F> {
    fn new(count: usize, in_order: F) -> Self {
        Finished { slots: (0..count).map(|_| None).collect(), prefix: 0, released: 0, in_order }
    }

    /// Records chunk `i`'s result, hands over every result now in order, and
    /// returns the chunks whose pages are due for release.
    fn finish(&mut self, i: usize, value: T) -> Option<Range<usize>> {
        self.slots[i] = Some(value);
        while let Some(value) = self.slots.get_mut(self.prefix).and_then(Option::take) {
            (self.in_order)(self.prefix, value);
            self.prefix += 1;
        }
        let due = self.prefix - self.released >= RELEASE_BATCH || self.prefix == self.slots.len();
        (due && self.prefix > self.released).then(|| {
            let range = self.released..self.prefix;
            self.released = self.prefix;
            range
        })
    }
}

/// One byte range a chunk read: input `input` (an index into the pass's list of
/// checkpoints), shard `shard` of `checkpoint`, bytes `start..end` of the file.
pub(crate) struct Read<'a> {
    /// Index of the input in the pass.
    pub input: usize,
    /// The checkpoint read.
    pub checkpoint: &'a Checkpoint,
    /// Its shard.
    pub shard: usize,
    /// First byte, absolute in the shard file.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl<'a> Read<'a> {
    /// The read of `len` bytes of `tensor` from byte `start` (in the tensor's own
    /// bytes, as [`Checkpoint::bytes`] takes them): the file range it touches.
    pub fn of(
        input: usize,
        checkpoint: &'a Checkpoint,
        tensor: &crate::engine::checkpoint::TensorEntry,
        start: usize,
        len: usize,
    ) -> Self {
        let (shard, range) = checkpoint.span(tensor, start, len);
        Read { input, checkpoint, shard, start: range.start, end: range.end }
    }
}

/// Unmaps the pages of `reads` (of `inputs` inputs), merging ranges that touch so
/// that each contiguous stretch of a shard costs one system call.
pub(crate) fn release<'a>(inputs: usize, reads: impl Iterator<Item = Read<'a>>) {
    let mut pending: Vec<Option<Read<'a>>> = (0..inputs).map(|_| None).collect();
    for read in reads {
        let Some(slot) = pending.get_mut(read.input) else { continue };
        match slot {
            Some(p) if p.shard == read.shard && p.end == read.start => p.end = read.end,
            slot => {
                if let Some(p) = slot.replace(read) {
                    p.checkpoint.release(p.shard, p.start, p.end);
                }
            }
        }
    }
    for p in pending.into_iter().flatten() {
        p.checkpoint.release(p.shard, p.start, p.end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_arrive_in_chunk_order_at_any_thread_count() {
        for threads in [1, 2, 5] {
            let mut seen = Vec::new();
            let mut released = Vec::new();
            let released_ranges = Mutex::new(&mut released);
            run(
                threads,
                100,
                None,
                || (),
                |i, _| Ok(i * 2),
                |i, v| seen.push((i, v)),
                |r| released_ranges.lock().unwrap().push(r),
            )
            .unwrap();
            assert_eq!(seen, (0..100).map(|i| (i, i * 2)).collect::<Vec<_>>());
            released.sort_by_key(|r| r.start);
            let covered: Vec<usize> = released.into_iter().flatten().collect();
            assert_eq!(covered, (0..100).collect::<Vec<_>>());
        }
    }

    #[test]
    fn the_earliest_error_wins() {
        for threads in [1, 3] {
            let err = run(
                threads,
                50,
                None,
                || (),
                |i, _| {
                    if i >= 7 {
                        Err(Error::SizeOverflow { tensor: i.to_string() })
                    } else {
                        Ok(())
                    }
                },
                |_, _| {},
                |_| {},
            )
            .unwrap_err();
            assert!(matches!(err, Error::SizeOverflow { tensor } if tensor == "7"));
        }
    }

    #[test]
    fn cancel_stops_the_run() {
        let cancel = AtomicBool::new(true);
        let err = run(2, 10, Some(&cancel), || (), |_, _| Ok(()), |_, _| {}, |_| {}).unwrap_err();
        assert!(matches!(err, Error::Cancelled));
    }
}
