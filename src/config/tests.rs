//! The configuration's tests: layers and precedence, values and their errors, the declaration's
//! derived parts (flags, environment, SIGHUP diff and adoption, the docs table).

use std::path::Path;
use std::time::Duration;

use super::*;

fn build(file: &str, env: &[(&str, &str)], flags: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut raw = RawConfig::default();
    raw.apply_file(Path::new("/test/fleet.conf"), file)?;
    raw.apply_env(env.iter().copied());
    raw.apply_flags(flags.iter().copied());
    raw.build().map(|(c, _)| c)
}

#[test]
fn defaults_when_nothing_is_given() {
    let c = build("", &[], &[]).unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.etcd_key_prefix, "/fleet/");
    assert_eq!(c.token_limit, 100);
    assert_eq!(c.api_max_body, 1 << 20);
    assert_eq!(
        c.api_socket.as_deref(),
        Some(Path::new("/var/run/fleet.sock"))
    );
}

#[test]
fn flags_win_over_env_which_wins_over_file() {
    let file = "verbosity=1\ntoken_limit=10\nmetadata=\"a=1,b=2\"\n";
    let env = [("FLEET_TOKEN_LIMIT", "20"), ("FLEET_VERBOSITY", "2")];
    let flags = [("verbosity", "3")];
    let c = build(file, &env, &flags).unwrap();
    assert_eq!(c.verbosity, 3);
    assert_eq!(c.token_limit, 20);
    assert_eq!(c.metadata.get("a").map(String::as_str), Some("1"));
    assert_eq!(c.metadata.get("b").map(String::as_str), Some("2"));
}

#[test]
fn file_accepts_comments_quotes_and_spaces() {
    let file = "# comment\n; other\n\n etcd_servers = \"http://a:1, http://b:2\" \n\
                etcd_key_prefix=/_coreos.com/fleet\npublic_ip='10.0.0.1'\n";
    let c = build(file, &[], &[]).unwrap();
    assert_eq!(c.etcd_servers, vec!["http://a:1", "http://b:2"]);
    assert_eq!(c.etcd_key_prefix, "/_coreos.com/fleet/");
    assert_eq!(c.public_ip, Some("10.0.0.1".parse().unwrap()));
}

#[test]
fn a_line_without_equals_is_a_syntax_error_with_its_line() {
    let err = build("verbosity=1\nnonsense\n", &[], &[]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(":2:") && msg.contains("nonsense"), "{msg}");
}

#[test]
fn errors_name_the_key_the_value_and_the_source() {
    let err = build("", &[("FLEET_ETCD_REQUEST_TIMEOUT", "soon")], &[]).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("etcd_request_timeout")
            && msg.contains("\"soon\"")
            && msg.contains("environment"),
        "{msg}"
    );
    let err = build("token_limit=0", &[], &[]).unwrap_err();
    assert!(err.to_string().contains("token_limit"), "{err}");
    let err = build("", &[], &[("metadata", "region")]).unwrap_err();
    assert!(err.to_string().contains("metadata") && err.to_string().contains("command line"));
    let err = build("public_ip=1.2.3", &[], &[]).unwrap_err();
    assert!(err.to_string().contains("public_ip"));
    let err = build("etcd_servers=127.0.0.1:2379", &[], &[]).unwrap_err();
    assert!(err.to_string().contains("etcd_servers"));
    let err = build("systemd_user=maybe", &[], &[]).unwrap_err();
    assert!(err.to_string().contains("systemd_user"));
}

#[test]
fn gossip_remove_down_after_is_well_above_detection() {
    let err = build("gossip_remove_down_after=4s", &[], &[]).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("gossip_remove_down_after") && msg.contains("at least 5s"),
        "{msg}"
    );
    let c = build("", &[("FLEET_GOSSIP_REMOVE_DOWN_AFTER", "5s")], &[]).unwrap();
    assert_eq!(c.gossip_remove_down_after, Duration::from_secs(5));
    assert_eq!(
        Config::default().gossip_remove_down_after,
        fleet_gossip::Config::default().remove_down_after,
        "fleetd's default is gossip's"
    );
}

