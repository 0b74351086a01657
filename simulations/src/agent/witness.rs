//! Support and votes: requests between agents, which travel like gossip datagrams with fleetd's
//! timeouts, and the witness every machine is.

use fleet_decide::{Committee, Time};

use super::{micros, Ask, RandomBool, Reply};
use crate::sim::{Ev, Sim};

impl Sim {
    /// Sends `ask` from machine `m`'s fleetd to witness `w`.
    pub(super) fn ask(&mut self, m: u32, w: u32, ask: Ask) {
        let gen = self.machines[m as usize].gen;
        let sent = self.local(m);
        if let Some(at) = self.relay_arrival(m, w) {
            self.metrics.witness_requests += 1;
            self.push(
                at,
                Ev::Ask {
                    from: m,
                    gen,
                    to: w,
                    ask,
                    sent,
                    sent_g: self.now,
                },
            );
        }
    }

    /// When a message from `a` to `b` arrives (`None`: lost to a partition or loss).
    fn relay_arrival(&mut self, a: u32, b: u32) -> Option<u64> {
        let (ai, bi) = (a as usize, b as usize);
        if self.net.blocked(ai, bi) {
            return None;
        }
        let loss = self.net.loss(ai, bi, self.sc.config.loss);
        if loss > 0.0 && self.rng.random_bool_(loss) {
            return None;
        }
        let c = &self.sc.config;
        let jitter = if c.jitter.0 > 0 {
            rand::RngExt::random_range(&mut self.rng, 0..c.jitter.0)
        } else {
            0
        };
        Some(self.now + c.latency.0 + jitter + self.net.delay(ai, bi))
    }

    /// Witness `to` answers `ask` from machine `from` (if its fleetd runs).
    pub(crate) fn witness_answer(
        &mut self,
        from: u32,
        gen: u32,
        to: u32,
        ask: Ask,
        sent: u64,
        sent_g: u64,
    ) {
        if !self.machines[to as usize].agent_runs() {
            return;
        }
        let now = Time(self.local(to));
        let reply = if self.witness_decides(to, from, ask, now) {
            Reply::Granted
        } else if self.refused_as_voted_away(to, from, ask) {
            Reply::VotedAway
        } else {
            Reply::Denied
        };
        if let Some(at) = self.relay_arrival(to, from) {
            self.push(
                at,
                Ev::Answer {
                    m: from,
                    gen,
                    from: to,
                    ask,
                    reply,
                    sent,
                    sent_g,
                },
            );
        }
    }

    /// Machine `w`'s witness decides on `ask` from machine `from` at `now` (its clock).
    fn witness_decides(&mut self, w: u32, from: u32, ask: Ask, now: Time) -> bool {
        let timing = self.timing.clone();
        let asker = self.machine_infos[self.machines[from as usize].ident as usize]
            .id
            .clone();
        match ask {
            Ask::Support(lease) => self.machines[w as usize]
                .witness
                .support(&asker, lease, now),
            Ask::Vote { holder, lease } => {
                // What this witness's gossip sees of the holder (the rule is fleet_decide's).
                let seen_alive = self.machines[w as usize]
                    .agent
                    .as_ref()
                    .is_some_and(|a| a.live.contains(holder) && !a.suspects.contains(&holder));
                let holder = self.machine_infos[holder as usize].id.clone();
                self.machines[w as usize]
                    .witness
                    .vote(&timing, &holder, lease, seen_alive, now)
            }
        }
    }

    /// Whether witness `w` refused `ask` (a support request from machine `from`) because it voted that
    /// lease away: fleetd's relay answers so (`Witness::voted_away` decides it).
    fn refused_as_voted_away(&self, w: u32, from: u32, ask: Ask) -> bool {
        let Ask::Support(lease) = ask else {
            return false;
        };
        let asker = &self.machine_infos[self.machines[from as usize].ident as usize].id;
        self.machines[w as usize].witness.voted_away(asker, lease)
    }

    /// The witness's answer reaches fleetd on machine `m` (if it still runs, and before its timeout).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn witness_granted(
        &mut self,
        m: u32,
        gen: u32,
        from: u32,
        ask: Ask,
        reply: Reply,
        sent: u64,
        sent_g: u64,
    ) {
        let mm = &self.machines[m as usize];
        if mm.gen != gen || !mm.agent_runs() {
            return;
        }
        let timeout = match ask {
            Ask::Support(_) => self.timing.support_validity() / 3,
            Ask::Vote { .. } => self.timing.lease_poll_period() * 2,
        };
        if self.now.saturating_sub(sent_g) > micros(timeout) {
            return;
        }
        if reply == Reply::VotedAway {
            // The lease may not be supported again: fleetd takes a new one (`fleet_decide::replace`).
            if let Ask::Support(lease) = ask {
                if self.machines[m as usize].lease.id == lease {
                    self.agent_mut(m).refused = Some(lease);
                    self.request_pass(m);
                }
            }
            return;
        }
        if reply != Reply::Granted {
            return;
        }
        let id = self.machine_infos[from as usize].id.clone();
        let a = self.agent_mut(m);
        match ask {
            Ask::Support(lease) => {
                if self.machines[m as usize].lease.id == lease {
                    self.agent_mut(m).granted.insert(id, Time(sent));
                    // fleetd's guard writer wakes on a grant: the deadline it extends is written at once.
                    self.guard_tick(m);
                }
            }
            Ask::Vote { holder, lease } => {
                if a.votes_wanted.contains(&(holder, lease))
                    || a.votes_asked.contains_key(&(holder, lease))
                {
                    a.votes.entry((holder, lease)).or_default().insert(from);
                    self.request_pass(m);
                }
            }
        }
    }

    /// Asks the witnesses that have not voted yet to vote on the holders the last pass wanted to take
    /// units from (this machine's own witness is asked directly).
    pub(super) fn run_votes(&mut self, m: u32, committee: &Committee, now: u64) {
        let period = micros(self.timing.lease_poll_period());
        let me = self.machines[m as usize].ident;
        let a = self.agent_mut(m);
        let wanted = std::mem::take(&mut a.votes_wanted);
        a.votes.retain(|k, _| wanted.contains(k));
        a.votes_asked.retain(|k, _| wanted.contains(k));
        for (holder, lease) in wanted {
            let key = (holder, lease);
            let a = self.agent_mut(m);
            if a.votes_asked.get(&key).is_some_and(|t| now < t + period) {
                continue;
            }
            a.votes_asked.insert(key, now);
            let have = a.votes.get(&key).cloned().unwrap_or_default();
            let ask: Vec<u32> = committee
                .witnesses
                .iter()
                .filter_map(|w| self.by_id.get(w).copied())
                .filter(|w| *w != holder && !have.contains(w))
                .collect();
            for w in ask {
                if w == me {
                    if self.witness_decides(m, m, Ask::Vote { holder, lease }, Time(now)) {
                        self.agent_mut(m).votes.entry(key).or_default().insert(w);
                    }
                } else {
                    self.ask(m, w, Ask::Vote { holder, lease });
                }
            }
        }
    }
}
