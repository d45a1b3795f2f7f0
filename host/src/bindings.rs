//! The only `bindgen!` calls of the host: one module per world of `jetfold:plugin`.
//!
//! The shared `types` interface is generated once (with the projection world) and reused by
//! the other worlds, so a `types::Event` is the same Rust type for every kind of plugin.

/// The `projection` world: `init`, `apply`, `query`.
pub mod projection {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "jetfold:plugin/projection",
    });
}

/// The `policy` world: `init`, `decide`.
pub mod policy {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "jetfold:plugin/policy",
        with: { "jetfold:plugin/types": super::projection::jetfold::plugin::types },
    });
}

/// The `upcaster` world: `upcast`.
pub mod upcaster {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "jetfold:plugin/upcaster",
        with: { "jetfold:plugin/types": super::projection::jetfold::plugin::types },
    });
}

/// The optional `migration` interface (`migrate`), through a world that exports it.
pub mod migration {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "jetfold:plugin/projection-with-migration",
        with: { "jetfold:plugin/types": super::projection::jetfold::plugin::types },
    });
    pub use self::exports::jetfold::plugin::migration::{
        Guest as Migration, GuestIndices as MigrationIndices,
    };
}

/// The WIT types shared by every world.
pub use projection::jetfold::plugin::types;
