//! Measures the unit model's hot paths: parsing unit files, hashing them and reading their `[X-Fleet]`
//! requirements. Prints figures; asserts nothing about timing.
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
}
