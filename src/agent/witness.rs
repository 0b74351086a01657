//! This machine as a witness of the committee (docs/safety.md): it answers other machines' requests for
//! support and votes over the agents' QUIC channel (`relay.rs`), with the promises of
//! [`fleet_decide::Witness`], saved after every change (`<runtime_dir>/witness.json`, for this boot) so
//! that a restarted fleetd keeps them.

use std::path::PathBuf;
use std::sync::Mutex;

use fleet_decide::{Promise, Time, Timing, Witness};
use fleet_sched::MachineId;
use serde::{Deserialize, Serialize};

use crate::clock;

#[derive(Serialize, Deserialize)]
struct Saved {
    boot_id: String,
    /// `(machine, lease, supported at µs, refused)`.
    promises: Vec<(MachineId, i64, Option<u64>, bool)>,
}

/// The witness's promises, shared by the agent (its own votes) and the relay (peers' requests).
#[derive(Debug)]
pub struct WitnessService {
    timing: Timing,
    state: Mutex<Witness>,
    file: Option<PathBuf>,
}

impl WitnessService {
    /// The witness, with the promises an earlier fleetd of this boot saved in `file`; without them it
    /// stays quiet for a support period.
    pub fn load(timing: Timing, file: Option<PathBuf>) -> WitnessService {
        let now = clock::now();
        let saved = file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| match serde_json::from_slice::<Saved>(&b) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring the saved witness promises: unreadable");
                    None
                }
            })
            .filter(|s| s.boot_id == clock::boot_id());
        let state = match saved {
            Some(s) => Witness {
                promises: s
                    .promises
                    .into_iter()
                    .map(|(m, l, at, refused)| {
                        (
                            (m, l),
                            Promise {
                                supported_at: at.map(Time::from_micros),
                                refused,
                            },
                        )
                    })
                    .collect(),
                quiet_until: Time::ZERO,
            },
            None => Witness::fresh(&timing, now),
        };
        WitnessService {
            timing,
            state: Mutex::new(state),
            file,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Witness> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `machine` asks support for its `lease`.
    pub fn support(&self, machine: &MachineId, lease: i64) -> bool {
        let mut w = self.lock();
        let granted = w.support(machine, lease, clock::now());
        if granted {
            self.save(&w);
        }
        granted
    }

    /// Whether this witness voted `machine`'s `lease` away.
    pub fn voted_away(&self, machine: &MachineId, lease: i64) -> bool {
        self.lock().voted_away(machine, lease)
    }

    /// A vote that `machine`'s `lease` may be taken over (`seen_alive`: gossip here sees it alive and
    /// unsuspected; see [`fleet_decide::Witness::vote`]).
    pub fn vote(&self, machine: &MachineId, lease: i64, seen_alive: bool) -> bool {
        let mut w = self.lock();
        let granted = w.vote(&self.timing, machine, lease, seen_alive, clock::now());
        if granted {
            tracing::info!(%machine, lease = format!("{lease:x}"), "voted that the lease may be taken over");
            self.save(&w);
        }
        granted
    }

    /// Forgets promises about leases that no longer exist (and bind no vote:
    /// [`fleet_decide::Witness::retain`]).
    pub fn retain(&self, alive: impl FnMut(&MachineId, i64) -> bool) {
        let mut w = self.lock();
        let before = w.promises.len();
        w.retain(&self.timing, clock::now(), alive);
        if w.promises.len() != before {
            self.save(&w);
        }
    }

    fn save(&self, w: &Witness) {
        let Some(f) = &self.file else {
            return;
        };
        let s = Saved {
            boot_id: clock::boot_id(),
            promises: w
                .promises
                .iter()
                .map(|((m, l), p)| {
                    (
                        m.clone(),
                        *l,
                        p.supported_at.map(Time::as_micros),
                        p.refused,
                    )
                })
                .collect(),
        };
        let tmp = f.with_extension("tmp");
        let r = f
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&tmp, serde_json::to_vec(&s).expect("serializes")))
            .and_then(|()| std::fs::rename(&tmp, f));
        if let Err(e) = r {
            tracing::error!(file = %f.display(), "saving the witness's promises: {e}");
        }
    }
}
