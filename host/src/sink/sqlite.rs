//! The SQLite sink: the embedded default. WAL journal, one transaction per batch.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use rusqlite::{Connection, OptionalExtension, params};

use super::{Checkpoint, Commit, JETFOLD_TABLES, OutboxMessage, merge_patch};
use crate::manifest::is_identifier;

/// A connection to the SQLite database of a daemon.
pub struct SqliteSink {
    /// Copies the WAL into the database off this connection's thread, once it has written
    /// (decision 45). Declared first: it stops before `conn` closes.
    checkpointer: Option<Checkpointer>,
    /// Whether starting it was tried (once: if it cannot start, the automatic checkpoint stays).
    checkpointer_tried: bool,
    conn: Connection,
    path: PathBuf,
}

/// How often the checkpointer looks for new WAL frames to copy.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// WAL frames (pages) past which the checkpointer also empties the WAL, holding writers back
/// for the frames written since its last pass and two fsyncs: 65,536 pages of 4 KiB = 256 MiB,
/// which a daemon writing 45 MB/s (10,000 compute-resource events/s) reaches every 6 s.
const WAL_RESET_FRAMES: i64 = 65_536;

/// A thread with its own connection that checkpoints the WAL while the sink's connection goes
/// on committing: passive checkpoints (which never hold a writer back) whenever something was
/// written, and a truncating one once the WAL is past `reset_frames`, since a WAL written to
/// without pause is never reset by passive checkpoints alone. Without it, SQLite's automatic
/// checkpoint runs inside whichever commit crosses 1,000 pages, and that commit waits for the
/// copy and its fsync (tens of milliseconds here, in every few dozen commits).
struct Checkpointer {
    dirty: Arc<AtomicBool>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path, reset_frames: i64) -> anyhow::Result<Checkpointer> {
        let conn = Connection::open(path)?;
        // A truncating checkpoint waits for the writer's transaction to end.
        conn.busy_timeout(Duration::from_secs(5))?;
        let dirty = Arc::new(AtomicBool::new(true));
        let (stop, stopped) = mpsc::channel::<()>();
        let flag = dirty.clone();
        let name = path.display().to_string();
        let thread =
            std::thread::Builder::new().name("sqlite-checkpoint".into()).spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_EVERY)
                {
                    if flag.swap(false, Ordering::Relaxed)
                        && let Err(e) = checkpoint(&conn, reset_frames)
                    {
                        tracing::warn!(database = %name, "WAL checkpoint failed: {e}");
                    }
                }
            })?;
        Ok(Checkpointer { dirty, stop: Some(stop), thread: Some(thread) })
    }
}

/// One pass: copies what the WAL holds, then empties it if it has grown past `reset_frames`.
fn checkpoint(conn: &Connection, reset_frames: i64) -> rusqlite::Result<()> {
    let frames = |mode: &str| {
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get::<_, i64>(1))
    };
    if frames("PASSIVE")? > reset_frames {
        frames("TRUNCATE")?;
    }
    Ok(())
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jetfold_checkpoints (
    plugin TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    last_seq INTEGER NOT NULL,
    state_version INTEGER NOT NULL DEFAULT 1,
    snapshot_seq INTEGER
);
CREATE TABLE IF NOT EXISTS jetfold_states (
    plugin TEXT NOT NULL,
    key TEXT NOT NULL,
    state BLOB NOT NULL,
    PRIMARY KEY (plugin, key)
);
CREATE TABLE IF NOT EXISTS jetfold_rejected (
    plugin TEXT NOT NULL,
    seq INTEGER NOT NULL,
    key TEXT NOT NULL,
    event_type TEXT NOT NULL,
    kind TEXT NOT NULL,
    code TEXT,
    message TEXT NOT NULL,
    replayed_seq INTEGER,
    PRIMARY KEY (plugin, seq)
);
CREATE TABLE IF NOT EXISTS jetfold_shadow_diffs (
    plugin TEXT NOT NULL,
    shadow_digest TEXT NOT NULL,
    seq INTEGER NOT NULL,
    key TEXT NOT NULL,
    live TEXT NOT NULL,
    shadow TEXT NOT NULL,
    PRIMARY KEY (plugin, shadow_digest, seq)
);
CREATE TABLE IF NOT EXISTS jetfold_outbox (
    plugin TEXT NOT NULL,
    msg_id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    headers TEXT NOT NULL,
    payload BLOB NOT NULL
);
";

