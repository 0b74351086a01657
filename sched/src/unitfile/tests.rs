//! Tests of the unit-file parser, serializer and hash.

use super::*;

fn opt(section: &str, name: &str, value: &str) -> UnitOption {
    UnitOption::new(section, name, value)
}

fn parse(text: &str) -> Vec<UnitOption> {
    UnitFile::parse(text)
        .unwrap_or_else(|e| panic!("{text:?}: {e}"))
        .into_options()
}

const HELLO: &str = "[Unit]\nDescription=Hello World\n\n[Service]\n\
    ExecStart=/bin/bash -c \"while true; do echo Hello; sleep 1; done\"\n\n\
    [X-Fleet]\nConflicts=hello*.service\n";

#[test]
fn hash_is_sha1_of_the_serialized_text() {
    // printf '[Unit]\nDescription=Hello World\n\n[Service]\nExecStart=/bin/bash -c "while true; do
    // echo Hello; sleep 1; done"\n\n[X-Fleet]\nConflicts=hello*.service\n' | sha1sum
    let f = UnitFile::parse(HELLO).unwrap();
    assert_eq!(f.serialize(), HELLO);
    assert_eq!(
        f.hash().to_string(),
        "4f08a4d32cbf4a0770b5e6e951415ec1d27b4167"
    );
    assert_eq!(f.hash().short(), "4f08a4d");
}

#[test]
fn hash_of_reformatted_file_equals_hash_of_canonical_text() {
    // Comments, indentation, spacing around '=', interleaved sections and CRLF line ends all vanish;
    // the hash is that of the canonical text:
    // printf '[Unit]\nDescription=a\nAfter=b\n\n[Service]\nExecStart=/bin/a \\\n  b\n' | sha1sum
    let messy = "# header comment\r\n[Unit]\r\n  Description = a \r\n; note\r\n\r\n\
        [Service]\r\nExecStart=/bin/a \\\n  b\n[Unit]\nAfter=b\n";
    let f = UnitFile::parse(messy).unwrap();
    assert_eq!(
        f.serialize(),
        "[Unit]\nDescription=a\nAfter=b\n\n[Service]\nExecStart=/bin/a \\\n  b\n"
    );
    assert_eq!(
        f.hash().to_string(),
        "521db3e9c90743384624a91a6e1ce79657e7f36e"
    );
}

#[test]
fn hash_matches_fleets_own_test_vector() {
    // fleet v1 unit/unit_test.go TestUnitHash.
    let f = UnitFile::parse("[Service]\nExecStart=/bin/sleep 100\n").unwrap();
    assert_eq!(
        f.hash().to_string(),
        "1c6fb6f3684bafb0c173d8b8b957ceff031180c1"
    );
    assert_eq!(f.hash().short(), "1c6fb6f");
}

#[test]
fn escaped_multilines_match_fleets_test() {
    // fleet v1 unit/unit_test.go TestDeserializeEscapedMultilines: continuations keep "\\\n".
    let text = "\n[Service]\nExecStart=echo \\\n  \"pi\\\n  ng\"\nExecStop=\\\necho \"po\\\nng\"\n";
    assert_eq!(
        parse(text),
        [
            opt("Service", "ExecStart", "echo \\\n  \"pi\\\n  ng\""),
            opt("Service", "ExecStop", "\\\necho \"po\\\nng\""),
        ]
    );
    // The same test's comment lines inside a continuation were part of the value for go-systemd;
    // systemd skips them (and joins the next line instead). Refused.
    assert_eq!(
        UnitFile::parse("[Service]\nExecStopPre=echo\\\n#pang\n"),
        Err(ParseError::CommentInContinuation { line: 3 })
    );
    assert_eq!(
        UnitFile::parse("[Service]\nExecStopPost=echo\\\n  ;peng\\\npung\n"),
        Err(ParseError::CommentInContinuation { line: 3 })
    );
}

#[test]
fn an_even_number_of_backslashes_does_not_continue_the_line() {
    // systemd reads "\\\\" at the end of a line as an escaped backslash, not a continuation.
    assert_eq!(
        parse("[S]\nA=a\\\\\nB=b\n"),
        [opt("S", "A", "a\\\\"), opt("S", "B", "b")]
    );
    assert_eq!(parse("[S]\nA=a\\\\\\\nb\n"), [opt("S", "A", "a\\\\\\\nb")]);
}

