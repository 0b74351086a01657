//! The seats of the witness committee as this fleetd knows them (docs/safety.md, "The witness
//! committee"): every machine announced in etcd, its place in line (the announcement's
//! `create_revision`), and when its announcement vanished. Saved in the runtime directory so that a
//! restarted fleetd keeps what it knew of departures.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use fleet_decide::{Seat, Time};
use fleet_sched::MachineId;
use serde::{Deserialize, Serialize};

use crate::clock;
use crate::registry::Machine;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Track {
    since: i64,
    departed_at: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct Saved {
    boot_id: String,
    seats: BTreeMap<MachineId, Track>,
}

/// The seats, by machine.
#[derive(Debug, Default)]
pub struct Seats {
    seats: BTreeMap<MachineId, Track>,
    file: Option<PathBuf>,
}

impl Seats {
    /// Starts from what an earlier fleetd of this boot saved in `file`, if anything.
    pub fn load(file: Option<PathBuf>) -> Seats {
        let mut m = Seats {
            seats: BTreeMap::new(),
            file,
        };
        let saved = m
            .file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| match serde_json::from_slice::<Saved>(&b) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring the saved committee seats: unreadable");
                    None
                }
            })
            .filter(|s| s.boot_id == clock::boot_id());
        if let Some(s) = saved {
            m.seats = s.seats;
        }
        m
    }

    /// Follows the announcements in `machines` at `now`; seats vacated `ttl` ago are forgotten.
    pub fn update(&mut self, machines: &BTreeMap<MachineId, Machine>, ttl: Duration, now: Time) {
        let mut changed = false;
        for (id, m) in machines {
            let fresh = Track {
                since: m.since,
                departed_at: None,
            };
            if self.seats.get(id) != Some(&fresh) {
                self.seats.insert(id.clone(), fresh);
                changed = true;
            }
        }
        for (id, t) in self.seats.iter_mut() {
            if t.departed_at.is_none() && !machines.contains_key(id) {
                t.departed_at = Some(now.as_micros());
                changed = true;
            }
        }
        let before = self.seats.len();
        self.seats.retain(|_, t| {
            t.departed_at
                .is_none_or(|d| now.since(Time::from_micros(d)) < ttl)
        });
        changed |= self.seats.len() != before;
        if changed {
            self.save();
        }
    }

    /// The seats as the decision core takes them.
    pub fn seats(&self) -> Vec<Seat> {
        self.seats
            .iter()
            .map(|(id, t)| Seat {
                id: id.clone(),
                since: t.since,
                departed_at: t.departed_at.map(Time::from_micros),
            })
            .collect()
    }

    fn save(&self) {
        let Some(f) = &self.file else {
            return;
        };
        let s = Saved {
            boot_id: clock::boot_id(),
            seats: self
                .seats
                .iter()
                .map(|(id, t)| (id.clone(), t.clone()))
                .collect(),
        };
        let tmp = f.with_extension("tmp");
        let r = f
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&tmp, serde_json::to_vec(&s).expect("serializes")))
            .and_then(|()| std::fs::rename(&tmp, f));
        if let Err(e) = r {
            tracing::warn!(file = %f.display(), "saving the committee seats: {e}");
        }
    }
}
