//! A SWIM model for clusters too large for one real gossip core per machine (`gossip_mode = "model"`).
//!
//! This is **modelled, not the real code**. It follows the protocol's steps with the same timers:
//! every `probe_period` each responsive machine probes one random member it holds live (direct
//! probe, then `num_indirect_probes` indirect probes, each datagram subject to partitions and loss);
//! a failed probe makes the prober suspect the target, and the target is declared down
//! `suspect_to_down_after` later unless it can refute (it is responsive and the prober can reach
//! it). A verdict (and a rejoin) spreads as a rumor: each observer reachable from the origin learns it
//! after a number of `gossip_interval` rounds drawn from the infection curve of push gossip with
//! `gossip_fanout` (the count-level epidemic, precomputed for the cluster size). Machines that
//! missed a rejoin (partitions) learn it through a repair pass every `anti_entropy_interval`, after
//! a uniform delay in that interval. The cluster starts formed.
//!
//! Not modelled: piggybacking (it only speeds dissemination up), suspicion refutation failing
//! under loss (so random loss produces no false down verdicts here: use the real mode for lossy
//! networks), foca's identity renewal details. Traffic is estimated: probe and ack datagrams
//! counted with a fixed size, rumors at `max_transmissions` sends per machine, anti-entropy at a
//! fixed number of bytes per member per exchange (calibrated against the real core, see the README).

use rand::RngExt;

use crate::scenario::Config;
use crate::sim::Sim;

/// Bytes of a probe or ack datagram (measured from the real core: about 60 to 80).
const PROBE_BYTES: u64 = 70;
/// Bytes per membership update carried by a rumor.
const UPDATE_BYTES: u64 = 45;
/// Bytes per transmission of one unit state update, amortized over piggybacking (calibrated).
const UNIT_UPDATE_BYTES: u64 = 30;
/// Updates piggybacked per datagram.
const UPDATES_PER_DATAGRAM: u64 = 40;
/// Bytes of an anti-entropy exchange per cluster member (offer and answer carry the membership
/// and the digest; calibrated on the real core at 50 and 100 machines, see the README).
const SYNC_BYTES_PER_MEMBER: u64 = 600;

/// Events of the model.
#[derive(Clone, Debug)]
pub enum ModelEv {
    /// Every machine probes once.
    ProbeRound,
    /// A suspicion of `target` by `origin` times out.
    Verdict {
        /// The prober.
        origin: u32,
        /// The suspect.
        target: u32,
    },
    /// Observers learn that `target` is down (`down`) or up, if the rumor is still current.
    Learn {
        /// The machine the rumor is about.
        target: u32,
        /// Down or up.
        down: bool,
        /// The target's status version when the rumor started.
        version: u32,
        /// Who learns it now.
        observers: Vec<u32>,
        /// The verdicts were already recorded in the metrics.
        quiet: bool,
    },
    /// Anti-entropy: machines that hold a responsive, reachable machine down learn it is up.
    Repair,
}

/// The model's state.
pub struct SwimModel {
    n: usize,
    probe_period: u64,
    probe_rtt: u64,
    indirect: usize,
    suspect: u64,
    interval: u64,
    anti_entropy: u64,
    max_tx: u64,
    sync_views: bool,
    /// Cumulative fraction of machines infected after each round.
    cdf: Vec<f64>,
    pending: Vec<bool>,
    version: Vec<u32>,
    datagrams: u64,
    bytes: u64,
    sync_bytes: u64,
}

impl SwimModel {
    /// A model for `n` machines with these timers.
    pub fn new(n: usize, c: &Config) -> SwimModel {
        // Count-level push epidemic: each informed machine sends to `fanout` random machines per
        // round, for `max_transmissions` rounds.
        let nf = n.max(2) as f64;
        let fanout = c.gossip_fanout.max(1) as f64;
        let mut informed = 1.0f64;
        let mut cdf = Vec::new();
        let mut history: Vec<f64> = vec![1.0];
        for round in 0..64 {
            // Machines still sending: those informed in the last max_transmissions rounds.
            let start = history.len().saturating_sub(c.max_transmissions as usize);
            let senders = informed - if start > 0 { history[start - 1] } else { 0.0 };
            let p_miss = (-(fanout * senders.max(0.0)) / nf).exp();
            let newly = (nf - informed) * (1.0 - p_miss);
            informed = (informed + newly).min(nf);
            history.push(informed);
            cdf.push(informed / nf);
            if informed >= nf - 0.5 || round > 40 {
                break;
            }
        }
        if let Some(last) = cdf.last_mut() {
            *last = 1.0;
        }
        SwimModel {
            n,
            probe_period: c.probe_period.0,
            probe_rtt: c.probe_rtt.0,
            indirect: c.num_indirect_probes,
            suspect: c.suspect_to_down_after.0,
            interval: c.gossip_interval.0,
            anti_entropy: c.anti_entropy_interval.0,
            max_tx: c.max_transmissions as u64,
            sync_views: c.sync_views,
            cdf,
            pending: vec![false; n],
            version: vec![0; n],
            datagrams: 0,
            bytes: 0,
            sync_bytes: 0,
        }
    }

