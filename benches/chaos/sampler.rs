//! The checker's sampling half: one thread per machine asks its systemd every 100 ms which units are
//! active (`systemctl list-units`, bounded by `timeout`, since a machine may hang at any moment).
//! A frozen or killed machine is not asked: nothing of it executes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::lab::FleetLab;
use crate::nemesis::{States, UP};
use crate::support::journal::now_us;

pub const PERIOD: Duration = Duration::from_millis(100);

/// One answer of one machine: the units active there, by index, as a bit set.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub machine: usize,
    /// Host clock (µs since the epoch) when the answer came.
    pub at: u64,
    pub active: u64,
}

pub struct Sampler<'a> {
    fl: &'a FleetLab,
    states: &'a States,
    units: &'a [String],
    pattern: String,
    pub samples: Mutex<Vec<Sample>>,
    pub failures: Mutex<BTreeMap<usize, usize>>,
    pub stop: AtomicBool,
}

impl<'a> Sampler<'a> {
    pub fn new(
        fl: &'a FleetLab,
        states: &'a States,
        units: &'a [String],
        pattern: &str,
    ) -> Sampler<'a> {
        assert!(units.len() <= 64, "at most 64 units (a bit set per sample)");
        Sampler {
            fl,
            states,
            units,
            pattern: pattern.to_string(),
            samples: Mutex::new(Vec::new()),
            failures: Mutex::new(BTreeMap::new()),
            stop: AtomicBool::new(false),
        }
    }

    /// Samples machine `i` until [`Sampler::stop`] is set.
    pub fn run(&self, i: usize) {
        let index: BTreeMap<&str, usize> = self
            .units
            .iter()
            .enumerate()
            .map(|(k, u)| (u.as_str(), k))
            .collect();
        while !self.stop.load(Ordering::SeqCst) {
            let start = Instant::now();
            if self.states.get(i) == UP {
                match self.ask(i, &index) {
                    Some(active) if self.states.get(i) == UP => self
                        .samples
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(Sample {
                            machine: i,
                            at: now_us(),
                            active,
                        }),
                    Some(_) => {}
                    None => {
                        *self
                            .failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(i)
                            .or_default() += 1
                    }
                }
            }
            if let Some(rest) = PERIOD.checked_sub(start.elapsed()) {
                std::thread::sleep(rest);
            }
        }
    }

    fn ask(&self, i: usize, index: &BTreeMap<&str, usize>) -> Option<u64> {
        let out = self
            .fl
            .lab
            .sh(
                i,
                &[
                    "timeout",
                    "-s",
                    "KILL",
                    "2",
                    "systemctl",
                    "list-units",
                    "--no-legend",
                    "--plain",
                    "--type=service",
                    "--state=active",
                    &self.pattern,
                ],
            )
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let mut bits = 0u64;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(k) = line.split_whitespace().next().and_then(|u| index.get(u)) {
                bits |= 1 << k;
            }
        }
        Some(bits)
    }
}

/// What the samples show, checked against nothing but themselves: moments at which two machines'
/// latest answers (each at most `fresh` old) both show a unit active, and each unit's longest stretch
/// seen active nowhere (a machine whose latest answer is older than `fresh` counts as running nothing).
pub struct Polled {
    /// (unit index, host time of the sample that saw the second copy, the two machines).
    pub doubles: Vec<(usize, u64, usize, usize)>,
    /// Per unit: (longest stretch seen nowhere in µs, its start).
    pub nowhere: Vec<(u64, u64)>,
    pub samples: usize,
}

pub fn analyse(samples: &[Sample], units: usize, from: u64, to: u64, fresh: u64) -> Polled {
    let mut samples = samples.to_vec();
    samples.sort_by_key(|s| s.at);
    let mut latest: BTreeMap<usize, Sample> = BTreeMap::new();
    let mut doubles = Vec::new();
    let mut nowhere = vec![(0u64, 0u64); units];
    let mut absent_since: Vec<Option<u64>> = vec![None; units];
    let mut k = 0;
    let tick = 50_000;
    let mut t = from;
    while t <= to {
        while k < samples.len() && samples[k].at <= t {
            let s = samples[k];
            for (&m, o) in &latest {
                if m != s.machine && s.at - o.at <= fresh {
                    let both = o.active & s.active;
                    for u in (0..units).filter(|u| both & (1 << u) != 0) {
                        doubles.push((u, s.at, m, s.machine));
                    }
                }
            }
            latest.insert(s.machine, s);
            k += 1;
        }
        let present = latest
            .values()
            .filter(|s| t - s.at <= fresh)
            .fold(0u64, |acc, s| acc | s.active);
        for u in 0..units {
            if present & (1 << u) != 0 {
                if let Some(since) = absent_since[u].take() {
                    if t - since > nowhere[u].0 {
                        nowhere[u] = (t - since, since);
                    }
                }
            } else if absent_since[u].is_none() {
                absent_since[u] = Some(t);
            }
        }
        t += tick;
    }
    for u in 0..units {
        if let Some(since) = absent_since[u] {
            if to - since > nowhere[u].0 {
                nowhere[u] = (to - since, since);
            }
        }
    }
    Polled {
        doubles,
        nowhere,
        samples: samples.len(),
    }
}
