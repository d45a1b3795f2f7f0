//! The PostgreSQL sink: the same layout as SQLite's (`doc` is `jsonb`), in a schema of its
//! own, one transaction per batch.

use std::collections::HashMap;

use postgres::{Client, NoTls, Statement, Transaction};

use super::{Checkpoint, Commit, JETFOLD_TABLES, OutboxMessage, Rejected, merge_patch};
use crate::manifest::is_identifier;

/// A connection to the daemon's PostgreSQL database.
pub struct PostgresSink {
    client: Client,
    /// The commit's statements, prepared once per connection (by their text): a statement
    /// given as text is parsed on every call, a round trip of its own.
    statements: HashMap<String, Statement>,
}

/// `sql` prepared on `tx`'s connection, from `cache` after the first time.
fn prepared(
    tx: &mut Transaction<'_>,
    cache: &mut HashMap<String, Statement>,
    sql: &str,
) -> Result<Statement, postgres::Error> {
    if let Some(statement) = cache.get(sql) {
        return Ok(statement.clone());
    }
    let statement = tx.prepare(sql)?;
    cache.insert(sql.to_string(), statement.clone());
    Ok(statement)
}

/// jetfold's tables, and the columns added since a table was first created. A column is added
/// only where it is missing: `ALTER TABLE … ADD COLUMN IF NOT EXISTS` takes the table's
/// exclusive lock even when it does nothing, and taken while a daemon's commit holds rows of
/// two of these tables it deadlocks with that commit.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jetfold_checkpoints (plugin TEXT PRIMARY KEY, digest TEXT NOT NULL, last_seq BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS jetfold_states (plugin TEXT NOT NULL, key TEXT NOT NULL, state BYTEA NOT NULL, PRIMARY KEY (plugin, key));
CREATE TABLE IF NOT EXISTS jetfold_rejected (plugin TEXT NOT NULL, seq BIGINT NOT NULL, key TEXT NOT NULL, event_type TEXT NOT NULL,
    kind TEXT NOT NULL, code TEXT, message TEXT NOT NULL, PRIMARY KEY (plugin, seq));
CREATE TABLE IF NOT EXISTS jetfold_shadow_diffs (plugin TEXT NOT NULL, shadow_digest TEXT NOT NULL, seq BIGINT NOT NULL, key TEXT NOT NULL,
    live TEXT NOT NULL, shadow TEXT NOT NULL, PRIMARY KEY (plugin, shadow_digest, seq));
CREATE TABLE IF NOT EXISTS jetfold_outbox (id BIGSERIAL, plugin TEXT NOT NULL, msg_id TEXT PRIMARY KEY, subject TEXT NOT NULL,
    headers TEXT NOT NULL, payload BYTEA NOT NULL);
DO $$ BEGIN
    PERFORM 1 FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = 'jetfold_checkpoints' AND column_name = 'state_version';
    IF NOT FOUND THEN ALTER TABLE jetfold_checkpoints ADD COLUMN state_version INTEGER NOT NULL DEFAULT 1; END IF;
    PERFORM 1 FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = 'jetfold_checkpoints' AND column_name = 'snapshot_seq';
    IF NOT FOUND THEN ALTER TABLE jetfold_checkpoints ADD COLUMN snapshot_seq BIGINT; END IF;
    PERFORM 1 FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = 'jetfold_rejected' AND column_name = 'replayed_seq';
    IF NOT FOUND THEN ALTER TABLE jetfold_rejected ADD COLUMN replayed_seq BIGINT; END IF;
END $$;
";

/// Held (for a transaction) by whoever creates schemas and tables: `CREATE … IF NOT EXISTS`
/// run at once by two connections (daemons splitting a plugin's keys start together) can fail
/// on PostgreSQL's catalog instead of skipping.
const DDL_LOCK: &str = "SELECT pg_advisory_xact_lock(7305826061371212370)";

impl PostgresSink {
    /// Connects to `url` and creates `schema` and jetfold's tables in it if needed.
    pub fn open(url: &str, schema: &str) -> Result<PostgresSink, postgres::Error> {
        assert!(is_identifier(schema), "config validation lets only identifiers through");
        // PostgreSQL's notices ("relation … already exists, skipping" on every start) are
        // the server's chatter: debug lines, warnings as warnings.
        let mut config: postgres::Config = url.parse()?;
        config.notice_callback(|notice| match notice.severity() {
            "WARNING" => tracing::warn!(target: "jetfold::postgres", "{}", notice.message()),
            _ => tracing::debug!(target: "jetfold::postgres", "{}", notice.message()),
        });
        let mut client = config.connect(NoTls)?;
        client.batch_execute(&format!(
            "BEGIN; {DDL_LOCK}; CREATE SCHEMA IF NOT EXISTS \"{schema}\"; SET search_path TO \"{schema}\"; {SCHEMA}; COMMIT;"
        ))?;
        Ok(PostgresSink { client, statements: HashMap::new() })
    }

