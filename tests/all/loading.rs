//! Loading components: sandbox and world checks, broken manifests, the precompiled cache.

use std::path::Path;

use jetfold_host::component::{ComponentLoader, LoadError};
use jetfold_host::manifest::PluginKind;

use crate::support::{jetfold, plugin, plugin_copy};

#[test]
fn rust_plugins_import_nothing_but_the_contracts_types() {
    let engine = wasmtime::Engine::default();
    for (name, file) in [
        ("compute-resource", "compute_resource.wasm"),
        ("person-archive", "person_archive.wasm"),
        ("event-counter", "event_counter.wasm"),
    ] {
        let component =
            wasmtime::component::Component::from_file(&engine, plugin(name).join(file)).unwrap();
        let ty = component.component_type();
        let imports: Vec<String> = ty.imports(&engine).map(|(n, _)| n.to_string()).collect();
        // The contract's type-only interfaces of 0.2.0: `types` and the batch framing.
        assert!(
            imports.iter().all(|i| {
                i.starts_with("jetfold:plugin/types@0.2.0")
                    || i.starts_with("jetfold:plugin/batching@0.2.0")
            }),
            "{name} imports {imports:?}"
        );
        for (import, item) in ty.imports(&engine) {
            let wasmtime::component::types::ComponentItem::ComponentInstance(instance) = item.ty
            else {
                panic!("{name} imports {import}, which is not an interface");
            };
            assert!(
                instance.exports(&engine).all(|(_, e)| {
                    matches!(e.ty, wasmtime::component::types::ComponentItem::Type(_))
                }),
                "{name}'s import {import} carries functions"
            );
        }
    }
}

