//! jetfold's contract: what crosses its edges, as plain data and pure checks, without
//! wasmtime, tokio or a database (what the fuzz targets and checks outside the host need).
//!
//! # Layout
//!
//! - [`event`]: the event record and its JSON form (fixtures, exports).
//! - [`headers`]: the headers jetfold reads and writes, and what NATS accepts as one.
//! - [`decode`]: the event a message stored in a stream makes (headers, payload, subject).
//! - [`integrity`]: HMAC-SHA256 signatures on events.
//! - [`manifest`]: `plugin.toml`, what a plugin is and what it may do.
//! - [`config`]: `jetfold.toml`, the daemon's configuration.
//! - [`effect`]: the effects guests return, validated and checked against the manifest.
//! - [`commit`]: what one batch commits, and the per-table plan the sinks run.

pub mod commit;
pub mod config;
pub mod decode;
pub mod effect;
pub mod event;
pub mod headers;
pub mod integrity;
pub mod manifest;
