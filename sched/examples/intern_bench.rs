//! What interning costs a parse of a machine ID, and whether threads that parse at once contend on
//! the process-wide table (`MachineId::parse` takes one lock per ID; fleetd decodes IDs from
//! datagrams, sync answers and etcd on tokio's threads).
//!
//! Each of T threads parses N fresh strings of 1,000 IDs that the process holds (as the membership
//! does), against the same loop making a plain `Arc<str>` of each string (what an ID cost before
//! interning: an allocation and a copy), in one run. Prints figures; asserts nothing about timing.
//!
//!     cargo run --release -p fleet-sched --example intern_bench [parses per thread]

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use fleet_sched::MachineId;

/// `threads` threads each run `work` over `strings` `n` times in all; returns the wall seconds.
fn timed(threads: usize, n: usize, strings: &Arc<Vec<String>>, work: fn(&str) -> usize) -> f64 {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let strings = strings.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let mut acc = 0usize;
                for i in 0..n {
                    // Threads walk the IDs from different places, as unrelated datagrams would.
                    let s = &strings[(i + t * 397) % strings.len()];
                    acc = acc.wrapping_add(work(black_box(s)));
                }
                black_box(acc);
            })
        })
        .collect();
    let start = Instant::now();
    barrier.wait();
    for h in handles {
        h.join().expect("a bench thread");
    }
    start.elapsed().as_secs_f64()
}

fn interned(s: &str) -> usize {
    MachineId::parse(s).expect("a valid ID").as_str().len()
}

/// What `MachineId::parse` did before interning: the same check, then an `Arc` of its own.
fn plain(s: &str) -> usize {
    assert!(!s.is_empty() && s.len() <= fleet_sched::machine::MAX_MACHINE_ID_LEN);
    assert!(s.bytes().all(|b| b.is_ascii_alphanumeric()));
    let a: Arc<str> = Arc::from(s);
    a.len()
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let strings: Vec<String> = (0..1000u64)
        .map(|i| format!("{:032x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
        .collect();
    // Held, as the membership holds its members' IDs.
    let held: Vec<MachineId> = strings
        .iter()
        .map(|s| MachineId::parse(s).unwrap())
        .collect();
    let strings = Arc::new(strings);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("{n} parses per thread, 1,000 held IDs of 32 hex digits, {cores} cores");
    println!(
        "{:>7}  {:>16}  {:>16}  {:>6}",
        "threads", "interned ns/parse", "plain Arc ns/op", "ratio"
    );
    for threads in [1, 2, 4] {
        // Alternated, best of three each: the machine is shared.
        let mut best = (f64::MAX, f64::MAX);
        for _ in 0..3 {
            best.0 = best.0.min(timed(threads, n, &strings, interned));
            best.1 = best.1.min(timed(threads, n, &strings, plain));
        }
        // Wall time per operation per thread: what one thread waits for a parse.
        let per = |secs: f64| secs * 1e9 / n as f64;
        println!(
            "{threads:>7}  {:>16.1}  {:>16.1}  {:>6.2}",
            per(best.0),
            per(best.1),
            best.0 / best.1
        );
    }
    black_box(held);
}
