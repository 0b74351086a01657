//! The simulated network: per-link rules (partitions, loss, delay) over machines and etcd.
//!
//! Nodes are machine indices `0..n`; etcd is node `n`. A rule applies to traffic from a node of its
//! `from` side to a node of its `to` side (a symmetric partition is two rules).

/// What a rule does to the traffic it matches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Effect {
    /// Dropped.
    Block,
    /// Lost with this probability.
    Loss(f64),
    /// Delayed by this many µs.
    Delay(u64),
}

#[derive(Clone, Debug)]
struct Rule {
    fault: usize,
    from: Vec<bool>,
    to: Vec<bool>,
    effect: Effect,
}

/// The link rules in force.
#[derive(Clone, Debug, Default)]
pub struct Net {
    rules: Vec<Rule>,
    nodes: usize,
}

impl Net {
    /// A network of `machines` machines plus etcd, with no rule.
    pub fn new(machines: usize) -> Net {
        Net {
            rules: Vec::new(),
            nodes: machines + 1,
        }
    }

    /// The node index of etcd.
    pub fn etcd(&self) -> usize {
        self.nodes - 1
    }

    /// Adds a rule for fault `fault` between these node sets.
    pub fn add(&mut self, fault: usize, from: &[usize], to: &[usize], effect: Effect) {
        let mut f = vec![false; self.nodes];
        let mut t = vec![false; self.nodes];
        for &i in from {
            f[i] = true;
        }
        for &i in to {
            t[i] = true;
        }
        // Traffic from a node to itself is never affected.
        self.rules.push(Rule {
            fault,
            from: f,
            to: t,
            effect,
        });
    }

    /// Removes the rules of fault `fault`.
    pub fn remove(&mut self, fault: usize) {
        self.rules.retain(|r| r.fault != fault);
    }

    /// Removes every rule.
    pub fn clear(&mut self) {
        self.rules.clear();
    }

    /// Whether any rule is in force.
    pub fn is_clean(&self) -> bool {
        self.rules.is_empty()
    }

    fn matching(&self, a: usize, b: usize) -> impl Iterator<Item = &Rule> {
        self.rules
            .iter()
            .filter(move |r| a != b && r.from[a] && r.to[b])
    }

    /// Whether traffic from `a` to `b` is cut by a partition.
    pub fn blocked(&self, a: usize, b: usize) -> bool {
        self.matching(a, b).any(|r| r.effect == Effect::Block)
    }

    /// Loss probability from `a` to `b` on top of `base`.
    pub fn loss(&self, a: usize, b: usize, base: f64) -> f64 {
        let keep = self.matching(a, b).fold(1.0 - base, |k, r| match r.effect {
            Effect::Loss(p) => k * (1.0 - p),
            _ => k,
        });
        1.0 - keep
    }

    /// Which of the machines `0..machines` have every link to every other machine free of rules (no
    /// partition, loss or delay either way; a rule between a machine and etcd only does not count).
    pub fn machine_links_clean(&self, machines: usize) -> Vec<bool> {
        let mut clean = vec![true; machines];
        for r in &self.rules {
            let from: Vec<usize> = (0..machines).filter(|&i| r.from[i]).collect();
            let to: Vec<usize> = (0..machines).filter(|&i| r.to[i]).collect();
            let other = |side: &[usize], i: usize| side.iter().any(|&j| j != i);
            for &i in &from {
                if other(&to, i) {
                    clean[i] = false;
                }
            }
            for &i in &to {
                if other(&from, i) {
                    clean[i] = false;
                }
            }
        }
        clean
    }

    /// Whether no rule matches traffic between two different nodes of `set` (indexed by node).
    pub fn connects_all(&self, set: &[bool]) -> bool {
        let member = |i: usize| set.get(i).copied().unwrap_or(false);
        self.rules.iter().all(|r| {
            let from: Vec<usize> = (0..self.nodes)
                .filter(|&i| r.from[i] && member(i))
                .collect();
            let to: Vec<usize> = (0..self.nodes).filter(|&i| r.to[i] && member(i)).collect();
            !from.iter().any(|&i| to.iter().any(|&j| j != i))
        })
    }

    /// Extra delay (µs) from `a` to `b`.
    pub fn delay(&self, a: usize, b: usize) -> u64 {
        self.matching(a, b)
            .map(|r| match r.effect {
                Effect::Delay(d) => d,
                _ => 0,
            })
            .sum()
    }
}
