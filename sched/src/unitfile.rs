//! Unit files: systemd's syntax, parsed and serialized exactly as fleet v1 did (through go-systemd's
//! `unit.Deserialize` / `unit.Serialize`), so that a unit's [`UnitHash`] equals the hash fleet computed
//! for the same file.
//!
//! # Parsing (go-systemd `Deserialize`, 2016/2017 version vendored by fleet v1)
//! - `[Section]` headers; nothing but whitespace may follow the closing `]`.
//! - `Name=Value` options. Leading whitespace of a line is skipped, the name and the value are trimmed.
//!   Repeated names are kept, in order. "Whitespace" is systemd's: space, tab, and the line breaks.
//! - Lines starting with `#` or `;` are comments.
//! - A value line ending in an odd number of `\` continues on the next line (an even number is escaped
//!   backslashes, as systemd reads it). The stored value keeps the backslash and the newline
//!   (`ExecStart=/bin/a \` + `  b` gives `/bin/a \⏎  b`), which is what fleet hashed and wrote back to
//!   disk for systemd to join.
//! - `\r\n` line ends are read as `\n`.
//! - Lines of [`LINE_MAX`] bytes or more are rejected (systemd truncates them).
//!
//! # What systemd reads
//! fleet never gives systemd the user's text: it writes [`UnitFile::serialize`] to disk. Every unit file
//! this module accepts (parsed or built from options) serializes to a text that systemd reads as exactly
//! the same directives, sections and values, and [`UnitFile::parse`] of that text gives back the same
//! options: so `fleetctl cat`, the API's options and the hash show what systemd will run. A property test
//! (`sched/tests/systemd_parser.rs`) checks this against systemd's own parser (`systemd-analyze verify`).
//! For that, what systemd and go-systemd read differently is rejected:
//! - control characters other than tab and the line break (systemd also ends a line at a lone `\r` and at
//!   NUL: `Description=x\r[Service]\rExecStartPre=...` would be three lines to systemd, one to
//!   go-systemd);
//! - a comment line ending in `\` (go-systemd swallowed the next line into the comment, systemd does not);
//! - a comment line inside a continued value (go-systemd kept it in the value, systemd skips it);
//! - from options: a value with leading or trailing whitespace (systemd strips it).
//!
//! # Where we are stricter than go-systemd (it silently accepted these)
//! - Text before the first section header that is not blank or a comment ([`ParseError::OptionOutsideSection`]);
//!   go-systemd skipped it character by character.
//! - A section header not closed on its own line, or an empty one (`[]`).
//! - An option with an empty name (`=value`).
//! - A line continuation followed by a blank line or the end of the file. go-systemd kept the trailing
//!   `\` (and newline) in the value, so the unit it wrote back out meant something else to systemd.
//! - A value ending in `\` followed by whitespace: go-systemd ended the value there, systemd continues it.
//!
//! With these rules every parsed file is accepted by [`UnitFile::from_options`], and parsing its
//! [`UnitFile::serialize`] output gives back the same options (grouped by section).
//!
//! Errors carry the 1-based line number.
//!
//! ```
//! use fleet_sched::{Requirements, UnitFile, UnitName};
//!
//! let text = "[Unit]\nDescription=Hello\n\n[Service]\nExecStart=/bin/sleep 100\n\n\
//!             [X-Fleet]\nConflicts=%p@*.service\n";
//! let file = UnitFile::parse(text)?;
//! // printf '[Unit]\nDescription=Hello\n\n[Service]\nExecStart=/bin/sleep 100\n\n[X-Fleet]\nConflicts=%%p@*.service\n' | sha1sum
//! assert_eq!(file.hash().short(), "ca78503");
//! assert_eq!(file.description(), Some("Hello"));
//!
//! let name = UnitName::parse("hello@1.service")?;
//! let req = Requirements::from_unit(&name, &file)?;
//! assert!(req.conflicts_with("hello@2.service"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha1::{Digest, Sha1};

/// Lines this long (in bytes, without the line break) or longer are rejected, as go-systemd did
/// (`SYSTEMD_LINE_MAX`).
pub const LINE_MAX: usize = 2048;

