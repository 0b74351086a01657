//! fleetctl end to end: the real `fleetctl` binary against a real fleetd on a real etcd.
//!
//! No agent runs systemd units here, so nothing is ever placed or started: load/start must still return
//! within their block attempts and say plainly that the desired state was recorded but not reached.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fleet_sched::UnitFile;
use support::run::Run;
use support::{Etcd, Fleetd};

/// A fleetd on a shared etcd (own key prefix) plus a directory for unit files.
struct Env {
    _etcd: Etcd,
    fleetd: Fleetd,
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let etcd = Etcd::shared();
        let fleetd = Fleetd::start(&etcd);
        Env {
            _etcd: etcd,
            fleetd,
            dir: tempfile::tempdir().expect("temp dir for unit files"),
        }
    }

    /// Write a unit file into the working directory.
    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir.path().join(name), text).expect("write unit file");
    }

    /// Run fleetctl in the unit directory against this fleetd.
    fn run(&self, args: &[&str]) -> Run {
        let mut cmd = fleetctl(self.dir.path());
        cmd.arg(format!("--endpoint={}", self.fleetd.endpoint()));
        cmd.args(args);
        run_of(cmd, args)
    }
}

/// A fleetctl command with a clean environment (no FLEETCTL_* from the caller).
fn fleetctl(cwd: &Path) -> Command {
    let mut cmd = Command::new(support::bins::fleetctl());
    cmd.current_dir(cwd);
    for (k, _) in std::env::vars() {
        if k.starts_with("FLEETCTL_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Runs `cmd` (fleetctl with `args`).
fn run_of(mut cmd: Command, args: &[&str]) -> Run {
    let started = Instant::now();
    let output = cmd.output().expect("run fleetctl");
    Run::new(
        format!("fleetctl {}", args.join(" ")),
        output,
        started.elapsed(),
    )
}

const HELLO: &str = "[Unit]\nDescription=Hello World\n\n[Service]\nExecStart=/bin/sh -c \"while true; do echo Hello World; sleep 1; done\"\n";

fn short_hash(text: &str) -> String {
    UnitFile::parse(text).expect("valid unit").hash().short()
}

#[test]
fn submit_list_cat_replace_and_destroy() {
    let env = Env::new();
    env.write("hello.service", HELLO);

    assert_eq!(
        env.run(&["submit", "hello.service"]).ok(),
        "Unit hello.service inactive\n"
    );
    let h = short_hash(HELLO);
    assert_eq!(
        env.run(&["list-unit-files"]).ok(),
        format!(
            "UNIT\t\tHASH\tDSTATE\t\tSTATE\t\tTARGET\nhello.service\t{h}\tinactive\tinactive\t-\n"
        )
    );
    // `cat` prints the stored unit as fleet serializes it (here: identical to the file).
    assert_eq!(env.run(&["cat", "hello"]).ok(), HELLO);

    // Submitting again is a no-op; a different local file gets a warning suggesting --replace.
    assert_eq!(env.run(&["submit", "hello"]).ok(), "");
    let changed = HELLO.replace("Hello World", "Hello again");
    env.write("hello.service", &changed);
    let r = env.run(&["submit", "hello"]);
    assert_eq!(r.ok(), "");
    assert!(
        r.err.contains("differs from local unit file") && r.err.contains("--replace"),
        "{}",
        r.err
    );
    assert_eq!(env.run(&["cat", "hello.service"]).ok(), HELLO);
    assert_eq!(
        env.run(&["submit", "--replace", "hello"]).ok(),
        "Unit hello.service inactive\n"
    );
    assert_eq!(env.run(&["cat", "hello.service"]).ok(), changed);
    let full = UnitFile::parse(&changed).unwrap().hash().to_string();
    assert_eq!(
        env.run(&[
            "list-unit-files",
            "--no-legend",
            "--full",
            "--fields=unit,hash,desc,global"
        ])
        .ok(),
        format!("hello.service\t{full}\tHello again\tfalse\n")
    );

    assert_eq!(
        env.run(&["destroy", "hello"]).ok(),
        "Destroyed hello.service\n"
    );
    assert_eq!(env.run(&["list-unit-files", "--no-legend"]).ok(), "");
    // Destroying a unit that does not exist succeeds silently, as in fleet.
    assert_eq!(env.run(&["destroy", "hello"]).ok(), "");
    let err = env.run(&["cat", "hello"]).fails().to_string();
    assert!(err.contains("hello.service not found"), "{err}");
}

#[test]
fn start_and_load_without_agents_return_in_bounded_time_and_say_why() {
    let env = Env::new();
    env.write("hello.service", HELLO);
    let r = env.run(&["start", "--block-attempts=3", "hello"]);
    assert!(r.took < Duration::from_secs(15), "start took {:?}", r.took);
    assert!(
        r.out.starts_with("Unit hello.service inactive\n"),
        "{}",
        r.out
    );
    if r.code == Some(0) {
        // An agent placed and started it: fleet's message names the machine.
        assert!(r.out.contains("Unit hello.service launched"), "{}", r.out);
    } else {
        let err = r.fails();
        assert!(
            err.contains("desired state launched is recorded but was not reached after 3 checks"),
            "{err}"
        );
        assert!(err.contains("Error waiting for units"), "{err}");
    }
    let listed = env
        .run(&["list-unit-files", "--no-legend", "--fields=unit,dstate"])
        .ok()
        .to_string();
    assert_eq!(listed, "hello.service\tlaunched\n");

    // A unit no machine can take is explained with the agents' placement rules.
    env.write(
        "nowhere.service",
        "[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nMachineMetadata=region=nowhere\n",
    );
    let err = env
        .run(&["start", "--block-attempts=1", "nowhere"])
        .fails()
        .to_string();
    assert!(
        err.contains("after 1 check (")
            && (err.contains("MachineMetadata region=nowhere") || err.contains("no machine")),
        "{err}"
    );

    // The default block attempts are bounded too (10 checks, 500 ms apart).
    env.write("other.service", HELLO);
    let r = env.run(&["load", "other"]);
    assert!(r.took < Duration::from_secs(20), "load took {:?}", r.took);
    if r.code != Some(0) {
        let err = r.fails();
        assert!(err.contains("desired state loaded is recorded"), "{err}");
        let machines = env.run(&["list-machines", "--no-legend"]).ok().to_string();
        if machines.is_empty() {
            assert!(err.contains("no machine has joined the cluster"), "{err}");
        }
    }
}

#[test]
fn no_block_triggers_and_templates_instantiate() {
    let env = Env::new();
    env.write(
        "web@.service",
        "[Service]\nExecStart=/bin/echo %i\n\n[X-Fleet]\nConflicts=web@*.service\n",
    );
    assert_eq!(
        env.run(&["submit", "web@.service"]).ok(),
        "Unit web@.service inactive\n"
    );
    // web@1 has no file of its own: it takes the template's content from the cluster.
    assert_eq!(
        env.run(&["start", "--no-block", "web@1"]).ok(),
        "Unit web@1.service inactive\nTriggered unit web@1.service start\n"
    );
    assert_eq!(
        env.run(&["cat", "web@1"]).ok(),
        env.run(&["cat", "web@.service"]).ok()
    );
    // A template itself can never be started.
    let err = env
        .run(&["start", "--no-block", "web@.service"])
        .fails()
        .to_string();
    assert!(err.contains("is a template"), "{err}");
    assert_eq!(
        env.run(&["list-unit-files", "--no-legend", "--fields=unit,dstate"])
            .ok(),
        "web@.service\tinactive\nweb@1.service\tlaunched\n"
    );
    // stop of a launched unit records loaded; unload records inactive.
    env.run(&["stop", "--no-block", "web@1"]).ok();
    env.run(&["unload", "--no-block", "web@1"]).ok();
    assert_eq!(
        env.run(&[
            "list-unit-files",
            "--no-legend",
            "--fields=unit,dstate",
            "--full"
        ])
        .ok(),
        "web@.service\tinactive\nweb@1.service\tinactive\n"
    );
    // Stopping an inactive unit is an error.
    let err = env.run(&["stop", "web@1"]).fails().to_string();
    assert!(
        err.contains("unable to stop unit web@1.service in state inactive"),
        "{err}"
    );
}

#[test]
fn bad_input_is_refused_with_a_clear_error() {
    let env = Env::new();
    let err = env.run(&["submit", "bad$name"]).fails().to_string();
    assert!(
        err.contains("invalid unit name \"bad$name.service\""),
        "{err}"
    );

    env.write("broken.service", "ExecStart=/bin/true\n");
    let err = env.run(&["submit", "broken"]).fails().to_string();
    assert!(
        err.contains("Error reading unit file broken.service"),
        "{err}"
    );
    assert!(err.contains("before any [Section] header"), "{err}");

    env.write(
        "pinned.service",
        "[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nMachineID=abc\nGlobal=true\n",
    );
    let err = env.run(&["submit", "pinned"]).fails().to_string();
    assert!(
        err.contains("MachineID cannot be used with Global"),
        "{err}"
    );

    let err = env.run(&["submit", "missing"]).fails().to_string();
    assert!(err.contains("unable to find unit missing.service"), "{err}");
    let err = env.run(&["stop", "missing"]).fails().to_string();
    assert!(err.contains("missing.service does not exist"), "{err}");

    // Unknown [X-Fleet] keys are accepted with a warning.
    env.write(
        "odd.service",
        "[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nFoo=bar\n",
    );
    let r = env.run(&["submit", "odd"]);
    assert_eq!(r.ok(), "Unit odd.service inactive\n");
    assert!(
        r.err.contains("WARNING: Unit odd.service") && r.err.contains("\"Foo\""),
        "{}",
        r.err
    );

    // Nothing but the valid unit was created.
    assert_eq!(
        env.run(&["list-unit-files", "--no-legend", "--fields=unit"])
            .ok(),
        "odd.service\n"
    );
    let err = env
        .run(&["list-units", "--fields=unit,nope"])
        .fails()
        .to_string();
    assert!(
        err.contains("invalid key in output format: \"nope\""),
        "{err}"
    );
}

#[test]
fn listing_follows_pages_past_one_hundred_units() {
    let env = Env::new();
    let mut args = vec!["submit".to_string()];
    for i in 0..150 {
        let name = format!("u{i:03}.service");
        env.write(&name, &format!("[Service]\nExecStart=/bin/echo {i}\n"));
        args.push(name);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = env.run(&args).ok().to_string();
    assert_eq!(out.lines().count(), 150, "{out}");
    let listed = env
        .run(&["list-unit-files", "--no-legend", "--fields=unit"])
        .ok()
        .to_string();
    let names: Vec<&str> = listed.lines().collect();
    let expected: Vec<String> = (0..150).map(|i| format!("u{i:03}.service")).collect();
    assert_eq!(names, expected);

    // Submitting them again (one listing instead of 150 lookups) creates nothing.
    assert_eq!(env.run(&args).ok(), "");

    // Loading many units checks them with listings too, within the block attempts.
    let mut load = vec!["load", "--block-attempts=2"];
    load.extend(args[1..31].iter().copied());
    let r = env.run(&load);
    assert!(r.took < Duration::from_secs(15), "load took {:?}", r.took);
    if r.code == Some(0) {
        assert_eq!(r.out.matches(" loaded").count(), 30, "{}", r.out);
    } else {
        let err = r.fails();
        assert_eq!(
            err.matches("is recorded but was not reached").count(),
            30 - r.out.matches(" loaded").count(),
            "{err}"
        );
    }
    let dstates = env
        .run(&["list-unit-files", "--no-legend", "--fields=dstate"])
        .ok()
        .to_string();
    assert_eq!(dstates.matches("loaded").count(), 30, "{dstates}");
}

#[test]
fn list_units_and_machines_print_their_headers() {
    let env = Env::new();
    let units = env.run(&["list-units"]).ok().to_string();
    assert!(units.starts_with("UNIT\t"), "{units}");
    assert!(units.lines().next().unwrap().ends_with("\tSUB"), "{units}");
    let machines = env.run(&["list-machines"]).ok().to_string();
    assert!(machines.starts_with("MACHINE\t"), "{machines}");
    assert!(
        machines.lines().next().unwrap().ends_with("\tMETADATA"),
        "{machines}"
    );
}

#[test]
fn the_endpoint_comes_from_the_environment_and_the_flag_wins() {
    let env = Env::new();
    env.write("hello.service", HELLO);
    let mut cmd = fleetctl(env.dir.path());
    cmd.env("FLEETCTL_ENDPOINT", env.fleetd.endpoint())
        .args(["submit", "hello"]);
    assert_eq!(
        run_of(cmd, &["submit", "hello"]).ok(),
        "Unit hello.service inactive\n"
    );

    let bogus = format!("unix://{}/nothing-here.sock", env.dir.path().display());
    let mut cmd = fleetctl(env.dir.path());
    cmd.env("FLEETCTL_ENDPOINT", env.fleetd.endpoint())
        .arg(format!("--endpoint={bogus}"))
        .arg("list-units");
    let r = run_of(cmd, &["list-units"]);
    let err = r.fails();
    assert!(
        err.contains(&bogus) && err.contains("cannot connect to fleetd"),
        "{err}"
    );

    // --tunnel runs ssh; nothing listens on port 1, so ssh's own reason comes back (the lab tests
    // tunnels that work: tests/lab_cli.rs).
    let mut cmd = fleetctl(env.dir.path());
    cmd.args([
        "--tunnel=127.0.0.1:1",
        "--strict-host-key-checking=false",
        "list-units",
    ]);
    let err = run_of(cmd, &["--tunnel"]).fails().to_string();
    assert!(err.contains("--tunnel 127.0.0.1"), "{err}");
}

#[test]
fn http_endpoints_over_tcp_work_and_debug_logs_requests() {
    let etcd = Etcd::shared();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let fleetd = Fleetd::builder(&etcd)
        .config("api_tcp", &format!("127.0.0.1:{port}"))
        .config("token_limit", "7")
        .start();
    fleetd.wait_ready();
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["submit".to_string()];
    for i in 0..20 {
        let name = format!("t{i:02}.service");
        std::fs::write(
            dir.path().join(&name),
            format!("[Service]\nExecStart=/bin/echo {i}\n"),
        )
        .unwrap();
        args.push(name);
    }
    let endpoint = format!("--endpoint=http://127.0.0.1:{port}");
    let mut cmd = fleetctl(dir.path());
    cmd.arg(&endpoint).args(&args);
    assert_eq!(run_of(cmd, &["submit"]).ok().lines().count(), 20);

    // 20 units at 7 a page: three pages, all listed, in order.
    let mut cmd = fleetctl(dir.path());
    cmd.arg(&endpoint)
        .args(["--debug", "list-unit-files", "--no-legend", "--fields=unit"]);
    let r = run_of(cmd, &["--debug", "list-unit-files"]);
    let expected: String = (0..20).map(|i| format!("t{i:02}.service\n")).collect();
    assert_eq!(r.ok(), expected);
    let pages = r
        .err
        .lines()
        .filter(|l| l.starts_with("DEBUG: GET /fleet/v1/units"))
        .count();
    assert_eq!(pages, 3, "{}", r.err);
}

#[test]
fn help_shows_the_version() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["help"][..], &["--help"], &[]] {
        let out = fleetctl(dir.path()).args(args).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains(&format!("Version: {}", env!("CARGO_PKG_VERSION")))
                && help.contains("list-unit-files"),
            "fleetctl {args:?}: {help}"
        );
    }
}

/// The original fleetctl v1.0.0 reads what fleetd serves (no agent here: submissions, unit files,
/// machines, the empty unit list), and prints exactly what ours prints. Skipped without `../shared`.
#[test]
fn the_original_fleetctl_reads_what_fleetd_serves() {
    let Some(orig) = support::original::Original::get() else {
        return;
    };
    let env = Env::new();
    let text = "[Unit]\nDescription=Grüße \"quoted\" \\\n  and continued\n\n[Service]\nExecStart=/bin/sh -c 'echo %n; sleep 1'\nEnvironment=A=1 B=2\n\n[X-Fleet]\nConflicts=other*.service\n";
    env.write("hello.service", text);
    env.write("web@.service", HELLO);
    let v1 = |args: &[&str]| {
        let mut cmd = Command::new(orig.bin());
        cmd.current_dir(env.dir.path())
            .env_remove("FLEETCTL_ENDPOINT")
            .arg(format!("--endpoint={}", env.fleetd.endpoint()))
            .args(args);
        run_of(cmd, args)
    };
    // The original waits for each unit in its own goroutine (fleet v1.0.0's `lazyCreateUnits`), so
    // its lines come in any order: compare them as a set.
    let submitted = v1(&["submit", "hello.service", "web@.service", "web@1"]);
    let mut lines: Vec<&str> = submitted.ok().lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            "Unit hello.service inactive",
            "Unit web@.service inactive",
            "Unit web@1.service inactive"
        ]
    );
    assert_eq!(v1(&["cat", "hello"]).ok(), env.run(&["cat", "hello"]).ok());
    for args in [
        &["list-unit-files"][..],
        &["list-unit-files", "--full", "--no-legend"],
        &[
            "list-unit-files",
            "--fields=unit,hash,dstate,state,target,desc,global",
        ],
        &["list-units"],
        &[
            "list-units",
            "--fields=unit,machine,active,sub,hash,load",
            "--full",
        ],
        &["list-machines"],
        &["list-machines", "--full", "--fields=machine,ip,metadata"],
    ] {
        assert_eq!(
            v1(args).ok(),
            env.run(args).ok(),
            "fleetctl {} differs from the original",
            args.join(" ")
        );
    }
    assert!(v1(&["start", "--no-block", "hello"])
        .ok()
        .contains("Triggered unit hello.service start"));
    assert_eq!(
        env.run(&["list-unit-files", "--no-legend", "--fields=unit,dstate"])
            .ok(),
        "hello.service\tlaunched\nweb@.service\tinactive\nweb@1.service\tinactive\n"
    );
    assert_eq!(
        v1(&["destroy", "hello", "web@1"]).ok(),
        "Destroyed hello.service\nDestroyed web@1.service\n"
    );
    assert_eq!(
        env.run(&["list-unit-files", "--no-legend", "--fields=unit"])
            .ok(),
        "web@.service\n"
    );
}