    /// Estimated traffic so far: (datagrams, bytes, of which anti-entropy bytes).
    pub fn traffic(&self) -> (u64, u64, u64) {
        (
            self.datagrams,
            self.bytes + self.sync_bytes,
            self.sync_bytes,
        )
    }

    /// A machine published a unit state change: one state update disseminated to every member.
    pub(crate) fn unit_update(&mut self) {
        let n = self.n as u64;
        self.bytes += n * self.max_tx * UNIT_UPDATE_BYTES;
        self.datagrams += n * self.max_tx / UPDATES_PER_DATAGRAM;
    }

    pub(crate) fn start(&mut self, sim: &mut Sim) {
        sim.preform_views();
        let jitter = sim.rng.random_range(0..self.probe_period);
        sim.push_model(jitter, ModelEv::ProbeRound);
        sim.push_model(self.anti_entropy, ModelEv::Repair);
    }

    pub(crate) fn on_boot(&mut self, sim: &mut Sim, i: u32) {
        if sim.now() == 0 {
            return;
        }
        self.version[i as usize] += 1;
        // Joining is a sync with a seed: the newcomer learns every member at once...
        let now = sim.now();
        for j in 0..self.n as u32 {
            if j != i && sim.is_responsive(j) && sim.linked(i, j) {
                sim.learn_up(i, j);
            }
        }
        self.sync_bytes += SYNC_BYTES_PER_MEMBER * self.n as u64;
        // ... and the cluster learns it through a rumor.
        self.rumor(sim, i, i, false, now);
    }

    pub(crate) fn on_stop(&mut self, _sim: &mut Sim, i: u32) {
        self.version[i as usize] += 1;
        self.pending[i as usize] = false;
    }

    pub(crate) fn on_resume(&mut self, sim: &mut Sim, i: u32) {
        self.version[i as usize] += 1;
        // A resumed member hears it was declared down within a probe period and rejoins.
        let at = sim.now() + self.probe_period;
        self.rumor(sim, i, i, false, at);
    }

    /// Spreads "target is down/up" from `origin` starting at `at`, to the machines reachable from it.
    fn rumor(&mut self, sim: &mut Sim, origin: u32, target: u32, down: bool, at: u64) {
        let version = self.version[target as usize];
        let mut rounds: Vec<Vec<u32>> = vec![Vec::new(); self.cdf.len()];
        let mut reached = 0u64;
        for o in 0..self.n as u32 {
            if o == target || o == origin || !sim.is_responsive(o) || !sim.linked(origin, o) {
                continue;
            }
            if sim.view_has(o, target) != down {
                continue;
            }
            reached += 1;
            let u: f64 = sim.rng.random();
            let r = self
                .cdf
                .iter()
                .position(|c| u <= *c)
                .unwrap_or(self.cdf.len() - 1);
            rounds[r].push(o);
        }
        if origin != target && down {
            // The origin itself knows at once.
            rounds[0].push(origin);
        }
        self.datagrams += (reached + 1) * self.max_tx / 3;
        self.bytes += (reached + 1) * self.max_tx * UPDATE_BYTES;
        let when = |r: usize| at + (r as u64 + 1) * self.interval / 2 + 500;
        if self.sync_views {
            // Everyone learns it when the last observer would; detection is drawn per observer.
            let last = rounds.iter().rposition(|o| !o.is_empty());
            let Some(last) = last else { return };
            let mut all = Vec::new();
            for (r, observers) in rounds.into_iter().enumerate() {
                if down {
                    for &o in &observers {
                        sim.record_verdict(o, target, when(r));
                    }
                }
                all.extend(observers);
            }
            all.sort_unstable();
            sim.push_model(
                when(last),
                ModelEv::Learn {
                    target,
                    down,
                    version,
                    observers: all,
                    quiet: true,
                },
            );
            return;
        }
        for (r, observers) in rounds.into_iter().enumerate() {
            if observers.is_empty() {
                continue;
            }
            let t = when(r);
            sim.push_model(
                t,
                ModelEv::Learn {
                    target,
                    down,
                    version,
                    observers,
                    quiet: false,
                },
            );
        }
    }

