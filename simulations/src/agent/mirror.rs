//! The registry mirror (advanced by the watch), the committee's seats, and the gossip membership:
//! announced machines gossip forgot are joined again, suspects read from the gossip core.

use std::collections::BTreeSet;

use fleet_decide::{Committee, Seat, Time};

use crate::sim::Sim;

impl Sim {
    /// Advances machine `m`'s mirror to `rev`, following the announcements: the committee's seats.
    pub(crate) fn advance_mirror(&mut self, m: u32, rev: i64) {
        let local = self.local(m);
        let mm = &mut self.machines[m as usize];
        let Some(a) = mm.agent.as_mut() else {
            return;
        };
        let changed: Vec<u32> = if a.mirror_rev == 0 {
            // The first read: every current announcement; seats this machine knew of that are gone
            // now departed (a restarted fleetd keeps the seats it saved).
            a.anns = self.etcd.announcements().clone();
            a.ann_pos = self.etcd.announcements_since(0, rev).0;
            mm.seats.keys().chain(a.anns.keys()).copied().collect()
        } else {
            let (pos, log) = self.etcd.announcements_since(a.ann_pos, rev);
            let mut changed = Vec::new();
            for &(_, j, ann) in log {
                match ann {
                    Some(ann) => a.anns.insert(j, ann),
                    None => a.anns.remove(&j),
                };
                changed.push(j);
            }
            a.ann_pos = pos;
            changed
        };
        for j in changed {
            match a.anns.get(&j) {
                Some(ann) => {
                    mm.seats.insert(j, (ann.created, None));
                }
                None => {
                    if let Some(seat) = mm.seats.get_mut(&j) {
                        seat.1.get_or_insert(local);
                    }
                }
            }
            a.committee_until = Some(0);
        }
        a.mirror_rev = rev;
    }

    /// Machine `m`'s committee now (recomputed when the seats change or a departed seat expires).
    pub(super) fn committee_of(&mut self, m: u32, now: u64) -> Option<Committee> {
        let ttl = self.sc.config.agent_ttl.0;
        let infos = &self.machine_infos;
        let mm = &mut self.machines[m as usize];
        let a = mm.agent.as_mut()?;
        if a.mirror_rev == 0 {
            return None;
        }
        if a.committee.is_none() || a.committee_until.is_some_and(|u| now >= u) {
            mm.seats.retain(|_, (_, d)| d.is_none_or(|d| now < d + ttl));
            let seats: Vec<Seat> = mm
                .seats
                .iter()
                .map(|(&j, &(since, departed))| Seat {
                    id: infos[j as usize].id.clone(),
                    since,
                    departed_at: departed.map(Time),
                })
                .collect();
            a.committee = Some(Committee::choose(
                &seats,
                self.sc.config.agent_ttl.std(),
                Time(now),
            ));
            a.committee_until = mm
                .seats
                .values()
                .filter_map(|(_, d)| d.map(|d| d + ttl))
                .min();
        }
        a.committee.clone()
    }

    /// As fleetd does on its periodic pass: machines announced in the registry that its gossip
    /// membership does not know (forgotten after `remove_down_after`, say) are joined through the
    /// addresses in their announcements.
    pub(crate) fn rejoin_announced(&mut self, m: u32) {
        if !self.machines[m as usize].agent_runs() || self.model.is_some() {
            return;
        }
        let me = self.machines[m as usize].ident;
        let Some(a) = self.machines[m as usize].agent.as_ref() else {
            return;
        };
        // Candidates (a cheap test first): announced, not alive here, and not declared down recently
        // (gossip keeps a down member for remove_down_after); the gossip view decides.
        let now = self.local(m);
        let forget = self.sc.config.remove_down_after.0;
        let announced: Vec<u32> = a
            .anns
            .keys()
            .filter(|j| **j != me && !a.live.contains(**j))
            .filter(|j| a.down_since.get(j).is_none_or(|&d| now >= d + forget))
            .copied()
            .collect();
        if announced.is_empty() {
            return;
        }
        let Some(node) = a.node.as_ref() else { return };
        let known: BTreeSet<u32> = node
            .liveness()
            .filter_map(|(id, _)| self.by_id.get(id).copied())
            .collect();
        let addrs: Vec<std::net::SocketAddr> = announced
            .into_iter()
            .filter(|j| !known.contains(j))
            .filter_map(|j| self.etcd.announcement(j))
            .map(|ann| crate::sim::addr_of(ann.addr))
            .collect();
        if addrs.is_empty() {
            return;
        }
        let at = self.instant(m);
        if let Some(node) = self.machines[m as usize]
            .agent
            .as_mut()
            .and_then(|a| a.node.as_mut())
        {
            node.join(at, &addrs);
        }
        self.flush_node(m);
    }

