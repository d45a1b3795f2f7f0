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