#[test]
fn a_file_that_is_not_a_component_is_refused_by_name() {
    let tmp = plugin_copy("event-counter");
    let wasm = tmp.path().join("event_counter.wasm");
    std::fs::write(&wasm, b"definitely not wasm").unwrap();
    let run = jetfold([Path::new("test"), tmp.path()]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(
        run.stderr.contains("event_counter.wasm is not a WebAssembly component"),
        "{}",
        run.all()
    );

    // A core module (what cargo builds) is not a component either.
    std::fs::write(&wasm, wat::parse_str("(module (func (export \"apply\")))").unwrap()).unwrap();
    let run = jetfold([Path::new("test"), tmp.path()]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(run.stderr.contains("core WebAssembly module"), "{}", run.all());
}

#[test]
fn a_component_of_another_world_is_refused() {
    let tmp = plugin_copy("event-counter");
    std::fs::copy(
        plugin("person-archive").join("person_archive.wasm"),
        tmp.path().join("event_counter.wasm"),
    )
    .unwrap();
    let run = jetfold([Path::new("test"), tmp.path()]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(run.stderr.contains("does not export the `projection` world"), "{}", run.all());
    assert!(run.stderr.contains("`decide`"), "names what it does export: {}", run.all());
}

#[test]
fn a_component_importing_anything_but_the_contract_and_wasi_is_refused_naming_the_import() {
    let loader = ComponentLoader::new(None).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for import in ["acme:net/tcp@1.0.0", "jetfold:plugin/host-secrets@0.1.0", "env"] {
        let wasm = tmp.path().join("sneaky.wasm");
        let text = format!("(component (import \"{import}\" (instance)))");
        std::fs::write(&wasm, wat::parse_str(&text).unwrap()).unwrap();
        let Err(err) = loader.load(PluginKind::Projection, &wasm) else {
            panic!("{import} was accepted")
        };
        assert!(matches!(err, LoadError::Imports { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains(&format!("`{import}`")) && message.contains("sneaky.wasm"),
            "{message}"
        );
    }
}

#[test]
fn broken_manifests_are_refused_naming_the_file_and_key() {
    let tmp = plugin_copy("event-counter");
    let manifest = tmp.path().join("plugin.toml");
    let good = std::fs::read_to_string(&manifest).unwrap();
    let cases = [
        (format!("{good}\nretries = 3\n"), "unknown field `retries`"),
        (good.replace("wasm = \"event_counter.wasm\"", ""), "missing field `wasm`"),
        (good.replace("kind = \"projection\"", "kind = \"reducer\""), "unknown variant `reducer`"),
        (format!("{good}\n[limits]\nfuel = \"lots\"\n"), "invalid type"),
        (good.replace("[allow]", "[allow\n"), "invalid"),
    ];
    for (text, wanted) in cases {
        std::fs::write(&manifest, &text).unwrap();
        let run = jetfold([Path::new("test"), tmp.path()]);
        assert_eq!(run.code, 2, "{}", run.all());
        assert!(
            run.stderr.contains("plugin.toml") && run.stderr.contains(wanted),
            "wanted {wanted}: {}",
            run.all()
        );
    }
    let run = jetfold([Path::new("test"), &tmp.path().join("nowhere")]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("cannot read plugin manifest"), "{}", run.all());
}

#[test]
fn compiled_components_are_cached_by_digest_and_engine() {
    let wasm = plugin("compute-resource").join("compute_resource.wasm");
    let cache = tempfile::tempdir().unwrap();
    let loader = ComponentLoader::new(Some(cache.path().to_path_buf())).unwrap();
    let cold = loader.load(PluginKind::Projection, &wasm).unwrap();
    assert!(!cold.from_cache);
    let cached = loader.cache_path(&cold.digest).unwrap();
    assert!(cached.exists(), "{}", cached.display());
    assert!(cached.file_name().unwrap().to_str().unwrap().starts_with(&cold.digest.hex()));

    let warm = ComponentLoader::new(Some(cache.path().to_path_buf()))
        .unwrap()
        .load(PluginKind::Projection, &wasm)
        .unwrap();
    assert!(warm.from_cache);
    assert_eq!(warm.digest, cold.digest);

    // A damaged cache entry is ignored and replaced, never trusted.
    std::fs::write(&cached, b"garbage").unwrap();
    let again = loader.load(PluginKind::Projection, &wasm).unwrap();
    assert!(!again.from_cache);
    assert!(std::fs::read(&cached).unwrap().len() > 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_plugin_at_start_is_refused_alone_and_the_others_run() {
    use crate::support::{NatsServer, cache_dir, create_stream, daemon_dir, eventually};
    plugin("event-counter");
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    crate::swap::publish(&js, 0, 20).await;
    let dir = daemon_dir(&["event-counter"]);
    let broken = dir.path().join("plugins/broken");
    std::fs::create_dir_all(&broken).unwrap();
    let manifest = std::fs::read_to_string(dir.path().join("plugins/event-counter/plugin.toml"))
        .unwrap()
        .replace("name = \"event-counter\"", "name = \"broken\"");
    std::fs::write(broken.join("plugin.toml"), manifest).unwrap();
    std::fs::write(broken.join("event_counter.wasm"), b"definitely not wasm").unwrap();
    let config = dir.path().join("jetfold.toml");
    std::fs::write(
        &config,
        format!(
            "plugin-dir = \"plugins\"\ncache-dir = \"{}\"\n[nats]\nurl = \"{}\"\n[sink]\nsqlite = \"jetfold.db\"\n[http]\nlisten = \"\"\n",
            cache_dir().display(),
            nats.url()
        ),
    )
    .unwrap();
    let log = dir.path().join("jetfold.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_jetfold"))
        .args([Path::new("run"), Path::new("--config"), &config])
        .env("JETFOLD_CACHE_DIR", cache_dir())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let db = dir.path().join("jetfold.db");
    eventually(60, "the other plugin folded the stream", || {
        crate::support::checkpoint(&db, "event-counter") == 20
    })
    .await;
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(child.try_wait().unwrap().is_none(), "the daemon runs: {said}");
    assert!(said.contains("event_counter.wasm is not a WebAssembly component"), "{said}");
    std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));

    // Nothing that could run: the start fails, naming why.
    std::fs::remove_dir_all(dir.path().join("plugins/event-counter")).unwrap();
    let run = jetfold([Path::new("run"), Path::new("--config"), &config]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(run.stderr.contains("no plugin could be loaded"), "{}", run.all());
    assert!(run.stderr.contains("is not a WebAssembly component"), "{}", run.all());
}
