//! Invariant 6 of [`crate::check`], no needless fence: the facts the simulator feeds about each
//! machine (clean or not, its etcd link up or down) and the check of every fence against them.

use super::Checker;
use crate::report::ViolationKind;

/// What invariant 6 (no needless fence) knows of each machine.
pub(super) struct Fences {
    /// The window before a kill over which the machine must have been clean (µs).
    window: u64,
    /// An etcd link down for longer than this excuses a kill (µs).
    etcd_grace: u64,
    /// Since when each machine has been clean (invariant 6 in [`crate::check`]), `None` while it is not.
    clean_since: Vec<Option<u64>>,
    /// Since when each machine's etcd link has been down, while it is.
    etcd_down: Vec<Option<u64>>,
    /// Each machine's etcd link's recent down stretches that ended: (start, end).
    etcd_stretches: Vec<Vec<(u64, u64)>>,
    /// When a needless fence of each machine was last reported.
    reported: Vec<Option<u64>>,
}

impl Fences {
    /// Nothing checked until [`Checker::check_fences`]; `n` machines.
    pub(super) fn new(n: usize) -> Fences {
        Fences {
            window: u64::MAX,
            etcd_grace: 0,
            clean_since: vec![None; n],
            etcd_down: vec![None; n],
            etcd_stretches: vec![Vec::new(); n],
            reported: vec![None; n],
        }
    }
}

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

impl Checker {
    /// Turns invariant 6 on: a kill is needless when the machine was clean for `window` before it and
    /// its etcd link was down for less than `etcd_grace` (µs).
    pub fn check_fences(&mut self, window: u64, etcd_grace: u64) {
        self.fences.window = window;
        self.fences.etcd_grace = etcd_grace;
    }

    /// Machine `m` is clean (see invariant 6) from `now` on, or not.
    pub fn clean(&mut self, now: u64, m: u32, clean: bool) {
        let c = &mut self.fences.clean_since[m as usize];
        match (clean, *c) {
            (true, None) => *c = Some(now),
            (false, _) => *c = None,
            _ => {}
        }
    }

    /// Machine `m`'s etcd link is up (`true`: reachable, at full speed, lossless) or down from `now` on.
    pub fn etcd_link(&mut self, now: u64, m: u32, up: bool) {
        let f = &mut self.fences;
        let down = &mut f.etcd_down[m as usize];
        match (up, *down) {
            (false, None) => *down = Some(now),
            (true, Some(start)) => {
                *down = None;
                let kept = f.window.saturating_add(f.etcd_grace);
                let stretches = &mut f.etcd_stretches[m as usize];
                stretches.retain(|&(_, end)| end.saturating_add(kept) >= now);
                stretches.push((start, now));
            }
            _ => {}
        }
    }

    /// Machine `m`'s units were killed at `now` for want of a fence deadline (`killed` of them, by its
    /// guard or its agent): a violation if the kill was needless (invariant 6).
    pub fn fenced(&mut self, now: u64, m: u32, killed: usize, by_guard: bool) {
        let f = &self.fences;
        let trace = |why: &str| {
            if std::env::var_os("FLEET_SIM_TRACE").is_some_and(|v| v == "fences") {
                eprintln!(
                    "{:>10.3}s fence of {}: {killed} unit(s) killed by the {}; {why}",
                    secs(now),
                    self.machines[m as usize],
                    if by_guard { "guard" } else { "agent" }
                );
            }
        };
        if f.window == u64::MAX || killed == 0 {
            return;
        }
        let from = now.saturating_sub(f.window);
        let Some(clean) = f
            .clean_since
            .get(m as usize)
            .copied()
            .flatten()
            .filter(|&c| c <= from)
        else {
            trace("excused: not clean over the window");
            return;
        };
        if f.reported[m as usize].is_some_and(|t| t >= from) {
            return;
        }
        // The etcd link's down stretches that overlap the window: each must be short (begun within
        // the grace before the kill).
        let old = now.saturating_sub(f.etcd_grace);
        let ongoing = f.etcd_down[m as usize].map(|s| (s, now));
        let stretches: Vec<(u64, u64)> = f.etcd_stretches[m as usize]
            .iter()
            .copied()
            .chain(ongoing)
            .filter(|&(_, end)| end >= from)
            .collect();
        if stretches.iter().any(|&(start, _)| start < old) {
            trace("excused: etcd out of reach for longer than the grace");
            return;
        }
        trace("NEEDLESS");
        let etcd = match stretches.last() {
            Some((start, _)) if ongoing.is_some() => {
                format!("its etcd link down since {:.3}s", secs(*start))
            }
            Some((start, end)) => format!(
                "its etcd link down from {:.3}s to {:.3}s",
                secs(*start),
                secs(*end)
            ),
            None => "etcd in reach".to_string(),
        };
        let detail = format!(
            "{} killed {killed} unit(s) of {} at {:.3}s, with {etcd}; it and a majority of the \
             machines were up and connected to each other since {:.3}s, and no other fault concerned it",
            if by_guard { "the fence guard" } else { "the agent" },
            self.machines[m as usize],
            secs(now),
            secs(clean)
        );
        self.fences.reported[m as usize] = Some(now);
        let subject = self.machines[m as usize].clone();
        self.violation(ViolationKind::NeedlessFence, now, subject, detail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checker() -> Checker {
        Checker::new(&[], vec!["a".into(), "b".into(), "c".into()], 1_000)
    }

    #[test]
    fn a_fence_is_needless_only_for_a_clean_machine_that_lost_etcd_briefly() {
        let fresh = || {
            let mut c = checker();
            c.check_fences(1_000, 10_000);
            for m in 0..3 {
                c.clean(0, m, true);
                c.etcd_link(0, m, true);
            }
            c
        };
        // Clean for the whole window, etcd lost 500 µs before: needless, reported once per window.
        let mut c = fresh();
        c.etcd_link(5_000, 0, false);
        c.fenced(5_500, 0, 2, true);
        c.fenced(5_600, 0, 2, false);
        assert_eq!(c.violations.len(), 1);
        assert_eq!(c.violations[0].kind, ViolationKind::NeedlessFence);
        // Nothing killed: no fence.
        let mut c = fresh();
        c.fenced(5_500, 0, 0, true);
        assert!(c.violations.is_empty());
        // etcd lost for longer than the grace (ongoing or ended within the window): excused.
        let mut c = fresh();
        c.etcd_link(5_000, 0, false);
        c.fenced(16_000, 0, 1, true);
        c.etcd_link(17_000, 0, true);
        c.fenced(17_500, 0, 1, true);
        assert!(c.violations.is_empty(), "{:?}", c.violations);
        // Not clean within the window (a partition, a pause...): excused; clean again for a whole
        // window: not.
        let mut c = fresh();
        c.clean(4_800, 1, false);
        c.fenced(5_000, 1, 1, true);
        c.clean(5_000, 1, true);
        c.fenced(5_900, 1, 1, true);
        assert!(c.violations.is_empty(), "{:?}", c.violations);
        c.fenced(6_000, 1, 1, true);
        assert_eq!(c.violations.len(), 1);
        // Without check_fences, nothing is checked.
        let mut c = checker();
        c.clean(0, 0, true);
        c.fenced(5_000, 0, 1, true);
        assert!(c.violations.is_empty());
    }
}