#[test]
fn control_characters_are_refused_where_systemd_would_end_a_line() {
    // Issue 13 case 2: systemd reads a lone '\r' (and NUL) as a line end.
    let injected = "[Unit]\nDescription=harmless\r[Service]\rExecStartPre=/bin/touch /tmp/pwned\n";
    assert_eq!(
        UnitFile::parse(injected),
        Err(ParseError::ControlCharacter { line: 2, ch: '\r' })
    );
    // Issue 13 case 7: this parsed, but its options were refused when submitted back.
    assert_eq!(
        UnitFile::parse("[a\rb]\nX=y\n"),
        Err(ParseError::ControlCharacter { line: 1, ch: '\r' })
    );
    for ch in ['\0', '\x0b', '\x0c', '\x1b', '\x7f', '\u{85}'] {
        let text = format!("[S]\nA=1\n# c{ch}\n");
        assert_eq!(
            UnitFile::parse(&text),
            Err(ParseError::ControlCharacter { line: 3, ch }),
            "{ch:?}"
        );
    }
    // Tab is fine, and CRLF line ends are line ends.
    assert_eq!(
        parse("[S]\r\nA=a\tb\r\nB=x \\\r\n y\r\n"),
        [opt("S", "A", "a\tb"), opt("S", "B", "x \\\n y")]
    );
    // Options given as data: the same rule.
    for value in ["harmless\r[Service]\rExecStartPre=/x", "a\0b", "a\x0cb"] {
        let err = UnitFile::from_options(vec![opt("Unit", "Description", value)]).unwrap_err();
        assert!(
            err.to_string().contains("carriage return")
                || err.to_string().contains("control character"),
            "{value:?}: {err}"
        );
    }
    for (section, name) in [("a\rb", "X"), ("S", "a\0b"), ("S\x01", "X")] {
        assert!(UnitFile::from_options(vec![opt(section, name, "y")]).is_err());
    }
}

#[test]
fn fleets_garbage_cases() {
    // fleet v1 TestDeserializedUnitGarbage: any line with '=' inside a section is an option.
    assert_eq!(
        parse("[Service]\nExecStart=jim\n<<<<<<<<<<<=bar\n"),
        [
            opt("Service", "ExecStart", "jim"),
            opt("Service", "<<<<<<<<<<<", "bar")
        ]
    );
    // ... but fleet silently skipped text before the first section; we reject it.
    assert!(matches!(
        UnitFile::parse("\n>>>>>>>>>>>>>\n[Service]\nExecStart=jim\n"),
        Err(ParseError::OptionOutsideSection { line: 2, .. })
    ));
    // fleet v1 TestBadUnitsFail.
    assert_eq!(
        UnitFile::parse("\n[Unit]\n\n[Service]\n<<<<<<<<<<<<<<<<\n"),
        Err(ParseError::MissingEquals {
            line: 5,
            text: "<<<<<<<<<<<<<<<<".into()
        })
    );
    assert_eq!(
        UnitFile::parse("\n[Unit]\nnonsense upon stilts\n"),
        Err(ParseError::MissingEquals {
            line: 3,
            text: "nonsense upon stilts".into()
        })
    );
}

#[test]
fn empty_file_has_no_options_and_hashes_the_empty_string() {
    let f = UnitFile::parse("").unwrap();
    assert!(f.options().is_empty());
    assert_eq!(f.serialize(), "");
    assert_eq!(
        f.hash().to_string(),
        "da39a3ee5e6b4b0d3255bfef95601890afd80709"
    );
    assert_eq!(UnitFile::parse("\n  \n# only a comment\n").unwrap(), f);
}

#[test]
fn repeated_keys_are_kept_in_order() {
    let got = parse("[Service]\nExecStartPre=/bin/a\nExecStartPre=/bin/b\nExecStart=/bin/c\nExecStartPre=/bin/d\n");
    let names: Vec<_> = got
        .iter()
        .map(|o| (o.name.as_str(), o.value.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("ExecStartPre", "/bin/a"),
            ("ExecStartPre", "/bin/b"),
            ("ExecStart", "/bin/c"),
            ("ExecStartPre", "/bin/d"),
        ]
    );
}

