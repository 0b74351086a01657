//! Tests of `[X-Fleet]` reading, validation and glob matching.

use super::*;

#[test]
fn glob_matching_is_polynomial_and_both_matchers_agree() {
    // Exponential for the old recursive matcher.
    let many = "*a".repeat(40) + "*b";
    assert!(!glob_match(&many, &"a".repeat(250)));
    assert!(glob_match(&many, &format!("{}b", "a".repeat(250))));
    // The greedy matcher (names without '/') and the general one agree, on a small alphabet.
    let alphabet = ['a', 'b', '*', '?', '[', ']', '^', '-', '\\'];
    let names = ["", "a", "b", "ab", "ba", "aab", "abab", "bbba", "a-b", "^]"];
    let mut seed = 7u64;
    for _ in 0..20_000 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = (seed >> 60) as usize;
        let pat: Vec<char> = (0..len)
            .map(|i| alphabet[((seed >> (4 * i + 3)) % alphabet.len() as u64) as usize])
            .collect();
        if glob_check(&pat.iter().collect::<String>()).is_err() {
            continue;
        }
        for name in names {
            let n: Vec<char> = name.chars().collect();
            assert_eq!(
                match_greedy(&pat, &n),
                match_dp(&pat, &n),
                "{pat:?} {name:?}"
            );
        }
    }
    assert!(match_dp(&['*', '/', 'b'], &['a', '/', 'b']));
    assert!(!match_dp(&['*', 'b'], &['a', '/', 'b']));
}