    /// Creates the read-model tables a plugin may write.
    pub fn ensure_tables(&mut self, tables: &[String]) -> Result<(), postgres::Error> {
        let mut ddl = format!("BEGIN; {DDL_LOCK};");
        for table in tables {
            assert!(is_identifier(table));
            ddl.push_str(&format!(
                " CREATE TABLE IF NOT EXISTS \"{table}\" (key TEXT PRIMARY KEY, doc JSONB NOT NULL, updated_seq BIGINT NOT NULL);"
            ));
        }
        ddl.push_str(" COMMIT;");
        self.client.batch_execute(&ddl)
    }

    /// The plugin's checkpoint.
    pub fn checkpoint(&mut self, plugin: &str) -> Result<Option<Checkpoint>, postgres::Error> {
        let row = self.client.query_opt(
            "SELECT digest, last_seq, state_version, COALESCE(snapshot_seq, last_seq) \
             FROM jetfold_checkpoints WHERE plugin = $1",
            &[&plugin],
        )?;
        Ok(row.map(|r| Checkpoint {
            digest: r.get(0),
            last_seq: r.get::<_, i64>(1) as u64,
            state_version: r.get::<_, i32>(2) as u32,
            snapshot_seq: r.get::<_, i64>(3) as u64,
        }))
    }