/// The default `fence_after` is the safety rules' (fleet-decide) and the blip tolerance gossip's own
/// defaults are derived from, so that gossip's defaults (and the simulator, which takes them) match
/// what fleetd runs.
#[test]
fn the_default_fence_after_is_gossips_blip_tolerance_and_the_rules_default() {
    let f = Config::default().fence_after;
    assert_eq!(f, fleet_decide::Timing::DEFAULT_FENCE_AFTER);
    assert_eq!(f, fleet_decide::Timing::default().fence_after);
    assert_eq!(f, fleet_gossip::core::Config::DEFAULT_BLIP_TOLERANCE);
}

#[test]
fn obsolete_and_unknown_keys_are_accepted_with_warnings() {
    let mut raw = RawConfig::default();
    raw.apply_file(
        Path::new("/f"),
        "disable_engine=true\ndisable_watches=1\nenable_grpc=false\nfrobnicate=3\n",
    )
    .unwrap();
    let (c, warnings) = raw.build().unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(warnings.len(), 4, "{warnings:?}");
    assert!(warnings.iter().any(|w| w.0.contains("disable_engine")));
    assert!(warnings
        .iter()
        .any(|w| w.0.contains("unknown key frobnicate")));
}

#[test]
fn unknown_fleet_env_vars_are_ignored() {
    let mut raw = RawConfig::default();
    raw.apply_env([("FLEET_TEST_ETCD", "http://x"), ("PATH", "/bin")]);
    let (c, warnings) = raw.build().unwrap();
    assert_eq!(c, Config::default());
    assert!(warnings.is_empty());
}

#[test]
fn durations_accept_seconds_and_go_syntax() {
    assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
    assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
    assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert!(parse_duration("").is_err());
    assert!(parse_duration("-1").is_err());
    assert!(parse_duration("5 parsecs").is_err());
    assert!(parse_duration("s").is_err());
}

#[test]
fn sizes_accept_suffixes() {
    assert_eq!(parse_size("1024").unwrap(), 1024);
    assert_eq!(parse_size("2K").unwrap(), 2048);
    assert_eq!(parse_size("1M").unwrap(), 1 << 20);
    assert!(parse_size("lots").is_err());
}

#[test]
fn metadata_keys_are_checked() {
    assert_eq!(parse_metadata(" a = 1 , b.c-d_e=x ").unwrap().len(), 2);
    assert!(parse_metadata("a b=1").is_err());
    assert!(parse_metadata("a=").is_err());
    assert!(parse_metadata("").unwrap().is_empty());
}

#[test]
fn prefix_is_normalised() {
    assert_eq!(normalize_prefix("fleet").unwrap(), "/fleet/");
    assert_eq!(normalize_prefix("/a/b/").unwrap(), "/a/b/");
    assert!(normalize_prefix("").is_err());
}

#[test]
fn cert_and_key_go_together() {
    assert!(build("etcd_certfile=/c.pem", &[], &[]).is_err());
    assert!(build("etcd_certfile=/c.pem\netcd_keyfile=/k.pem", &[], &[]).is_ok());
    assert!(build("etcd_username=root", &[], &[]).is_err());
}

