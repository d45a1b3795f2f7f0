//! WASI for guests whose toolchain imports it (componentize-py, componentize-js), denying
//! everything a pure function must not have.
//!
//! A component that imports `wasi:*` interfaces gets them linked, with a context that grants
//! nothing: no preopened directories (every path is "not found"), no environment variables or
//! arguments, no sockets or name lookups, stdin at end of file, a wall clock fixed at the Unix
//! epoch and a monotonic clock that never moves, and "random" bytes from a fixed seed, so the
//! same call makes the same decisions on every replay. What the guest writes to stdout or
//! stderr goes to the log under the plugin's name, a line at a time, and the last
//! [`MAX_CAPTURED`] bytes of each call are kept, so that a trap can say what the guest wrote
//! before it (a Python traceback, a JavaScript exception, a Rust panic message).

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, WasiCtx,
    cli::{IsTerminal, StdoutStream},
    p2::{OutputStream, Pollable, StreamError},
};

/// The prefix of every interface a deny-all WASI context may satisfy.
pub const WASI_PREFIX: &str = "wasi:";

/// The bytes every guest's randomness cycles through: fixed, so replays are identical.
const SEED: [u8; 32] = *b"jetfold: replays see same bytes.";

/// A WASI context that grants nothing, writing the guest's output to the log as `plugin`
/// and into `captured`.
pub fn deny_all(plugin: &str, captured: &Captured) -> WasiCtx {
    let plugin: Arc<str> = plugin.into();
    WasiCtx::builder()
        .stdout(GuestOutput::new(plugin.clone(), "stdout", captured.clone()))
        .stderr(GuestOutput::new(plugin, "stderr", captured.clone()))
        .wall_clock(FixedClock)
        .monotonic_clock(FixedClock)
        .secure_random(wasmtime_wasi::Deterministic::new(SEED.to_vec()))
        .insecure_random(wasmtime_wasi::Deterministic::new(SEED.to_vec()))
        .insecure_random_seed(u128::from_le_bytes(SEED[..16].try_into().expect("16 bytes")))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

/// A clock that always says the Unix epoch (wall) or zero (monotonic).
struct FixedClock;

impl HostWallClock for FixedClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FixedClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// The longest line kept whole; longer ones are logged in pieces of this size.
const MAX_LINE: usize = 16 * 1024;

/// How much of what a guest wrote during one call is kept for its error: the end of it.
pub const MAX_CAPTURED: usize = 4 * 1024;

/// What a guest wrote to stdout and stderr since [`Captured::clear`], as written, of which the
/// last [`MAX_CAPTURED`] bytes are kept.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<(Vec<u8>, bool)>>);

impl Captured {
    /// Forgets what was written (before a call).
    pub fn clear(&self) {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        c.0.clear();
        c.1 = false;
    }

    fn push(&self, bytes: &[u8]) {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        c.0.extend_from_slice(bytes);
        if c.0.len() > MAX_CAPTURED {
            let cut = c.0.len() - MAX_CAPTURED;
            c.0.drain(..cut);
            c.1 = true;
        }
    }

    /// What was written, trimmed; `None` if nothing was. A cut start says so.
    pub fn text(&self) -> Option<String> {
        let c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let text = String::from_utf8_lossy(&c.0);
        let text = text.trim_end();
        if text.trim().is_empty() {
            return None;
        }
        Some(if c.1 { format!("…{text}") } else { text.to_string() })
    }
}

/// The line componentize-py's runtime writes after a Python traceback it could not handle.
const PYTHON_UNCAUGHT: &str = "Python function threw an unexpected exception";

/// A line componentize-js's runtime writes around every uncaught exception: how it aborts, and
/// frames of its generated bindings (in a build directory of its own).
pub(crate) fn js_runtime_line(line: &str) -> bool {
    line == "Redirecting call to abort() to mozalloc_abort"
        || line.contains("/sources/initializer.js:")
}

/// A line componentize-py's runtime writes after an uncaught exception's traceback (its Rust
/// runtime panicking, and that panic's advice), noise once the traceback is there.
pub(crate) fn python_runtime_line(line: &str) -> bool {
    line.starts_with("thread '<unnamed>'")
        || line == PYTHON_UNCAUGHT
        || line.starts_with("note: run with `RUST_BACKTRACE=1`")
}

/// Whether a trap's output came from componentize-py's runtime after a traceback, so that its
/// [`python_runtime_line`]s are noise.
pub(crate) fn python_uncaught(text: &str) -> bool {
    text.lines().any(|l| l == PYTHON_UNCAUGHT)
}

/// Lines the Python and JavaScript toolchains' runtimes write around every uncaught exception
/// (the exception itself is written before them): not logged. A line at a time, so a
/// `thread '<unnamed>'` panic line is noise only when its message is on the next line (the
/// runtime's own panic), not when it carries one. What a trap reports drops them by the same
/// rules, knowing the whole output (`guest::without_noise`).
fn toolchain_noise(line: &str) -> bool {
    js_runtime_line(line)
        || python_runtime_line(line)
            && (!line.starts_with("thread '<unnamed>'")
                || line.contains("runtime/src/lib.rs") && line.ends_with(':'))
}

/// A guest's stdout or stderr: complete lines go to the log under the plugin's name.
#[derive(Clone)]
struct GuestOutput {
    plugin: Arc<str>,
    stream: &'static str,
    pending: Arc<Mutex<Vec<u8>>>,
    captured: Captured,
}

impl GuestOutput {
    fn new(plugin: Arc<str>, stream: &'static str, captured: Captured) -> Self {
        GuestOutput { plugin, stream, pending: Arc::default(), captured }
    }

    fn take(&self, bytes: &[u8]) {
        self.captured.push(bytes);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.extend_from_slice(bytes);
        while let Some(end) = pending.iter().position(|b| *b == b'\n').or_else(|| {
            // A line too long to wait for its end is logged as it is.
            (pending.len() >= MAX_LINE).then_some(MAX_LINE)
        }) {
            let line: Vec<u8> = pending.drain(..end).collect();
            if pending.first() == Some(&b'\n') {
                pending.remove(0);
            }
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches('\r');
            if !toolchain_noise(line) {
                tracing::info!(plugin = %self.plugin, stream = self.stream, "guest: {line}");
            }
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.take(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(MAX_LINE)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.take(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What a store carries: its resource limits and, for a component that imports WASI, the
/// deny-all WASI context of this module.
pub struct HostState {
    pub(crate) limits: wasmtime::StoreLimits,
    pub(crate) wasi: Option<wasmtime_wasi::WasiCtx>,
    /// What the guest writes to stdout and stderr during a call (WASI guests only).
    pub(crate) captured: Option<Captured>,
    pub(crate) table: wasmtime::component::ResourceTable,
}

impl wasmtime_wasi::WasiView for HostState {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView {
            ctx: self.wasi.as_mut().expect("WASI is linked only into components that import it"),
            table: &mut self.table,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_cut_into_lines() {
        let out = GuestOutput::new("p".into(), "stdout", Captured::default());
        out.take(b"hello\nwor");
        assert_eq!(*out.pending.lock().unwrap(), b"wor");
        out.take(b"ld\n");
        assert!(out.pending.lock().unwrap().is_empty());
        out.take(&vec![b'x'; MAX_LINE + 3]);
        assert_eq!(out.pending.lock().unwrap().len(), 3);
    }

    #[test]
    fn a_call_keeps_the_end_of_what_the_guest_wrote() {
        let captured = Captured::default();
        let (out, err) = (
            GuestOutput::new("p".into(), "stdout", captured.clone()),
            GuestOutput::new("p".into(), "stderr", captured.clone()),
        );
        assert_eq!(captured.text(), None);
        out.take(b"printed\n");
        err.take(b"Traceback:\n  ValueError: boom\n");
        assert_eq!(captured.text().unwrap(), "printed\nTraceback:\n  ValueError: boom");
        captured.clear();
        assert_eq!(captured.text(), None, "each call starts empty");
        err.take(&vec![b'x'; MAX_CAPTURED * 2]);
        err.take(b"the end\n");
        let text = captured.text().unwrap();
        assert!(text.starts_with('…') && text.ends_with("the end"), "{text}");
        assert_eq!(text.len(), '…'.len_utf8() + MAX_CAPTURED - 1);
    }
}