impl SqliteSink {
    /// Opens (creating if needed) the database file and jetfold's own tables.
    pub fn open(path: &Path) -> rusqlite::Result<SqliteSink> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(30))?;
        // WAL: readers never block the writer; NORMAL sync is durable across process crashes.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        // Columns added since a table was first created, where a database lacks them:
        // checkpoints written before they named the state version held version 1 states;
        // before snapshots had an interval, states were stored with every commit (a missing
        // snapshot sequence reads as the checkpoint's); before replayed dead letters were
        // tracked, none was folded.
        for (table, column, definition) in [
            ("jetfold_checkpoints", "state_version", "INTEGER NOT NULL DEFAULT 1"),
            ("jetfold_checkpoints", "snapshot_seq", "INTEGER"),
            ("jetfold_rejected", "replayed_seq", "INTEGER"),
        ] {
            let has: bool = conn.query_row(
                "SELECT COUNT(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
                [table, column],
                |r| r.get(0),
            )?;
            if !has {
                conn.execute_batch(&format!(
                    "ALTER TABLE {table} ADD COLUMN {column} {definition}"
                ))?;
            }
        }
        Ok(SqliteSink {
            checkpointer: None,
            checkpointer_tried: false,
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Notes a write for the checkpointer, starting it (and turning off SQLite's automatic
    /// checkpoint on this connection) at the first. If it cannot start, the automatic
    /// checkpoint stays, and it is not tried again at every commit.
    fn wrote(&mut self) {
        self.wrote_with(WAL_RESET_FRAMES);
    }

    fn wrote_with(&mut self, reset_frames: i64) {
        if !self.checkpointer_tried {
            self.checkpointer_tried = true;
            match Checkpointer::start(&self.path, reset_frames) {
                Ok(c) => match self.conn.pragma_update(None, "wal_autocheckpoint", 0) {
                    Ok(()) => self.checkpointer = Some(c),
                    Err(e) => tracing::warn!("cannot hand WAL checkpoints to a thread: {e}"),
                },
                Err(e) => tracing::warn!("cannot start the WAL checkpointer: {e}"),
            }
        }
        if let Some(c) = &self.checkpointer {
            c.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Creates the read-model tables a plugin may write.
    pub fn ensure_tables(&mut self, tables: &[String]) -> rusqlite::Result<()> {
        for table in tables {
            assert!(is_identifier(table), "manifest validation lets only identifiers through");
            self.conn.execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS \"{table}\" (key TEXT PRIMARY KEY, doc TEXT NOT NULL, updated_seq INTEGER NOT NULL);"
            ))?;
        }
        Ok(())
    }

    /// The plugin's checkpoint, if it has committed before.
    pub fn checkpoint(&mut self, plugin: &str) -> rusqlite::Result<Option<Checkpoint>> {
        self.conn
            .query_row(
                "SELECT digest, last_seq, state_version, COALESCE(snapshot_seq, last_seq) \
                 FROM jetfold_checkpoints WHERE plugin = ?1",
                [plugin],
                |r| {
                    Ok(Checkpoint {
                        digest: r.get(0)?,
                        last_seq: r.get::<_, i64>(1)? as u64,
                        state_version: r.get(2)?,
                        snapshot_seq: r.get::<_, i64>(3)? as u64,
                    })
                },
            )
            .optional()
    }

    /// The committed state of one key.
    pub fn state(&mut self, plugin: &str, key: &str) -> rusqlite::Result<Option<Vec<u8>>> {
        self.conn
            .query_row(
                "SELECT state FROM jetfold_states WHERE plugin = ?1 AND key = ?2",
                [plugin, key],
                |r| r.get(0),
            )
            .optional()
    }

    /// See [`super::Sink::rejection`].
    pub fn rejection(&mut self, plugin: &str, seq: u64) -> rusqlite::Result<Option<Option<u64>>> {
        self.conn
            .query_row(
                "SELECT replayed_seq FROM jetfold_rejected WHERE plugin = ?1 AND seq = ?2",
                params![plugin, seq as i64],
                |r| Ok(r.get::<_, Option<i64>>(0)?.map(|s| s as u64)),
            )
            .optional()
    }

    /// See [`super::Sink::rejections_between`].
    pub fn rejections_between(
        &mut self,
        plugin: &str,
        after: u64,
        upto: u64,
    ) -> rusqlite::Result<Vec<u64>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq FROM jetfold_rejected WHERE plugin = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![plugin, after as i64, upto as i64], |r| {
            r.get::<_, i64>(0).map(|s| s as u64)
        })?;
        rows.collect()
    }

    /// The committed states of `keys` (those that have one), in one query.
    pub fn states_of(
        &mut self,
        plugin: &str,
        keys: &[&str],
    ) -> rusqlite::Result<Vec<(String, Vec<u8>)>> {
        let keys = serde_json::to_string(keys).expect("strings are JSON");
        let mut stmt = self.conn.prepare_cached(
            "SELECT key, state FROM jetfold_states WHERE plugin = ?1 AND key IN (SELECT value FROM json_each(?2))",
        )?;
        let rows = stmt.query_map([plugin, keys.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }

    /// Every committed state of a plugin, by key.
    pub fn states(&mut self, plugin: &str) -> rusqlite::Result<Vec<(String, Vec<u8>)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, state FROM jetfold_states WHERE plugin = ?1 ORDER BY key")?;
        let rows = stmt.query_map([plugin], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }

    /// Messages committed but not yet confirmed published.
    pub fn outbox(&mut self, plugin: &str) -> rusqlite::Result<Vec<OutboxMessage>> {
        let mut stmt = self
            .conn
            .prepare("SELECT msg_id, subject, headers, payload FROM jetfold_outbox WHERE plugin = ?1 ORDER BY rowid")?;
        let rows = stmt.query_map([plugin], |r| {
            let headers: String = r.get(2)?;
            Ok(OutboxMessage {
                msg_id: r.get(0)?,
                subject: r.get(1)?,
                headers: serde_json::from_str(&headers).unwrap_or_default(),
                payload: r.get(3)?,
            })
        })?;
        rows.collect()
    }

    /// Forgets outbox messages JetStream has confirmed.
    pub fn clear_outbox(&mut self, ids: &[String]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached("DELETE FROM jetfold_outbox WHERE msg_id = ?1")?;
            for id in ids {
                stmt.execute([id])?;
            }
        }
        tx.commit()?;
        self.wrote();
        Ok(())
    }

    /// Commits one batch atomically.
    pub fn commit(&mut self, batch: &Commit) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        for (table, plan) in batch.plan() {
            let table = format!("{table}{}", batch.table_suffix);
            for (key, list) in &plan.patches {
                let current: Option<String> = tx
                    .prepare_cached(&format!("SELECT doc FROM \"{table}\" WHERE key = ?1"))?
                    .query_row([key], |r| r.get(0))
                    .optional()?;
                if let Some(current) = current {
                    let mut doc: serde_json::Value =
                        serde_json::from_str(&current).unwrap_or_default();
                    for (_, patch) in list {
                        merge_patch(&mut doc, patch);
                    }
                    let seq = list.last().map_or(0, |(seq, _)| *seq);
                    tx.prepare_cached(&format!(
                        "UPDATE \"{table}\" SET doc = ?2, updated_seq = ?3 WHERE key = ?1"
                    ))?
                    .execute(params![key, doc.to_string(), seq])?;
                }
            }
            if !plan.deletes.is_empty() {
                let mut stmt =
                    tx.prepare_cached(&format!("DELETE FROM \"{table}\" WHERE key = ?1"))?;
                for key in &plan.deletes {
                    stmt.execute([key])?;
                }
            }
            if !plan.upserts.is_empty() {
                let mut stmt = tx.prepare_cached(&format!(
                    "INSERT INTO \"{table}\" (key, doc, updated_seq) VALUES (?1, ?2, ?3) \
                     ON CONFLICT(key) DO UPDATE SET doc = excluded.doc, updated_seq = excluded.updated_seq"
                ))?;
                for (key, doc, seq) in &plan.upserts {
                    stmt.execute(params![key, doc, seq])?;
                }
            }
        }
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO jetfold_states (plugin, key, state) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(plugin, key) DO UPDATE SET state = excluded.state",
            )?;
            for (key, state) in &batch.states {
                stmt.execute(params![batch.plugin, key, state])?;
            }
        }
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO jetfold_rejected (plugin, seq, key, event_type, kind, code, message) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (plugin, seq) DO UPDATE SET key = excluded.key, event_type = excluded.event_type, \
                 kind = excluded.kind, code = excluded.code, message = excluded.message",
            )?;
            for r in &batch.rejected {
                stmt.execute(params![
                    batch.plugin,
                    r.seq as i64,
                    r.key,
                    r.event_type,
                    r.kind,
                    r.code,
                    r.message
                ])?;
            }
        }
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE jetfold_rejected SET replayed_seq = ?3 \
                 WHERE plugin = ?1 AND seq = ?2 AND replayed_seq IS NULL",
            )?;
            for (seq, copy) in &batch.replayed {
                stmt.execute(params![batch.plugin, *seq as i64, *copy as i64])?;
            }
        }
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO jetfold_outbox (plugin, msg_id, subject, headers, payload) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for m in &batch.outbox {
                let headers = serde_json::to_string(&m.headers).expect("headers are strings");
                stmt.execute(params![batch.plugin, m.msg_id, m.subject, headers, m.payload])?;
            }
        }
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO jetfold_shadow_diffs (plugin, shadow_digest, seq, key, live, shadow) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for d in &batch.shadow_diffs {
                stmt.execute(params![
                    batch.plugin,
                    d.shadow_digest,
                    d.seq as i64,
                    d.key,
                    d.live,
                    d.shadow
                ])?;
            }
        }
        tx.execute(
            "INSERT INTO jetfold_checkpoints (plugin, digest, last_seq, state_version, snapshot_seq) \
             VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT(plugin) DO UPDATE SET digest = excluded.digest, last_seq = excluded.last_seq, \
             state_version = excluded.state_version, snapshot_seq = excluded.snapshot_seq",
            params![
                batch.checkpoint_name(),
                batch.digest,
                batch.last_seq as i64,
                batch.state_version,
                batch.snapshot_seq as i64
            ],
        )?;
        tx.commit()?;
        self.wrote();
        Ok(())
    }

    /// Forgets everything `staging` wrote: its tables, states, rejections, outbox, checkpoint.
    pub fn reset_staging(&mut self, staging: &str, tables: &[String]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        for table in tables {
            assert!(is_identifier(table));
            tx.execute_batch(&format!("DROP TABLE IF EXISTS \"{table}\";"))?;
        }
        for own in JETFOLD_TABLES {
            tx.execute(&format!("DELETE FROM {own} WHERE plugin = ?1"), [staging])?;
        }
        tx.commit()?;
        self.wrote();
        Ok(())
    }

    /// Makes what `staging` built `live`'s, in one transaction.
    pub fn promote_staging(
        &mut self,
        staging: &str,
        live: &str,
        tables: &[String],
        suffix: &str,
    ) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        for table in tables {
            let built = format!("{table}{suffix}");
            assert!(is_identifier(table) && is_identifier(&built));
            tx.execute_batch(&format!(
                "DROP TABLE IF EXISTS \"{table}\"; ALTER TABLE \"{built}\" RENAME TO \"{table}\";"
            ))?;
        }
        for own in ["jetfold_states", "jetfold_rejected", "jetfold_checkpoints"] {
            tx.execute(&format!("DELETE FROM {own} WHERE plugin = ?1"), [live])?;
            tx.execute(
                &format!("UPDATE {own} SET plugin = ?1 WHERE plugin = ?2"),
                [live, staging],
            )?;
        }
        tx.execute("DELETE FROM jetfold_outbox WHERE plugin = ?1", [staging])?;
        tx.commit()?;
        self.wrote();
        Ok(())
    }

    /// The rows of a read-model table, by key (for `jetfold state` and tests).
    pub fn rows(&mut self, table: &str) -> rusqlite::Result<Vec<(String, String)>> {
        assert!(is_identifier(table));
        let mut stmt =
            self.conn.prepare(&format!("SELECT key, doc FROM \"{table}\" ORDER BY key"))?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effect::Effect;
    use crate::sink::Rejected;
    use serde_json::value::RawValue;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.into()).unwrap()
    }

    /// A batch of `n` rows of about 4 KB each.
    fn bulky(n: usize, last_seq: u64) -> Commit {
        let doc = format!("{{\"pad\":\"{}\"}}", "x".repeat(4000));
        Commit {
            plugin: "p".into(),
            checkpoint: None,
            digest: "d1".into(),
            last_seq,
            state_version: 1,
            snapshot_seq: last_seq,
            effects: (0..n)
                .map(|i| {
                    (
                        last_seq,
                        Effect::Upsert {
                            table: "things".into(),
                            key: format!("k{i}"),
                            row: raw(&doc),
                        },
                    )
                })
                .collect(),
            ..Commit::default()
        }
    }

    fn len(path: &Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn the_wal_is_copied_into_the_database_by_the_checkpointer_not_by_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("j.db");
        let mut sink = SqliteSink::open(&db).unwrap();
        sink.ensure_tables(&["things".into()]).unwrap();
        let before = len(&db);
        sink.commit(&bulky(200, 1)).unwrap();
        let auto: i64 = sink.conn.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0)).unwrap();
        assert_eq!(auto, 0, "the committing connection leaves checkpoints to the thread");
        // The rows reach the database file while the sink's connection stays open and idle.
        wait_for("the database file holds the batch", || len(&db) > before + 200 * 4000);
        assert!(len(&db.with_extension("db-wal")) > 0, "the WAL is kept below the reset size");
    }

    #[test]
    fn a_wal_past_the_reset_size_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("j.db");
        let wal = db.with_extension("db-wal");
        let mut sink = SqliteSink::open(&db).unwrap();
        sink.ensure_tables(&["things".into()]).unwrap();
        sink.wrote_with(64);
        for seq in 1..=3 {
            sink.commit(&bulky(100, seq)).unwrap();
        }
        // Each batch of 400 KB is past 64 pages; passive checkpoints alone never empty it.
        wait_for("the WAL is truncated", || len(&wal) == 0);
        assert_eq!(sink.checkpoint("p").unwrap().unwrap().last_seq, 3);
        assert_eq!(sink.rows("things").unwrap().len(), 100);
    }

    #[test]
    fn a_database_of_an_earlier_version_gets_the_columns_added_since() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE jetfold_checkpoints (plugin TEXT PRIMARY KEY, digest TEXT NOT NULL, last_seq INTEGER NOT NULL);
             INSERT INTO jetfold_checkpoints VALUES ('p', 'd', 7);
             CREATE TABLE jetfold_rejected (plugin TEXT NOT NULL, seq INTEGER NOT NULL, key TEXT NOT NULL,
                 event_type TEXT NOT NULL, kind TEXT NOT NULL, code TEXT, message TEXT NOT NULL, PRIMARY KEY (plugin, seq));
             INSERT INTO jetfold_rejected VALUES ('p', 3, 'k', 'T', 'error', NULL, 'no');",
        )
        .unwrap();
        drop(conn);
        let mut sink = SqliteSink::open(&path).unwrap();
        let checkpoint = sink.checkpoint("p").unwrap().unwrap();
        assert_eq!((checkpoint.state_version, checkpoint.snapshot_seq), (1, 7));
        assert_eq!(sink.rejection("p", 3).unwrap(), Some(None));
        drop(sink);
        SqliteSink::open(&path).unwrap(); // and again, with nothing to add
    }

    #[test]
    fn a_batch_commits_effects_states_rejections_and_checkpoint_together() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = SqliteSink::open(&dir.path().join("j.db")).unwrap();
        sink.ensure_tables(&["things".into()]).unwrap();
        assert_eq!(sink.checkpoint("p").unwrap(), None);
        let batch = Commit {
            plugin: "p".into(),
            checkpoint: None,
            digest: "d1".into(),
            last_seq: 3,
            state_version: 2,
            snapshot_seq: 3,
            table_suffix: String::new(),
            effects: vec![
                (
                    1,
                    Effect::Upsert {
                        table: "things".into(),
                        key: "a".into(),
                        row: raw(r#"{"n":1,"x":{"y":1}}"#),
                    },
                ),
                (
                    2,
                    Effect::Update {
                        table: "things".into(),
                        key: "a".into(),
                        patch: raw(r#"{"n":2,"x":{"y":null}}"#),
                    },
                ),
                (
                    2,
                    Effect::Update {
                        table: "things".into(),
                        key: "missing".into(),
                        patch: raw(r#"{"n":2}"#),
                    },
                ),
                (
                    3,
                    Effect::Upsert {
                        table: "things".into(),
                        key: "b".into(),
                        row: raw(r#"{"n":3}"#),
                    },
                ),
                (3, Effect::Delete { table: "things".into(), key: "b".into() }),
            ],
            states: vec![("a".into(), b"{}".to_vec())],
            shadow_diffs: vec![crate::sink::ShadowDiff {
                shadow_digest: "d2".into(),
                seq: 2,
                key: "a".into(),
                live: "state {} effects []".into(),
                shadow: "error : no".into(),
            }],
            rejected: vec![Rejected {
                seq: 2,
                key: "a".into(),
                event_type: "T".into(),
                kind: "error".into(),
                code: Some("c".into()),
                message: "m".into(),
            }],
            outbox: vec![OutboxMessage {
                msg_id: "p:1:0".into(),
                subject: "s".into(),
                headers: vec![("h".into(), "v".into())],
                payload: b"{}".to_vec(),
            }],
            replayed: Vec::new(),
        };
        sink.commit(&batch).unwrap();
        assert_eq!(
            sink.rows("things").unwrap(),
            vec![("a".to_string(), r#"{"n":2,"x":{}}"#.to_string())]
        );
        assert_eq!(
            sink.checkpoint("p").unwrap(),
            Some(Checkpoint {
                digest: "d1".into(),
                last_seq: 3,
                state_version: 2,
                snapshot_seq: 3
            })
        );
        assert_eq!(sink.state("p", "a").unwrap(), Some(b"{}".to_vec()));
        assert_eq!(sink.outbox("p").unwrap(), batch.outbox);
        let diffs: i64 = sink
            .conn
            .query_row(
                "SELECT COUNT(*) FROM jetfold_shadow_diffs WHERE plugin = 'p' AND seq = 2",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(diffs, 1);
        sink.clear_outbox(&["p:1:0".into()]).unwrap();
        assert!(sink.outbox("p").unwrap().is_empty());

        // A replayed copy folds the rejected event: the rejection says which, once.
        assert_eq!(sink.rejection("p", 2).unwrap(), Some(None));
        assert_eq!(sink.rejection("p", 3).unwrap(), None);
        for copy in [5, 6] {
            let folded = Commit {
                plugin: "p".into(),
                digest: "d1".into(),
                last_seq: copy,
                state_version: 2,
                snapshot_seq: 3,
                replayed: vec![(2, copy)],
                ..Default::default()
            };
            sink.commit(&folded).unwrap();
        }
        assert_eq!(sink.rejection("p", 2).unwrap(), Some(Some(5)));
        // Recorded again (a redelivered batch), it keeps the copy that folded it.
        let again = Commit {
            plugin: "p".into(),
            digest: "d1".into(),
            last_seq: 7,
            state_version: 2,
            snapshot_seq: 3,
            rejected: batch.rejected.clone(),
            ..Default::default()
        };
        sink.commit(&again).unwrap();
        assert_eq!(sink.rejection("p", 2).unwrap(), Some(Some(5)));
    }
}
