//! weir: a self-hosted webhook buffer that batches rows into Celonis Data Push jobs.

pub mod emulator;
pub mod queue;
pub mod row;
