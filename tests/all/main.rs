//! Integration tests, one binary (`cargo test --test all`), one module per area.
//!
//! Plugins are built from `plugins/` by `jetfold build` into real components; the `jetfold`
//! binary is run as a user runs it.

mod auth;
mod batching;
mod crash;
mod daemon;
mod dlq;
mod emit;
mod events;
mod faults;
mod fleet;
mod http;
mod languages;
mod layout;
mod loading;
mod migrate;
mod query;
mod readme;
mod replay;
mod runner;
mod scaffold;
mod scale;
mod stop;
mod support;
mod swap;
mod upcast;