fn req(name: &str, xfleet: &str) -> Result<Requirements, RequirementError> {
    let name = UnitName::parse(name).unwrap();
    let text = format!("[Service]\nExecStart=/bin/true\n[X-Fleet]\n{xfleet}");
    let file = UnitFile::parse(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    Requirements::from_unit(&name, &file)
}

fn ok(name: &str, xfleet: &str) -> Requirements {
    req(name, xfleet).unwrap_or_else(|e| panic!("{xfleet:?}: {e}"))
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn no_x_fleet_section_means_no_requirements() {
    let file = UnitFile::parse("[Service]\nExecStart=/bin/true\n").unwrap();
    let r = Requirements::from_unit(&UnitName::parse("a.service").unwrap(), &file).unwrap();
    assert_eq!(r, Requirements::default());
    // Keys of other sections are not requirements.
    let file = UnitFile::parse("[Unit]\nConflicts=b.service\n").unwrap();
    let r = Requirements::from_unit(&UnitName::parse("a.service").unwrap(), &file).unwrap();
    assert!(r.conflicts.is_empty());
}

#[test]
fn each_option_is_read() {
    let r = ok("a.service", "MachineID=113f16a7\n");
    assert_eq!(r.machine_id.as_deref(), Some("113f16a7"));
    assert_eq!(r.required_machine(), Some("113f16a7"));
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);

    let r = ok(
        "a.service",
        "MachineOf=b.service\nMachineOf=c.service d.service\n",
    );
    assert_eq!(
        r.machine_of,
        strings(&["b.service", "c.service", "d.service"])
    );

    let r = ok(
        "a.service",
        "Conflicts=a*.service  b?.service\nConflicts=c.service\nConflicts=a*.service\n",
    );
    assert_eq!(
        r.conflicts,
        strings(&["a*.service", "b?.service", "c.service"])
    );
    assert!(r.conflicts_with("apple.service"));
    assert!(!r.conflicts_with("bee.service"));

    let r = ok("a.service", "Replaces=old*.service\n");
    assert_eq!(r.replaces, strings(&["old*.service"]));
    assert!(r.replaces_unit("old-1.service"));

    let r = ok("a.service", "MachineMetadata=region=us-east\nMachineMetadata=region=us-west\nMachineMetadata=disk=ssd\n");
    let want: BTreeMap<String, Vec<String>> = [
        ("disk".to_string(), strings(&["ssd"])),
        ("region".to_string(), strings(&["us-east", "us-west"])),
    ]
    .into();
    assert_eq!(r.metadata, want);
}

#[test]
fn quoted_values_are_split_into_words() {
    let r = ok(
        "a.service",
        "MachineMetadata=\"region=us east\" \"disk=ssd\"\n",
    );
    assert_eq!(r.metadata["region"], strings(&["us east"]));
    assert_eq!(r.metadata["disk"], strings(&["ssd"]));
    // Unquoted: one pair, split at the first '='.
    let r = ok("a.service", "MachineMetadata=role=web=front\n");
    assert_eq!(r.metadata["role"], strings(&["web=front"]));
    let r = ok("a.service", "Conflicts=\"x.service\" \"y*.service\"\n");
    assert_eq!(r.conflicts, strings(&["x.service", "y*.service"]));
    assert_eq!(split_quoted("\"a b\" c \"d\""), strings(&["a b", "c", "d"]));
    assert_eq!(split_quoted("a \"b c\""), strings(&["a \"b c\""]));
    assert_eq!(split_quoted("\"\""), Vec::<String>::new());
}

#[test]
fn split_quoted_matches_fleets_parse_multivalue_line() {
    // fleet v1 unit/unit_test.go TestParseMultivalueLine, except that empty words are dropped (fleet's
    // TODO said they should be).
    let cases: &[(&str, &[&str])] = &[
        (r#""bar" "ping" "pong""#, &["bar", "ping", "pong"]),
        (r#""bar""#, &["bar"]),
        ("", &[""]),
        (r#""""#, &[]),
        (r#""bar"#, &[r#""bar"#]),
        (r#"bar""#, &[r#"bar""#]),
        (r#"foo\"bar"#, &[r#"foo\"bar"#]),
        (r#""bar" ""#, &["bar"]),
        (r#""foo\"bar""#, &[r"foo\bar"]),
    ];
    for (input, want) in cases {
        assert_eq!(split_quoted(input), strings(want), "{input:?}");
    }
}

#[test]
fn global_accepts_fleets_truthy_values_and_the_last_one_wins() {
    for v in ["true", "TRUE", "yes", "Yes", "1", "on", "ON", "t", "T"] {
        assert!(ok("a.service", &format!("Global={v}\n")).global, "{v}");
    }
    for v in ["false", "no", "0", "off", "f", "", "y", "enabled"] {
        assert!(!ok("a.service", &format!("Global={v}\n")).global, "{v}");
    }
    assert!(!ok("a.service", "Global=true\nGlobal=false\n").global);
    assert!(ok("a.service", "Global=false\nGlobal=true\n").global);
}

#[test]
fn specifiers_are_expanded_in_values() {
    let r = ok(
        "web@8080.service",
        "MachineOf=%p-db@%i.service\nConflicts=%p@*.service\n",
    );
    assert_eq!(r.machine_of, strings(&["web-db@8080.service"]));
    assert_eq!(r.conflicts, strings(&["web@*.service"]));
    let r = ok(
        "web@8080.service",
        "MachineMetadata=\"name=%n\" \"base=%N\" \"pct=100%%\"\n",
    );
    assert_eq!(r.metadata["name"], strings(&["web@8080.service"]));
    assert_eq!(r.metadata["base"], strings(&["web@8080"]));
    assert_eq!(r.metadata["pct"], strings(&["100%"]));
}

#[test]
fn deprecated_aliases_are_accepted_with_a_warning() {
    let r = ok(
        "a.service",
        "X-ConditionMachineOf=b.service\nX-ConditionMachineMetadata=k=v\n",
    );
    assert_eq!(r.machine_of, strings(&["b.service"]));
    assert_eq!(r.metadata["k"], strings(&["v"]));
    assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
    assert!(r
        .warnings
        .iter()
        .any(|w| w.contains("X-ConditionMachineOf is deprecated, use MachineOf")));

    let r = ok("a.service", "X-Conflicts=b.service\nConflicts=c.service\n");
    assert_eq!(r.conflicts, strings(&["b.service", "c.service"]));

    let r = ok("a.service", "X-ConditionMachineID=abc\n");
    assert_eq!(r.machine_id.as_deref(), Some("abc"));
}

#[test]
fn machine_id_precedence_follows_fleet() {
    let r = ok(
        "a.service",
        "X-ConditionMachineID=old\nX-ConditionMachineBootID=boot\nMachineID=new\n",
    );
    assert_eq!(r.machine_id.as_deref(), Some("new"));
    assert_eq!(r.machine_boot_id.as_deref(), Some("boot"));
    assert_eq!(r.required_machine(), Some("new"));

    let r = ok(
        "a.service",
        "X-ConditionMachineID=old\nX-ConditionMachineBootID=boot\n",
    );
    assert_eq!(r.machine_id, None);
    assert_eq!(r.required_machine(), Some("boot"));

    let r = ok("a.service", "MachineID=\nConflicts=b*\n");
    assert_eq!(
        r.required_machine(),
        None,
        "an empty MachineID pins nothing"
    );
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("empty MachineID= is ignored")),
        "{:?}",
        r.warnings
    );

    let r = ok("a.service", "MachineID=first\nMachineID=second\n");
    assert_eq!(r.machine_id.as_deref(), Some("first"));
    assert!(
        r.warnings.iter().any(|w| w.contains("only the first")),
        "{:?}",
        r.warnings
    );
}

#[test]
fn unknown_keys_and_bad_values_are_warnings() {
    let r = ok("a.service", "MachineIDs=x\nConflicts=[a\nMachineMetadata=novalue\nMachineMetadata==v\nMachineOf=notaunit\n");
    assert_eq!(r.conflicts, strings(&["[a"]));
    assert!(r.metadata.is_empty());
    let w = r.warnings.join("\n");
    assert!(w.contains("unknown [X-Fleet] option \"MachineIDs\""), "{w}");
    assert!(w.contains("Conflicts=[a never matches"), "{w}");
    assert!(w.contains("MachineMetadata=\"novalue\" is ignored"), "{w}");
    assert!(w.contains("MachineMetadata=\"=v\" is ignored"), "{w}");
    assert!(
        w.contains("MachineOf=notaunit can never be satisfied"),
        "{w}"
    );
    assert_eq!(r.warnings.len(), 5, "{w}");
}

#[test]
fn rejected_combinations_name_both_options() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "MachineID=m\nMachineOf=b.service\n",
            "MachineID",
            "MachineOf",
        ),
        ("MachineID=m\nConflicts=b*\n", "MachineID", "Conflicts"),
        ("MachineID=m\nGlobal=true\n", "MachineID", "Global"),
        ("MachineID=m\nReplaces=b.service\n", "MachineID", "Replaces"),
        (
            "X-ConditionMachineBootID=m\nGlobal=yes\n",
            "MachineID",
            "Global",
        ),
        (
            "X-ConditionMachineID=m\nX-Conflicts=b*\n",
            "MachineID",
            "Conflicts",
        ),
        ("Global=true\nMachineOf=b.service\n", "Global", "MachineOf"),
        ("Global=true\nReplaces=b.service\n", "Global", "Replaces"),
        (
            "Conflicts=b*\nReplaces=c.service\n",
            "Conflicts",
            "Replaces",
        ),
    ];
    for (xfleet, first, second) in cases {
        let err = req("a.service", xfleet).unwrap_err();
        assert_eq!(
            err,
            RequirementError::Incompatible { first, second },
            "{xfleet:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("{first} cannot be used with {second}")
        );
    }
    // Global=false does not count as Global.
    ok("a.service", "MachineID=m\nGlobal=false\n");
    // Allowed combinations.
    ok("a.service", "MachineID=m\nMachineMetadata=k=v\n");
    ok(
        "a.service",
        "Global=true\nConflicts=b*\nMachineMetadata=k=v\n",
    );
    ok("a.service", "MachineOf=b.service\nConflicts=c*\n");
    ok("a.service", "MachineOf=b.service\nReplaces=c*\n");
}

#[test]
fn a_peer_matching_a_conflict_or_replace_is_rejected() {
    let err = req("a.service", "MachineOf=db.service\nConflicts=d*.service\n").unwrap_err();
    assert_eq!(
        err,
        RequirementError::PeerMatchesConflict {
            peer: "db.service".into(),
            pattern: "d*.service".into()
        }
    );
    assert!(err.to_string().contains("\"db.service\""), "{err}");
    assert!(
        err.to_string().contains("Conflicts pattern \"d*.service\""),
        "{err}"
    );

    let err = req("a.service", "MachineOf=db.service\nReplaces=db.service\n").unwrap_err();
    assert_eq!(
        err,
        RequirementError::PeerMatchesReplace {
            peer: "db.service".into(),
            pattern: "db.service".into()
        }
    );
    // Checked after specifier expansion.
    let err = req("web@1.service", "MachineOf=%p-db.service\nConflicts=%p-*\n").unwrap_err();
    assert!(
        matches!(err, RequirementError::PeerMatchesConflict { .. }),
        "{err}"
    );
}

#[test]
fn glob_match_follows_go_path_match() {
    let cases: &[(&str, &str, bool)] = &[
        ("abc", "abc", true),
        ("abc", "abcd", false),
        ("*", "anything.service", true),
        ("*", "", true),
        ("*.service", "a.service", true),
        ("*.service", "a.socket", false),
        ("a*b*c", "aXXbYYc", true),
        ("a*b*c", "aXXbYYcd", false),
        ("a*", "a/b", false),
        ("?", "a", true),
        ("?", "", false),
        ("?", "/", false),
        ("a?c", "abc", true),
        ("[abc]x", "bx", true),
        ("[abc]x", "dx", false),
        ("[a-c]x", "cx", true),
        ("[^a-c]x", "dx", true),
        ("[^a-c]x", "ax", false),
        ("[\\]]", "]", true),
        ("[\\-]", "-", true),
        ("[c-a]", "b", false),
        ("\\*", "*", true),
        ("\\*", "a", false),
        ("hello@*.service", "hello@1.service", true),
        ("hello@*.service", "hello@.service", true),
        // Malformed patterns match nothing.
        ("[", "[", false),
        ("[]", "]", false),
        ("[a", "a", false),
        ("[a-]", "a", false),
        ("a\\", "a\\", false),
        ("*[", "x", false),
    ];
    for (pattern, name, want) in cases {
        assert_eq!(glob_match(pattern, name), *want, "{pattern:?} vs {name:?}");
    }
    assert_eq!(glob_check("[a"), Err(GlobError::BadClass));
    assert_eq!(glob_check("a\\"), Err(GlobError::TrailingEscape));
    assert_eq!(glob_check("web@*.service"), Ok(()));
}

#[test]
fn metadata_values_of_one_key_are_ored_and_keys_anded() {
    let r = ok(
        "a.service",
        "MachineMetadata=region=east\nMachineMetadata=region=west\nMachineMetadata=disk=ssd\n",
    );
    let machine = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert!(r.metadata_matches(&machine(&[("region", "east"), ("disk", "ssd")])));
    assert!(r.metadata_matches(&machine(&[
        ("region", "west"),
        ("disk", "ssd"),
        ("extra", "x")
    ])));
    assert!(!r.metadata_matches(&machine(&[("region", "north"), ("disk", "ssd")])));
    assert!(!r.metadata_matches(&machine(&[("region", "east")])));
    assert!(!r.metadata_matches(&machine(&[("region", "East"), ("disk", "ssd")])));
    assert!(Requirements::default().metadata_matches(&machine(&[])));
}
