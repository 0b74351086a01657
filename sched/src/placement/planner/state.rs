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
            set.remove(old, &k, m);
            set.insert(new, k.clone(), m);
        }
        self.machine_mut(m).pools = pools;
    }

    /// Adds one to (or takes one from) the load of each of `ms` (distinct live machines). A pool all of
    /// whose members are in `ms` keeps its order: its base moves and none of its entries. A pool many
    /// of whose members are in `ms` is rebuilt in one sweep (those members and the others each stay in
    /// order, so the two runs are merged); in the other pools the entries move machine by machine.
    fn shift_loads(&mut self, ms: &[u32], add: bool) {
        let step = |load: u32| if add { load + 1 } else { load - 1 };
        if self.bulk {
            for &m in ms {
                let mach = self.machine_mut(m);
                mach.load = step(mach.load);
            }
            return;
        }
        let mut hits = vec![0usize; self.pools.len()];
        hits[0] = ms.len();
        for &m in ms {
            for &p in &self.machine(m).pools {
                hits[p as usize] += 1;
            }
        }
        // Per pool: moved one by one (false), or all at once (true).
        let mut at_once = vec![false; self.pools.len()];
        let mut shifted: Option<Vec<bool>> = None;
        for (p, &n) in hits.iter().enumerate() {
            let Some(pool) = self.pools[p].as_mut().filter(|_| n > 0) else {
                continue;
            };
            if n == pool.len() {
                pool.base += if add { 1 } else { -1 };
                at_once[p] = true;
            } else if n * 4 > pool.len() {
                let shifted = shifted.get_or_insert_with(|| {
                    let mut v = vec![false; self.ms.len()];
                    for &m in ms {
                        v[m as usize] = true;
                    }
                    v
                });
                let (mut moved, mut kept) = (Vec::with_capacity(n), Vec::new());
                for (load, prefix, key, m) in std::mem::take(&mut pool.set) {
                    if shifted[m as usize] {
                        moved.push((if add { load + 1 } else { load - 1 }, prefix, key, m));
                    } else {
                        kept.push((load, prefix, key, m));
                    }
                }
                kept.append(&mut moved);
                // Two sorted runs: the sort merges them.
                kept.sort();
                pool.set = kept.into_iter().collect();
                at_once[p] = true;
            }
        }
        for &m in ms {
            let mach = self.ms[m as usize].as_mut().expect("live machine");
            let (old, new) = (mach.load, step(mach.load));
            mach.load = new;
            for &p in std::iter::once(&0).chain(&mach.pools) {
                if !at_once[p as usize] {
                    let set = self.pools[p as usize].as_mut().expect("pool");
                    set.remove(old, &mach.key, m);
                    set.insert(new, mach.key.clone(), m);
                }
            }
        }
    }

    /// Places global unit `g` on each of `ms` (distinct live machines it is not on), outside a replay.
    pub(super) fn place_global(&mut self, g: u32, ms: &[u32]) {
        debug_assert!(!self.recording);
        self.shift_loads(ms, true);
        for &m in ms {
            self.machine_mut(m).on.push(g);
        }
        self.count_global(g, ms, true);
        let on = &mut self.unit_mut(g).global_on;
        on.reserve(ms.len());
        on.extend(ms.iter().copied());
    }

    /// Takes global unit `g` off each of `ms` (machines it is on), outside a replay.
    pub(super) fn unplace_global(&mut self, g: u32, ms: &[u32]) {
        debug_assert!(!self.recording);
        self.shift_loads(ms, false);
        for &m in ms {
            self.machine_mut(m).on.retain(|&w| w != g);
        }
        let on = &mut self.unit_mut(g).global_on;
        if on.len() == ms.len() {
            on.clear();
        } else {
            for m in ms {
                on.remove(m);
            }
        }
        self.count_global(g, ms, false);
    }

    /// `count` for global unit `g` on each of `ms` at once: two hash operations per pattern and
    /// machine, and the pools' counts changed once per pattern and pool.
    fn count_global(&mut self, g: u32, ms: &[u32], add: bool) {
        let unit = self.unit(g);
        let pats: Vec<(u32, bool)> = (unit.conflict_pats.iter().map(|&p| (p, true)))
            .chain(unit.matched_by.iter().map(|&p| (p, false)))
            .collect();
        let mut delta: Vec<[i64; 3]> = vec![[0; 3]; self.pools.len()];
        for (p, own) in pats {
            delta.iter_mut().for_each(|d| *d = [0; 3]);
            if add {
                self.cnt_own.reserve(ms.len());
                self.cnt_match.reserve(ms.len());
            }
            for &m in ms {
                let k = key(p, m);
                let (map, other) = if own {
                    (&mut self.cnt_own, &self.cnt_match)
                } else {
                    (&mut self.cnt_match, &self.cnt_own)
                };
                let other = other.contains_key(&k);
                let (was, now) = if add {
                    let c = map.entry(k).or_insert(0);
                    *c += 1;
                    (*c > 1, true)
                } else {
                    let c = map.get_mut(&k).expect("counted");
                    *c -= 1;
                    let now = *c > 0;
                    if !now {
                        map.remove(&k);
                    }
                    (true, now)
                };
                if was == now || self.bulk {
                    continue;
                }
                // [matched, owned, either] before and after.
                let state = |mine: bool| {
                    let (matched, owned) = if own { (other, mine) } else { (mine, other) };
                    [matched, owned, matched || owned]
                };
                let (before, after) = (state(was), state(now));
                let pools = &self.ms[m as usize].as_ref().expect("live machine").pools;
                for &pool in std::iter::once(&0).chain(pools) {
                    for i in 0..3 {
                        if before[i] != after[i] {
                            delta[pool as usize][i] += if after[i] { 1 } else { -1 };
                        }
                    }
                }
            }
            for (pool, d) in delta.iter().enumerate() {
                if *d == [0; 3] {
                    continue;
                }
                let e = self.pool_touched.entry(key(p, pool as u32)).or_default();
                for i in 0..3 {
                    e[i] = u32::try_from(e[i] as i64 + d[i]).expect("machines counted");
                }
                if *e == [0; 3] {
                    self.pool_touched.remove(&key(p, pool as u32));
                }
            }
        }
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
                        pool.insert(x.load, x.key.clone(), m);
                    }
                }
            }
        }
        for class in self.classes.iter().flatten() {
            if class.pool != NONE {
                let pool = self.pools[class.pool as usize].as_mut().expect("pool");
                for &m in &class.sorted {
                    let x = self.ms[m as usize].as_ref().expect("live machine");
                    pool.insert(x.load, x.key.clone(), m);
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
        let mut set = Pool::default();
        for &m in &members {
            set.insert(self.machine(m).load, self.machine(m).key.clone(), m);
        }
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
