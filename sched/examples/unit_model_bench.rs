//! Measures the unit model's hot paths: parsing unit files, hashing them and reading their `[X-Fleet]`
//! requirements; then how parse + serialize + hash of ONE file scale with its size (issue 13 case 6:
//! hashing was quadratic in the number of sections: 20k sections 0.40 s, 40k 2.7 s, 80k 9.6 s): the best
//! of 5 timings of a file with N sections (or options) and of one with 8N, in one run. Linear work gives a
//! ratio near 8, quadratic 64. Prints figures; asserts nothing about timing.
//!
//!     cargo run --release -p fleet-sched --example unit_model_bench [units]

use std::hint::black_box;
use std::time::Instant;

use fleet_sched::{Requirements, UnitFile, UnitName};

fn unit_text(i: usize) -> String {
    format!(
        "[Unit]\nDescription=web server {i}\nAfter=docker.service\nRequires=docker.service\n\n\
         [Service]\nTimeoutStartSec=0\nExecStartPre=-/usr/bin/docker kill web{i}\n\
         ExecStartPre=-/usr/bin/docker rm web{i}\nExecStart=/usr/bin/docker run --name web{i} \\\n  -p 80:80 nginx\n\
         ExecStop=/usr/bin/docker stop web{i}\n\n\
         [X-Fleet]\nConflicts=web@*.service\nMachineMetadata=\"region=us-east\" \"disk=ssd\"\n"
    )
}

fn report(what: &str, n: usize, bytes: usize, start: Instant) {
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{what:<28} {n:>8} units  {:>9.0} units/s  {:>7.1} MB/s  {:>6.2} us/unit",
        n as f64 / secs,
        bytes as f64 / secs / 1e6,
        secs * 1e6 / n as f64
    );
}

/// Best of `runs` timings of parse + serialize + hash of `text`.
fn best(text: &str, runs: usize) -> std::time::Duration {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            let f = UnitFile::parse(text).unwrap();
            let h = f.hash();
            black_box((f.serialize().len(), h));
            t.elapsed()
        })
        .min()
        .unwrap()
}

/// Prints the ratio of the time for `make(8n)` to the time for `make(n)`.
fn scaling(what: &str, make: impl Fn(usize) -> String) {
    let (small, large) = (make(5_000), make(40_000));
    best(&small, 1);
    let (s, l) = (best(&small, 5), best(&large, 5));
    let ratio = l.as_secs_f64() / s.as_secs_f64();
    let verdict = if ratio < 20.0 { "linear" } else { "NOT LINEAR" };
    println!("one file, 8x the {what}: {s:?} -> {l:?}, {ratio:.1}x the time ({verdict}; a linear cost gives ~8, a quadratic one ~64)");
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("units: a number"))
        .unwrap_or(20_000);
    let texts: Vec<String> = (0..n).map(unit_text).collect();
    let names: Vec<UnitName> = (0..n)
        .map(|i| UnitName::parse(&format!("web@{i}.service")).unwrap())
        .collect();
    let bytes: usize = texts.iter().map(String::len).sum();
    println!("{n} units, {} bytes each on average", bytes / n);

    let start = Instant::now();
    let files: Vec<UnitFile> = texts.iter().map(|t| UnitFile::parse(t).unwrap()).collect();
    report("parse", n, bytes, start);

    let start = Instant::now();
    for f in &files {
        black_box(f.hash());
    }
    report("serialize + sha1", n, bytes, start);

    let start = Instant::now();
    for (name, f) in names.iter().zip(&files) {
        black_box(Requirements::from_unit(name, f).unwrap());
    }
    report("requirements", n, bytes, start);

    let start = Instant::now();
    for f in &files {
        black_box(UnitFile::from_options(f.options().to_vec()).unwrap());
    }
    report("from_options (validate)", n, bytes, start);

    scaling("sections", |n| {
        (0..n).map(|i| format!("[S{i}]\nK=v{i}\n")).collect()
    });
    scaling("options", |n| {
        let mut t = String::from("[Service]\n");
        for i in 0..n {
            t.push_str(&format!("Environment=K{i}=v \\\n  continued\n"));
        }
        t
    });
}
