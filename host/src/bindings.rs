//! The only `bindgen!` calls of the host: one module per world of `jetfold:plugin`, for each
//! version of the contract the host loads.
//!
//! The shared `types` interface is generated once (with the 0.1.0 projection world) and
//! reused by every other world of either version, so a `types::Event` is the same Rust type
//! for every kind of plugin. Its definition did not change in 0.2.0 (a component's types are
//! checked by their structure, so one Rust type serves both versions).

/// The `projection` world of 0.1.0: `init`, `apply`, `query`.
pub mod projection {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
        world: "jetfold:plugin/projection",
    });
}

/// The `policy` world of 0.1.0: `init`, `decide`.
pub mod policy {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
        world: "jetfold:plugin/policy",
        with: { "jetfold:plugin/types": super::projection::jetfold::plugin::types },
    });
}

/// The `upcaster` world: `upcast` (the same in 0.1.0 and 0.2.0).
pub mod upcaster {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
        world: "jetfold:plugin/upcaster",
        with: { "jetfold:plugin/types": super::projection::jetfold::plugin::types },
    });
}

/// The optional `migration` interface (`migrate`) of 0.1.0, through a world that exports it.
pub mod migration {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
        world: "jetfold:plugin/projection-with-migration",
        with: { "jetfold:plugin/types": super::projection::jetfold::plugin::types },
    });
    pub use self::exports::jetfold::plugin::migration::{
        Guest as Migration, GuestIndices as MigrationIndices,
    };
}

/// `jetfold:plugin@0.2.0`: batches and resident states.
pub mod v2 {
    /// The `projection` world: `init`, `fold`, `forget`, `query`.
    pub mod projection {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "jetfold:plugin/projection",
            with: { "jetfold:plugin/types": crate::bindings::projection::jetfold::plugin::types },
        });
    }

    /// The `policy` world: `init`, `decide`, `forget`.
    pub mod policy {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "jetfold:plugin/policy",
            with: {
                "jetfold:plugin/types": crate::bindings::projection::jetfold::plugin::types,
                "jetfold:plugin/batching": super::projection::jetfold::plugin::batching,
            },
        });
    }

    /// The optional `migration` interface of 0.2.0 (the same function as in 0.1.0).
    pub mod migration {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "jetfold:plugin/projection-with-migration",
            with: {
                "jetfold:plugin/types": crate::bindings::projection::jetfold::plugin::types,
                "jetfold:plugin/batching": super::projection::jetfold::plugin::batching,
            },
        });
        pub use self::exports::jetfold::plugin::migration::{
            Guest as Migration, GuestIndices as MigrationIndices,
        };
    }

    /// The framing of a batch.
    pub use projection::jetfold::plugin::batching;
}

/// The WIT types shared by every world.
pub use projection::jetfold::plugin::types;
