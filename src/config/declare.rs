//! The machinery behind the one declaration of every option (`options.rs`): the [`options!`]
//! macro, which turns that declaration into the [`Config`](super::Config) struct and everything
//! that has to know each field, and the descriptors the rest of the configuration code (the
//! file/environment/flag layers, the clap flags, the docs table) reads.

use std::fmt;

/// What a SIGHUP does with a changed option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// Applied at once by fleetd's `reload` (which must then apply it: it reads the new
    /// [`Config`](super::Config) for these).
    Live,
    /// Applied by reconnecting the registry to etcd with the new settings (all `etcd_*` options
    /// together, once they pass the registry's checks).
    Etcd,
    /// Logged as "takes effect after a restart"; the running value stays.
    Restart,
}

impl Reload {
    /// How `docs/configuration.md` says it.
    pub fn describe(self) -> &'static str {
        match self {
            Reload::Live => "live",
            Reload::Etcd => "reconnects to etcd",
            Reload::Restart => "restart",
        }
    }
}

/// Whose option it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Also an option of fleet v1 (same name and meaning, as far as this design allows).
    FleetV1,
    /// Added by this project.
    Fleet,
}

/// What the declaration says about an option besides its type, default and parser.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    /// The placeholder in `--help` (`DURATION`, `PATH`, ...).
    pub value_name: &'static str,
    /// What SIGHUP does with a change.
    pub reload: Reload,
    /// fleet v1's or ours.
    pub origin: Origin,
    /// Never shown in logs (a SIGHUP change is logged as "changed").
    pub secret: bool,
    /// The default as the docs say it, when it is not a value (`detected`, ...).
    pub default_doc: Option<&'static str>,
}

impl Meta {
    /// An option of fleet v1.
    pub const fn v1(value_name: &'static str, reload: Reload) -> Meta {
        Meta {
            value_name,
            reload,
            origin: Origin::FleetV1,
            secret: false,
            default_doc: None,
        }
    }

    /// An option of this project.
    pub const fn ours(value_name: &'static str, reload: Reload) -> Meta {
        Meta {
            origin: Origin::Fleet,
            ..Meta::v1(value_name, reload)
        }
    }

    /// Never logged.
    pub const fn secret(self) -> Meta {
        Meta {
            secret: true,
            ..self
        }
    }

    /// The docs' default column says `text` instead of the default value.
    pub const fn default_doc(self, text: &'static str) -> Meta {
        Meta {
            default_doc: Some(text),
            ..self
        }
    }
}

/// An option with a [`Config`](super::Config) field, as the declaration gives it.
#[derive(Debug)]
pub struct Field {
    /// The key (`etcd_servers`), also the field's name.
    pub name: &'static str,
    /// The doc comment, line by line; its first paragraph is the summary `--help` shows.
    pub doc: &'static [&'static str],
    /// Everything else.
    pub meta: Meta,
}

impl Field {
    /// The doc's first paragraph on one line (`--help`'s summary).
    pub fn summary(&self) -> String {
        join_lines(self.doc.iter().take_while(|l| !l.trim().is_empty()))
    }

    /// The whole doc on one line (the docs table's meaning, `--help`'s long text).
    pub fn text(&self) -> String {
        join_lines(self.doc.iter())
    }
}

fn join_lines<'a>(lines: impl Iterator<Item = &'a &'static str>) -> String {
    lines
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks a value without keeping it: what is wrong with it, in a sentence.
pub type CheckFn = fn(&str) -> Result<(), String>;

/// An option of fleet v1 (or one we dropped) that is accepted with a warning and ignored.
#[derive(Debug)]
pub struct Obsolete {
    /// The key.
    pub name: &'static str,
    /// Why it means nothing now (said in the warning and the docs).
    pub why: &'static str,
    /// fleet v1's or ours.
    pub origin: Origin,
    /// Checks the value when fleet v1 had a type for it that scripts may still get wrong.
    pub check: Option<CheckFn>,
}

/// Any key fleetd accepts.
#[derive(Debug, Clone, Copy)]
pub enum Key {
    /// An option with a field.
    Field(&'static Field),
    /// Accepted with a warning and ignored.
    Obsolete(&'static Obsolete),
}

impl Key {
    /// The `--help` summary.
    pub fn summary(self) -> String {
        match self {
            Key::Field(f) => f.summary(),
            Key::Obsolete(o) => format!("Obsolete, accepted and ignored: {}", o.why),
        }
    }

    /// The placeholder in `--help`.
    pub fn value_name(self) -> &'static str {
        match self {
            Key::Field(f) => f.meta.value_name,
            Key::Obsolete(_) => "VALUE",
        }
    }

    /// The key's name.
    pub fn name(self) -> &'static str {
        match self {
            Key::Field(f) => f.name,
            Key::Obsolete(o) => o.name,
        }
    }

