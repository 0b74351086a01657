//! Unit names: the one validator (used by the API, the registry, the agent and the systemd driver) and
//! the parts that specifiers (`%n %N %p %i`) expand to.
//!
//! A name is accepted exactly when systemd would load a unit file of that name (systemd's
//! `unit_name_is_valid` plus the template rules of fleet v1, which match systemd's `unit_type_may_template`):
//! - at most [`MAX_NAME_LEN`] (255) bytes: systemd's `UNIT_NAME_MAX` is 256 including the final NUL, and
//!   a file name is at most 255 bytes on Linux (the temporary file the driver writes has a fixed-length
//!   name, so it never overflows);
//! - contains a `.`, does not end with `.`, does not start with `.` (systemd skips hidden files when it
//!   reads a directory of units);
//! - ends in a unit type systemd knows ([`KNOWN_SUFFIXES`]: fleet's list without `busname` and
//!   `snapshot`, which systemd removed and refuses);
//! - the part before the suffix is non-empty and uses only ASCII letters, digits and `:` `-` `_` `.` `\`
//!   `@`;
//! - it does not start with `@`;
//! - a `.socket`, `.timer` or `.path` unit leaves room for the `.service` of the same name within the
//!   255 bytes ([`TRIGGERS_SERVICE`]): systemd loads that name with it, and fails to load a socket of 255
//!   bytes (found by the lab test `systemd/tests/units.rs`, which loads names drawn from this grammar);
//! - an instance of a service or socket (`prefix@instance.service`) leaves room for the slice systemd puts
//!   it in, `system-<prefix>.slice` with `-` and `\` in the prefix escaped to 4 bytes each
//!   ([`SLICED_INSTANCES`]; found by the same test);
//! - `@` (templates and instances) only for the suffixes in [`TEMPLATE_SUFFIXES`];
//! - `foo@.service` is a template, `foo@bar.service` an instance of it (the instance is everything after the
//!   first `@`, so it may itself contain `@`).
//!
//! fleet accepted `.service` (an empty name before the suffix), names of 256 bytes and the two removed
//! types; systemd does not, and neither do we.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest accepted unit name, in bytes (systemd's `UNIT_NAME_MAX` less its NUL; fleet allowed 256).
pub const MAX_NAME_LEN: usize = 255;

/// Unit suffixes (types) fleet accepts: the unit types systemd knows.
pub const KNOWN_SUFFIXES: &[&str] = &[
    "automount",
    "device",
    "mount",
    "path",
    "scope",
    "service",
    "slice",
    "socket",
    "swap",
    "target",
    "timer",
];

/// Unit types that start the `.service` of the same name unless their file names another unit
/// (`Service=`, `Unit=`): systemd loads that name with them, so it must be valid too.
pub const TRIGGERS_SERVICE: &[&str] = &["path", "socket", "timer"];

/// Unit types whose instances systemd puts into a slice of their template (`system-<prefix>.slice`,
/// for the types with a control group that may be templates): that slice's name must be valid too.
pub const SLICED_INSTANCES: &[&str] = &["service", "socket"];

/// Unit suffixes that may be templates (`foo@.service`) or instances (`foo@bar.service`).
pub const TEMPLATE_SUFFIXES: &[&str] = &["path", "service", "socket", "target", "timer"];