#[test]
fn values_and_names_are_trimmed_inner_text_kept() {
    let got = parse("[Unit]\n   Description   =   two  words  \nEmpty=\nBlank=   \nEq=a=b\n");
    assert_eq!(
        got,
        [
            opt("Unit", "Description", "two  words"),
            opt("Unit", "Empty", ""),
            opt("Unit", "Blank", ""),
            opt("Unit", "Eq", "a=b"),
        ]
    );
}

#[test]
fn line_continuations_keep_backslash_and_newline() {
    assert_eq!(
        parse("[Service]\nExecStart=/bin/a \\\n    --flag \\\n  last\nUser=x\n"),
        [
            opt("Service", "ExecStart", "/bin/a \\\n    --flag \\\n  last"),
            opt("Service", "User", "x"),
        ]
    );
    // A continuation followed by a blank line is an error (go-systemd kept "\\\n" in the value).
    assert_eq!(
        UnitFile::parse("[Service]\nExecStart=/bin/a \\\n\nUser=x\n"),
        Err(ParseError::ContinuationIntoBlankLine { line: 3 })
    );
    assert_eq!(
        UnitFile::parse("[Service]\nExecStart=/bin/a \\\n  \\\n   \n"),
        Err(ParseError::ContinuationIntoBlankLine { line: 4 })
    );
    // A backslash that is not last on the line is just a character.
    assert_eq!(parse("[S]\nA=a\\b\n"), [opt("S", "A", "a\\b")]);
    // Whitespace after a final backslash: go-systemd ends the value, systemd continues it. Rejected.
    assert_eq!(
        UnitFile::parse("[S]\nA=a \\ \nB=b\n"),
        Err(ParseError::BackslashBeforeTrailingSpace { line: 2 })
    );
    assert_eq!(
        UnitFile::parse("[S]\nA=a \\\n b \\\t"),
        Err(ParseError::BackslashBeforeTrailingSpace { line: 3 })
    );
}

#[test]
fn comments_are_skipped_but_never_continued() {
    assert_eq!(
        parse("; top\n[S]\n# c1\n  ; c2\nA=1 # not a comment\nC=3\n# last \\"),
        [opt("S", "A", "1 # not a comment"), opt("S", "C", "3")]
    );
    // go-systemd swallowed the next line into such a comment; systemd reads it as an option.
    assert_eq!(
        UnitFile::parse("[S]\n# swallow \\\nB=hidden\n"),
        Err(ParseError::CommentContinuation { line: 2 })
    );
}

#[test]
fn only_systemds_whitespace_may_follow_a_section_header() {
    // Found by the systemd oracle: systemd calls this an invalid section header.
    assert!(matches!(
        UnitFile::parse("[Service]\u{a0}\nA=1\n"),
        Err(ParseError::GarbageAfterSection { line: 1, .. })
    ));
    assert_eq!(parse("[S] \t\nA=1\n"), [opt("S", "A", "1")]);
}

#[test]
fn a_section_name_with_a_bracket_is_refused() {
    // Found by the systemd oracle (CI24): systemd takes `[[Service]` for an unknown section named
    // `[Service` and ignores what follows; fleet read its options.
    let err = UnitFile::parse("[Unit]\nA=1\n[[Service]\nB=2\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "line 3: section name \"[Service\" contains \"[\""
    );
    assert!(UnitFile::from_options(vec![opt("[Service", "B", "2")]).is_err());
}

#[test]
fn section_names_are_taken_verbatim() {
    assert_eq!(
        parse("[X-Fleet]\nA=1\n[ odd name ]  \nB=2\n"),
        [opt("X-Fleet", "A", "1"), opt(" odd name ", "B", "2"),]
    );
}

