//! The planner's placement state: loads and the ordered sets of machines by load (pools), placing and
//! removing units, and the `Conflicts=` counters per machine and per pool (as `engine` keeps them).

use super::super::engine::{key, FxMap, NONE, SMALL_CLASS};
use super::{Planner, Pool};

impl Planner {
    pub(super) fn set_load(&mut self, m: u32, new: u32) {
        let bulk = self.bulk;
        let mach = self.machine_mut(m);
        let old = mach.load;
        mach.load = new;
        if bulk {
            return;
        }
        let k = mach.key.clone();
        let pools = std::mem::take(&mut mach.pools);
        for &p in std::iter::once(&0).chain(&pools) {
            let set = self.pools[p as usize].as_mut().expect("pool");
            set.remove(&(old, k.clone(), m));
            set.insert((new, k.clone(), m));
        }
        self.machine_mut(m).pools = pools;
    }

    pub(super) fn place(&mut self, u: u32, m: u32) {
        self.set_load(m, self.machine(m).load + 1);
        self.machine_mut(m).on.push(u);
        self.count(u, m, true);
        let unit = self.unit_mut(u);
        if unit.global {
            unit.global_on.insert(m);
        } else {
            unit.at = m;
        }
        if self.recording {
            self.undo.push((u, m, true));
        }
    }

    pub(super) fn unplace(&mut self, u: u32, m: u32) {
        self.set_load(m, self.machine(m).load - 1);
        self.machine_mut(m).on.retain(|&w| w != u);
        self.count(u, m, false);
        let unit = self.unit_mut(u);
        if unit.global {
            unit.global_on.remove(&m);
        } else {
            unit.at = NONE;
        }
        if self.recording {
            self.undo.push((u, m, false));
        }
    }

    /// Takes a reserved unit off its machine (it becomes unreserved).
    pub(super) fn unreserve(&mut self, u: u32) {
        if !self.unit(u).reserved {
            return;
        }
        self.unplace(u, self.unit(u).at);
        self.unit_mut(u).reserved = false;
        self.unreserved.insert(u);
        self.touched.insert(u);
    }

    pub(super) fn count(&mut self, u: u32, m: u32, add: bool) {
        for i in 0..self.unit(u).conflict_pats.len() {
            let p = self.unit(u).conflict_pats[i];
            self.adjust(p, m, true, add);
        }
        for i in 0..self.unit(u).matched_by.len() {
            let p = self.unit(u).matched_by[i];
            self.adjust(p, m, false, add);
        }
    }

    /// One unit more (or less) on `m` that owns (or matches) pattern `p`, with the pools' counts of
    /// machines where `p` is matched, owned, either.
    pub(super) fn adjust(&mut self, p: u32, m: u32, own: bool, add: bool) {
        let k = key(p, m);
        let before = self.pattern_state(p, m);
        let map = if own {
            &mut self.cnt_own
        } else {
            &mut self.cnt_match
        };
        if add {
            *map.entry(k).or_insert(0) += 1;
        } else {
            let c = map.get_mut(&k).expect("counted");
            *c -= 1;
            if *c == 0 {
                map.remove(&k);
            }
        }
        let after = self.pattern_state(p, m);
        if before == after || self.bulk {
            return;
        }
        let bits = |s: [bool; 2]| [s[0], s[1], s[0] || s[1]];
        let (before, after) = (bits(before), bits(after));
        let pools = std::mem::take(&mut self.machine_mut(m).pools);
        for &pool in std::iter::once(&0).chain(&pools) {
            let e = self.pool_touched.entry(key(p, pool)).or_default();
            for i in 0..3 {
                if before[i] != after[i] {
                    if after[i] {
                        e[i] += 1;
                    } else {
                        e[i] -= 1;
                    }
                }
            }
            if *e == [0; 3] {
                self.pool_touched.remove(&key(p, pool));
            }
        }
        self.machine_mut(m).pools = pools;
    }

