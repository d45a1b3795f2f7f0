//! The hot path of a plugin's fold thread, outside the daemon's lifecycle code: folding a
//! batch of keyed events through a plugin version ([`fold`]), and the step that does it for
//! one version, behind its stream's upcasters ([`step`]).
//!
//! What the daemon around it decides (which events a batch holds, what happens to a rejected
//! one, when states are written) is in `crate::daemon`; this module only turns a batch of
//! events and the states of their keys into outcomes and new states, exactly as folding the
//! events one at a time would.

pub mod fold;
pub mod step;