    /// Whose key it is.
    pub fn origin(self) -> Origin {
        match self {
            Key::Field(f) => f.meta.origin,
            Key::Obsolete(o) => o.origin,
        }
    }
}

/// One changed option, from [`Config::diff`](super::Config::diff).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The key.
    pub key: &'static str,
    /// What SIGHUP does with it.
    pub reload: Reload,
    /// `(old, new)` in configuration syntax; `None` for a secret.
    pub values: Option<(String, String)>,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.values {
            Some((old, new)) => write!(f, "{}: {old:?} -> {new:?}", self.key),
            None => write!(f, "{}: changed", self.key),
        }
    }
}

/// `show: f` when the declaration names one, [`ConfigValue::show`](super::values::ConfigValue)
/// otherwise.
macro_rules! show_value {
    ($value:expr) => {
        $crate::config::values::ConfigValue::show(&$value)
    };
    ($value:expr, $show:expr) => {
        ($show)(&$value)
    };
}
pub(super) use show_value;

/// Declares every option once and derives from it the [`Config`](super::Config) struct (one field
/// per option, documented by the option's doc), its `Default`, the table of [`Field`]s, the
/// parser that sets a field from its text (`set_field`), the writer back (`show`), the SIGHUP
/// [`Change`] list (`diff`) and the adoption of what a reload applies (`adopt`).
///
/// Each entry: doc comment, `name: Type { default: expr, parse: fn(&str) -> Result<Type, String>,
/// [show: fn(&Type) -> String,] meta: Meta }`. The parser receives the trimmed text and says what
/// is wrong in a sentence; `show` defaults to [`ConfigValue`](super::values::ConfigValue).
macro_rules! options {
    ($(
        $(#[doc = $doc:literal])+
        $name:ident: $ty:ty {
            default: $default:expr,
            parse: $parse:expr,
            $(show: $show:expr,)?
            meta: $meta:expr $(,)?
        }
    )+) => {
        /// fleetd's configuration: one field per option of `options.rs` (see
        /// `docs/configuration.md`, generated from the same declaration).
        #[derive(Debug, Clone, PartialEq)]
        pub struct Config {
            $(
                $(#[doc = $doc])+
                pub $name: $ty,
            )+
        }

        impl Default for Config {
            fn default() -> Self {
                Config { $($name: $default,)+ }
            }
        }

        /// Every option with a field, in declaration order.
        pub(super) const FIELDS: &[$crate::config::declare::Field] = &[$(
            $crate::config::declare::Field {
                name: stringify!($name),
                doc: &[$($doc),+],
                meta: $meta,
            },
        )+];

        impl Config {
            /// Parses `value` (trimmed) into the field `key`; `None` if `key` has no field.
            pub(super) fn set_field(&mut self, key: &str, value: &str) -> Option<Result<(), String>> {
                match key {
                    $(stringify!($name) => Some(($parse)(value).map(|v| self.$name = v)),)+
                    _ => None,
                }
            }

            /// The value of `key` in configuration syntax (`None` if `key` has no field).
            pub fn show(&self, key: &str) -> Option<String> {
                match key {
                    $(stringify!($name) => Some($crate::config::declare::show_value!(self.$name $(, $show)?)),)+
                    _ => None,
                }
            }

            /// The options whose values differ, in declaration order, for SIGHUP's log and
            /// decisions. Secrets are not shown.
            pub fn diff(&self, new: &Config) -> Vec<$crate::config::declare::Change> {
                let mut out = Vec::new();
                $(
                    if self.$name != new.$name {
                        const META: $crate::config::declare::Meta = $meta;
                        out.push($crate::config::declare::Change {
                            key: stringify!($name),
                            reload: META.reload,
                            values: (!META.secret).then(|| (
                                $crate::config::declare::show_value!(self.$name $(, $show)?),
                                $crate::config::declare::show_value!(new.$name $(, $show)?),
                            )),
                        });
                    }
                )+
                out
            }

            /// Takes from `new` the options whose `Reload` `applies` says a reload applied;
            /// the others keep their running values.
            pub fn adopt(&mut self, new: &Config, applies: impl Fn($crate::config::declare::Reload) -> bool) {
                $(
                    if applies({ const META: $crate::config::declare::Meta = $meta; META.reload }) {
                        self.$name = new.$name.clone();
                    }
                )+
            }
        }
    };
}
pub(super) use options;