#[test]
fn malformed_files_are_rejected_with_line_numbers() {
    let cases: &[(&str, ParseError)] = &[
        (
            "Description=x\n[Unit]\n",
            ParseError::OptionOutsideSection {
                line: 1,
                text: "Description=x".into(),
            },
        ),
        (
            "# c\n\n  junk\n",
            ParseError::OptionOutsideSection {
                line: 3,
                text: "junk".into(),
            },
        ),
        (
            "[Unit]\nA=1\n[Service\nB=2\n",
            ParseError::UnterminatedSection { line: 3 },
        ),
        ("[Unit]\n\n[]\n", ParseError::EmptySectionName { line: 3 }),
        (
            "[Unit] trailing\n",
            ParseError::GarbageAfterSection {
                line: 1,
                section: "Unit".into(),
                garbage: "trailing".into(),
            },
        ),
        (
            "[Unit]\nA=1\nNoEquals\nB=2\n",
            ParseError::MissingEquals {
                line: 3,
                text: "NoEquals".into(),
            },
        ),
        (
            "[Unit]\nNoEqualsAtEnd",
            ParseError::MissingEquals {
                line: 2,
                text: "NoEqualsAtEnd".into(),
            },
        ),
        (
            "[Unit]\n  = value\n",
            ParseError::EmptyOptionName { line: 2 },
        ),
        ("[Unit]\nA=x \\", ParseError::ContinuationAtEnd { line: 2 }),
        (
            "[Unit]\nA=x \\\n",
            ParseError::ContinuationAtEnd { line: 2 },
        ),
        (
            "[Unit]\nA=x \\\n  y \\\n",
            ParseError::ContinuationAtEnd { line: 3 },
        ),
        (
            "[Unit]\nA=x \\\n\t\n",
            ParseError::ContinuationIntoBlankLine { line: 3 },
        ),
    ];
    for (text, want) in cases {
        assert_eq!(UnitFile::parse(text).as_ref(), Err(want), "{text:?}");
        // Messages carry the line number.
        let msg = want.to_string();
        assert!(msg.starts_with("line "), "{msg}");
    }
}

#[test]
fn lines_of_line_max_bytes_are_rejected() {
    let ok = format!("[S]\nA={}\n", "x".repeat(LINE_MAX - 3));
    assert_eq!(
        UnitFile::parse(&ok).unwrap().options()[0].value.len(),
        LINE_MAX - 3
    );
    let long = format!("[S]\nB=1\nA={}\n", "x".repeat(LINE_MAX - 2));
    assert_eq!(
        UnitFile::parse(&long),
        Err(ParseError::LineTooLong {
            line: 3,
            len: LINE_MAX,
            max: LINE_MAX
        })
    );
    // A long comment counts too; systemd would truncate it.
    let comment = format!("# {}\n[S]\n", "c".repeat(5000));
    assert!(matches!(
        UnitFile::parse(&comment),
        Err(ParseError::LineTooLong { line: 1, .. })
    ));
}

#[test]
fn serialize_groups_sections_in_first_appearance_order() {
    let f = UnitFile::from_options(vec![
        opt("Service", "ExecStart", "/bin/a"),
        opt("Unit", "Description", "d"),
        opt("Service", "Restart", "always"),
    ])
    .unwrap();
    assert_eq!(
        f.serialize(),
        "[Service]\nExecStart=/bin/a\nRestart=always\n\n[Unit]\nDescription=d\n"
    );
    // Options keep the given order; hashing uses the grouped text.
    assert_eq!(f.options()[1].section, "Unit");
    assert_eq!(f.grouped()[1].name, "Restart");
    let same = UnitFile::from_options(f.grouped()).unwrap();
    assert_eq!(same.hash(), f.hash());
    assert_ne!(same, f);
}

#[test]
fn from_options_rejects_what_cannot_be_written_back() {
    let bad: &[(UnitOption, &str)] = &[
        (opt("", "A", "1"), "section name is empty"),
        (opt("Un]it", "A", "1"), "contains \"]\""),
        (opt("Un\nit", "A", "1"), "line break"),
        (opt("Unit", "", "1"), "option name is empty"),
        (opt("Unit", "A=B", "1"), "contains \"=\""),
        (opt("Unit", "A\nB", "1"), "line break"),
        (opt("Unit", " A", "1"), "whitespace"),
        (opt("Unit", "#A", "1"), "starts with"),
        (
            opt("Unit", "A", "one\ntwo"),
            "not a \"\\\" line continuation",
        ),
        (opt("Unit", "A", "one\\"), "continue it onto the next line"),
        (opt("Unit", "A", &"x".repeat(LINE_MAX)), "2048 bytes"),
    ];
    for (o, want) in bad {
        let err = UnitFile::from_options(vec![opt("Unit", "Ok", "1"), o.clone()]).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, ParseError::InvalidOption { index: 1, .. }),
            "{o:?}: {msg}"
        );
        assert!(msg.contains(want), "{o:?}: {msg}");
    }
    for value in ["a \\\n", "a \\\n \t", "a \\\n\\\n\nb"] {
        let err =
            UnitFile::from_options(vec![opt("S", "A", value), opt("S", "B", "1")]).unwrap_err();
        assert!(
            err.to_string().contains("followed by a blank line"),
            "{value:?}: {err}"
        );
    }
}

