//! NATS: connecting with any of its authentication methods, the JetStream source of events,
//! and publishing emitted messages.

pub mod emit;
pub mod local;
pub mod reader;
pub mod source;

use std::time::Duration;

use anyhow::Context as _;

use crate::config::{Config, NatsConfig};

/// Connects to NATS as the config says, retrying with backoff until `connect-timeout-secs`.
pub async fn connect(config: &Config) -> anyhow::Result<async_nats::Client> {
    let nats = &config.nats;
    let give_up = (nats.connect_timeout_secs > 0)
        .then(|| tokio::time::Instant::now() + Duration::from_secs(nats.connect_timeout_secs));
    let mut pauses = crate::retry::pauses(Duration::from_secs(5));
    let mut last_error = None;
    loop {
        let attempt = options(config, nats).await?.connect(nats.url.as_str());
        let remaining = give_up.map(|t| t.saturating_duration_since(tokio::time::Instant::now()));
        let result = match remaining {
            Some(left) => tokio::time::timeout(left, attempt).await.ok(),
            None => Some(attempt.await),
        };
        match result {
            Some(Ok(client)) => return Ok(client),
            Some(Err(e)) => {
                use async_nats::ConnectErrorKind as Kind;
                // Refused credentials or a broken TLS setup do not heal by waiting.
                if matches!(
                    e.kind(),
                    Kind::AuthorizationViolation | Kind::Authentication | Kind::ServerParse
                ) {
                    anyhow::bail!(
                        "NATS at {} refused the connection: {e} (check the [nats] credentials)",
                        nats.url
                    );
                }
                tracing::warn!(url = %nats.url, error = %e, "cannot connect to NATS; retrying");
                last_error = Some(e);
            }
            None => {}
        }
        let delay = pauses.next().unwrap_or(Duration::from_secs(5));
        if give_up.is_some_and(|t| tokio::time::Instant::now() + delay >= t) {
            let why = last_error.map(|e| format!(": {e}")).unwrap_or_default();
            anyhow::bail!(
                "NATS at {} unreachable for {} s (nats.connect-timeout-secs){why}",
                nats.url,
                nats.connect_timeout_secs
            );
        }
        tokio::time::sleep(delay).await;
    }
}

async fn options(config: &Config, nats: &NatsConfig) -> anyhow::Result<async_nats::ConnectOptions> {
    let mut options = async_nats::ConnectOptions::new()
        .name("jetfold")
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        // The retry policy, capped at 5 s: reconnecting after a server restart is routine.
        .reconnect_delay_callback(|attempts| {
            crate::retry::pause_before(attempts, Duration::from_secs(5))
        })
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Disconnected => {
                    tracing::warn!("disconnected from NATS; reconnecting")
                }
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                other => tracing::info!(event = %other, "NATS event"),
            }
        });
    if let Some(creds) = &nats.creds_file {
        let path = config.resolve(creds);
        options = options
            .credentials_file(&path)
            .await
            .with_context(|| format!("failed to read NATS credentials {}", path.display()))?;
    }
    if let Some(seed_file) = &nats.nkey_seed_file {
        let path = config.resolve(seed_file);
        let seed = std::fs::read_to_string(&path)
            .with_context(|| format!("failed to read nkey seed {}", path.display()))?;
        options = options.nkey(seed.trim().to_string());
    }
    if let (Some(user), Some(password)) = (&nats.user, &nats.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &nats.token {
        options = options.token(token.clone());
    }
    if let Some(ca) = &nats.tls_ca_file {
        options = options.add_root_certificates(config.resolve(ca)).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&nats.tls_cert_file, &nats.tls_key_file) {
        options = options
            .add_client_certificate(config.resolve(cert), config.resolve(key))
            .require_tls(true);
    }
    Ok(options)
}

/// A header NATS can carry ([`jetfold_contract::headers::check`]), as async-nats holds it;
/// else why not.
pub fn header(
    name: &str,
    value: &str,
) -> Result<(async_nats::HeaderName, async_nats::HeaderValue), &'static str> {
    jetfold_contract::headers::check(name, value)?;
    let name = name.parse().map_err(|_| jetfold_contract::headers::BAD_NAME)?;
    let value = value.parse().map_err(|_| jetfold_contract::headers::BAD_VALUE)?;
    Ok((name, value))
}

