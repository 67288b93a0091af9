//! Evaluation slots: which of the `--jobs` parallel places an evaluation runs in,
//! and, with `--devices`, which GPUs that place owns.
//!
//! A search runs up to N evaluations at once; each takes a free slot for as long as
//! it runs and gives it back at the end, so a slot (and its devices) is never used
//! by two evaluations at the same time. The slot is how an evaluation finds its
//! device: `SOUP_SLOT` (0-based) always, and with devices `CUDA_VISIBLE_DEVICES`
//! and the `{slot}` / `{devices}` placeholders (EVALUATOR.md). A persistent
//! evaluation server belongs to one slot and serves only the evaluations holding it.
//!
//! `--devices 0,1,2,3` gives four slots of one device each; `--devices 0,1:2,3`
//! two slots of two devices each (`:` separates slots, `,` the devices of one
//! slot, as soon as there is a `:`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

/// How often a wait for a slot looks at its cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(20);

/// A `--devices` list that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--devices {list:?}: {reason}")]
pub struct DevicesError {
    /// The list as given.
    pub list: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Parses a device list: `0,1,2,3` (one device per slot) or `0,1:2,3` (slots
/// separated by `:`). A device is a CUDA index or id (`0`, `GPU-5d2c…`, `MIG-…`):
/// letters, digits, `-`, `_`, `/` and `.`; none may appear twice.
pub fn parse_devices(list: &str) -> Result<Vec<Vec<String>>, DevicesError> {
    let error = |reason: String| DevicesError { list: list.to_owned(), reason };
    let slots: Vec<Vec<String>> = if list.contains(':') {
        list.split(':').map(|slot| slot.split(',').map(|d| d.trim().to_owned()).collect()).collect()
    } else {
        list.split(',').map(|d| vec![d.trim().to_owned()]).collect()
    };
    let mut seen = std::collections::BTreeSet::new();
    for device in slots.iter().flatten() {
        if device.is_empty() {
            return Err(error("a device is empty (two separators in a row?)".into()));
        }
        let safe = |c: char| c.is_ascii_alphanumeric() || "-_/.".contains(c);
        if !device.chars().all(safe) {
            return Err(error(format!(
                "device {device:?} may only hold letters, digits, '-', '_', '/' and '.'"
            )));
        }
        if !seen.insert(device.clone()) {
            return Err(error(format!("device {device} is listed twice")));
        }
    }
    Ok(slots)
}

/// The slots of a search.
#[derive(Debug)]
pub struct Slots {
    devices: Option<Vec<Vec<String>>>,
    free: Mutex<Vec<bool>>,
    freed: Condvar,
}

/// A slot held by one evaluation; given back when dropped.
#[derive(Debug)]
pub struct Slot<'a> {
    slots: &'a Slots,
    index: usize,
}

impl Slots {
    /// `jobs` slots (at least one) without devices.
    pub fn new(jobs: usize) -> Slots {
        Slots::make(jobs.max(1), None)
    }

    /// One slot per device group (see [`parse_devices`]).
    pub fn with_devices(devices: Vec<Vec<String>>) -> Slots {
        Slots::make(devices.len().max(1), Some(devices))
    }

    fn make(n: usize, devices: Option<Vec<Vec<String>>>) -> Slots {
        Slots { devices, free: Mutex::new(vec![true; n]), freed: Condvar::new() }
    }

    /// How many slots there are (the number of jobs).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether there are none (never: there is always at least one).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the slots have devices.
    pub fn has_devices(&self) -> bool {
        self.devices.is_some()
    }

    /// Takes the lowest free slot, waiting for one if all are taken; `None` once
    /// `cancel` is raised.
    pub fn acquire(&self, cancel: Option<&AtomicBool>) -> Option<Slot<'_>> {
        let mut free = self.lock();
        loop {
            if cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
                return None;
            }
            if let Some(index) = free.iter().position(|&f| f) {
                free[index] = false;
                return Some(Slot { slots: self, index });
            }
            free = self
                .freed
                .wait_timeout(free, CANCEL_POLL)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<bool>> {
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Slot<'_> {
    /// The slot's number, 0-based (`SOUP_SLOT`).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The slot's devices, comma-separated (`CUDA_VISIBLE_DEVICES`), when the
    /// search has devices.
    pub fn devices(&self) -> Option<String> {
        self.slots.devices.as_ref().map(|d| d[self.index].join(","))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.slots.lock()[self.index] = true;
        self.slots.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn device_lists() {
        let one = |s: &str| parse_devices(s).unwrap();
        assert_eq!(one("0,1,2,3"), [["0"], ["1"], ["2"], ["3"]]);
        assert_eq!(one("0,1:2,3"), [vec!["0", "1"], vec!["2", "3"]]);
        assert_eq!(one("7"), [["7"]]);
        assert_eq!(one("GPU-5d2c-aa:MIG-1/2"), [["GPU-5d2c-aa"], ["MIG-1/2"]]);
        assert_eq!(one(" 0, 1 "), [["0"], ["1"]]);
        for bad in ["", "0,,1", "0:", ":1", "0,0", "0:1,0", "0;1", "$(x)", "0 1"] {
            assert!(parse_devices(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_slot_is_never_held_twice() {
        let slots = Slots::with_devices(parse_devices("a:b:c").unwrap());
        assert_eq!(slots.len(), 3);
        let holders: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        let overlaps = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..200 {
                        let slot = slots.acquire(None).unwrap();
                        assert_eq!(slot.devices().unwrap(), ["a", "b", "c"][slot.index()]);
                        if holders[slot.index()].fetch_add(1, Ordering::SeqCst) != 0 {
                            overlaps.fetch_add(1, Ordering::SeqCst);
                        }
                        std::thread::yield_now();
                        holders[slot.index()].fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(overlaps.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn lowest_free_slot_first_and_cancel_ends_a_wait() {
        let slots = Slots::new(2);
        assert!(!slots.has_devices());
        let a = slots.acquire(None).unwrap();
        let b = slots.acquire(None).unwrap();
        assert_eq!((a.index(), b.index(), a.devices()), (0, 1, None));
        drop(a);
        let c = slots.acquire(None).unwrap();
        assert_eq!(c.index(), 0);
        let cancel = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| slots.acquire(Some(&cancel)).map(|s| s.index()));
            std::thread::sleep(Duration::from_millis(50));
            cancel.store(true, Ordering::SeqCst);
            assert_eq!(waiter.join().unwrap(), None);
        });
        drop((b, c));
        assert_eq!(Slots::new(0).len(), 1);
    }
}
