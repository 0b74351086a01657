use super::*;
use clap::{CommandFactory, FromArgMatches};

/// Parse `args` with `env` set in the process environment (clap reads it from there); a lock keeps
/// the tests that touch the environment from overlapping.
fn parse_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<Cli, clap::Error> {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for (k, v) in env {
        std::env::set_var(k, v);
    }
    let res = Cli::command()
        .try_get_matches_from(args)
        .and_then(|m| Cli::from_arg_matches(&m));
    for (k, _) in env {
        std::env::remove_var(k);
    }
    res
}

static ENV_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn the_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn defaults_match_fleet() {
    let cli = parse_with_env(&["fleetctl", "list-units"], &[]).unwrap();
    assert_eq!(cli.global.endpoint, "unix:///var/run/fleet.sock");
    assert_eq!(cli.global.request_timeout, 3.0);
    assert_eq!(cli.global.ssh_timeout, 10.0);
    assert_eq!(cli.global.ssh_username, "core");
    assert!(cli.global.strict_host_key_checking);
    assert_eq!(cli.global.etcd_key_prefix, "/_coreos.com/fleet/");
    assert!(!cli.global.debug);
    let Some(Command::ListUnits(a)) = cli.command else {
        panic!("{:?}", cli.command)
    };
    assert_eq!(a.fields, "unit,machine,active,sub");
}

#[test]
fn environment_supplies_global_flags_and_the_command_line_wins() {
    let env = [
        ("FLEETCTL_ENDPOINT", "http://10.0.0.1:49153"),
        ("FLEETCTL_REQUEST_TIMEOUT", "7.5"),
        ("FLEETCTL_DEBUG", "true"),
        ("FLEETCTL_STRICT_HOST_KEY_CHECKING", "false"),
        ("FLEETCTL_SSH_USERNAME", "ops"),
    ];
    let cli = parse_with_env(&["fleetctl", "list-machines"], &env).unwrap();
    assert_eq!(cli.global.endpoint, "http://10.0.0.1:49153");
    assert_eq!(cli.global.request_timeout, 7.5);
    assert!(cli.global.debug);
    assert!(!cli.global.strict_host_key_checking);
    assert_eq!(cli.global.ssh_username, "ops");

    let cli = parse_with_env(
        &[
            "fleetctl",
            "--endpoint=unix:///tmp/f.sock",
            "list-machines",
            "--request-timeout",
            "1",
            "--strict-host-key-checking",
        ],
        &env,
    )
    .unwrap();
    assert_eq!(cli.global.endpoint, "unix:///tmp/f.sock");
    assert_eq!(cli.global.request_timeout, 1.0);
    assert!(cli.global.strict_host_key_checking);
}

#[test]
fn falsy_environment_values_turn_flags_off() {
    let cli = parse_with_env(&["fleetctl", "version"], &[("FLEETCTL_DEBUG", "0")]).unwrap();
    assert!(!cli.global.debug);
}

