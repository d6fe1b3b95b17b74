//! weir: a self-hosted webhook buffer that batches rows into Celonis Data Push jobs.

pub mod api_error;
pub mod app;
pub mod config;
pub mod emulator;
pub mod ingest;
pub mod listener;
pub mod pipeline;
pub mod queue;
pub mod row;
pub mod schedule;
pub mod shutdown;
pub mod sink;