    fn path_ok(&self, sim: &mut Sim, a: u32, b: u32) -> bool {
        if !sim.linked(a, b) {
            return false;
        }
        let p = 1.0 - (1.0 - sim.link_loss(a, b)) * (1.0 - sim.link_loss(b, a));
        !(p > 0.0 && sim.rng.random_bool(p.min(1.0)))
    }

    pub(crate) fn handle(&mut self, sim: &mut Sim, ev: ModelEv) {
        let now = sim.now();
        match ev {
            ModelEv::ProbeRound => {
                for i in 0..self.n as u32 {
                    if !sim.is_responsive(i) || sim.view_len(i) == 0 {
                        continue;
                    }
                    // A random member this machine holds live.
                    let mut target = None;
                    for _ in 0..4 {
                        let j = sim.rng.random_range(0..self.n as u32);
                        if j != i && sim.view_has(i, j) {
                            target = Some(j);
                            break;
                        }
                    }
                    let Some(j) = target else { continue };
                    self.datagrams += 2;
                    self.bytes += 2 * PROBE_BYTES;
                    let alive = sim.is_responsive(j);
                    if alive && self.path_ok(sim, i, j) {
                        continue;
                    }
                    let mut ok = false;
                    for _ in 0..self.indirect {
                        let h = sim.rng.random_range(0..self.n as u32);
                        self.datagrams += 4;
                        self.bytes += 4 * PROBE_BYTES;
                        if h != i
                            && h != j
                            && sim.is_responsive(h)
                            && alive
                            && self.path_ok(sim, i, h)
                            && self.path_ok(sim, h, j)
                        {
                            ok = true;
                            break;
                        }
                    }
                    if !ok && !self.pending[j as usize] {
                        self.pending[j as usize] = true;
                        let _ = self.probe_rtt;
                        sim.push_model(
                            now + self.probe_period + self.suspect,
                            ModelEv::Verdict {
                                origin: i,
                                target: j,
                            },
                        );
                    }
                }
                sim.push_model(now + self.probe_period, ModelEv::ProbeRound);
            }
            ModelEv::Verdict { origin, target } => {
                self.pending[target as usize] = false;
                if !sim.is_responsive(origin) {
                    return;
                }
                // Refuted if the suspect hears the suspicion and its refutation gets back.
                if sim.is_responsive(target) && sim.linked(origin, target) {
                    return;
                }
                self.rumor(sim, origin, target, true, now);
            }
            ModelEv::Learn {
                target,
                down,
                version,
                observers,
                quiet,
            } => {
                if self.version[target as usize] != version {
                    return;
                }
                for o in observers {
                    if !sim.is_responsive(o) {
                        continue;
                    }
                    if down && quiet {
                        sim.learn_down_quiet(o, target);
                    } else if down {
                        sim.learn_down(o, target);
                    } else {
                        sim.learn_up(o, target);
                    }
                }
            }
            ModelEv::Repair => {
                // Each machine syncs with one live member per interval.
                let mut live_count = 0u64;
                let responsive: Vec<u32> = (0..self.n as u32)
                    .filter(|&j| sim.is_responsive(j))
                    .collect();
                live_count += responsive.len() as u64;
                self.datagrams += live_count;
                self.sync_bytes += live_count * SYNC_BYTES_PER_MEMBER * self.n as u64;
                let total = responsive.len();
                for &o in &responsive {
                    if sim.view_len(o) + 1 == total {
                        continue;
                    }
                    for &j in &responsive {
                        if j != o && !sim.view_has(o, j) && sim.linked(o, j) {
                            let at = now + sim.rng.random_range(0..self.anti_entropy.max(1));
                            sim.push_model(
                                at,
                                ModelEv::Learn {
                                    target: j,
                                    down: false,
                                    version: self.version[j as usize],
                                    observers: vec![o],
                                    quiet: false,
                                },
                            );
                        }
                    }
                }
                sim.push_model(now + self.anti_entropy, ModelEv::Repair);
            }
        }
    }
}
