//! The membership the agent counts quorums over (docs/safety.md, "Quorum"): every machine announced in
//! etcd, since when this fleetd has known it (under its current lease), and when its announcement
//! vanished. Saved in the runtime directory so that a restarted fleetd keeps what it knew.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use fleet_decide::{Member, Time};
use fleet_sched::MachineId;
use serde::{Deserialize, Serialize};

use super::view::AgentCluster;
use crate::clock;
use crate::registry::Machine;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Track {
    lease: i64,
    known_since: u64,
    departed_at: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct Saved {
    boot_id: String,
    members: BTreeMap<String, Track>,
}

/// What this fleetd knows about each member's time in the membership.
#[derive(Debug, Default)]
pub struct Membership {
    members: BTreeMap<MachineId, Track>,
    file: Option<PathBuf>,
}

impl Membership {
    /// Starts from what an earlier fleetd of this boot saved in `file`, if anything.
    pub fn load(file: Option<PathBuf>) -> Membership {
        let mut m = Membership {
            members: BTreeMap::new(),
            file,
        };
        let saved = m
            .file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| serde_json::from_slice::<Saved>(&b).ok())
            .filter(|s| s.boot_id == clock::boot_id());
        if let Some(s) = saved {
            m.members = s
                .members
                .into_iter()
                .filter_map(|(id, t)| Some((MachineId::parse(&id).ok()?, t)))
                .collect();
        }
        m
    }

    /// Follows the announcements in `machines` at `now`; members gone for `ttl` are forgotten.
    pub fn update(&mut self, machines: &BTreeMap<MachineId, Machine>, ttl: Duration, now: Time) {
        let mut changed = false;
        for (id, m) in machines {
            let fresh = Track {
                lease: m.lease,
                known_since: now.as_micros(),
                departed_at: None,
            };
            match self.members.get_mut(id) {
                Some(t) if t.lease == m.lease && t.departed_at.is_none() => {}
                Some(t) => {
                    *t = fresh;
                    changed = true;
                }
                None => {
                    self.members.insert(id.clone(), fresh);
                    changed = true;
                }
            }
        }
        for (id, t) in self.members.iter_mut() {
            if t.departed_at.is_none() && !machines.contains_key(id) {
                t.departed_at = Some(now.as_micros());
                changed = true;
            }
        }
        let before = self.members.len();
        self.members.retain(|_, t| {
            t.departed_at
                .is_none_or(|d| now.since(Time::from_micros(d)) < ttl)
        });
        changed |= self.members.len() != before;
        if changed {
            self.save();
        }
    }

    /// The members as the decision core counts them: alive when this node's gossip view shows them
    /// alive and not suspected (this machine: always).
    pub fn members(&self, cluster: &AgentCluster) -> Vec<Member> {
        self.members
            .iter()
            .map(|(id, t)| {
                let (alive, suspect, _) = cluster.peer(id);
                Member {
                    id: id.clone(),
                    known_since: Time::from_micros(t.known_since),
                    departed_at: t.departed_at.map(Time::from_micros),
                    alive: alive && !suspect,
                }
            })
            .collect()
    }

    fn save(&self) {
        let Some(f) = &self.file else {
            return;
        };
        let s = Saved {
            boot_id: clock::boot_id(),
            members: self
                .members
                .iter()
                .map(|(id, t)| (id.to_string(), t.clone()))
                .collect(),
        };
        let tmp = f.with_extension("tmp");
        let r = f
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&tmp, serde_json::to_vec(&s).expect("serializes")))
            .and_then(|()| std::fs::rename(&tmp, f));
        if let Err(e) = r {
            tracing::warn!(file = %f.display(), "saving the membership: {e}");
        }
    }
}
