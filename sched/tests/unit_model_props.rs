//! Property tests for the unit model: unit files round-trip through their serialized form, hashes are a
//! function of the serialized options, names keep their parts, and requirement validation rejects exactly
//! the combinations fleet rejected.

use fleet_sched::requirements::{glob_match, split_quoted};
use fleet_sched::{RequirementError, Requirements, UnitFile, UnitName, UnitOption};
use proptest::prelude::*;

fn section() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Unit".to_string()),
        Just("Service".to_string()),
        Just("X-Fleet".to_string()),
        Just("Install".to_string()),
        // No `[`: systemd reads `[[S]` as the unknown section `[S` (refused since 391b21a).
        "[A-Za-z][A-Za-z0-9 _#;-]{0,8}",
    ]
}

fn option_name() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9_.\\]-]{0,12}"
}

/// One line of a value: printable, no surrounding whitespace (parsing trims values).
fn segment() -> impl Strategy<Value = String> {
    "[!-~]([ -~é中\u{a0}]{0,20}[!-~])?"
}

/// Values that a unit file can hold: empty, one line, or lines joined by `\` continuations.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        prop::collection::vec(segment(), 1..4).prop_map(|segs| segs.join(" \\\n")),
    ]
    .prop_filter("a value cannot end in a continuation", |v| {
        !v.ends_with('\\')
    })
    .prop_filter(
        "a continuation line cannot be a comment (systemd skips it)",
        |v| !v.split('\n').skip(1).any(|l| l.starts_with(['#', ';'])),
    )
}

fn options() -> impl Strategy<Value = Vec<UnitOption>> {
    prop::collection::vec(
        (section(), option_name(), value()).prop_map(|(s, n, v)| UnitOption::new(s, n, v)),
        0..12,
    )
}