#[test]
fn from_options_accepts_what_parse_produces() {
    let f = UnitFile::parse(HELLO).unwrap();
    assert_eq!(UnitFile::from_options(f.options().to_vec()).unwrap(), f);
    let cont = UnitFile::parse("[S]\nA=a \\\n  b \\\n c\n[T]\nB= x\n").unwrap();
    assert_eq!(
        UnitFile::from_options(cont.options().to_vec()).unwrap(),
        cont
    );
    let slashes =
        UnitFile::from_options(vec![opt("S", "A", "a \\\n\\\nb"), opt("S", "B", "1")]).unwrap();
    assert_eq!(UnitFile::parse(&slashes.serialize()).unwrap(), slashes);
    // Whitespace around values is refused: systemd (and parsing) would strip it, so the options and
    // the hash would not show what systemd runs.
    for v in [" padded", "padded ", "\tx"] {
        let err = UnitFile::from_options(vec![opt("S", "A", v)]).unwrap_err();
        assert!(err.to_string().contains("whitespace"), "{v:?}: {err}");
    }
    // Whitespace that systemd does not strip (a no-break space) is kept, by both.
    let nbsp = UnitFile::from_options(vec![opt("S", "A", "\u{a0}x\u{a0}")]).unwrap();
    assert_eq!(UnitFile::parse(&nbsp.serialize()).unwrap(), nbsp);
}

#[test]
fn description_is_the_last_one_and_install_section_is_detected() {
    let f = UnitFile::parse(
        "[Unit]\nDescription=first\nDescription=second\n[Service]\nDescription=no\n",
    )
    .unwrap();
    assert_eq!(f.description(), Some("second"));
    assert!(!f.has_install_section());
    let g = UnitFile::parse("[Service]\nExecStart=/a\n[Install]\nWantedBy=multi-user.target\n")
        .unwrap();
    assert_eq!(g.description(), None);
    assert!(g.has_install_section());
}

#[test]
fn unit_hash_text_and_json_round_trip() {
    let h = UnitFile::parse(HELLO).unwrap().hash();
    let text = h.to_string();
    assert_eq!(text.len(), 40);
    assert_eq!(text.parse::<UnitHash>(), Ok(h));
    assert_eq!(text.to_uppercase().parse::<UnitHash>(), Ok(h));
    let json = serde_json::to_string(&h).unwrap();
    assert_eq!(json, format!("\"{text}\""));
    assert_eq!(serde_json::from_str::<UnitHash>(&json).unwrap(), h);
    for bad in [
        "",
        "4f08a4d",
        &format!("{text}0"),
        &format!("{}g", &text[..39]),
        &format!("+{}", &text[1..]),
    ] {
        assert!(bad.parse::<UnitHash>().is_err(), "{bad:?}");
    }
    assert!(serde_json::from_str::<UnitHash>("\"xyz\"").is_err());
}

#[test]
fn byte_order_mark_is_skipped() {
    assert_eq!(
        parse("\u{feff}[Unit]\nDescription=x\n"),
        [opt("Unit", "Description", "x")]
    );
}

#[test]
fn unit_file_json_is_its_option_list_and_is_validated() {
    let f = UnitFile::parse("[Unit]\nDescription=d\n[Service]\nExecStart=/a\n").unwrap();
    let json = serde_json::to_string(&f).unwrap();
    assert_eq!(
        json,
        r#"[{"section":"Unit","name":"Description","value":"d"},{"section":"Service","name":"ExecStart","value":"/a"}]"#
    );
    assert_eq!(serde_json::from_str::<UnitFile>(&json).unwrap(), f);
    let bad = r#"[{"section":"","name":"A","value":"1"}]"#;
    let err = serde_json::from_str::<UnitFile>(bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("section name is empty"), "{err}");
}

#[test]
fn unit_option_json_uses_fleets_field_names() {
    let o = opt("Unit", "Description", "d");
    let json = serde_json::to_string(&o).unwrap();
    assert_eq!(
        json,
        r#"{"section":"Unit","name":"Description","value":"d"}"#
    );
    assert_eq!(serde_json::from_str::<UnitOption>(&json).unwrap(), o);
}
