//! weir: a self-hosted webhook buffer that batches rows into Celonis Data Push jobs.

pub mod admin;
pub mod api_error;
pub mod app;
pub mod auth_failure;
pub mod clock;
pub mod collector;
pub mod config;
pub mod dead_letter;
pub mod durable;
pub mod emulator;
pub mod expr;
pub mod history;
pub mod ingest;
pub mod listener;
pub mod metrics;
pub mod pipeline;
pub mod preview;
pub mod pseudonymise;
pub mod push;
pub mod queue;
pub mod row;
pub mod schedule;
pub mod shutdown;
pub mod sink;
pub mod sync;
pub mod values;