#[test]
fn socket_settings_parse() {
    let c = build(
        "api_socket=\napi_tcp=127.0.0.1:4002\napi_socket_mode=0600\napi_tcp_insecure=1",
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(c.api_socket, None);
    assert_eq!(c.api_tcp, Some("127.0.0.1:4002".parse().unwrap()));
    assert_eq!(c.api_socket_mode, 0o600);
    assert!(build("api_socket_mode=999", &[], &[]).is_err());
    assert!(build("api_socket_group=a:b", &[], &[]).is_err());
    assert_eq!(
        build("api_socket_group=fleet", &[], &[])
            .unwrap()
            .api_socket_group
            .as_deref(),
        Some("fleet")
    );
}

#[test]
fn the_tcp_api_is_tls_with_credentials_or_explicitly_insecure() {
    let e = build("api_tcp=127.0.0.1:4002", &[], &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("api_tls_cert_file") && e.contains("api_tcp_insecure"),
        "{e}"
    );
    let tls = "api_tcp=127.0.0.1:4002\napi_tls_cert_file=/c\napi_tls_key_file=/k\n";
    let e = build(tls, &[], &[]).unwrap_err().to_string();
    assert!(e.contains("api_token_file"), "{e}");
    let c = build(&format!("{tls}api_token_file=/t"), &[], &[]).unwrap();
    assert_eq!(c.api_token_file.as_deref(), Some(Path::new("/t")));
    assert!(build(&format!("{tls}api_client_ca_file=/ca"), &[], &[]).is_ok());
    assert!(build(
        &format!("{tls}api_token_file=/t\napi_tcp_insecure=1"),
        &[],
        &[]
    )
    .is_err());
    assert!(build("api_tls_cert_file=/c\napi_token_file=/t", &[], &[]).is_err());
}

#[test]
fn machine_id_comes_from_key_or_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("machine-id");
    std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").unwrap();
    let c = build(&format!("machine_id_file={}", path.display()), &[], &[]).unwrap();
    assert_eq!(
        c.resolve_machine_id().unwrap(),
        "0123456789abcdef0123456789abcdef"
    );
    let c = build("machine_id=abc", &[], &[]).unwrap();
    assert_eq!(c.resolve_machine_id().unwrap(), "abc");
    assert!(build("machine_id=a/b", &[], &[]).is_err());
}

#[test]
fn explicit_missing_config_file_is_an_error() {
    let empty: [(&str, &str); 0] = [];
    let err = Config::load(Some(Path::new("/nonexistent/fleet.conf")), empty, empty).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/fleet.conf"));
}

#[test]
fn diff_lists_changed_keys_without_passwords() {
    let a = Config::default();
    let mut b = a.clone();
    b.verbosity = 2;
    b.etcd_password = Some("secret".into());
    let d = a.diff(&b);
    assert_eq!(d.len(), 2);
    assert!(d.iter().all(|c| !c.to_string().contains("secret")), "{d:?}");
    assert_eq!(d[1].to_string(), "verbosity: \"0\" -> \"2\"");
    assert_eq!(d[0].to_string(), "etcd_password: changed");
}

#[test]
fn every_key_is_a_flag() {
    let args = FleetdArgs::default();
    assert!(args.overrides().is_empty());
    let names: Vec<&str> = known_keys().collect();
    for k in [
        "etcd_servers",
        "api_max_body",
        "machine_id_file",
        "disable_watches",
    ] {
        assert!(names.contains(&k));
    }
    use clap::Parser;
    let args = FleetdArgs::try_parse_from([
        "fleetd",
        "--etcd_servers",
        "http://x:1",
        "--token-limit",
        "5",
    ])
    .unwrap();
    assert_eq!(
        args.overrides(),
        vec![("etcd_servers", "http://x:1"), ("token_limit", "5")]
    );
}

/// A value other than the default for every option (a new option needs one: see
/// `every_option_has_a_sample`).
const SAMPLES: &[(&str, &str)] = &[
    ("etcd_servers", "https://a:1, http://b:2"),
    ("etcd_key_prefix", "x/y"),
    ("etcd_request_timeout", "1500ms"),
    ("etcd_cafile", "/ca.pem"),
    ("etcd_certfile", "/c.pem"),
    ("etcd_keyfile", "/k.pem"),
    ("etcd_username", "root"),
    ("etcd_password", "pw"),
    ("public_ip", "10.0.0.1"),
    ("metadata", "a=1,b=2"),
    ("agent_ttl", "1m"),
    ("engine_reconcile_interval", "0.25"),
    ("token_limit", "5"),
    ("units_directory", "/u"),
    ("systemd_user", "true"),
    ("verbosity", "2"),
    ("api_socket", ""),
    ("api_socket_mode", "0600"),
    ("api_tcp", "127.0.0.1:4002"),
    ("api_max_body", "2K"),
    ("api_socket_group", "fleet"),
    ("api_tcp_insecure", "yes"),
    ("api_tls_cert_file", "/t.pem"),
    ("api_tls_key_file", "/t.key"),
    ("api_client_ca_file", "/cca.pem"),
    ("api_token_file", "/token"),
    ("machine_id", "abc123"),
    ("machine_id_file", "/mid"),
    ("gossip_port", "7480"),
    ("gossip_listen", "[::1]:7480"),
    ("gossip_seeds", "10.0.0.1:7479, 10.0.0.2:7479"),
    ("gossip_ca_file", "/g/ca"),
    ("gossip_cert_file", "/g/c"),
    ("gossip_key_file", "/g/k"),
    ("gossip_insecure", "on"),
    ("gossip_remove_down_after", "90s"),
    ("fence_after", "750ms"),
    ("state_dir", "/s"),
    ("runtime_dir", "/r"),
];