/// Unit-file-like text: headers, options, comments, continuations, blank lines, junk.
fn unit_text() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        4 => "[A-Za-z-]{1,8}=[ -~]{0,12}",
        1 => " *[A-Za-z]{1,4} *= *[a-z \\\\]{0,6}",
        2 => "\\[(Unit|Service|X-Fleet)\\]",
        1 => "[#;][ -~]{0,10}",
        1 => "",
        1 => "[a-z]{1,6} \\\\",
        1 => "[ -~]{0,10}",
    ];
    prop::collection::vec(line, 0..16).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn representable_options_round_trip_through_serialize_and_parse(opts in options()) {
        let file = UnitFile::from_options(opts.clone()).map_err(|e| TestCaseError::fail(format!("{opts:?}: {e}")))?;
        prop_assert_eq!(file.options(), &opts[..]);
        let text = file.serialize();
        let back = UnitFile::parse(&text).map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
        prop_assert_eq!(back.options(), &file.grouped()[..]);
        prop_assert_eq!(back.serialize(), text);
        prop_assert_eq!(back.hash(), file.hash());
    }

    #[test]
    fn hash_is_a_function_of_the_serialized_options(opts in options(), other in options()) {
        let a = UnitFile::from_options(opts.clone()).unwrap();
        let b = UnitFile::from_options(opts).unwrap();
        prop_assert_eq!(a.hash(), b.hash());
        let c = UnitFile::from_options(other).unwrap();
        prop_assert_eq!(a.hash() == c.hash(), a.serialize() == c.serialize());
        let h = a.hash();
        prop_assert_eq!(h.to_string().parse::<fleet_sched::UnitHash>().unwrap(), h);
        prop_assert!(h.to_string().starts_with(&h.short()));
    }

    #[test]
    fn whatever_parses_is_accepted_as_options_and_round_trips(text in unit_text()) {
        if let Ok(file) = UnitFile::parse(&text) {
            let again = UnitFile::from_options(file.options().to_vec())
                .map_err(|e| TestCaseError::fail(format!("{text:?} -> {:?}: {e}", file.options())))?;
            prop_assert_eq!(&again, &file);
            let back = UnitFile::parse(&file.serialize()).unwrap();
            prop_assert_eq!(back.options(), &file.grouped()[..]);
        }
    }

    #[test]
    fn parse_never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
        let _ = UnitFile::parse(&text);
    }

    #[test]
    fn valid_names_keep_their_parts(
        prefix in "[A-Za-z0-9:_\\\\-][A-Za-z0-9:_.\\\\-]{0,20}",
        instance in proptest::option::of("[A-Za-z0-9:_.@\\\\-]{0,10}"),
        suffix in prop::sample::select(vec!["service", "socket", "timer", "path", "target"]),
    ) {
        let s = match &instance {
            Some(i) => format!("{prefix}@{i}.{suffix}"),
            None => format!("{prefix}.{suffix}"),
        };
        let name = UnitName::parse(&s).map_err(|e| TestCaseError::fail(format!("{s}: {e}")))?;
        prop_assert_eq!(name.to_string(), s.clone());
        prop_assert_eq!(s.parse::<UnitName>().unwrap(), name.clone());
        prop_assert_eq!(name.suffix(), suffix);
        prop_assert_eq!(name.prefix(), prefix.as_str());
        prop_assert_eq!(name.instance(), instance.as_deref());
        prop_assert_eq!(name.is_template(), instance.as_deref() == Some(""));
        prop_assert_eq!(name.is_instance(), instance.as_deref().is_some_and(|i| !i.is_empty()));
        if let Some(t) = name.template() {
            prop_assert!(t.is_template());
            prop_assert_eq!(t.prefix(), name.prefix());
        }
        prop_assert_eq!(name.expand_specifiers("%n"), s.clone());
        prop_assert_eq!(format!("{}.{}", name.expand_specifiers("%N"), suffix), s);
    }

    #[test]
    fn escaped_patterns_match_exactly_their_text(text in "[ -~]{0,12}", other in "[ -~]{0,12}") {
        let escaped: String = text.chars().flat_map(|c| ['\\', c]).collect();
        prop_assert!(glob_match(&escaped, &text));
        prop_assert_eq!(glob_match(&escaped, &other), text == other);
        if !text.contains('/') {
            prop_assert!(glob_match("*", &text));
        }
    }

    #[test]
    fn quoted_words_come_back_from_split_quoted(words in prop::collection::vec("[a-z=]{1,6}( [a-z]{1,3})?", 1..5)) {
        let value = words.iter().map(|w| format!("\"{w}\"")).collect::<Vec<_>>().join(" ");
        prop_assert_eq!(split_quoted(&value), words);
    }

    #[test]
    fn requirement_validation_rejects_exactly_fleets_combinations(
        machine in proptest::option::of("[a-f0-9]{8}"),
        peers in prop::collection::vec(prop::sample::select(vec!["db.service", "cache.service", "web@1.service"]), 0..3),
        conflicts in prop::collection::vec(prop::sample::select(vec!["db*", "x.service", "web@*.service", "*"]), 0..3),
        replaces in prop::collection::vec(prop::sample::select(vec!["cache.service", "old*", "w*"]), 0..2),
        global in proptest::option::of(prop::sample::select(vec!["true", "false", "yes", "0"])),
    ) {
        let mut text = String::from("[X-Fleet]\n");
        if let Some(m) = &machine { text += &format!("MachineID={m}\n"); }
        for p in &peers { text += &format!("MachineOf={p}\n"); }
        if !conflicts.is_empty() { text += &format!("Conflicts={}\n", conflicts.join(" ")); }
        for r in &replaces { text += &format!("Replaces={r}\n"); }
        if let Some(g) = global { text += &format!("Global={g}\n"); }
        let file = UnitFile::parse(&text).unwrap();
        let name = UnitName::parse("unit.service").unwrap();
        let got = Requirements::from_unit(&name, &file);

        let is_global = matches!(global, Some("true" | "yes"));
        let peer_clash = peers.iter().any(|p| conflicts.iter().chain(&replaces).any(|g| glob_match(g, p)));
        let pinned = machine.is_some();
        let (has_peers, has_conflicts, has_replaces) = (!peers.is_empty(), !conflicts.is_empty(), !replaces.is_empty());
        let rejected = peer_clash
            || (pinned && (has_peers || has_conflicts || is_global || has_replaces))
            || (is_global && (has_peers || has_replaces))
            || (has_conflicts && has_replaces);
        match got {
            Ok(r) => {
                prop_assert!(!rejected, "{text:?} accepted");
                prop_assert_eq!(r.global, is_global);
                prop_assert_eq!(&r.machine_id, &machine);
                prop_assert_eq!(r.validate(), Ok(()));
            }
            Err(e) => {
                prop_assert!(rejected, "{text:?} rejected: {e}");
                let is_peer_error = matches!(
                    e,
                    RequirementError::PeerMatchesConflict { .. } | RequirementError::PeerMatchesReplace { .. }
                );
                prop_assert_eq!(is_peer_error, peer_clash, "{}", e);
            }
        }
    }
}