/// Why a string is not a valid unit name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is the empty string.
    #[error("unit name cannot be empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    #[error("unit name is {len} bytes long, the maximum is {max}")]
    TooLong {
        /// Length of the rejected name, in bytes.
        len: usize,
        /// The maximum ([`MAX_NAME_LEN`]).
        max: usize,
    },
    /// A `.socket`, `.timer` or `.path` unit starts the `.service` of the same name, which would be
    /// longer than [`MAX_NAME_LEN`]: systemd fails to load such a unit.
    #[error("unit name is {len} bytes long: a .{suffix} unit starts the .service of the same name, which would be {service_len} bytes, the maximum is {max}", max = MAX_NAME_LEN)]
    TriggeredTooLong {
        /// Length of the rejected name, in bytes.
        len: usize,
        /// Its unit type.
        suffix: String,
        /// Length of the `.service` name it would start.
        service_len: usize,
    },
    /// An instance of a service or socket template goes into the slice `system-<prefix>.slice` (the
    /// prefix escaped as systemd escapes it), whose name would be longer than [`MAX_NAME_LEN`]: systemd
    /// fails to load such a unit.
    #[error("unit name {name:?}: systemd puts an instance of {template} in the slice system-<prefix>.slice, which would be {slice_len} bytes, the maximum is {max}", max = MAX_NAME_LEN)]
    InstanceSliceTooLong {
        /// The whole name.
        name: String,
        /// Its template (`prefix@.service`).
        template: String,
        /// Length of the slice name.
        slice_len: usize,
    },
    /// There is no `.` separating the name from its suffix.
    #[error("unit name {0:?} must contain \".\" followed by a unit type such as \"service\"")]
    NoDot(String),
    /// The name ends with `.` (no suffix).
    #[error("unit name {0:?} cannot end in \".\"")]
    EndsWithDot(String),
    /// The suffix is not one of [`KNOWN_SUFFIXES`].
    #[error("unit name {name:?} has unknown unit type {suffix:?} (known: {known})", known = KNOWN_SUFFIXES.join(", "))]
    UnknownSuffix {
        /// The whole name.
        name: String,
        /// The unrecognized suffix.
        suffix: String,
    },
    /// Nothing before the suffix (`.service`).
    #[error("unit name {0:?} has nothing before its unit type")]
    EmptyPrefix(String),
    /// A character outside letters, digits and `:-_.\@`.
    #[error("invalid character {ch:?} in unit name {name:?} (allowed: letters, digits and : - _ . \\ @)")]
    InvalidChar {
        /// The whole name.
        name: String,
        /// The first offending character.
        ch: char,
    },
    /// The name starts with `.` (systemd ignores hidden unit files).
    #[error("unit name {0:?} cannot start with \".\"")]
    StartsWithDot(String),
    /// The name starts with `@`.
    #[error("unit name {0:?} cannot start with \"@\"")]
    StartsWithAt(String),
    /// An `@` in a unit whose type cannot be a template.
    #[error("unit name {name:?} contains \"@\" but {suffix:?} units cannot be templates (only {allowed})", allowed = TEMPLATE_SUFFIXES.join(", "))]
    TemplateNotAllowed {
        /// The whole name.
        name: String,
        /// The unit type.
        suffix: String,
    },
}

/// A validated unit name such as `hello.service`, `web@.service` or `web@1.service`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitName(String);