fn fields() -> impl Iterator<Item = &'static Field> {
    keys().filter_map(|k| match k {
        Key::Field(f) => Some(f),
        Key::Obsolete(_) => None,
    })
}

/// `base` with `key` set from `text`.
fn with(base: &Config, key: &str, text: &str) -> Config {
    let mut c = base.clone();
    c.set_field(key, text)
        .unwrap_or_else(|| panic!("{key} has no field"))
        .unwrap_or_else(|e| panic!("{key}={text:?}: {e}"));
    c
}

#[test]
fn every_option_has_a_sample_that_changes_only_it() {
    let names: Vec<&str> = fields().map(|f| f.name).collect();
    let sampled: Vec<&str> = SAMPLES.iter().map(|(k, _)| *k).collect();
    assert_eq!(names, sampled, "SAMPLES must list every option in order");
    let d = Config::default();
    for (key, text) in SAMPLES {
        let changes = d.diff(&with(&d, key, text));
        assert_eq!(
            changes.iter().map(|c| c.key).collect::<Vec<_>>(),
            [*key],
            "{changes:?}"
        );
    }
}

#[test]
fn every_value_reads_back_what_it_shows() {
    // Defaults, then samples: what `show` writes (logs, the docs' defaults) parses to the same value.
    let d = Config::default();
    for f in fields() {
        let shown = d.show(f.name).unwrap();
        assert_eq!(with(&d, f.name, &shown), d, "{}={shown:?}", f.name);
    }
    for (key, text) in SAMPLES {
        let c = with(&d, key, text);
        let shown = c.show(key).unwrap();
        assert_eq!(
            with(&d, key, &shown),
            c,
            "{key}: {text:?} shown as {shown:?}"
        );
    }
    assert_eq!(d.show("api_socket_mode").as_deref(), Some("0660"));
    assert_eq!(d.show("fence_after").as_deref(), Some("700ms"));
    assert_eq!(d.show("disable_engine"), None);
}

#[test]
fn every_key_is_a_fleet_env_variable_and_a_flag_in_both_spellings() {
    use clap::Parser;
    for (key, text) in SAMPLES {
        let mut raw = RawConfig::default();
        raw.apply_env([(format!("FLEET_{}", key.to_ascii_uppercase()), *text)]);
        assert_eq!(raw.source_of(key), Source::Env, "{key}");
        let dashed = format!("--{}", key.replace('_', "-"));
        let underscored = format!("--{key}={text}");
        for argv in [
            vec!["fleetd", dashed.as_str(), text],
            vec!["fleetd", underscored.as_str()],
        ] {
            let args = FleetdArgs::try_parse_from(&argv).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(args.overrides(), vec![(*key, *text)], "{argv:?}");
        }
    }
    for o in OBSOLETE_NAMES {
        let args = FleetdArgs::try_parse_from(["fleetd", &format!("--{o}"), "1"]).unwrap();
        assert_eq!(args.overrides(), vec![(*o, "1")]);
    }
    assert!(FleetdArgs::try_parse_from(["fleetd", "--no-such-key", "1"]).is_err());
    <FleetdArgs as clap::CommandFactory>::command().debug_assert();
}

const OBSOLETE_NAMES: &[&str] = &[
    "disable_engine",
    "disable_watches",
    "enable_grpc",
    "authorized_keys_file",
    "verify_units",
    "unit_state_ttl",
    "takeover_grace",
];

#[test]
fn obsolete_keys_are_checked_only_where_fleet_had_a_type() {
    let obsolete: Vec<&str> = keys()
        .filter(|k| matches!(k, Key::Obsolete(_)))
        .map(Key::name)
        .collect();
    assert_eq!(obsolete, OBSOLETE_NAMES);
    let e = build("disable_watches=sometimes", &[], &[]).unwrap_err();
    assert!(e.to_string().contains("disable_watches"), "{e}");
    assert!(build("enable_grpc=sometimes\ntakeover_grace=5s", &[], &[]).is_ok());
}