/// One `Name=Value` line of a unit file, in its section. fleet's JSON shape: `{"section","name","value"}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UnitOption {
    /// Section name without brackets, e.g. `Unit`, `Service`, `X-Fleet`.
    pub section: String,
    /// Option name, e.g. `ExecStart`.
    pub name: String,
    /// Option value (may contain `\` + newline from line continuations).
    pub value: String,
}

impl UnitOption {
    /// Convenience constructor.
    pub fn new(
        section: impl Into<String>,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        UnitOption {
            section: section.into(),
            name: name.into(),
            value: value.into(),
        }
    }
}

/// Why a unit file (text or option list) was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A control character other than tab and the line break (`\r` only as part of `\r\n`).
    #[error(
        "line {line}: control character {ch:?} is not allowed (systemd ends a line at \\r and NUL)"
    )]
    ControlCharacter {
        /// 1-based line number.
        line: usize,
        /// The character.
        ch: char,
    },
    /// A comment line ending in `\`: go-systemd continued the comment onto the next line, systemd does
    /// not.
    #[error("line {line}: comment ends in \"\\\"; go-systemd and systemd disagree on whether the next line is part of it")]
    CommentContinuation {
        /// 1-based line number.
        line: usize,
    },
    /// A comment line inside a continued value: go-systemd kept it in the value, systemd skips it.
    #[error("line {line}: comment line inside a value continued with \"\\\"")]
    CommentInContinuation {
        /// 1-based line number.
        line: usize,
    },
    /// An option (or other text) appears before the first `[Section]` header.
    #[error("line {line}: {text:?} appears before any [Section] header")]
    OptionOutsideSection {
        /// 1-based line number.
        line: usize,
        /// The offending text (truncated).
        text: String,
    },
    /// A `[` without a closing `]` on the same line.
    #[error("line {line}: section header is missing its closing \"]\"")]
    UnterminatedSection {
        /// 1-based line number.
        line: usize,
    },
    /// A section header with nothing between the brackets.
    #[error("line {line}: empty section name \"[]\"")]
    EmptySectionName {
        /// 1-based line number.
        line: usize,
    },
    /// A `[` inside a section name (`[[Service]`): systemd reads it as an unknown section and
    /// ignores its options.
    #[error("line {line}: section name {section:?} contains \"[\"")]
    BracketInSectionName {
        /// 1-based line number.
        line: usize,
        /// The name between the outer brackets.
        section: String,
    },
    /// Text after the closing `]` of a section header.
    #[error("line {line}: unexpected {garbage:?} after section header [{section}]")]
    GarbageAfterSection {
        /// 1-based line number.
        line: usize,
        /// The section being opened.
        section: String,
        /// The text that followed `]`.
        garbage: String,
    },
    /// A line inside a section that is neither a comment, a header nor `Name=Value`.
    #[error("line {line}: expected Name=Value, found {text:?}")]
    MissingEquals {
        /// 1-based line number.
        line: usize,
        /// The offending text (truncated).
        text: String,
    },
    /// `=value` with no option name.
    #[error("line {line}: option has an empty name")]
    EmptyOptionName {
        /// 1-based line number.
        line: usize,
    },
    /// A line of [`LINE_MAX`] bytes or more.
    #[error("line {line} is {len} bytes long; lines must be shorter than {max} bytes")]
    LineTooLong {
        /// 1-based line number.
        line: usize,
        /// Its length in bytes.
        len: usize,
        /// [`LINE_MAX`].
        max: usize,
    },
    /// The last line of the input ends in a `\` line continuation with nothing after it.
    #[error("line {line}: line continuation \"\\\" at the end of the file")]
    ContinuationAtEnd {
        /// 1-based line number.
        line: usize,
    },
    /// A value that ends in `\` followed by whitespace: go-systemd did not treat it as a line continuation,
    /// systemd does.
    #[error("line {line}: value ends in \"\\\" followed by whitespace; remove the whitespace to continue the line or the backslash to end it")]
    BackslashBeforeTrailingSpace {
        /// 1-based line number.
        line: usize,
    },
    /// A `\` line continuation followed by a blank line.
    #[error("line {line}: blank line after a line continuation \"\\\"")]
    ContinuationIntoBlankLine {
        /// 1-based line number of the blank line.
        line: usize,
    },
    /// An option given as data (API, [`UnitFile::from_options`]) that cannot be written as a unit file.
    #[error("option {index} ([{section}] {name:?}): {reason}")]
    InvalidOption {
        /// 0-based index in the option list.
        index: usize,
        /// Its section.
        section: String,
        /// Its name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Options written out and read back differ (inside [`ParseError::NotRepresentable`]).
    #[error("{0}")]
    Mismatch(String),
    /// The options, written out as a unit file, do not parse back (e.g. a value with a line continuation
    /// followed by a blank line and more text).
    #[error("options do not form a valid unit file: {0}")]
    NotRepresentable(Box<ParseError>),
}