impl UnitName {
    /// Validates `s` as a unit name.
    pub fn parse(s: &str) -> Result<UnitName, NameError> {
        validate(s)?;
        Ok(UnitName(s.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Position of the last `.`; validation guarantees it exists.
    fn dot(&self) -> usize {
        self.0.rfind('.').expect("validated unit name contains '.'")
    }

    /// The unit type, e.g. `service`.
    pub fn suffix(&self) -> &str {
        &self.0[self.dot() + 1..]
    }

    /// The name without its suffix (`%N`): `foo@bar` for `foo@bar.service`.
    pub fn without_suffix(&self) -> &str {
        &self.0[..self.dot()]
    }

    /// Position of the first `@` before the suffix, if any.
    fn at(&self) -> Option<usize> {
        self.without_suffix().find('@')
    }

    /// `true` for a template such as `foo@.service`.
    pub fn is_template(&self) -> bool {
        matches!(self.instance(), Some(""))
    }

    /// `true` for an instance such as `foo@bar.service`.
    pub fn is_instance(&self) -> bool {
        matches!(self.instance(), Some(i) if !i.is_empty())
    }

    /// For an instance, its template: `foo@bar.service` -> `foo@.service`. `None` otherwise.
    pub fn template(&self) -> Option<UnitName> {
        if !self.is_instance() {
            return None;
        }
        Some(UnitName(format!("{}@.{}", self.prefix(), self.suffix())))
    }

    /// The prefix (`%p`): `foo` for `foo@bar.service`, `hello` for `hello.service`.
    pub fn prefix(&self) -> &str {
        match self.at() {
            Some(at) => &self.0[..at],
            None => self.without_suffix(),
        }
    }

    /// The instance (`%i`): `Some("bar")` for `foo@bar.service`, `Some("")` for the template
    /// `foo@.service`, `None` for a plain unit.
    pub fn instance(&self) -> Option<&str> {
        let at = self.at()?;
        Some(&self.without_suffix()[at + 1..])
    }

    /// Expands the specifiers fleet supports in `[X-Fleet]` values: `%n` (full name), `%N` (name without
    /// suffix), `%p` (prefix), `%i` (instance, empty when none) and `%%` (a literal `%`). Other
    /// specifiers are left as written, as fleet did.
    pub fn expand_specifiers(&self, value: &str) -> String {
        let mut out = String::with_capacity(value.len());
        let mut chars = value.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push_str(self.as_str()),
                Some('N') => out.push_str(self.without_suffix()),
                Some('p') => out.push_str(self.prefix()),
                Some('i') => out.push_str(self.instance().unwrap_or("")),
                Some('%') => out.push('%'),
                Some(other) => {
                    out.push('%');
                    out.push(other);
                }
                None => out.push('%'),
            }
        }
        out
    }
}

fn validate(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            len: s.len(),
            max: MAX_NAME_LEN,
        });
    }
    let Some(dot) = s.rfind('.') else {
        return Err(NameError::NoDot(s.to_owned()));
    };
    if dot == s.len() - 1 {
        return Err(NameError::EndsWithDot(s.to_owned()));
    }
    let (base, suffix) = (&s[..dot], &s[dot + 1..]);
    if !KNOWN_SUFFIXES.contains(&suffix) {
        return Err(NameError::UnknownSuffix {
            name: s.to_owned(),
            suffix: suffix.to_owned(),
        });
    }
    if base.is_empty() {
        return Err(NameError::EmptyPrefix(s.to_owned()));
    }
    if base.starts_with('.') {
        return Err(NameError::StartsWithDot(s.to_owned()));
    }
    if let Some(ch) = base
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ":-_.\\@".contains(*c)))
    {
        return Err(NameError::InvalidChar {
            name: s.to_owned(),
            ch,
        });
    }
    if base.starts_with('@') {
        return Err(NameError::StartsWithAt(s.to_owned()));
    }
    if base.contains('@') && !TEMPLATE_SUFFIXES.contains(&suffix) {
        return Err(NameError::TemplateNotAllowed {
            name: s.to_owned(),
            suffix: suffix.to_owned(),
        });
    }
    let service_len = base.len() + ".service".len();
    if TRIGGERS_SERVICE.contains(&suffix) && service_len > MAX_NAME_LEN {
        return Err(NameError::TriggeredTooLong {
            len: s.len(),
            suffix: suffix.to_owned(),
            service_len,
        });
    }
    if let Some(at) = base.find('@') {
        if SLICED_INSTANCES.contains(&suffix) && at + 1 < base.len() {
            let prefix = &base[..at];
            let slice_len = instance_slice_len(prefix);
            if slice_len > MAX_NAME_LEN {
                return Err(NameError::InstanceSliceTooLong {
                    name: s.to_owned(),
                    template: format!("{prefix}@.{suffix}"),
                    slice_len,
                });
            }
        }
    }
    Ok(())
}

/// Length of `system-<prefix>.slice` with the prefix escaped as systemd's `unit_name_escape` does (a
/// `-` or `\` becomes `\x2d`/`\x5c`; the other characters a name may hold are kept).
fn instance_slice_len(prefix: &str) -> usize {
    let escaped: usize = prefix
        .bytes()
        .map(|b| if b == b'-' || b == b'\\' { 4 } else { 1 })
        .sum();
    "system-".len() + escaped + ".slice".len()
}

impl fmt::Display for UnitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for UnitName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UnitName::parse(s)
    }
}

