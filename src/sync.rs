//! The one way weir takes a `std::sync::Mutex`: poisoning is ignored.
//!
//! weir's mutexes guard small values that every critical section leaves consistent (a
//! counter map, a flag, a cached token, a queue's bookkeeping, which is checked again on
//! recovery), so a panic in another holder is no reason to take the process down with it.
//! The emulator has its own copy, because it depends on no other weir module.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, taking the value over if a previous holder panicked.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