/// SHA1 of a unit's serialized options: how fleet names unit contents.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitHash([u8; 20]);

/// Why a string is not a unit hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid unit hash {0:?}: expected 40 hexadecimal characters")]
pub struct HashParseError(String);

impl UnitHash {
    /// Wraps raw SHA1 bytes.
    pub fn from_bytes(bytes: [u8; 20]) -> Self {
        UnitHash(bytes)
    }

    /// The raw SHA1 bytes.
    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// The first 7 hex characters, as `fleetctl list-unit-files` shows them.
    pub fn short(&self) -> String {
        self.to_string()[..7].to_owned()
    }
}

impl fmt::Display for UnitHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for UnitHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UnitHash({self})")
    }
}

impl FromStr for UnitHash {
    type Err = HashParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || HashParseError(s.to_owned());
        if s.len() != 40 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err());
        }
        let mut out = [0u8; 20];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| err())?;
        }
        Ok(UnitHash(out))
    }
}

impl Serialize for UnitHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UnitHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A parsed unit file: its options in file order.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct UnitFile {
    options: Vec<UnitOption>,
}

impl UnitFile {
    /// Parses systemd unit file text (see the module docs for the exact rules).
    pub fn parse(text: &str) -> Result<UnitFile, ParseError> {
        // A UTF-8 byte order mark is skipped (go-systemd skipped anything before the first '[').
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        // "\r\n" ends a line like "\n" (for systemd too); any other '\r' is refused below.
        let text: std::borrow::Cow<'_, str> = if text.contains('\r') {
            text.replace("\r\n", "\n").into()
        } else {
            text.into()
        };
        Ok(UnitFile {
            options: Lexer::new(&text).run()?,
        })
    }

    /// Builds a unit file from options given as data (the HTTP API's `options`), checking that they can
    /// be written as a unit file and read back as the same options, by go-systemd and by systemd:
    /// non-empty section and name, no `[` or `]` in a section, no `=` in a name, no control character but tab
    /// anywhere (line breaks in values only as `\` continuations), no whitespace around a name or a
    /// value.
    pub fn from_options(options: Vec<UnitOption>) -> Result<UnitFile, ParseError> {
        for (index, o) in options.iter().enumerate() {
            if let Some(reason) = option_problem(o) {
                return Err(ParseError::InvalidOption {
                    index,
                    section: o.section.clone(),
                    name: o.name.clone(),
                    reason: reason.to_owned(),
                });
            }
        }
        let file = UnitFile { options };
        // fleet's own check: the serialized form must deserialize. We also require that it reads back as
        // exactly the same options.
        let back = Lexer::new(&file.serialize())
            .run()
            .map_err(|e| ParseError::NotRepresentable(Box::new(e)))?;
        let grouped = file.grouped();
        if back.len() != grouped.len() {
            return Err(ParseError::NotRepresentable(Box::new(
                ParseError::Mismatch(format!(
                    "{} options were given but {} are read back",
                    grouped.len(),
                    back.len()
                )),
            )));
        }
        for (a, b) in grouped.iter().zip(&back) {
            if a.section != b.section || a.name != b.name || a.value != b.value {
                return Err(ParseError::NotRepresentable(Box::new(
                    ParseError::Mismatch(format!(
                        "[{}] {}={:?} reads back as [{}] {}={:?}",
                        a.section, a.name, a.value, b.section, b.name, b.value
                    )),
                )));
            }
        }
        Ok(file)
    }

    /// The options in order.
    pub fn options(&self) -> &[UnitOption] {
        &self.options
    }

    /// Consumes the file, returning its options.
    pub fn into_options(self) -> Vec<UnitOption> {
        self.options
    }

    /// Values of `[section] name`, in order.
    pub fn values<'a>(
        &'a self,
        section: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.options
            .iter()
            .filter(move |o| o.section == section && o.name == name)
            .map(|o| o.value.as_str())
    }

    /// Text exactly as go-systemd's `unit.Serialize` writes it: sections in order of first appearance, each
    /// `[Section]\n` followed by its `Name=Value\n` lines in order, a blank line between sections. Empty for
    /// no options.
    pub fn serialize(&self) -> String {
        let sections = self.sections();
        let mut out = String::new();
        for (i, (section, opts)) in sections.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push('[');
            out.push_str(section);
            out.push_str("]\n");
            for o in opts {
                out.push_str(&o.name);
                out.push('=');
                out.push_str(&o.value);
                out.push('\n');
            }
        }
        out
    }

    /// Options grouped by section, sections in order of first appearance (the order of
    /// [`serialize`](Self::serialize)).
    /// Linear in the number of options (an index by section name, not a search per option).
    fn sections(&self) -> Vec<(&str, Vec<&UnitOption>)> {
        let mut sections: Vec<(&str, Vec<&UnitOption>)> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for o in &self.options {
            match index.get(o.section.as_str()) {
                Some(&i) => sections[i].1.push(o),
                None => {
                    index.insert(&o.section, sections.len());
                    sections.push((&o.section, vec![o]));
                }
            }
        }
        sections
    }

    /// The options in the order [`serialize`](Self::serialize) writes them (and parsing its output
    /// returns them): grouped by section, sections in order of first appearance.
    pub fn grouped(&self) -> Vec<UnitOption> {
        self.sections()
            .into_iter()
            .flat_map(|(_, opts)| opts.into_iter().cloned())
            .collect()
    }

    /// SHA1 of [`serialize`](Self::serialize), as fleet's `UnitFile.Hash()`.
    pub fn hash(&self) -> UnitHash {
        let digest = Sha1::digest(self.serialize().as_bytes());
        UnitHash(digest.into())
    }

    /// `[Unit] Description=` (the last one wins, as in systemd).
    pub fn description(&self) -> Option<&str> {
        self.values("Unit", "Description").last()
    }

    /// `true` if the file has an `[Install]` section (fleet then enables the unit at runtime).
    pub fn has_install_section(&self) -> bool {
        self.options.iter().any(|o| o.section == "Install")
    }
}

