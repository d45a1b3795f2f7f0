//! A test fixture that misbehaves on demand, one way per event type:
//!
//! - `Ok`: counts and upserts a row into `faults`;
//! - `Fail`: returns a business error;
//! - `Spoil`: changes the state, then returns a business error (the change must not stay);
//! - `Panic`: panics (a trap in WebAssembly);
//! - `Loop`: never returns (stopped by the fuel limit);
//! - `Bomb`: allocates without bound (stopped by the memory cap);
//! - `Sneak`: writes a table its manifest does not declare;
//! - `Hoard`: returns a state of 256 KiB (over the manifest's `max-state-bytes`);
//! - `Flood`: returns 10,000 effects (log lines) for one event (over `max-effects`).

use jetfold_guest::prelude::*;

#[derive(Default, Serialize, Deserialize)]
pub struct Seen {
    pub ok: u64,
    /// Only `Hoard` fills it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ballast: String,
}

#[derive(Deserialize)]
pub enum Fault {
    Ok,
    Fail,
    Spoil,
    Panic,
    Loop,
    Bomb,
    Sneak,
    Hoard,
    Flood,
}

impl Projection<Fault> for Seen {
    fn apply(&mut self, event: Event<Fault>, cx: &mut Context) -> Result<()> {
        match event.payload {
            Fault::Ok => {
                self.ok += 1;
                cx.upsert("faults", &event.aggregate_id, &json!({ "ok": self.ok }));
            }
            Fault::Fail => return Err(Error::rejected("asked to fail")),
            Fault::Spoil => {
                self.ok += 1_000;
                return Err(Error::rejected("asked to fail after changing the state"));
            }
            Fault::Panic => panic!("asked to panic at sequence {}", event.sequence),
            Fault::Loop => {
                let mut n: u64 = event.sequence;
                loop {
                    n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
                    if n == 0 {
                        break;
                    }
                }
            }
            Fault::Bomb => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Fault::Sneak => cx.upsert("secrets", "k", &json!({ "stolen": true })),
            Fault::Hoard => self.ballast = "x".repeat(256 << 10),
            Fault::Flood => {
                for _ in 0..10_000 {
                    cx.log(LogLevel::Info, "flood");
                }
            }
        }
        Ok(())
    }
}

export_projection!(Seen);
