//! NATS security: the daemon connects with each authentication method its config offers,
//! against nats-servers configured to require it, and is refused with a clear error without.

use std::path::Path;

use jetfold_host::{config::Config, daemon::Daemon, nats::local};

use crate::support::{cache_dir, daemon_dir, plugin, publish_fixture};

/// Starts a nats-server with `server_conf`, fills its INFRA stream with the compute-resource
/// fixture through `admin`, then runs the daemon with the `[nats]` lines `nats_conf` (given
/// the daemon's directory) until it has committed every event. Finally a daemon whose
/// `[nats]` lacks the credentials must fail to start, with `refusal` in its error.
async fn daemon_runs_only_with_credentials(
    server_conf: &str,
    admin: async_nats::ConnectOptions,
    nats_conf: impl Fn(&Path) -> String,
    refusal: &str,
) {
    plugin("compute-resource");
    let nats = local::start_with_config(Some(server_conf)).expect("start nats-server");
    let url = nats.url();
    let js = async_nats::jetstream::new(admin.connect(url.as_str()).await.unwrap());
    crate::support::create_stream(&js, "INFRA", &["infra.>"]).await;
    let fixture = crate::support::root().join("plugins/compute-resource/fixtures/events.jsonl");
    let n = publish_fixture(&js, &fixture).await as u64;

    let dir = daemon_dir(&["compute-resource"]);
    let config_text = |nats_lines: &str| {
        format!(
            "plugin-dir = \"plugins\"\ncache-dir = \"{}\"\n[nats]\nurl = \"{url}\"\nconnect-timeout-secs = 2\n{nats_lines}\n[sink]\nsqlite = \"jetfold.db\"\n",
            cache_dir().display()
        )
    };
    let config =
        Config::parse(&config_text(&nats_conf(dir.path())), dir.path().to_path_buf(), |_| None)
            .unwrap();
    let daemon = Daemon::start(config).await.unwrap();
    let mut progress = daemon.progress("compute-resource").unwrap();
    progress.wait_for(|p| p.committed_seq == n).await.unwrap();
    daemon.stop().await.unwrap();

    let config = Config::parse(&config_text(""), dir.path().to_path_buf(), |_| None).unwrap();
    let error = match Daemon::start(config).await {
        Ok(_) => panic!("a daemon without credentials was let in"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains(refusal), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_lets_the_daemon_in() {
    daemon_runs_only_with_credentials(
        "authorization { token: \"s3cret-token\" }",
        async_nats::ConnectOptions::with_token("s3cret-token".into()),
        |_| "token = \"s3cret-token\"".into(),
        "refused the connection: authorization violation",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_and_password_let_the_daemon_in() {
    daemon_runs_only_with_credentials(
        "authorization { user: \"jetfold\", password: \"pa55word\" }",
        async_nats::ConnectOptions::with_user_and_password("jetfold".into(), "pa55word".into()),
        |_| "user = \"jetfold\"\npassword = \"pa55word\"".into(),
        "refused the connection: authorization violation",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nkey_seed_file_lets_the_daemon_in() {
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().unwrap();
    let conf = format!("authorization {{ users: [ {{ nkey: \"{}\" }} ] }}", user.public_key());
    let admin = async_nats::ConnectOptions::with_nkey(seed.clone());
    daemon_runs_only_with_credentials(
        &conf,
        admin,
        move |dir| {
            std::fs::write(dir.join("jetfold.nk"), format!("{seed}\n")).unwrap();
            "nkey-seed-file = \"jetfold.nk\"".into()
        },
        "refused the connection: authorization violation",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_ca_file_lets_the_daemon_in() {
    // A CA of the test's own, and a certificate for 127.0.0.1 signed by it.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "jetfold test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let server = server_params.signed_by(&server_key, &ca, &ca_key).unwrap();
    let pki = tempfile::tempdir().unwrap();
    let (cert, key, ca_file) =
        (pki.path().join("server.pem"), pki.path().join("server.key"), pki.path().join("ca.pem"));
    std::fs::write(&cert, server.pem()).unwrap();
    std::fs::write(&key, server_key.serialize_pem()).unwrap();
    std::fs::write(&ca_file, ca.pem()).unwrap();

    let conf =
        format!("tls {{ cert_file: \"{}\", key_file: \"{}\" }}", cert.display(), key.display());
    let admin =
        async_nats::ConnectOptions::new().add_root_certificates(ca_file.clone()).require_tls(true);
    let ca_line = format!("tls-ca-file = \"{}\"", ca_file.display());
    daemon_runs_only_with_credentials(
        &conf,
        admin,
        move |_| ca_line.clone(),
        "invalid peer certificate: UnknownIssuer",
    )
    .await;
}

/// A NATS JWT (`ed25519-nkey`) with `claims`, issued by `issuer` about `subject`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = serde_json::json!({"typ": "JWT", "alg": "ed25519-nkey"});
    let mut claims = serde_json::json!({
        "iat": 1_700_000_000,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let hash = sha2::Sha256::digest(serde_json::to_vec(&claims).unwrap());
    claims["jti"] = serde_json::Value::String(hex::encode_upper(hash));
    let signed = format!(
        "{}.{}",
        b64(&serde_json::to_vec(&header).unwrap()),
        b64(&serde_json::to_vec(&claims).unwrap())
    );
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", b64(&signature))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creds_file_lets_the_daemon_in() {
    // Decentralised auth: an operator, an account with JetStream, a user; the server trusts
    // the operator and knows the account's JWT; the user proves itself with a creds file.
    let operator = nkeys::KeyPair::new_operator();
    let (system, account) = (nkeys::KeyPair::new_account(), nkeys::KeyPair::new_account());
    let user = nkeys::KeyPair::new_user();
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
    });
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "op",
        serde_json::json!({"type": "operator", "version": 2, "system_account": system.public_key()}),
    );
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        "SYS",
        serde_json::json!({"type": "account", "version": 2}),
    );
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "app",
        serde_json::json!({"type": "account", "version": 2, "limits": unlimited}),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        "jetfold",
        serde_json::json!({"type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}),
    );
    let creds = format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        user.seed().unwrap()
    );
    let conf = format!(
        "operator: \"{operator_jwt}\"\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{ {}: \"{account_jwt}\", {}: \"{system_jwt}\" }}",
        system.public_key(),
        account.public_key(),
        system.public_key()
    );
    let admin = async_nats::ConnectOptions::with_credentials(&creds).unwrap();
    daemon_runs_only_with_credentials(
        &conf,
        admin,
        move |dir| {
            std::fs::write(dir.join("jetfold.creds"), &creds).unwrap();
            "creds-file = \"jetfold.creds\"".into()
        },
        "refused the connection: authorization violation",
    )
    .await;
}
