//! Latency histograms and their summaries.

use super::*;

/// A lock-free latency histogram: 1 µs .. ~70 min, 32 sub-buckets per power of two (~3%).
pub(crate) struct Histogram {
    pub(crate) buckets: Vec<AtomicU64>,
    pub(crate) count: AtomicU64,
    pub(crate) max: AtomicU64,
}

pub(crate) const SUB: u64 = 32;

impl Histogram {
    pub(crate) fn new() -> Histogram {
        Histogram {
            buckets: (0..(40 * SUB)).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    pub(crate) fn index(us: u64) -> usize {
        if us < SUB {
            return us as usize;
        }
        let exp = 63 - us.leading_zeros() as u64; // >= 5
        let shift = exp - 5;
        let sub = (us >> shift) - SUB; // 0..SUB
        ((shift + 1) * SUB + sub) as usize
    }

    pub(crate) fn lower(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB {
            return i;
        }
        let shift = i / SUB - 1;
        (SUB + i % SUB) << shift
    }

    pub(crate) fn record(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = Self::index(us).min(self.buckets.len() - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(us, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    /// Percentiles of what was recorded since `since` (a [`Histogram::snapshot`]).
    pub(crate) fn summary(&self, since: &[u64]) -> Summary {
        let now = self.snapshot();
        let diff: Vec<u64> = now.iter().zip(since).map(|(a, b)| a - b).collect();
        let n: u64 = diff.iter().sum();
        let pct = |p: f64| -> Duration {
            if n == 0 {
                return Duration::ZERO;
            }
            let target = ((n as f64) * p).ceil().max(1.0) as u64;
            let mut acc = 0;
            for (i, c) in diff.iter().enumerate() {
                acc += c;
                if acc >= target {
                    return Duration::from_micros(Self::lower(i));
                }
            }
            Duration::ZERO
        };
        Summary {
            n,
            p50: pct(0.5),
            p99: pct(0.99),
            max: Duration::from_micros(self.max.load(Ordering::Relaxed)),
        }
    }
}

pub(crate) struct Summary {
    pub(crate) n: u64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) max: Duration,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.n == 0 {
            return write!(f, "-");
        }
        write!(
            f,
            "p50 {} p99 {} max {} (n={})",
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            self.n
        )
    }
}

pub(crate) fn ms(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{:.2}ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.0}ms", d.as_secs_f64() * 1000.0)
    }
}
