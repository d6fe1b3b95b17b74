//! weir's integration tests: one binary, every test starts the real app (or the real
//! emulator) on port 0 and talks HTTP to it over loopback.

mod admin;
mod check;
mod crash;
mod delivery;
mod deploy;
mod emulator;
mod helpers;
mod ingest;
mod outbound;
mod security;
mod soak;
mod spool;
mod types;
