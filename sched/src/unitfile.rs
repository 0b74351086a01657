//! Unit files: systemd's syntax, parsed and serialized exactly as fleet v1 did (through go-systemd's
//! `unit.Deserialize` / `unit.Serialize`), so that a unit's [`UnitHash`] equals the hash fleet computed
//! for the same file.
//!
//! # Parsing (go-systemd `Deserialize`, 2016/2017 version vendored by fleet v1)
//! - `[Section]` headers; nothing but whitespace may follow the closing `]`.
//! - `Name=Value` options. Leading whitespace of a line is skipped, the name and the value are trimmed.
//!   Repeated names are kept, in order.
//! - Lines starting with `#` or `;` are comments. A comment line ending in `\` also swallows the next line
//!   (go-systemd did this; systemd itself does not continue comments).
//! - A value line ending in `\` continues on the next line. The stored value keeps the backslash and the
//!   newline (`ExecStart=/bin/a \` + `  b` gives `/bin/a \⏎  b`), which is what fleet hashed and wrote back
//!   to disk for systemd to join. A continuation stops at a blank line.
//! - Lines of [`LINE_MAX`] bytes or more are rejected (systemd truncates them).
//!
//! # Where we are stricter than go-systemd (it silently accepted these)
//! - Text before the first section header that is not blank or a comment ([`ParseError::OptionOutsideSection`]);
//!   go-systemd skipped it character by character.
//! - A section header not closed on its own line, or an empty one (`[]`).
//! - An option with an empty name (`=value`).
//!
//! Errors carry the 1-based line number.

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
        if s.len() != 40 || !s.is_ascii() {
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
        Ok(UnitFile {
            options: Lexer::new(text).run()?,
        })
    }

    /// Builds a unit file from options given as data (the HTTP API's `options`), checking that they can
    /// be written as a unit file and read back: non-empty section and name, no `]` or line break in a
    /// section, no `=` or line break in a name, line breaks in values only as `\` continuations.
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
        // fleet's own check: the serialized form must deserialize.
        Lexer::new(&file.serialize())
            .run()
            .map_err(|e| ParseError::NotRepresentable(Box::new(e)))?;
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
        let mut sections: Vec<(&str, Vec<&UnitOption>)> = Vec::new();
        for o in &self.options {
            match sections.iter_mut().find(|(s, _)| *s == o.section) {
                Some((_, opts)) => opts.push(o),
                None => sections.push((&o.section, vec![o])),
            }
        }
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

impl FromStr for UnitFile {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UnitFile::parse(s)
    }
}

fn option_problem(o: &UnitOption) -> Option<&'static str> {
    if o.section.is_empty() {
        return Some("section name is empty");
    }
    if o.section.contains(['\n', '\r']) {
        return Some("section name contains a line break");
    }
    if o.section.contains(']') {
        return Some("section name contains \"]\"");
    }
    if o.name.is_empty() {
        return Some("option name is empty");
    }
    if o.name.contains(['\n', '\r']) {
        return Some("option name contains a line break");
    }
    if o.name.contains('=') {
        return Some("option name contains \"=\"");
    }
    if o.name.trim() != o.name {
        return Some("option name has leading or trailing whitespace");
    }
    if o.name.starts_with(['[', '#', ';']) {
        return Some("option name starts with \"[\", \"#\" or \";\"");
    }
    let bytes = o.value.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' && (i == 0 || bytes[i - 1] != b'\\') {
            return Some("value contains a line break that is not a \"\\\" line continuation");
        }
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
        self.check_line_lengths()?;
        let mut section: Option<String> = None;
        loop {
            // Skip whitespace (including line breaks) before the next item.
            let rest = &self.text[self.pos..];
            let trimmed = rest.trim_start();
            self.advance(rest.len() - trimmed.len());
            let Some(first) = trimmed.chars().next() else {
                break;
            };
            if first == '[' {
                section = Some(self.section_header()?);
            } else if first == '#' || first == ';' {
                self.skip_comment();
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

    /// go-systemd's `toEOL`: consumes the rest of the line and returns it without its line break, trimmed
    /// in go-systemd's order (`TrimSuffix("\r")`, then `TrimSuffix("\n")`, so `"a\r\n"` gives `"a\r"`),
    /// and whether the end of input was reached.
    fn read_line(&mut self) -> (&'a str, bool) {
        let text: &'a str = self.text;
        let rest = &text[self.pos..];
        let (raw, eof) = match rest.find('\n') {
            Some(i) => (&rest[..=i], false),
            None => (rest, true),
        };
        self.advance(raw.len());
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let line = line.strip_suffix('\n').unwrap_or(line);
        (line, eof)
    }

    fn check_line_lengths(&self) -> Result<(), ParseError> {
        for (i, line) in self.text.split('\n').enumerate() {
            // go-systemd treats both '\r' and '\n' as line ends for this check.
            let longest = line.split('\r').map(str::len).max().unwrap_or(0);
            if longest >= LINE_MAX {
                return Err(ParseError::LineTooLong {
                    line: i + 1,
                    len: line.len(),
                    max: LINE_MAX,
                });
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
        let garbage = line[close + 1..].trim();
        if !garbage.is_empty() {
            return Err(ParseError::GarbageAfterSection {
                line: line_no,
                section: name.to_owned(),
                garbage: excerpt(garbage),
            });
        }
        Ok(name.to_owned())
    }

    fn skip_comment(&mut self) {
        loop {
            let (line, eof) = self.read_line();
            let line = line.strip_suffix(' ').unwrap_or(line);
            if eof || !line.ends_with('\\') {
                break;
            }
        }
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
        let name = rest[..eq].trim().to_owned();
        if name.is_empty() {
            return Err(ParseError::EmptyOptionName { line: line_no });
        }
        self.advance(eq + 1);
        let mut partial = String::new();
        loop {
            let (line, eof) = self.read_line();
            if line.trim().is_empty() {
                break;
            }
            partial.push_str(line);
            if !line.ends_with('\\') {
                break;
            }
            if eof {
                break;
            }
            partial.push('\n');
        }
        let value = if partial.ends_with('\n') {
            // A continuation followed by a blank line: go-systemd keeps the newline.
            format!("{}\n", partial.trim())
        } else {
            partial.trim().to_owned()
        };
        self.options.push(UnitOption {
            section,
            name,
            value,
        });
        Ok(())
    }
}