#[test]
fn verbs_take_their_flags_and_units() {
    let cli = parse_with_env(
        &[
            "fleetctl",
            "start",
            "--no-block",
            "--replace",
            "a",
            "b.service",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(
        cli.command,
        Some(Command::Start(StartArgs {
            block: BlockFlags {
                no_block: true,
                block_attempts: DEFAULT_BLOCK_ATTEMPTS
            },
            replace: true,
            units: UnitsArgs {
                units: vec!["a".into(), "b.service".into()]
            },
        }))
    );
    let cli = parse_with_env(&["fleetctl", "load", "--block-attempts=3", "x"], &[]).unwrap();
    let Some(Command::Load(a)) = cli.command else {
        panic!()
    };
    assert_eq!(a.block.block_attempts, 3);
    let cli = parse_with_env(
        &[
            "fleetctl",
            "list-unit-files",
            "--full",
            "--no-legend",
            "--fields=unit,desc",
        ],
        &[],
    )
    .unwrap();
    let Some(Command::ListUnitFiles(a)) = cli.command else {
        panic!()
    };
    assert!(a.list.full && a.list.no_legend);
    assert_eq!(a.fields, "unit,desc");
}

#[test]
fn usage_errors_are_rejected() {
    for args in [
        &["fleetctl", "submit"][..],
        &["fleetctl", "cat"],
        &["fleetctl", "cat", "a", "b"],
        &["fleetctl", "frobnicate"],
        &["fleetctl", "--request-timeout=0", "list-units"],
        &["fleetctl", "--request-timeout=abc", "list-units"],
        &["fleetctl", "start", "--block-attempts=-1", "x"],
        &["fleetctl", "status"],
        &["fleetctl", "journal"],
        &["fleetctl", "journal", "a", "b"],
        &["fleetctl", "journal", "--output=json", "a"],
        &["fleetctl", "journal", "--lines=-1", "a"],
    ] {
        assert!(parse_with_env(args, &[]).is_err(), "{args:?} was accepted");
    }
}

#[test]
fn journal_defaults_to_ten_short_lines_and_takes_follow() {
    let cli = parse_with_env(&["fleetctl", "journal", "hello"], &[]).unwrap();
    let Some(Command::Journal(a)) = cli.command else {
        panic!("{:?}", cli.command)
    };
    assert_eq!((a.lines, a.follow, a.output.as_str()), (10, false, "short"));
    assert_eq!(a.unit, "hello");
    let cli = parse_with_env(
        &[
            "fleetctl",
            "journal",
            "-f",
            "--lines",
            "3",
            "--output=short",
            "x",
        ],
        &[],
    )
    .unwrap();
    let Some(Command::Journal(a)) = cli.command else {
        panic!("{:?}", cli.command)
    };
    assert!(a.follow);
    assert_eq!(a.lines, 3);
    let cli = parse_with_env(&["fleetctl", "status", "a", "b.socket"], &[]).unwrap();
    let Some(Command::Status(a)) = cli.command else {
        panic!("{:?}", cli.command)
    };
    assert_eq!(a.units.units, ["a", "b.socket"]);
}

#[test]
fn status_and_journal_accept_fleets_ssh_flags() {
    // fleet v1 ran them over SSH; scripts pass --ssh-port (and journal --sudo) after the verb.
    let cli = parse_with_env(&["fleetctl", "status", "--ssh-port", "2222", "a"], &[]).unwrap();
    let Some(Command::Status(a)) = cli.command else {
        panic!("{:?}", cli.command)
    };
    assert_eq!(
        (a.ssh_port, a.units.units),
        (Some(2222), vec!["a".to_string()])
    );
    let cli = parse_with_env(
        &[
            "fleetctl",
            "journal",
            "--ssh-port=2222",
            "--sudo",
            "--lines",
            "5",
            "a",
        ],
        &[],
    )
    .unwrap();
    let Some(Command::Journal(a)) = cli.command else {
        panic!("{:?}", cli.command)
    };
    assert_eq!((a.ssh_port, a.sudo, a.lines), (Some(2222), true, 5));
    assert!(parse_with_env(&["fleetctl", "status", "--ssh-port", "x", "a"], &[]).is_err());
}

#[test]
fn ssh_takes_its_target_and_the_remote_command_verbatim() {
    let cli = parse_with_env(
        &[
            "fleetctl",
            "--tunnel",
            "bastion:2222",
            "ssh",
            "-A",
            "--ssh-port",
            "2200",
            "113f",
            "ls",
            "-l",
            "--color",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(cli.global.tunnel.as_deref(), Some("bastion:2222"));
    let Some(Command::Ssh(a)) = cli.command else {
        panic!("{:?}", cli.command)
    };
    assert!(a.forward_agent);
    assert_eq!(a.ssh_port, 2200);
    assert_eq!(a.args, ["113f", "ls", "-l", "--color"]);
    let cli = parse_with_env(&["fleetctl", "ssh", "--unit", "web", "--", "-x"], &[]).unwrap();
    let Some(Command::Ssh(a)) = cli.command else {
        panic!("{:?}", cli.command)
    };
    assert_eq!((a.unit.as_deref(), a.ssh_port), (Some("web"), 22));
    assert_eq!(a.args, ["-x"]);
    assert!(parse_with_env(&["fleetctl", "ssh", "--unit", "a", "--machine", "b"], &[]).is_err());
}

#[test]
fn restart_completion_and_json_parse() {
    let cli = parse_with_env(&["fleetctl", "restart", "--machine", "m1", "a", "b"], &[]).unwrap();
    assert_eq!(
        cli.command,
        Some(Command::Restart(RestartArgs {
            machine: Some("m1".into()),
            block: BlockFlags {
                no_block: false,
                block_attempts: DEFAULT_BLOCK_ATTEMPTS,
            },
            units: UnitsArgs {
                units: vec!["a".into(), "b".into()]
            },
        }))
    );
    assert!(parse_with_env(&["fleetctl", "restart"], &[]).is_err());
    for (shell, want) in [
        ("bash", clap_complete::Shell::Bash),
        ("zsh", clap_complete::Shell::Zsh),
        ("fish", clap_complete::Shell::Fish),
    ] {
        let cli = parse_with_env(&["fleetctl", "completion", shell], &[]).unwrap();
        assert_eq!(
            cli.command,
            Some(Command::Completion(CompletionArgs { shell: want }))
        );
    }
    assert!(parse_with_env(&["fleetctl", "completion", "cmd.exe"], &[]).is_err());
    for verb in ["list-units", "list-unit-files", "list-machines"] {
        let cli = parse_with_env(&["fleetctl", verb, "--json"], &[]).unwrap();
        let json = match cli.command {
            Some(Command::ListUnits(a)) => a.list.json,
            Some(Command::ListUnitFiles(a)) => a.list.json,
            Some(Command::ListMachines(a)) => a.list.json,
            other => panic!("{other:?}"),
        };
        assert!(json, "{verb}");
        assert!(parse_with_env(&["fleetctl", verb, "--json", "--no-legend"], &[]).is_err());
    }
}

#[test]
fn every_verb_has_an_example_in_its_help() {
    let mut cmd = Cli::command();
    for sub in cmd.get_subcommands_mut() {
        if sub.get_name() == "help" {
            continue;
        }
        let help = sub.render_long_help().to_string();
        assert!(
            help.contains("Example") && help.contains(&format!("fleetctl {}", sub.get_name())),
            "fleetctl {} --help has no example:\n{help}",
            sub.get_name()
        );
    }
}
