//! Reading a stream in order, once, acknowledging nothing: what `jetfold events export`,
//! `replay` and `verify` read with. An ephemeral ordered consumer (JetStream recreates it
//! past any gap), filtered by subject, from a start sequence to what the stream held when
//! reading began.

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt as _;

/// An ordered read of part of a stream.
pub struct StreamReader {
    messages: pull::Ordered,
    /// How many messages the read will give (those stored when it began, within its bounds).
    pub total: u64,
    given: u64,
    to_seq: Option<u64>,
}

impl StreamReader {
    /// Starts reading `stream` at `from_seq` (from the start when `None`), the subjects
    /// matching `subjects` (all when empty), up to `to_seq` if given.
    pub async fn open(
        js: &jetstream::Context,
        stream: &str,
        subjects: &[String],
        from_seq: Option<u64>,
        to_seq: Option<u64>,
    ) -> anyhow::Result<StreamReader> {
        Self::open_with(js, stream, subjects, from_seq, to_seq, false).await
    }

    /// [`StreamReader::open`], the messages without their payloads when `headers_only`.
    pub async fn open_with(
        js: &jetstream::Context,
        stream: &str,
        subjects: &[String],
        from_seq: Option<u64>,
        to_seq: Option<u64>,
        headers_only: bool,
    ) -> anyhow::Result<StreamReader> {
        let handle =
            js.get_stream(stream).await.with_context(|| format!("no stream `{stream}`"))?;
        let deliver_policy = match from_seq {
            Some(seq) if seq > 1 => {
                jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: seq }
            }
            _ => jetstream::consumer::DeliverPolicy::All,
        };
        let mut consumer = handle
            .create_consumer(pull::OrderedConfig {
                filter_subjects: subjects.to_vec(),
                deliver_policy,
                headers_only,
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot read stream `{stream}`"))?;
        let mut total =
            consumer.info().await.context("cannot read the consumer's position")?.num_pending;
        if let Some(to) = to_seq {
            // The filtered messages up to `to`: the stream's own count when unfiltered, else
            // counted as they come (the read ends at the first message past `to`).
            let start = from_seq.unwrap_or(1).max(1);
            if subjects.is_empty() {
                total = total.min((to + 1).saturating_sub(start));
            }
        }
        let messages =
            consumer.messages().await.with_context(|| format!("cannot read stream `{stream}`"))?;
        Ok(StreamReader { messages, total, given: 0, to_seq })
    }

    /// The next message, or `None` at the end.
    pub async fn next(&mut self) -> Option<anyhow::Result<jetstream::Message>> {
        if self.given >= self.total {
            return None;
        }
        let message = match self.messages.next().await? {
            Ok(m) => m,
            Err(e) => return Some(Err(anyhow::anyhow!("reading the stream failed: {e}"))),
        };
        let seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        if self.to_seq.is_some_and(|to| seq > to) {
            self.given = self.total;
            return None;
        }
        self.given += 1;
        Some(Ok(message))
    }
}
