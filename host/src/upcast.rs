//! Upcasters in a chain: before a projection or policy sees an event, every upcaster whose
//! `[source]` subjects match it and whose `[upcast] from-version` is the event's schema version
//! rewrites it, again and again (v1 → v2 → v3) until none applies. Each step must raise the
//! schema version and keep the event's sequence and message id (checked by the host), so the
//! chain ends.

use std::borrow::Cow;

use crate::component::{ComponentLoader, LoadedComponent};
use crate::effect::subject_matches;
use crate::event::Event;
use crate::guest::GuestInstance;
use crate::guest::StepError;
use crate::manifest::Manifest;

/// An upcaster as loaded: manifest and component, ready to instantiate.
#[derive(Clone)]
pub struct UpcasterSpec {
    /// Its manifest.
    pub manifest: Manifest,
    /// Its component.
    pub component: LoadedComponent,
}

impl UpcasterSpec {
    /// Whether it rewrites `event`.
    pub fn applies(manifest: &Manifest, event: &Event) -> bool {
        manifest.upcast.as_ref().is_some_and(|u| u.from_version == event.schema_version)
            && (manifest.source.subjects.is_empty()
                || manifest.source.subjects.iter().any(|p| subject_matches(p, &event.subject)))
    }

    /// Whether it applies to a plugin reading `stream`: it names that stream, or none.
    pub fn reads(&self, stream: &str) -> bool {
        self.manifest.source.stream.as_deref().is_none_or(|s| s == stream)
    }
}

/// Instances of a plugin's upcasters.
#[derive(Default)]
pub struct UpcastChain {
    links: Vec<(Manifest, GuestInstance)>,
}

impl UpcastChain {
    /// Fuel the upcasters' calls have consumed so far.
    pub fn fuel_used(&self) -> u64 {
        self.links.iter().map(|(_, guest)| guest.fuel_used()).sum()
    }

    /// Instantiates `specs`.
    pub fn new(specs: &[UpcasterSpec], loader: &ComponentLoader) -> anyhow::Result<Self> {
        let links = specs
            .iter()
            .map(|s| {
                let m = &s.manifest;
                let guest = GuestInstance::new(
                    &m.name,
                    &s.component,
                    loader.engine(),
                    m.limits.clone(),
                    m.config_json(),
                )
                .map_err(|e| anyhow::anyhow!("upcaster `{}` failed to start: {e}", m.name))?;
                Ok((m.clone(), guest))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(UpcastChain { links })
    }

    /// Whether there is any upcaster.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// `event` raised through every upcaster that applies, in turn (itself when none does).
    pub fn raise<'a>(&mut self, event: &'a Event) -> Result<Cow<'a, Event>, StepError> {
        let mut current = Cow::Borrowed(event);
        loop {
            let at = current.as_ref();
            let Some((manifest, guest)) =
                self.links.iter_mut().find(|(m, _)| UpcasterSpec::applies(m, at))
            else {
                return Ok(current);
            };
            let next = guest.upcast(at).map_err(|e| {
                let mut error = StepError::from(e);
                error.message = format!(
                    "upcaster `{}` (schema version {}): {}",
                    manifest.name, at.schema_version, error.message
                );
                error
            })?;
            current = Cow::Owned(next);
        }
    }
}
