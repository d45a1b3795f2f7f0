//! Effect executors for SQL, with the checkpoint in the same transaction.
//!
//! One commit holds a batch's SQL effects, the keyed states it changed, the events the
//! plugin rejected, the messages it emitted (an outbox, published after the commit) and the
//! plugin's checkpoint. A crash before the commit loses the whole batch (it is redelivered);
//! a crash after it loses nothing (the redelivered events are at or below the checkpoint).
//!
//! The checkpoint names the `[state] version` every stored state of the plugin is written in,
//! so a version change (a migration) is committed or not, never half, and the sequence the
//! stored states are as of (the last snapshot: states may be written less often than
//! effects, see `snapshot-interval`).
//!
//! Table layout: every table a manifest allows is `"<table>"(key TEXT PRIMARY KEY,
//! doc TEXT NOT NULL, updated_seq INTEGER NOT NULL)`, `doc` the row as a JSON object.
//! jetfold's own tables are `jetfold_checkpoints`, `jetfold_states`, `jetfold_rejected`
//! (with `replayed_seq`: the replayed copy that folded the event since, if one did),
//! `jetfold_outbox` and `jetfold_shadow_diffs` (plugin, shadow digest, seq, key, live and
//! shadow outcomes).

pub mod postgres;
pub mod sqlite;

pub use jetfold_contract::commit::{
    Checkpoint, Commit, OutboxMessage, Rejected, ShadowDiff, TablePlan, merge_patch,
};
pub use jetfold_contract::config::SinkTarget;

/// jetfold's own tables, each keyed by plugin.
pub(crate) const JETFOLD_TABLES: [&str; 5] = [
    "jetfold_checkpoints",
    "jetfold_states",
    "jetfold_rejected",
    "jetfold_shadow_diffs",
    "jetfold_outbox",
];

/// A connection to the daemon's database, whichever it is.
pub enum Sink {
    /// SQLite.
    Sqlite(sqlite::SqliteSink),
    /// PostgreSQL (boxed: the client and its statement cache are large).
    Postgres(Box<postgres::PostgresSink>),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Sink::Sqlite($s) => $call.map_err(anyhow::Error::from),
            Sink::Postgres($s) => $call.map_err(anyhow::Error::from),
        }
    };
}

impl Sink {
    /// Opens the target, creating jetfold's tables.
    pub fn open(target: &SinkTarget) -> anyhow::Result<Sink> {
        use anyhow::Context as _;
        Ok(match target {
            SinkTarget::Sqlite(path) => Sink::Sqlite(
                sqlite::SqliteSink::open(path)
                    .with_context(|| format!("failed to open SQLite {}", path.display()))?,
            ),
            SinkTarget::Postgres { url, schema } => Sink::Postgres(Box::new(
                postgres::PostgresSink::open(url, schema)
                    .with_context(|| format!("failed to open PostgreSQL schema {schema}"))?,
            )),
        })
    }

    /// Creates the read-model tables a plugin may write.
    pub fn ensure_tables(&mut self, tables: &[String]) -> anyhow::Result<()> {
        delegate!(self, s => s.ensure_tables(tables))
    }

    /// The plugin's checkpoint.
    pub fn checkpoint(&mut self, plugin: &str) -> anyhow::Result<Option<Checkpoint>> {
        delegate!(self, s => s.checkpoint(plugin))
    }

    /// One key's committed state.
    pub fn state(&mut self, plugin: &str, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        delegate!(self, s => s.state(plugin, key))
    }

    /// The committed states of `keys` (those that have one), in one query.
    pub fn states_of(
        &mut self,
        plugin: &str,
        keys: &[&str],
    ) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        delegate!(self, s => s.states_of(plugin, keys))
    }

    /// Whether the plugin rejected the event at `seq`, and if so the sequence of the replayed
    /// copy of it that it folded, if any (`Some(None)`: rejected, no copy folded).
    pub fn rejection(&mut self, plugin: &str, seq: u64) -> anyhow::Result<Option<Option<u64>>> {
        delegate!(self, s => s.rejection(plugin, seq))
    }

    /// The events the plugin rejected after sequence `after` up to `upto`, by sequence.
    pub fn rejections_between(
        &mut self,
        plugin: &str,
        after: u64,
        upto: u64,
    ) -> anyhow::Result<Vec<u64>> {
        delegate!(self, s => s.rejections_between(plugin, after, upto))
    }

    /// Every committed state of a plugin.
    pub fn states(&mut self, plugin: &str) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        delegate!(self, s => s.states(plugin))
    }

    /// Messages committed but not confirmed published.
    pub fn outbox(&mut self, plugin: &str) -> anyhow::Result<Vec<OutboxMessage>> {
        delegate!(self, s => s.outbox(plugin))
    }

    /// Forgets confirmed outbox messages.
    pub fn clear_outbox(&mut self, ids: &[String]) -> anyhow::Result<()> {
        delegate!(self, s => s.clear_outbox(ids))
    }

    /// Commits one batch atomically.
    pub fn commit(&mut self, batch: &Commit) -> anyhow::Result<()> {
        delegate!(self, s => s.commit(batch))
    }

    /// Forgets everything a staging identity (a rebuild in progress) has written: its tables
    /// (`tables`, named as stored), states, rejections, outbox and checkpoint.
    pub fn reset_staging(&mut self, staging: &str, tables: &[String]) -> anyhow::Result<()> {
        delegate!(self, s => s.reset_staging(staging, tables))
    }

    /// In one transaction, makes what `staging` built the plugin `live`'s: each table `t` of
    /// `tables` is replaced by `t{suffix}`, and the live states, rejections and checkpoint by
    /// the staging ones.
    pub fn promote_staging(
        &mut self,
        staging: &str,
        live: &str,
        tables: &[String],
        suffix: &str,
    ) -> anyhow::Result<()> {
        delegate!(self, s => s.promote_staging(staging, live, tables, suffix))
    }

    /// The rows of a read-model table, by key.
    pub fn rows(&mut self, table: &str) -> anyhow::Result<Vec<(String, String)>> {
        delegate!(self, s => s.rows(table))
    }
}
