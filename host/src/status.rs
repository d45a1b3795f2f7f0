//! What a plugin on a daemon is doing, as a type: the status page, `/metrics`, `/readyz`,
//! `plugin list` and `plugin remove --purge` all read this one enum, never a string.

use serde::{Deserialize, Serialize};

/// The state of one plugin on one daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginState {
    /// Folding its stream.
    Running,
    /// Folding, while a new version rebuilds its read model beside it.
    Rebuilding,
    /// Started, but retrying a transient failure (its stream missing, NATS or the database
    /// unreachable): nothing is committed meanwhile.
    Stalled,
    /// Paused through the registry: its consumer and checkpoint are kept.
    Paused,
    /// Stopped by `enabled = false` in the daemon's config: its consumer and checkpoint are
    /// kept.
    Disabled,
    /// Not running: its version could not be loaded.
    Refused,
    /// Not running: stopped by its circuit breaker, a halt or an error; it starts again at
    /// the next reload (`jetfold plugin resume`, SIGHUP, a change in its directory).
    Stopped,
    /// The daemon reporting it has stopped (its last report), or has not reported for three
    /// of its report intervals.
    DaemonGone,
}

impl PluginState {
    /// Whether a worker of the plugin runs (it may commit): running, rebuilding or stalled.
    pub fn is_started(self) -> bool {
        matches!(self, PluginState::Running | PluginState::Rebuilding | PluginState::Stalled)
    }

    /// The word shown for it.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginState::Running => "running",
            PluginState::Rebuilding => "rebuilding",
            PluginState::Stalled => "stalled",
            PluginState::Paused => "paused",
            PluginState::Disabled => "disabled",
            PluginState::Refused => "refused",
            PluginState::Stopped => "stopped",
            PluginState::DaemonGone => "daemon-gone",
        }
    }
}

impl std::fmt::Display for PluginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}
