//! weir's integration tests: one binary, every test starts the real app (or the real
//! emulator) on port 0 and talks HTTP to it over loopback.

// Tests may print what they found (seeds, evidence) for the person reading a failure.
#![allow(clippy::print_stdout)]
// A binary crate: `pub` marks what its modules share with each other.
#![allow(unreachable_pub)]

mod admin;
mod answers;
mod check;
mod continuous;
mod crash;
mod delivery;
mod delta;
mod deploy;
mod emulator;
mod fetch;
mod helpers;
mod ingest;
mod isolation;
mod nats;
mod outbound;
mod page;
mod privacy;
mod proxy;
mod push;
mod security;
mod shaping;
mod soak;
mod sources;
mod spool;
mod tidy;
mod types;