/// Serialized as its option list (fleet's JSON shape `[{"section","name","value"}, ...]`); deserializing
/// validates it like [`UnitFile::from_options`].
impl Serialize for UnitFile {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.options.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for UnitFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let options = Vec::<UnitOption>::deserialize(deserializer)?;
        UnitFile::from_options(options).map_err(serde::de::Error::custom)
    }
}

impl FromStr for UnitFile {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UnitFile::parse(s)
    }
}

/// systemd's `WHITESPACE`: what it strips around names and values (Rust's `trim` strips more).
const WHITESPACE: [char; 4] = [' ', '\t', '\n', '\r'];

/// Trims systemd's whitespace.
fn trim_ws(s: &str) -> &str {
    s.trim_matches(WHITESPACE)
}

/// A control character systemd or go-systemd would read differently (all but tab).
fn is_bad_control(c: char) -> bool {
    c.is_control() && c != '\t'
}

/// `true` if `line` ends in an odd number of backslashes: systemd continues it onto the next line.
fn continues(line: &str) -> bool {
    let run = line.len() - line.trim_end_matches('\\').len();
    run % 2 == 1
}

fn option_problem(o: &UnitOption) -> Option<&'static str> {
    if o.section.is_empty() {
        return Some("section name is empty");
    }
    if o.section.contains(['\n', '\r']) {
        return Some("section name contains a line break");
    }
    if o.section.contains(is_bad_control) {
        return Some("section name contains a control character");
    }
    if o.section.contains(']') {
        return Some("section name contains \"]\"");
    }
    // systemd reads `[[Service]` as a section named `[Service`, unknown, and ignores its options:
    // fleet would schedule by options systemd never reads.
    if o.section.contains('[') {
        return Some("section name contains \"[\"");
    }
    if o.name.is_empty() {
        return Some("option name is empty");
    }
    if o.name.contains(['\n', '\r']) {
        return Some("option name contains a line break");
    }
    if o.name.contains(is_bad_control) {
        return Some("option name contains a control character");
    }
    if o.name.contains('=') {
        return Some("option name contains \"=\"");
    }
    if trim_ws(&o.name) != o.name {
        return Some("option name has leading or trailing whitespace");
    }
    if o.name.starts_with(['[', '#', ';']) {
        return Some("option name starts with \"[\", \"#\" or \";\"");
    }
    if o.section.len() + 2 >= LINE_MAX {
        return Some("section name makes a line of 2048 bytes or more");
    }
    let first_line = o.value.split('\n').next().unwrap_or("");
    if o.name.len() + 1 + first_line.len() >= LINE_MAX
        || o.value.split('\n').skip(1).any(|l| l.len() >= LINE_MAX)
    {
        return Some("a line of the option is 2048 bytes or longer");
    }
    if o.value.contains('\r') {
        return Some("value contains a carriage return (systemd ends a line there)");
    }
    if o.value.contains(|c| is_bad_control(c) && c != '\n') {
        return Some("value contains a control character (only tab is allowed)");
    }
    let lines: Vec<&str> = o.value.split('\n').collect();
    if continues(lines[lines.len() - 1]) {
        return Some("value ends in \"\\\", which would continue it onto the next line");
    }
    if lines[1..].iter().any(|line| trim_ws(line).is_empty()) {
        return Some("a \"\\\" line continuation is followed by a blank line");
    }
    if lines[..lines.len() - 1].iter().any(|l| !continues(l)) {
        return Some("value contains a line break that is not a \"\\\" line continuation");
    }
    if lines[1..]
        .iter()
        .any(|line| line.trim_start_matches(WHITESPACE).starts_with(['#', ';']))
    {
        return Some(
            "a continuation line starts with \"#\" or \";\" (systemd skips it as a comment)",
        );
    }
    if trim_ws(&o.value) != o.value {
        return Some("value has leading or trailing whitespace, which systemd strips");
    }
    None
}

