//! Sources: rows weir fetches itself rather than receives. `kind = "poll"` polls a
//! dequeue/ack API (Dynamics 365 FinOps recurring integrations): dequeue a package, download
//! and unpack it ([`package`]), screen its rows as ingest does, queue them all-or-nothing
//! with `Pipeline::push`, then ack. Sources feed queues only; they never talk to sinks.

pub mod package;