    /// One key's committed state.
    pub fn state(&mut self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, postgres::Error> {
        let row = self.client.query_opt(
            "SELECT state FROM jetfold_states WHERE plugin = $1 AND key = $2",
            &[&plugin, &key],
        )?;
        Ok(row.map(|r| r.get(0)))
    }

    /// See [`super::Sink::rejection`].
    pub fn rejection(
        &mut self,
        plugin: &str,
        seq: u64,
    ) -> Result<Option<Option<u64>>, postgres::Error> {
        let row = self.client.query_opt(
            "SELECT replayed_seq FROM jetfold_rejected WHERE plugin = $1 AND seq = $2",
            &[&plugin, &(seq as i64)],
        )?;
        Ok(row.map(|r| r.get::<_, Option<i64>>(0).map(|s| s as u64)))
    }

    /// See [`super::Sink::rejections_between`].
    pub fn rejections_between(
        &mut self,
        plugin: &str,
        after: u64,
        upto: u64,
    ) -> Result<Vec<u64>, postgres::Error> {
        let rows = self.client.query(
            "SELECT seq FROM jetfold_rejected WHERE plugin = $1 AND seq > $2 AND seq <= $3 ORDER BY seq",
            &[&plugin, &(after as i64), &(upto as i64)],
        )?;
        Ok(rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect())
    }

    /// The committed states of `keys` (those that have one), in one query.
    pub fn states_of(
        &mut self,
        plugin: &str,
        keys: &[&str],
    ) -> Result<Vec<(String, Vec<u8>)>, postgres::Error> {
        let rows = self.client.query(
            "SELECT key, state FROM jetfold_states WHERE plugin = $1 AND key = ANY($2)",
            &[&plugin, &keys],
        )?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Every committed state of a plugin.
    pub fn states(&mut self, plugin: &str) -> Result<Vec<(String, Vec<u8>)>, postgres::Error> {
        let rows = self.client.query(
            "SELECT key, state FROM jetfold_states WHERE plugin = $1 ORDER BY key",
            &[&plugin],
        )?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Messages committed but not confirmed published.
    pub fn outbox(&mut self, plugin: &str) -> Result<Vec<OutboxMessage>, postgres::Error> {
        let rows = self
            .client
            .query("SELECT msg_id, subject, headers, payload FROM jetfold_outbox WHERE plugin = $1 ORDER BY id", &[&plugin])?;
        Ok(rows
            .into_iter()
            .map(|r| OutboxMessage {
                msg_id: r.get(0),
                subject: r.get(1),
                headers: serde_json::from_str(r.get::<_, &str>(2)).unwrap_or_default(),
                payload: r.get(3),
            })
            .collect())
    }

    /// Forgets confirmed outbox messages.
    pub fn clear_outbox(&mut self, ids: &[String]) -> Result<(), postgres::Error> {
        self.client.execute("DELETE FROM jetfold_outbox WHERE msg_id = ANY($1)", &[&ids])?;
        Ok(())
    }

    /// Commits one batch atomically.
    pub fn commit(&mut self, batch: &Commit) -> Result<(), postgres::Error> {
        let PostgresSink { client, statements } = self;
        let mut tx = client.transaction()?;
        for (table, plan) in batch.plan() {
            let table = format!("{table}{}", batch.table_suffix);
            for (key, list) in &plan.patches {
                let statement = prepared(
                    &mut tx,
                    statements,
                    &format!("SELECT doc::text FROM \"{table}\" WHERE key = $1 FOR UPDATE"),
                )?;
                let current = tx.query_opt(&statement, &[key])?;
                if let Some(current) = current {
                    let mut doc: serde_json::Value =
                        serde_json::from_str(current.get::<_, &str>(0)).unwrap_or_default();
                    for (_, patch) in list {
                        merge_patch(&mut doc, patch);
                    }
                    let seq = list.last().map_or(0, |(seq, _)| *seq);
                    let statement = prepared(
                        &mut tx,
                        statements,
                        &format!(
                            "UPDATE \"{table}\" SET doc = CAST($2::text AS jsonb), updated_seq = $3 WHERE key = $1"
                        ),
                    )?;
                    tx.execute(&statement, &[key, &doc.to_string(), &seq])?;
                }
            }
            // One statement per table and kind of write, however many rows: a round trip to
            // the server costs more than the rows.
            if !plan.deletes.is_empty() {
                let statement = prepared(
                    &mut tx,
                    statements,
                    &format!("DELETE FROM \"{table}\" WHERE key = ANY($1)"),
                )?;
                tx.execute(&statement, &[&plan.deletes])?;
            }
            if !plan.upserts.is_empty() {
                let (mut keys, mut docs, mut seqs) = (Vec::new(), Vec::new(), Vec::new());
                for (key, doc, seq) in &plan.upserts {
                    keys.push(key.as_str());
                    docs.push(doc.as_str());
                    seqs.push(*seq);
                }
                let statement = prepared(
                    &mut tx,
                    statements,
                    &format!(
                        "INSERT INTO \"{table}\" (key, doc, updated_seq) \
                         SELECT k, CAST(d AS jsonb), s FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(k, d, s) \
                         ON CONFLICT (key) DO UPDATE SET doc = excluded.doc, updated_seq = excluded.updated_seq"
                    ),
                )?;
                tx.execute(&statement, &[&keys, &docs, &seqs])?;
            }
        }
        if !batch.states.is_empty() {
            let keys: Vec<&str> = batch.states.iter().map(|(k, _)| k.as_str()).collect();
            let states: Vec<&[u8]> = batch.states.iter().map(|(_, s)| s.as_slice()).collect();
            let statement = prepared(
                &mut tx,
                statements,
                "INSERT INTO jetfold_states (plugin, key, state) \
                 SELECT $1, k, s FROM unnest($2::text[], $3::bytea[]) AS u(k, s) \
                 ON CONFLICT (plugin, key) DO UPDATE SET state = excluded.state",
            )?;
            tx.execute(&statement, &[&batch.plugin, &keys, &states])?;
        }
        if !batch.rejected.is_empty() {
            // One row per sequence (an update of the same row twice in one statement is an
            // error): the last rejection of a sequence stands, as row by row.
            let mut last: HashMap<u64, &Rejected> = HashMap::new();
            for r in &batch.rejected {
                last.insert(r.seq, r);
            }
            let mut rows: Vec<&Rejected> = last.into_values().collect();
            rows.sort_by_key(|r| r.seq);
            let seqs: Vec<i64> = rows.iter().map(|r| r.seq as i64).collect();
            let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
            let types: Vec<&str> = rows.iter().map(|r| r.event_type.as_str()).collect();
            let kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
            let codes: Vec<Option<&str>> = rows.iter().map(|r| r.code.as_deref()).collect();
            let messages: Vec<&str> = rows.iter().map(|r| r.message.as_str()).collect();
            let statement = prepared(
                &mut tx,
                statements,
                "INSERT INTO jetfold_rejected (plugin, seq, key, event_type, kind, code, message) \
                 SELECT $1, s, k, t, n, c, m FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[]) AS u(s, k, t, n, c, m) \
                 ON CONFLICT (plugin, seq) DO UPDATE SET key = excluded.key, event_type = excluded.event_type, \
                 kind = excluded.kind, code = excluded.code, message = excluded.message",
            )?;
            tx.execute(
                &statement,
                &[&batch.plugin, &seqs, &keys, &types, &kinds, &codes, &messages],
            )?;
        }
        for (seq, copy) in &batch.replayed {
            tx.execute(
                "UPDATE jetfold_rejected SET replayed_seq = $3 \
                 WHERE plugin = $1 AND seq = $2 AND replayed_seq IS NULL",
                &[&batch.plugin, &(*seq as i64), &(*copy as i64)],
            )?;
        }
        if !batch.outbox.is_empty() {
            let ids: Vec<&str> = batch.outbox.iter().map(|m| m.msg_id.as_str()).collect();
            let subjects: Vec<&str> = batch.outbox.iter().map(|m| m.subject.as_str()).collect();
            let headers: Vec<String> = batch
                .outbox
                .iter()
                .map(|m| serde_json::to_string(&m.headers).expect("headers are strings"))
                .collect();
            let payloads: Vec<&[u8]> = batch.outbox.iter().map(|m| m.payload.as_slice()).collect();
            // In the batch's order: `id` numbers the rows as they are inserted, and the outbox
            // is published by `id`.
            let statement = prepared(
                &mut tx,
                statements,
                "INSERT INTO jetfold_outbox (plugin, msg_id, subject, headers, payload) \
                 SELECT $1, i, s, h, p FROM unnest($2::text[], $3::text[], $4::text[], $5::bytea[]) WITH ORDINALITY AS u(i, s, h, p, n) \
                 ORDER BY n ON CONFLICT (msg_id) DO NOTHING",
            )?;
            tx.execute(&statement, &[&batch.plugin, &ids, &subjects, &headers, &payloads])?;
        }
        for d in &batch.shadow_diffs {
            let statement = prepared(
                &mut tx,
                statements,
                "INSERT INTO jetfold_shadow_diffs (plugin, shadow_digest, seq, key, live, shadow) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (plugin, shadow_digest, seq) DO UPDATE SET live = excluded.live, shadow = excluded.shadow",
            )?;
            tx.execute(
                &statement,
                &[&batch.plugin, &d.shadow_digest, &(d.seq as i64), &d.key, &d.live, &d.shadow],
            )?;
        }
        let statement = prepared(
            &mut tx,
            statements,
            "INSERT INTO jetfold_checkpoints (plugin, digest, last_seq, state_version, snapshot_seq) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (plugin) DO UPDATE SET digest = excluded.digest, last_seq = excluded.last_seq, \
             state_version = excluded.state_version, snapshot_seq = excluded.snapshot_seq",
        )?;
        tx.execute(
            &statement,
            &[
                &batch.checkpoint_name(),
                &batch.digest,
                &(batch.last_seq as i64),
                &(batch.state_version as i32),
                &(batch.snapshot_seq as i64),
            ],
        )?;
        tx.commit()
    }

    /// Forgets everything `staging` wrote: its tables, states, rejections, outbox, checkpoint.
    pub fn reset_staging(
        &mut self,
        staging: &str,
        tables: &[String],
    ) -> Result<(), postgres::Error> {
        self.statements.clear();
        let mut tx = self.client.transaction()?;
        for table in tables {
            assert!(is_identifier(table));
            tx.batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\";"))?;
        }
        for own in JETFOLD_TABLES {
            tx.execute(&format!("DELETE FROM {own} WHERE plugin = $1"), &[&staging])?;
        }
        tx.commit()
    }

    /// Makes what `staging` built `live`'s, in one transaction.
    pub fn promote_staging(
        &mut self,
        staging: &str,
        live: &str,
        tables: &[String],
        suffix: &str,
    ) -> Result<(), postgres::Error> {
        self.statements.clear();
        let mut tx = self.client.transaction()?;
        for table in tables {
            let built = format!("{table}{suffix}");
            assert!(is_identifier(table) && is_identifier(&built));
            // The primary key's index is named after the table it was made for: renamed too, so
            // the next rebuild can create its own.
            tx.batch_execute(&format!(
                "DROP TABLE IF EXISTS \"{table}\"; ALTER TABLE \"{built}\" RENAME TO \"{table}\"; \
                 ALTER INDEX IF EXISTS \"{built}_pkey\" RENAME TO \"{table}_pkey\";"
            ))?;
        }
        for own in ["jetfold_states", "jetfold_rejected", "jetfold_checkpoints"] {
            tx.execute(&format!("DELETE FROM {own} WHERE plugin = $1"), &[&live])?;
            tx.execute(
                &format!("UPDATE {own} SET plugin = $1 WHERE plugin = $2"),
                &[&live, &staging],
            )?;
        }
        tx.execute("DELETE FROM jetfold_outbox WHERE plugin = $1", &[&staging])?;
        tx.commit()
    }

    /// The rows of a read-model table, by key, `doc` as JSON text.
    pub fn rows(&mut self, table: &str) -> Result<Vec<(String, String)>, postgres::Error> {
        assert!(is_identifier(table));
        let rows = self
            .client
            .query(&format!("SELECT key, doc::text FROM \"{table}\" ORDER BY key"), &[])?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
