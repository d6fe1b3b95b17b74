//! Why a sender check failed, and the per-reason counters: shared by ingest (which decides),
//! the pipeline (which holds the counters) and metrics (which reports them), so neither of
//! the latter imports ingest.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a sender check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No credentials where the scheme expects them.
    Missing,
    /// Credentials present but unreadable (bad base64, no `t=` in Stripe-Signature, …).
    Malformed,
    /// Wrong token, password or signature.
    Mismatch,
    /// A correct signature on a timestamp outside the tolerance (a replay, or a skewed clock).
    Stale,
}

impl Failure {
    pub const ALL: [Failure; 4] = [
        Failure::Missing,
        Failure::Malformed,
        Failure::Mismatch,
        Failure::Stale,
    ];

    /// A bounded label value for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Failure::Missing => "missing_credentials",
            Failure::Malformed => "malformed_credentials",
            Failure::Mismatch => "bad_credentials",
            Failure::Stale => "stale_timestamp",
        }
    }
}

/// Failed sender checks per reason, since the process started.
#[derive(Debug, Default)]
pub struct AuthFailures([AtomicU64; 4]);

impl AuthFailures {
    pub fn count(&self, f: Failure) {
        self.0[f as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, f: Failure) -> u64 {
        self.0[f as usize].load(Ordering::Relaxed)
    }
}
