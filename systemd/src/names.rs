//! Unit names: validation and the D-Bus object path encoding systemd uses for unit objects.

use crate::Error;

/// Object path prefix of unit objects.
pub(crate) const UNIT_PATH_PREFIX: &str = "/org/freedesktop/systemd1/unit/";

/// Checks that `name` is a unit name systemd accepts (`foo.service`, `web@1.service`, `web@.service`).
/// The rules are those of [`fleet_sched::UnitName`], the one validator the API, the registry and the
/// agent use too.
pub fn validate_unit_name(name: &str) -> Result<(), Error> {
    fleet_sched::UnitName::parse(name)
        .map(|_| ())
        .map_err(|_| Error::InvalidUnitName(name.to_string()))
}

/// Whether unit file contents have an `[Install]` section (then `load_unit` should enable it).
pub fn has_install_section(contents: &str) -> bool {
    contents.lines().any(|l| l.trim() == "[Install]")
}

/// systemd's `bus_label_escape`: every byte that is not `[A-Za-z]` (or a digit after the first
/// byte) becomes `_xx` (lowercase hex); the empty string becomes `_`.
pub fn escape_bus_label(s: &str) -> String {
    if s.is_empty() {
        return "_".into();
    }
    let mut out = String::with_capacity(s.len() * 3);
    for (i, b) in s.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()) {
            out.push(b as char);
        } else {
            out.push('_');
            out.push(char::from_digit((b >> 4) as u32, 16).unwrap());
            out.push(char::from_digit((b & 0xf) as u32, 16).unwrap());
        }
    }
    out
}

/// Reverses [`escape_bus_label`]; `None` if `label` is not a valid escaped label.
pub fn unescape_bus_label(label: &str) -> Option<String> {
    if label == "_" {
        return Some(String::new());
    }
    let bytes = label.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = label.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Object path of the unit called `name`.
pub fn unit_object_path(name: &str) -> String {
    format!("{UNIT_PATH_PREFIX}{}", escape_bus_label(name))
}

/// The unit name of a unit object path, if it is one.
pub fn unit_name_from_path(path: &str) -> Option<String> {
    unescape_bus_label(path.strip_prefix(UNIT_PATH_PREFIX)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_paths_encode_like_systemd() {
        // Values from `busctl tree org.freedesktop.systemd1`.
        assert_eq!(
            unit_object_path("hello.service"),
            "/org/freedesktop/systemd1/unit/hello_2eservice"
        );
        assert_eq!(
            unit_object_path("getty@tty1.service"),
            "/org/freedesktop/systemd1/unit/getty_40tty1_2eservice"
        );
        assert_eq!(
            unit_object_path("-.mount"),
            "/org/freedesktop/systemd1/unit/_2d_2emount"
        );
        assert_eq!(
            unit_object_path("1web.service"),
            "/org/freedesktop/systemd1/unit/_31web_2eservice"
        );
        assert_eq!(escape_bus_label(""), "_");
    }

    #[test]
    fn unit_paths_round_trip() {
        for name in [
            "a.service",
            "web@1.service",
            "x-y_z:1\\x2d.mount",
            "9.target",
            "",
        ] {
            let path = unit_object_path(name);
            assert_eq!(unit_name_from_path(&path).as_deref(), Some(name), "{path}");
        }
        assert_eq!(
            unit_name_from_path("/org/freedesktop/systemd1/job/12"),
            None
        );
        assert_eq!(unescape_bus_label("a_2"), None);
        assert_eq!(unescape_bus_label("a_zz"), None);
    }

    #[test]
    fn unit_names_are_validated() {
        for ok in [
            "a.service",
            "web@1.service",
            "web@.service",
            "x.timer",
            "a-b_c:d.socket",
        ] {
            assert!(validate_unit_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".service",
            "a",
            "a.unknown",
            "../a.service",
            ".a.service",
            "a.snapshot",
            "a b.service",
            "a/b.service",
        ] {
            assert!(
                matches!(validate_unit_name(bad), Err(Error::InvalidUnitName(n)) if n == bad),
                "{bad}"
            );
        }
        assert!(validate_unit_name(&format!("{}.service", "a".repeat(248))).is_err());
        assert!(validate_unit_name(&format!("{}.service", "a".repeat(247))).is_ok());
    }

    #[test]
    fn install_sections_are_found() {
        assert!(has_install_section(
            "[Service]\nExecStart=/bin/true\n\n [Install] \nWantedBy=x\n"
        ));
        assert!(!has_install_section(
            "[Service]\nExecStart=/bin/echo [Install]\n"
        ));
    }
}