#[test]
fn the_etcd_reload_class_is_exactly_what_the_registry_reads() {
    // Every option the registry's connection depends on reconnects on SIGHUP, and only those.
    let mut base = Config::default();
    for (k, v) in [
        ("etcd_certfile", "/base.pem"),
        ("etcd_keyfile", "/base.key"),
        ("etcd_username", "base"),
        ("etcd_password", "basepw"),
    ] {
        base = with(&base, k, v);
    }
    let registry = crate::registry::RegistryOptions::from_config;
    for (key, text) in SAMPLES {
        let new = with(&base, key, text);
        let changes = base.diff(&new);
        let [change] = &changes[..] else {
            panic!("{key}: {changes:?}")
        };
        let reads = registry(&base) != registry(&new);
        assert_eq!(change.reload == Reload::Etcd, reads, "{key}");
    }
}

#[test]
fn a_reload_adopts_what_it_applied_and_keeps_the_rest() {
    let running = Config::default();
    let new = SAMPLES
        .iter()
        .fold(Config::default(), |c, (k, v)| with(&c, k, v));
    let changes = running.diff(&new);
    assert_eq!(changes.len(), SAMPLES.len());
    for etcd_applied in [false, true] {
        let applies = |r: Reload| r == Reload::Live || (etcd_applied && r == Reload::Etcd);
        let mut adopted = running.clone();
        adopted.adopt(&new, applies);
        let left: Vec<&str> = adopted.diff(&new).iter().map(|c| c.key).collect();
        let want: Vec<&str> = changes
            .iter()
            .filter(|c| !applies(c.reload))
            .map(|c| c.key)
            .collect();
        assert_eq!(left, want);
    }
    let live: Vec<&str> = changes
        .iter()
        .filter(|c| c.reload == Reload::Live)
        .map(|c| c.key)
        .collect();
    assert_eq!(
        live,
        [
            "public_ip",
            "metadata",
            "token_limit",
            "verbosity",
            "api_max_body"
        ]
    );
}

/// Where the generated part of `docs/configuration.md` starts.
const BEGIN: &str = "<!-- BEGIN generated from src/config/options.rs: \
                         UPDATE_DOCS=1 cargo test -p fleet --lib config:: -->";
/// Where it ends.
const END: &str = "<!-- END generated -->";

/// `doc` with the text between [`BEGIN`] and [`END`] replaced by `generated`; `None` without
/// the markers.
fn replace_generated(doc: &str, generated: &str) -> Option<String> {
    let start = doc.find(BEGIN)? + BEGIN.len();
    let end = start + doc[start..].find(END)?;
    Some(format!("{}\n\n{generated}{}", &doc[..start], &doc[end..]))
}

#[test]
fn docs_configuration_md_has_the_generated_tables() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let want = replace_generated(&doc, &docs_table())
        .expect("docs/configuration.md lacks the BEGIN/END generated markers");
    if doc == want {
        return;
    }
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, want).unwrap();
        return;
    }
    let line = doc
        .lines()
        .zip(want.lines())
        .position(|(a, b)| a != b)
        .map_or(doc.lines().count().min(want.lines().count()), |i| i)
        + 1;
    panic!(
        "docs/configuration.md's option tables differ from src/config/options.rs from line {line}; \
         regenerate them with UPDATE_DOCS=1 cargo test -p fleet --lib config::"
    );
}

#[test]
fn the_docs_table_says_defaults_reloads_and_obsolescence() {
    let t = docs_table();
    for row in [
        "| `etcd_request_timeout` | `1s` | reconnects to etcd | Deadline of one etcd request. |",
        "| `public_ip` | detected | live |",
        "| `api_socket_mode` | `0660` | restart |",
        "| `machine_id` | none | restart |",
        "| `takeover_grace` | — | — | obsolete: accepted with a warning and ignored; takeovers",
    ] {
        assert!(t.contains(row), "{row}\n{t}");
    }
    assert_eq!(t.matches("\n| `").count(), keys().count());
}
