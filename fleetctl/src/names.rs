//! Turning command-line arguments into unit names, the way fleetctl does.
//!
//! An argument may be a path (`units/hello.service`): only its base name names the unit. A name without
//! a known unit suffix gets `.service` appended, so `fleetctl start hello` means `hello.service`.
//! Validation of the resulting name (characters, length, templates) is the unit model's job
//! (`fleet_sched::UnitName`); this module only mangles.

use std::path::{Path, PathBuf};

/// Unit type suffixes known to systemd and accepted by fleet (without the dot).
pub use fleet_sched::name::KNOWN_SUFFIXES;

/// The suffix appended to an argument that has no known unit suffix.
pub const DEFAULT_SUFFIX: &str = "service";

/// True when `name` ends in `.` followed by one of [`KNOWN_SUFFIXES`].
pub fn has_known_suffix(name: &str) -> bool {
    match name.rsplit_once('.') {
        Some((_, suffix)) => KNOWN_SUFFIXES.contains(&suffix),
        None => false,
    }
}

/// `arg` with `.service` appended unless it already ends in a known suffix (fleet's
/// `maybeAppendDefaultUnitType`). The directory part is kept, so the result is still a usable path.
pub fn with_default_suffix(arg: &str) -> String {
    if has_known_suffix(arg) {
        arg.to_string()
    } else {
        format!("{arg}.{DEFAULT_SUFFIX}")
    }
}

/// The base name of a path: what follows the last `/` (a trailing `/` is ignored, like Go's
/// `path.Base`; an empty or all-slash argument gives itself back so that validation can reject it).
pub fn base_name(arg: &str) -> &str {
    let trimmed = arg.trim_end_matches('/');
    if trimmed.is_empty() {
        return arg;
    }
    match trimmed.rsplit_once('/') {
        Some((_, base)) => base,
        None => trimmed,
    }
}

/// The unit name an argument refers to: its base name, with `.service` appended when it has no known
/// suffix (fleet's `unitNameMangle(maybeAppendDefaultUnitType(arg))`).
pub fn unit_name_of(arg: &str) -> String {
    with_default_suffix(base_name(arg))
}

/// The local file an argument may refer to: the argument itself with the default suffix appended when
/// it has none (so `fleetctl submit units/hello` reads `units/hello.service`).
pub fn local_path_of(arg: &str) -> PathBuf {
    PathBuf::from(with_default_suffix(arg))
}

/// Where the template of an instance would live next to the argument's file: same directory,
/// file named `template` (e.g. `units/web@2.service` → `units/web@.service`).
pub fn template_path_next_to(arg_path: &Path, template: &str) -> PathBuf {
    match arg_path.parent() {
        Some(dir) => dir.join(template),
        None => PathBuf::from(template),
    }
}

/// For an instance name `prefix@instance.suffix`, the template name `prefix@.suffix`; `None` for a
/// name that is not an instance (no `@`, or already a template with an empty instance).
pub fn template_of_instance(name: &str) -> Option<String> {
    let (stem, suffix) = name.rsplit_once('.')?;
    let (prefix, instance) = stem.split_once('@')?;
    if instance.is_empty() || prefix.is_empty() {
        return None;
    }
    Some(format!("{prefix}@.{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_get_service_appended() {
        assert_eq!(unit_name_of("hello"), "hello.service");
        assert_eq!(unit_name_of("hello.service"), "hello.service");
        assert_eq!(unit_name_of("web@1"), "web@1.service");
    }

    #[test]
    fn known_suffixes_are_kept_and_unknown_ones_get_service() {
        for s in KNOWN_SUFFIXES {
            let n = format!("x.{s}");
            assert_eq!(unit_name_of(&n), n);
        }
        assert_eq!(unit_name_of("foo.bar"), "foo.bar.service");
        assert_eq!(unit_name_of("foo.services"), "foo.services.service");
        assert_eq!(unit_name_of("hello."), "hello..service");
    }

    #[test]
    fn paths_are_reduced_to_their_base_name() {
        assert_eq!(unit_name_of("units/hello.service"), "hello.service");
        assert_eq!(unit_name_of("/abs/dir/db.socket"), "db.socket");
        assert_eq!(unit_name_of("./units/hello"), "hello.service");
        assert_eq!(unit_name_of("units/hello.service/"), "hello.service");
        assert_eq!(base_name("/"), "/");
        assert_eq!(base_name(""), "");
    }

    #[test]
    fn local_path_keeps_the_directory() {
        assert_eq!(
            local_path_of("units/hello"),
            PathBuf::from("units/hello.service")
        );
        assert_eq!(
            local_path_of("units/a.timer"),
            PathBuf::from("units/a.timer")
        );
    }

    #[test]
    fn instances_map_to_their_template() {
        assert_eq!(
            template_of_instance("web@1.service").as_deref(),
            Some("web@.service")
        );
        assert_eq!(
            template_of_instance("a@b.c.socket").as_deref(),
            Some("a@.socket")
        );
        assert_eq!(template_of_instance("web@.service"), None);
        assert_eq!(template_of_instance("web.service"), None);
        assert_eq!(template_of_instance("@x.service"), None);
        assert_eq!(
            template_path_next_to(Path::new("units/web@1.service"), "web@.service"),
            PathBuf::from("units/web@.service")
        );
        assert_eq!(
            template_path_next_to(Path::new("web@1.service"), "web@.service"),
            PathBuf::from("web@.service")
        );
    }
}