/// Truncates `s` for error messages.
fn excerpt(s: &str) -> String {
    const MAX: usize = 60;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// A port of go-systemd's lexer over a string, with line numbers and the stricter checks above.
struct Lexer<'a> {
    text: &'a str,
    pos: usize,
    line: usize,
    options: Vec<UnitOption>,
}

impl<'a> Lexer<'a> {
    fn new(text: &'a str) -> Self {
        Lexer {
            text,
            pos: 0,
            line: 1,
            options: Vec::new(),
        }
    }

    fn run(mut self) -> Result<Vec<UnitOption>, ParseError> {
        self.check_lines()?;
        let mut section: Option<String> = None;
        loop {
            // Skip whitespace (including line breaks) before the next item.
            let rest = &self.text[self.pos..];
            let trimmed = rest.trim_start_matches(WHITESPACE);
            self.advance(rest.len() - trimmed.len());
            let Some(first) = trimmed.chars().next() else {
                break;
            };
            if first == '[' {
                section = Some(self.section_header()?);
            } else if first == '#' || first == ';' {
                self.skip_comment()?;
            } else {
                let Some(section) = &section else {
                    let line_no = self.line;
                    let text = self.read_line().0;
                    return Err(ParseError::OptionOutsideSection {
                        line: line_no,
                        text: excerpt(text.trim()),
                    });
                };
                let section = section.clone();
                self.option(section)?;
            }
        }
        Ok(self.options)
    }

    fn advance(&mut self, n: usize) {
        self.line += self.text[self.pos..self.pos + n].matches('\n').count();
        self.pos += n;
    }

    /// go-systemd's `toEOL`: consumes the rest of the line and returns it without its line break, and
    /// whether the end of input was reached (`\r\n` was turned into `\n` and no other `\r` is left).
    fn read_line(&mut self) -> (&'a str, bool) {
        let text: &'a str = self.text;
        let rest = &text[self.pos..];
        let (raw, eof) = match rest.find('\n') {
            Some(i) => (&rest[..=i], false),
            None => (rest, true),
        };
        self.advance(raw.len());
        (raw.strip_suffix('\n').unwrap_or(raw), eof)
    }