/// The NATS headers of `pairs`, in order (a name given twice keeps both values); an error
/// names the first pair NATS cannot carry.
pub fn header_map<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> anyhow::Result<async_nats::HeaderMap> {
    let mut h = async_nats::HeaderMap::new();
    for (k, v) in pairs {
        let (name, value) = header(k, v).map_err(|why| match why {
            jetfold_contract::headers::BAD_NAME => {
                anyhow::anyhow!("{k:?} is not a valid header name")
            }
            _ => anyhow::anyhow!("header {k}: {v:?} is not a valid header value"),
        })?;
        h.append(name, value);
    }
    Ok(h)
}

/// The headers [`publish_event`] gives `event`: the documented ones, then its other headers.
pub fn event_headers(event: &crate::event::Event) -> Vec<(String, String)> {
    use source::headers as h;
    let mut pairs = vec![
        (h::MSG_ID.to_string(), event.message_id.clone()),
        (h::EVENT_TYPE.to_string(), event.event_type.clone()),
        (h::AGGREGATE_ID.to_string(), event.aggregate_id.clone()),
        (h::SCHEMA_VERSION.to_string(), event.schema_version.to_string()),
        (h::EVENT_TIME.to_string(), event.time.to_rfc3339()),
    ];
    pairs.extend(event.correlation_id.clone().map(|c| (h::CORRELATION_ID.to_string(), c)));
    pairs.extend(event.causation_id.clone().map(|c| (h::CAUSATION_ID.to_string(), c)));
    if event.content_type != crate::event::JSON {
        pairs.push((h::CONTENT_TYPE.to_string(), event.content_type.clone()));
    }
    pairs.extend(event.headers.iter().cloned());
    pairs
}

/// Publishes `event` to JetStream with the documented headers (the demo, tests and imports
/// use it); the returned future resolves when the stream has stored it.
pub async fn publish_event(
    js: &async_nats::jetstream::Context,
    event: &crate::event::Event,
) -> anyhow::Result<async_nats::jetstream::context::PublishAckFuture> {
    let pairs = event_headers(event);
    let headers = header_map(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .with_context(|| format!("event {:?}", event.message_id))?;
    let ack = js
        .publish_with_headers(event.subject.clone(), headers, event.payload.clone().into())
        .await?;
    Ok(ack)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    /// The contract's header grammar (what fuzzing and effect checks use) is exactly what
    /// async-nats accepts, so an effect the check lets through can always be published.
    fn agree(name: &str, value: &str) {
        let contract = jetfold_contract::headers::check(name, value);
        let nats = name
            .parse::<async_nats::HeaderName>()
            .ok()
            .filter(|_| !name.is_empty())
            .map(|_| ())
            .ok_or(jetfold_contract::headers::BAD_NAME)
            .and_then(|()| {
                value
                    .parse::<async_nats::HeaderValue>()
                    .map(|_| ())
                    .map_err(|_| jetfold_contract::headers::BAD_VALUE)
            });
        assert_eq!(contract, nats, "{name:?}: {value:?}");
    }

    #[test]
    fn the_header_grammar_is_async_nats_own() {
        for (name, value) in [
            ("X-Trace", "abc"),
            ("", "v"),
            ("bad:name", "v"),
            ("naïve", "v"),
            ("has space", "v"),
            ("X", "a\r\nPUB x 1"),
            ("X", "tab\tok"),
            ("$dollar", ""),
            ("X\u{7f}", "v"),
        ] {
            agree(name, value);
        }
    }

    proptest! {
        #[test]
        fn any_header_is_judged_as_async_nats_judges_it(name in "\\PC{0,12}|[ -~]{0,12}", value in "\\PC{0,12}|[\r\n\t a-z]{0,6}") {
            agree(&name, &value);
        }
    }
}