    /// fleetd's periodic read of its gossip view: the suspects; returns whether they changed (a running
    /// agent is then woken: its plan leaves suspects out).
    pub(crate) fn refresh_view(&mut self, m: u32) -> bool {
        if !self.machines[m as usize].agent_runs() {
            return false;
        }
        let before = self.machines[m as usize]
            .agent
            .as_ref()
            .map(|a| (a.suspects.clone(), a.refusing.clone()));
        self.refresh_suspects(m);
        let after = self.machines[m as usize]
            .agent
            .as_ref()
            .map(|a| (&a.suspects, &a.refusing));
        before.as_ref().map(|(s, r)| (s, r)) != after
    }

    /// Reads which machines machine `m`'s gossip core suspects, if its membership or metadata changed
    /// since the last read (`Node::members_generation`; the SWIM model has no per-observer suspicion).
    pub(super) fn refresh_suspects(&mut self, m: u32) {
        let Some(a) = self.machines[m as usize].agent.as_ref() else {
            return;
        };
        let Some(node) = a.node.as_ref() else {
            return;
        };
        let generation = node.members_generation();
        if a.suspects_at == Some(generation) {
            return;
        }
        let suspects: BTreeSet<u32> = node
            .suspects()
            .filter_map(|id| self.by_id.get(id).copied())
            .collect();
        // As fleetd's view: the live members whose metadata says they cannot take units.
        let refusing: BTreeSet<u32> = node
            .refusing_units()
            .filter_map(|id| self.by_id.get(id).copied())
            .collect();
        if let Some(a) = self.machines[m as usize].agent.as_mut() {
            a.suspects = suspects;
            a.refusing = refusing;
            a.suspects_at = Some(generation);
        }
    }

    /// Whether machine `m`'s plan leaves machine `j` out for saying it cannot take units: as `m`'s
    /// gossip core holds `j`'s metadata, or in the SWIM model (no metadata) as `j`'s agent last told.
    pub(super) fn refuses_units(&self, m: u32, j: u32) -> bool {
        match self.machines[m as usize].agent.as_ref() {
            Some(a) if a.node.is_some() => a.refusing.contains(&j),
            _ => self.machines[j as usize]
                .agent
                .as_ref()
                .is_some_and(|x| x.told_cannot_take),
        }
    }

    /// Machine `i`'s gossip metadata: its `k=v` and whether it can take units.
    pub(crate) fn gossip_metadata(&self, i: u32) -> fleet_gossip::Metadata {
        let mut md = fleet_gossip::Metadata {
            public_ip: String::new(),
            metadata: self.machine_infos[i as usize].metadata.clone(),
            version: "sim".into(),
            unit_count: 0,
        };
        let cannot = self.machines[i as usize]
            .agent
            .as_ref()
            .is_some_and(|a| a.told_cannot_take);
        md.set_cannot_take_units(cannot);
        md
    }

    /// As fleetd's agent in every pass: tells gossip, when it changed, whether machine `m` can take
    /// units (`fleet_decide::takes_units`); the others' plans leave it out while it cannot.
    pub(super) fn tell_takes_units(&mut self, m: u32, guard: &fleet_decide::Guard, now: u64) {
        let cannot = !fleet_decide::takes_units(guard, fleet_decide::Time(now));
        let Some(a) = self.machines[m as usize].agent.as_mut() else {
            return;
        };
        if a.told_cannot_take == cannot {
            return;
        }
        a.told_cannot_take = cannot;
        if a.node.is_some() {
            let at = self.instant(m);
            let md = self.gossip_metadata(m);
            if let Some(node) = self.machines[m as usize]
                .agent
                .as_mut()
                .and_then(|a| a.node.as_mut())
            {
                node.set_local_metadata(at, md);
            }
            self.flush_node(m);
        } else {
            // The SWIM model carries no metadata: every agent reads it at once, and replans.
            for j in 0..self.machines.len() as u32 {
                if j != m && self.machines[j as usize].agent_runs() {
                    self.request_pass(j);
                }
            }
        }
    }
}
