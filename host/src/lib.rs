//! jetfold: folds NATS JetStream events through sandboxed WebAssembly plugins.
//!
//! # Layout
//!
//! The modules follow the path of an event, and none calls back up the line. What crosses
//! the edges as plain data (the event, headers, signatures, manifest, config, effects, the
//! commit plan) is the `jetfold-contract` crate, re-exported here under the same names:
//!
//! - [`config`]: `jetfold.toml`, the daemon's configuration (from the contract).
//! - [`daemon`]: `jetfold run`, one worker per plugin along the path below.
//! - [`demo`]: `jetfold demo`, a local nats-server, a burst of events, the read model.
//! - [`manifest`]: `plugin.toml`, what a plugin is and what it may do (from the contract).
//! - [`nats`]: connecting, the JetStream source (consumer, event from message), the streams
//!   that keep what plugins emit.
//! - [`event`]: the event record and its JSON form (the contract's), and its WIT form.
//! - [`component`]: loading a component: digest, precompiled cache, sandbox and world checks.
//! - [`bindings`]: the generated WIT bindings (the only `bindgen!`).
//! - [`guest`]: calling a guest under fuel and memory limits; traps and errors by cause.
//! - [`wasi`]: the deny-all WASI linked into guests whose toolchain imports it.
//! - [`integrity`]: HMAC-SHA256 signatures on events (the contract's), checked on messages.
//! - [`upcast`]: upcasters in a chain, rewriting events to the schema version plugins read.
//! - [`pipeline`]: the hot path: a batch of keyed events through one plugin version, behind
//!   its upcasters.
//! - [`effect`]: the effects guests return (the contract's), converted from their WIT form.
//! - [`sink`]: SQL effect executors with the checkpoint, states and outbox in one transaction.
//! - [`query`]: read-model queries against a running daemon (NATS request/reply).
//! - [`dlq`]: dead letters: listing them, replaying them after a fix.
//! - [`replay`]: folding a stream again offline (`replay`, `replay --diff`, `verify`), with
//!   the daemon's rules (signatures, upcasters, replayed dead letters).
//! - [`transfer`]: `events export` and `import`, a stream as JSON Lines and back.
//! - [`http`]: the daemon's HTTP endpoint: metrics, health, readiness, the status page.
//! - [`progress`]: the progress line the tools draw on a terminal.
//! - [`retry`]: the one retry policy (exponential, capped, with jitter) for the database and NATS.
//! - [`status`]: what a plugin on a daemon is doing (running, stalled, stopped, …), as a type.
//! - [`registry`]: the fleet registry on JetStream (Object Store + KV): push, roll back, pause.
//! - [`plugin_dir`]: the versions a plugin's directory keeps beside its manifest (shadow,
//!   previous, promotion sequence), for the registry and the daemon.
//! - [`telemetry`]: what workers report (progress, failures, histograms, stage times), read by
//!   the daemon's status and the HTTP endpoint.
//! - [`fold`]: the offline runner behind `jetfold test`, and its golden-file report.
//! - [`golden`]: a run compared with its golden file, by value, and the diff by step.
//! - [`builder`]: `jetfold build`, source to component.
//! - [`scaffold`]: `jetfold new`, a plugin that builds and passes its tests as made.

pub mod bindings;
pub mod builder;
pub mod component;
pub use jetfold_contract::config;
pub mod daemon;
pub mod demo;
pub mod dlq;
pub mod effect;
pub mod event;
pub mod fold;
pub mod golden;
pub mod guest;
pub mod http;
pub mod integrity;
pub use jetfold_contract::manifest;
pub mod nats;
pub mod pipeline;
pub mod plugin_dir;
pub mod progress;
pub mod query;
pub mod registry;
pub mod replay;
pub mod retry;
pub mod scaffold;
pub mod sink;
pub mod status;
pub mod telemetry;
pub mod transfer;
pub mod upcast;
pub mod wasi;