    /// Rebuilds the ordered sets and their pattern counts from the loads and counters (after a bulk
    /// recomputation).
    pub(super) fn rebuild_pools(&mut self) {
        self.bulk = false;
        for (p, pool) in self.pools.iter_mut().enumerate() {
            if let Some(pool) = pool {
                pool.clear();
                if p == 0 {
                    for &m in &self.order {
                        let x = self.ms[m as usize].as_ref().expect("live machine");
                        pool.insert((x.load, x.key.clone(), m));
                    }
                }
            }
        }
        for class in self.classes.iter().flatten() {
            if class.pool != NONE {
                let pool = self.pools[class.pool as usize].as_mut().expect("pool");
                for &m in &class.sorted {
                    let x = self.ms[m as usize].as_ref().expect("live machine");
                    pool.insert((x.load, x.key.clone(), m));
                }
            }
        }
        self.pool_touched.clear();
        let mut keys: Vec<u64> = self
            .cnt_match
            .keys()
            .chain(self.cnt_own.keys())
            .copied()
            .collect();
        keys.sort_unstable();
        keys.dedup();
        for k in keys {
            let (p, m) = ((k >> 32) as u32, k as u32);
            let [matched, owned] = self.pattern_state(p, m);
            let bits = [matched, owned, matched || owned];
            let pools = &self.ms[m as usize].as_ref().expect("live machine").pools;
            for &pool in std::iter::once(&0).chain(pools) {
                let e = self.pool_touched.entry(key(p, pool)).or_default();
                for i in 0..3 {
                    e[i] += bits[i] as u32;
                }
            }
        }
    }

    pub(super) fn pattern_state(&self, p: u32, m: u32) -> [bool; 2] {
        let k = key(p, m);
        [
            self.cnt_match.contains_key(&k),
            self.cnt_own.contains_key(&k),
        ]
    }

    /// `true` if a single `Conflicts=` pattern already blocks every machine of `pool` for `u`.
    pub(super) fn pool_blocked(&self, u: u32, pool: u32) -> bool {
        let size = self.pools[pool as usize].as_ref().expect("pool").len() as u32;
        let unit = self.unit(u);
        let counts = |p: u32| {
            self.pool_touched
                .get(&key(p, pool))
                .copied()
                .unwrap_or_default()
        };
        unit.conflict_pats.iter().any(|&p| {
            let both = unit.matched_by.contains(&p);
            counts(p)[if both { 2 } else { 0 }] == size
        }) || unit.matched_by.iter().any(|&p| counts(p)[1] == size)
    }

    /// Creates the ordered set of the class of `u` when it is matched by many machines, once.
    pub(super) fn ensure_pool(&mut self, u: u32) {
        let unit = self.unit(u);
        let c = unit.class;
        if c == NONE || unit.info.requirements.required_machine().is_some() {
            return;
        }
        self.ensure_class_pool(c);
    }

    /// Creates the ordered set of class `c` if it is matched by many machines and has none yet: when
    /// the class appears (so that no later change pays for it), or when it grows past the threshold.
    pub(super) fn ensure_class_pool(&mut self, c: u32) {
        let class = self.classes[c as usize].as_ref().expect("class");
        if class.pool != NONE || class.sorted.len() <= SMALL_CLASS {
            return;
        }
        let members = class.sorted.clone();
        let set: Pool = members
            .iter()
            .map(|&m| (self.machine(m).load, self.machine(m).key.clone(), m))
            .collect();
        let p = match self.free_pools.pop() {
            Some(p) => p,
            None => {
                self.pools.push(None);
                (self.pools.len() - 1) as u32
            }
        };
        let mut touched: FxMap<u64, [u32; 3]> = FxMap::default();
        for &m in &members {
            let mut ps: Vec<u32> = self
                .machine(m)
                .on
                .iter()
                .flat_map(|&w| {
                    let x = self.unit(w);
                    x.conflict_pats.iter().chain(&x.matched_by).copied()
                })
                .collect();
            ps.sort_unstable();
            ps.dedup();
            for q in ps {
                let [matched, owned] = self.pattern_state(q, m);
                let e = touched.entry(key(q, p)).or_default();
                e[0] += matched as u32;
                e[1] += owned as u32;
                e[2] += (matched || owned) as u32;
            }
            self.machine_mut(m).pools.push(p);
        }
        self.pool_touched
            .extend(touched.into_iter().filter(|(_, v)| *v != [0; 3]));
        self.pools[p as usize] = Some(set);
        self.classes[c as usize].as_mut().expect("class").pool = p;
    }
}