    /// Line lengths and control characters, before anything is read.
    fn check_lines(&self) -> Result<(), ParseError> {
        for (i, line) in self.text.split('\n').enumerate() {
            if line.len() >= LINE_MAX {
                return Err(ParseError::LineTooLong {
                    line: i + 1,
                    len: line.len(),
                    max: LINE_MAX,
                });
            }
            if let Some(ch) = line.chars().find(|c| is_bad_control(*c)) {
                return Err(ParseError::ControlCharacter { line: i + 1, ch });
            }
        }
        Ok(())
    }

    fn section_header(&mut self) -> Result<String, ParseError> {
        let line_no = self.line;
        self.advance(1); // '['
        let (line, _) = self.read_line();
        let Some(close) = line.find(']') else {
            return Err(ParseError::UnterminatedSection { line: line_no });
        };
        let name = &line[..close];
        if name.is_empty() {
            return Err(ParseError::EmptySectionName { line: line_no });
        }
        if name.contains('[') {
            return Err(ParseError::BracketInSectionName {
                line: line_no,
                section: excerpt(name),
            });
        }
        let garbage = trim_ws(&line[close + 1..]);
        if !garbage.is_empty() {
            return Err(ParseError::GarbageAfterSection {
                line: line_no,
                section: name.to_owned(),
                garbage: excerpt(garbage),
            });
        }
        Ok(name.to_owned())
    }

    fn skip_comment(&mut self) -> Result<(), ParseError> {
        let line_no = self.line;
        let (line, eof) = self.read_line();
        // go-systemd continued a comment ending in '\' (or "\ "), systemd does not.
        let line = line.strip_suffix(' ').unwrap_or(line);
        if !eof && line.ends_with('\\') {
            return Err(ParseError::CommentContinuation { line: line_no });
        }
        Ok(())
    }

    fn option(&mut self, section: String) -> Result<(), ParseError> {
        let line_no = self.line;
        let rest = &self.text[self.pos..];
        let eq = rest.find('=');
        let eol = rest.find(['\n', '\r']);
        let eq = match (eq, eol) {
            (Some(eq), Some(eol)) if eq < eol => eq,
            (Some(eq), None) => eq,
            _ => {
                let text = rest[..eol.unwrap_or(rest.len())].trim();
                return Err(ParseError::MissingEquals {
                    line: line_no,
                    text: excerpt(text),
                });
            }
        };
        let name = trim_ws(&rest[..eq]).to_owned();
        if name.is_empty() {
            return Err(ParseError::EmptyOptionName { line: line_no });
        }
        self.advance(eq + 1);
        let mut partial = String::new();
        let mut last_line;
        loop {
            last_line = self.line;
            let (line, eof) = self.read_line();
            if trim_ws(line).is_empty() {
                if !partial.is_empty() && eof && line.is_empty() {
                    return Err(ParseError::ContinuationAtEnd {
                        line: last_line - 1,
                    });
                }
                if !partial.is_empty() {
                    // go-systemd kept "\\\n" at the end of the value; written back out, the continuation
                    // would swallow the next option (and systemd joins it with the blank line instead).
                    return Err(ParseError::ContinuationIntoBlankLine { line: last_line });
                }
                break;
            }
            if !partial.is_empty() && line.trim_start_matches(WHITESPACE).starts_with(['#', ';']) {
                // systemd skips a comment line inside a continuation, go-systemd kept it in the value.
                return Err(ParseError::CommentInContinuation { line: last_line });
            }
            partial.push_str(line);
            if !continues(line) {
                break;
            }
            if eof {
                // go-systemd kept the backslash; the value would then change when written back out.
                return Err(ParseError::ContinuationAtEnd { line: self.line });
            }
            partial.push('\n');
        }
        let value = trim_ws(&partial).to_owned();
        if continues(&value) {
            // "\\" then whitespace: go-systemd ended the value there, systemd continues the line. Written back
            // out without the whitespace it would become a continuation, so the meaning is ambiguous.
            return Err(ParseError::BackslashBeforeTrailingSpace { line: last_line });
        }
        self.options.push(UnitOption {
            section,
            name,
            value,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests;