#[test]
fn simulate_capture_names_what_is_wrong_and_writes_nothing_half() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cluster.toml");
    let out_arg = out.display().to_string();
    // An unreachable API: the error names the endpoint and what failed; no file is written.
    let mut cmd = fleetctl(dir.path());
    let sock = dir.path().join("nobody.sock");
    cmd.arg(format!("--endpoint=unix://{}", sock.display()));
    let args = ["simulate", "capture", "-o", &out_arg];
    cmd.args(args);
    let r = run_of(cmd, &args);
    let err = r.fails();
    assert!(
        err.contains("Error capturing the cluster: reading its machines")
            && err.contains("cannot connect to fleetd at unix://")
            && err.contains("nobody.sock"),
        "{err}"
    );
    assert!(!out.exists());

    // A cluster whose only unit is inactive has nothing to simulate: said plainly.
    let env = Env::new();
    env.write("hello.service", HELLO);
    env.run(&["submit", "hello"]).ok();
    let err = env
        .run(&["simulate", "capture", "-o", &out_arg])
        .fails()
        .to_string();
    assert!(
        err.contains("the simulator cannot run the captured cluster")
            && err.contains("no launched unit"),
        "{err}"
    );
    assert!(!out.exists());
    let err = env
        .run(&["simulate", "capture", "--duration", "soon"])
        .fails()
        .to_string();
    assert!(err.contains("--duration") && err.contains("soon"), "{err}");

    // Launched (this fleetd's machine runs no systemd: it is placed, never active): the file holds
    // the unit as `cat` prints it, and the check says the simulated cluster runs it.
    env.run(&["start", "--no-block", "hello"]).ok();
    let r = env.run(&["simulate", "capture", "-o", &out_arg]);
    r.ok();
    let text = std::fs::read_to_string(&out).expect("the scenario is written");
    let cat = env.run(&["cat", "hello"]).ok().to_string();
    assert!(
        text.contains(&format!("file = \"\"\"\n{cat}\"\"\"")),
        "{text}"
    );
    assert!(text.contains("state = \"launched\""), "{text}");
    assert!(
        r.err
            .contains("hello.service: runs on nowhere, simulated on"),
        "{}",
        r.err
    );
}