impl AsRef<str> for UnitName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for UnitName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for UnitName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        UnitName::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_and_their_parts() {
        // (name, suffix, %N, %p, %i, template, instance, template of)
        type Row = (
            &'static str,
            &'static str,
            &'static str,
            &'static str,
            Option<&'static str>,
            bool,
            bool,
            Option<&'static str>,
        );
        let rows: &[Row] = &[
            (
                "hello.service",
                "service",
                "hello",
                "hello",
                None,
                false,
                false,
                None,
            ),
            (
                "foo@.service",
                "service",
                "foo@",
                "foo",
                Some(""),
                true,
                false,
                None,
            ),
            (
                "foo@bar.service",
                "service",
                "foo@bar",
                "foo",
                Some("bar"),
                false,
                true,
                Some("foo@.service"),
            ),
            (
                "foo@bar@baz.socket",
                "socket",
                "foo@bar@baz",
                "foo",
                Some("bar@baz"),
                false,
                true,
                Some("foo@.socket"),
            ),
            (
                "a.b.c.timer",
                "timer",
                "a.b.c",
                "a.b.c",
                None,
                false,
                false,
                None,
            ),
            (
                "x:y-z_w\\x2d.mount",
                "mount",
                "x:y-z_w\\x2d",
                "x:y-z_w\\x2d",
                None,
                false,
                false,
                None,
            ),
            (
                "web@8080.target",
                "target",
                "web@8080",
                "web",
                Some("8080"),
                false,
                true,
                Some("web@.target"),
            ),
            (
                "dev-sda.device",
                "device",
                "dev-sda",
                "dev-sda",
                None,
                false,
                false,
                None,
            ),
        ];
        for &(s, suffix, n, p, i, is_t, is_i, t) in rows {
            let name = UnitName::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(name.as_str(), s);
            assert_eq!(name.suffix(), suffix, "{s}");
            assert_eq!(name.without_suffix(), n, "{s}");
            assert_eq!(name.prefix(), p, "{s}");
            assert_eq!(name.instance(), i, "{s}");
            assert_eq!(name.is_template(), is_t, "{s}");
            assert_eq!(name.is_instance(), is_i, "{s}");
            assert_eq!(name.template().as_ref().map(UnitName::as_str), t, "{s}");
        }
    }

    #[test]
    fn triggering_units_leave_room_for_their_service() {
        for (suffix, room) in [("socket", 1), ("timer", 2), ("path", 3)] {
            let fits = format!(
                "{}.{suffix}",
                "a".repeat(MAX_NAME_LEN - suffix.len() - 1 - room)
            );
            assert_eq!(fits.len() + room, MAX_NAME_LEN);
            assert!(UnitName::parse(&fits).is_ok(), "{suffix}");
            let over = format!("a{fits}");
            assert!(
                matches!(
                    UnitName::parse(&over),
                    Err(NameError::TriggeredTooLong { .. })
                ),
                "{suffix}"
            );
        }
        // Types that start nothing by default may use all 255 bytes.
        for suffix in ["service", "target", "slice", "automount"] {
            let full = format!("{}.{suffix}", "a".repeat(MAX_NAME_LEN - suffix.len() - 1));
            assert!(UnitName::parse(&full).is_ok(), "{suffix}");
        }
    }

    #[test]
    fn instances_leave_room_for_their_templates_slice() {
        // system-<242 bytes>.slice is 255 bytes.
        let fits = format!("{}@i.service", "p".repeat(242));
        assert!(UnitName::parse(&fits).is_ok());
        let over = format!("{}@i.service", "p".repeat(243));
        assert!(matches!(
            UnitName::parse(&over),
            Err(NameError::InstanceSliceTooLong { slice_len: 256, .. })
        ));
        // `-` and `\` count 4 bytes each (\x2d, \x5c).
        let dashes = format!("{}{}@i.socket", "a-".repeat(60), "p".repeat(3));
        assert_eq!(instance_slice_len(&dashes[..123]), 7 + 60 * 5 + 3 + 6);
        assert!(UnitName::parse(&dashes).is_err());
        assert!(UnitName::parse(&format!("{}@i.socket", "a\\".repeat(48))).is_ok());
        assert!(UnitName::parse(&format!("{}@i.socket", "a\\".repeat(49))).is_err());
        // Templates themselves, other types and a long instance with a short prefix are not concerned.
        assert!(UnitName::parse(&format!("{}@.service", "p".repeat(243))).is_ok());
        assert!(UnitName::parse(&format!("{}@i.timer", "p".repeat(243))).is_ok());
        assert!(UnitName::parse(&format!("p@{}.service", "i".repeat(245))).is_ok());
    }

    #[test]
    fn every_known_suffix_is_accepted() {
        for suffix in KNOWN_SUFFIXES {
            assert!(UnitName::parse(&format!("a.{suffix}")).is_ok(), "{suffix}");
            let tpl = UnitName::parse(&format!("a@.{suffix}"));
            assert_eq!(
                tpl.is_ok(),
                TEMPLATE_SUFFIXES.contains(suffix),
                "{suffix}: {tpl:?}"
            );
        }
    }

    #[test]
    fn invalid_names_say_what_is_wrong() {
        let long = format!("{}.service", "a".repeat(MAX_NAME_LEN - 7));
        let cases: &[(&str, NameError, &str)] = &[
            ("", NameError::Empty, "empty"),
            (
                &long,
                NameError::TooLong {
                    len: MAX_NAME_LEN + 1,
                    max: MAX_NAME_LEN,
                },
                "256",
            ),
            (
                &format!("{}.socket", "a".repeat(MAX_NAME_LEN - 7)),
                NameError::TriggeredTooLong {
                    len: MAX_NAME_LEN,
                    suffix: "socket".into(),
                    service_len: MAX_NAME_LEN + 1,
                },
                "would be 256 bytes",
            ),
            ("hello", NameError::NoDot("hello".into()), "must contain"),
            (
                "hello.",
                NameError::EndsWithDot("hello.".into()),
                "cannot end",
            ),
            (
                "hello.exe",
                NameError::UnknownSuffix {
                    name: "hello.exe".into(),
                    suffix: "exe".into(),
                },
                "\"exe\"",
            ),
            (
                "hello.Service",
                NameError::UnknownSuffix {
                    name: "hello.Service".into(),
                    suffix: "Service".into(),
                },
                "unknown unit type",
            ),
            (
                ".service",
                NameError::EmptyPrefix(".service".into()),
                "nothing before",
            ),
            (
                "he llo.service",
                NameError::InvalidChar {
                    name: "he llo.service".into(),
                    ch: ' ',
                },
                "' '",
            ),
            (
                "a/b.service",
                NameError::InvalidChar {
                    name: "a/b.service".into(),
                    ch: '/',
                },
                "'/'",
            ),
            (
                "h\u{e9}.service",
                NameError::InvalidChar {
                    name: "h\u{e9}.service".into(),
                    ch: '\u{e9}',
                },
                "allowed",
            ),
            (
                ".hidden.service",
                NameError::StartsWithDot(".hidden.service".into()),
                "start with",
            ),
            (
                "a.snapshot",
                NameError::UnknownSuffix {
                    name: "a.snapshot".into(),
                    suffix: "snapshot".into(),
                },
                "unknown unit type",
            ),
            (
                "a.busname",
                NameError::UnknownSuffix {
                    name: "a.busname".into(),
                    suffix: "busname".into(),
                },
                "unknown unit type",
            ),
            (
                "@foo.service",
                NameError::StartsWithAt("@foo.service".into()),
                "start with",
            ),
            (
                "@.service",
                NameError::StartsWithAt("@.service".into()),
                "start with",
            ),
            (
                "foo@bar.mount",
                NameError::TemplateNotAllowed {
                    name: "foo@bar.mount".into(),
                    suffix: "mount".into(),
                },
                "cannot be templates",
            ),
        ];
        for (s, want, msg_part) in cases {
            let err = UnitName::parse(s).unwrap_err();
            assert_eq!(&err, want, "{s:?}");
            assert!(err.to_string().contains(msg_part), "{s:?}: {err}");
        }
        let max = format!("{}.service", "a".repeat(MAX_NAME_LEN - 8));
        assert!(UnitName::parse(&max).is_ok());
    }

    #[test]
    fn specifiers_expand_like_fleet_and_percent_percent_is_a_percent() {
        let inst = UnitName::parse("web@8080.service").unwrap();
        assert_eq!(
            inst.expand_specifiers("%n|%N|%p|%i"),
            "web@8080.service|web@8080|web|8080"
        );
        assert_eq!(inst.expand_specifiers("100%% %i %H %"), "100% 8080 %H %");
        let plain = UnitName::parse("db.service").unwrap();
        assert_eq!(
            plain.expand_specifiers("%p-backup.service [%i]"),
            "db-backup.service []"
        );
        let tpl = UnitName::parse("web@.service").unwrap();
        assert_eq!(tpl.expand_specifiers("%p@%i.service"), "web@.service");
        // Expansion is a single pass: "%%i" is a literal "%i", not the instance.
        assert_eq!(inst.expand_specifiers("%%i"), "%i");
    }

    #[test]
    fn string_traits_and_serde_validate() {
        let n: UnitName = "hello.service".parse().unwrap();
        assert_eq!(n.to_string(), "hello.service");
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"hello.service\"");
        assert_eq!(
            serde_json::from_str::<UnitName>("\"hello.service\"").unwrap(),
            n
        );
        let err = serde_json::from_str::<UnitName>("\"hello\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("must contain"), "{err}");
        assert!(UnitName::parse("a.service").unwrap() < UnitName::parse("b.service").unwrap());
    }
}
