//! weir's integration tests: one binary, every test starts the real app on port 0 and talks
//! HTTP to it over loopback.

mod check;
mod delivery;
mod helpers;
mod ingest;
