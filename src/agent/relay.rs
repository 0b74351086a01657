//! Unit status, journal and restart between agents: the protocol on the gossip request channel, the
//! handler that answers on the unit's machine, and the [`UnitRelay`] the HTTP API asks through.
//!
//! A request is one postcard-encoded [`Request`]; the answer is one postcard-encoded [`Response`]
//! (failures are [`Response::Error`], so the gossip stream itself only fails on transport trouble).
//! The handler runs `systemctl status`, `journalctl` or `systemctl restart` for the unit on this
//! machine (a peer is trusted as far as mutual TLS admitted it; which units may be restarted is
//! decided by the API that sends the request: launched units of the registry, on their machine):
//! - the unit name must parse as a [`UnitName`] (and not be a template, for a restart) and the cursor
//!   must pass [`valid_cursor`], else the
//!   request is refused before any command runs; each value is passed as one argument, after `--` or
//!   as `--opt=value`, never through a shell;
//! - a command runs at most [`COMMAND_TIMEOUT`] and its output is cut at [`MAX_OUTPUT`] bytes
//!   (status keeps the head, journal keeps the tail, where the newest lines and the cursor are);
//! - a request that does not decode gets [`Response::Error`], never a panic.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use fleet_gossip_quic::transport::{GossipHandle, RequestError};
use fleet_sched::{MachineId, UnitName};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::api::relay::{valid_cursor, RelayError, RelayFuture, UnitAnswer, UnitQuery, UnitRelay};
use crate::api::relay::{MAX_CURSOR, MAX_LINES};

/// Most bytes of command output kept in an answer.
pub const MAX_OUTPUT: usize = 1 << 20;
/// How long `systemctl`/`journalctl` may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// The line `journalctl --show-cursor` ends with.
const CURSOR_PREFIX: &str = "-- cursor: ";

/// What one agent asks another about a unit it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// `systemctl status` of `unit` with its last `lines` journal lines.
    Status {
        /// The unit name (validated by the receiver).
        unit: String,
        /// Journal lines to include (at most [`MAX_LINES`]).
        lines: u32,
    },
    /// The unit's journal: the last `lines` lines, or at most `lines` lines after `cursor`.
    Journal {
        /// The unit name (validated by the receiver).
        unit: String,
        /// How many lines (at most [`MAX_LINES`]).
        lines: u32,
        /// Continue after this cursor (from a previous [`Response::Journal`]).
        cursor: Option<String>,
    },
    /// `systemctl restart` of `unit` (stop, then start: a new main process), waiting for the job.
    Restart {
        /// The unit name (validated by the receiver; templates are refused).
        unit: String,
    },
}

impl Request {
    /// The unit the request is about.
    pub fn unit(&self) -> Option<&str> {
        match self {
            Request::Status { unit, .. }
            | Request::Journal { unit, .. }
            | Request::Restart { unit } => Some(unit),
        }
    }
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// `systemctl status` output and exit code (0 active, 3 not active, 4 no such unit).
    Status {
        /// The output (stderr when stdout is empty).
        text: String,
        /// systemctl's exit code (-1 when killed by a signal).
        exit_code: i32,
    },
    /// Journal lines (each ending in a newline) and the cursor of the last one.
    Journal {
        /// The lines, without journalctl's `-- cursor:` line.
        text: String,
        /// Where to continue; `None` when there was no entry (keep the previous cursor).
        cursor: Option<String>,
    },
    /// `systemctl restart` finished: exit code 0 when the unit was restarted.
    Restart {
        /// systemctl's output (empty on success; its error otherwise).
        text: String,
        /// systemctl's exit code (-1 when killed by a signal).
        exit_code: i32,
    },
    /// The request was refused or the command failed.
    Error(String),
}

/// A message that is not a valid postcard encoding of the expected type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable relay message: {0}")]
pub struct DecodeError(String);

impl Request {
    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a request always encodes")
    }

    /// Parses the wire form (trailing bytes are refused).
    pub fn decode(bytes: &[u8]) -> Result<Request, DecodeError> {
        decode_exact(bytes)
    }
}

impl Response {
    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a response always encodes")
    }

    /// Parses the wire form (trailing bytes are refused).
    pub fn decode(bytes: &[u8]) -> Result<Response, DecodeError> {
        decode_exact(bytes)
    }
}

fn decode_exact<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, DecodeError> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(DecodeError(format!("{} trailing bytes", rest.len()))),
        Err(e) => Err(DecodeError(e.to_string())),
    }
}

impl From<UnitQuery> for Request {
    fn from(q: UnitQuery) -> Request {
        match q {
            UnitQuery::Status { unit, lines } => Request::Status {
                unit: unit.to_string(),
                lines,
            },
            UnitQuery::Journal {
                unit,
                lines,
                cursor,
            } => Request::Journal {
                unit: unit.to_string(),
                lines,
                cursor,
            },
            UnitQuery::Restart { unit } => Request::Restart {
                unit: unit.to_string(),
            },
        }
    }
}

/// Makes this machine answer status, journal and restart requests from its peers, for the units fleet
/// manages here only (those with a file in `units_directory`): a peer cannot read or restart the
/// machine's other services (sshd, etcd, ...).
pub fn install(gossip: &GossipHandle, systemd_user: bool, units_directory: std::path::PathBuf) {
    gossip.set_request_handler(move |from: SocketAddr, request: Vec<u8>| {
        let units_directory = units_directory.clone();
        async move {
            if let Ok(r) = Request::decode(&request) {
                if let Some(unit) = r.unit() {
                    let managed = UnitName::parse(unit)
                        .map(|n| units_directory.join(n.as_str()).exists())
                        .unwrap_or(true); // invalid names get their own error below
                    if !managed {
                        return Ok(Response::Error(format!(
                            "{unit} is not a unit fleet runs on this machine"
                        ))
                        .encode());
                    }
                }
            }
            Ok(handle(from, &request, systemd_user).await)
        }
    });
}

/// Answers one encoded request (always with an encoded [`Response`]).
pub async fn handle(from: SocketAddr, request: &[u8], systemd_user: bool) -> Vec<u8> {
    let response = match Request::decode(request) {
        Ok(r) => {
            tracing::debug!(%from, request = ?r, "relay request");
            answer(&r, systemd_user).await
        }
        Err(e) => {
            tracing::debug!(%from, len = request.len(), "relay: {e}");
            Response::Error(e.to_string())
        }
    };
    response.encode()
}

/// Checks a request's values; the unit name as it may be passed to a command.
fn check(unit: &str, lines: u32, cursor: Option<&str>) -> Result<UnitName, String> {
    let name = UnitName::parse(unit).map_err(|e| {
        let shown: String = unit.chars().take(300).collect();
        format!("invalid unit name {shown:?}: {e}")
    })?;
    if lines > MAX_LINES {
        return Err(format!("lines {lines} is more than {MAX_LINES}"));
    }
    if let Some(c) = cursor {
        if !valid_cursor(c) {
            let shown: String = c.chars().take(MAX_CURSOR.min(300)).collect();
            return Err(format!("invalid journal cursor {shown:?}"));
        }
    }
    Ok(name)
}

/// Runs the command a request asks for on this machine.
pub async fn answer(request: &Request, systemd_user: bool) -> Response {
    match request {
        Request::Status { unit, lines } => {
            let name = match check(unit, *lines, None) {
                Ok(n) => n,
                Err(e) => return Response::Error(e),
            };
            let mut args = Vec::new();
            if systemd_user {
                args.push("--user".to_string());
            }
            args.extend([
                "status".into(),
                "--no-pager".into(),
                "--full".into(),
                format!("--lines={lines}"),
                "--".into(),
                name.to_string(),
            ]);
            match run("systemctl", &args, Keep::Head).await {
                Ok(out) => {
                    let text = if out.stdout.trim().is_empty() {
                        out.stderr
                    } else {
                        out.stdout
                    };
                    Response::Status {
                        text,
                        exit_code: out.code,
                    }
                }
                Err(e) => Response::Error(e),
            }
        }
        Request::Journal {
            unit,
            lines,
            cursor,
        } => {
            let name = match check(unit, *lines, cursor.as_deref()) {
                Ok(n) => n,
                Err(e) => return Response::Error(e),
            };
            let unit_flag = if systemd_user {
                "--user-unit"
            } else {
                "--unit"
            };
            let mut args = vec![
                format!("{unit_flag}={name}"),
                "--no-pager".into(),
                "--quiet".into(),
                "--output=short".into(),
                "--show-cursor".into(),
                format!("--lines={lines}"),
            ];
            if let Some(c) = cursor {
                args.push(format!("--after-cursor={c}"));
            }
            match run("journalctl", &args, Keep::Tail).await {
                Ok(out) => journal_response(out),
                Err(e) => Response::Error(e),
            }
        }
        Request::Restart { unit } => {
            let name = match check(unit, 0, None) {
                Ok(n) if n.is_template() => {
                    return Response::Error(format!("cannot restart template {n}"))
                }
                Ok(n) => n,
                Err(e) => return Response::Error(e),
            };
            let mut args = Vec::new();
            if systemd_user {
                args.push("--user".to_string());
            }
            args.extend([
                "restart".into(),
                "--no-ask-password".into(),
                "--job-mode=replace".into(),
                "--".into(),
                name.to_string(),
            ]);
            match run("systemctl", &args, Keep::Head).await {
                Ok(out) => Response::Restart {
                    text: if out.stderr.trim().is_empty() {
                        out.stdout
                    } else {
                        out.stderr
                    },
                    exit_code: out.code,
                },
                Err(e) => Response::Error(format!("{e} (a restart job may still be running)")),
            }
        }
    }
}

/// The answer for journalctl's output.
fn journal_response(out: Output) -> Response {
    let (text, cursor) = split_cursor(&out.stdout);
    match out.code {
        0 => Response::Journal { text, cursor },
        // journalctl exits 1 without a word (--quiet) when nothing matches, e.g. a unit that never
        // ran, or no new entry after the cursor.
        1 if out.stderr.trim().is_empty() && text.trim().is_empty() => Response::Journal {
            text: String::new(),
            cursor,
        },
        code => Response::Error(format!(
            "journalctl exited with {code}: {}",
            first_line(&out.stderr, &out.stdout)
        )),
    }
}

fn first_line<'a>(a: &'a str, b: &'a str) -> &'a str {
    let s = if a.trim().is_empty() { b } else { a };
    s.lines().find(|l| !l.trim().is_empty()).unwrap_or("")
}

/// Splits journalctl's output into the entries and the cursor of its `-- cursor: ` line; drops the
/// `-- No entries --` line.
pub fn split_cursor(out: &str) -> (String, Option<String>) {
    let mut text = String::with_capacity(out.len());
    let mut cursor = None;
    for line in out.lines() {
        if let Some(c) = line.strip_prefix(CURSOR_PREFIX) {
            cursor = Some(c.trim().to_string());
        } else if line != "-- No entries --" {
            text.push_str(line);
            text.push('\n');
        }
    }
    (text, cursor)
}

/// Which end of a long output to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    Head,
    Tail,
}

struct Output {
    stdout: String,
    stderr: String,
    code: i32,
}

/// Runs `program` with `args` (no shell), at most [`COMMAND_TIMEOUT`], keeping at most
/// [`MAX_OUTPUT`] bytes of stdout and 4 KiB of stderr.
async fn run(program: &str, args: &[String], keep: Keep) -> Result<Output, String> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("SYSTEMD_COLORS", "0")
        .env("SYSTEMD_PAGER", "")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let work = async {
        let (out, err) = tokio::join!(
            read_bounded(stdout, MAX_OUTPUT, keep),
            read_bounded(stderr, 4096, Keep::Head)
        );
        let status = child.wait().await;
        (out, err, status)
    };
    let (out, err, status) = tokio::time::timeout(COMMAND_TIMEOUT, work)
        .await
        .map_err(|_| format!("{program} did not finish within {COMMAND_TIMEOUT:?}"))?;
    let status = status.map_err(|e| format!("waiting for {program}: {e}"))?;
    let out = out.map_err(|e| format!("reading the output of {program}: {e}"))?;
    let err = err.unwrap_or_default();
    Ok(Output {
        stdout: out,
        stderr: err,
        code: status.code().unwrap_or(-1),
    })
}

/// Reads `r` to its end keeping at most `max` bytes (the first or the last ones); a cut output
/// gets a note (and, for the tail, loses its partial first line).
async fn read_bounded(
    mut r: impl AsyncRead + Unpin,
    max: usize,
    keep: Keep,
) -> std::io::Result<String> {
    let mut kept: Vec<u8> = Vec::new();
    let mut cut = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > max {
            cut = true;
            match keep {
                Keep::Head => kept.truncate(max),
                // Drop in chunks so that a long output costs linear time.
                Keep::Tail if kept.len() > 2 * max => {
                    kept.drain(..kept.len() - max);
                }
                Keep::Tail => {}
            }
        }
    }
    if keep == Keep::Tail && kept.len() > max {
        kept.drain(..kept.len() - max);
    }
    let mut text = String::from_utf8_lossy(&kept).into_owned();
    if cut {
        match keep {
            Keep::Head => text.push_str(&format!("\n[output cut at {max} bytes]\n")),
            Keep::Tail => {
                let rest = text.split_once('\n').map(|(_, r)| r.to_string());
                text = format!(
                    "[earlier output cut: only the last {max} bytes are shown]\n{}",
                    rest.unwrap_or_default()
                );
            }
        }
    }
    Ok(text)
}

/// The API's [`UnitRelay`] in fleetd: this machine answers itself, others through gossip.
pub struct GossipRelay {
    local: MachineId,
    gossip: Option<GossipHandle>,
    systemd_user: bool,
}

impl GossipRelay {
    /// Relays from machine `local` over `gossip` (without gossip only local units can be asked).
    pub fn new(local: MachineId, gossip: Option<GossipHandle>, systemd_user: bool) -> GossipRelay {
        GossipRelay {
            local,
            gossip,
            systemd_user,
        }
    }

    async fn exchange(
        &self,
        machine: &MachineId,
        request: Request,
    ) -> Result<Response, RelayError> {
        if *machine == self.local {
            return Ok(answer(&request, self.systemd_user).await);
        }
        let Some(gossip) = &self.gossip else {
            return Err(RelayError::Unreachable {
                machine: machine.clone(),
                reason: "gossip is not running on this machine".into(),
            });
        };
        let peer = fleet_gossip::MachineId::new(machine.as_str());
        let bytes = gossip
            .request(&peer, request.encode())
            .await
            .map_err(|e| match e {
                RequestError::Timeout(_) => RelayError::Timeout {
                    machine: machine.clone(),
                },
                RequestError::Remote { message, .. } => RelayError::Failed {
                    machine: machine.clone(),
                    message,
                },
                e => RelayError::Unreachable {
                    machine: machine.clone(),
                    reason: e.to_string(),
                },
            })?;
        Response::decode(&bytes).map_err(|e| RelayError::Failed {
            machine: machine.clone(),
            message: e.to_string(),
        })
    }
}

impl UnitRelay for GossipRelay {
    fn ask<'a>(&'a self, machine: &'a MachineId, query: UnitQuery) -> RelayFuture<'a> {
        Box::pin(async move {
            let failed = |message: String| RelayError::Failed {
                machine: machine.clone(),
                message,
            };
            let request = Request::from(query);
            match (&request, self.exchange(machine, request.clone()).await?) {
                (Request::Status { .. }, Response::Status { text, exit_code }) => Ok(UnitAnswer {
                    text,
                    cursor: None,
                    exit_code: Some(exit_code),
                }),
                (Request::Journal { .. }, Response::Journal { text, cursor }) => Ok(UnitAnswer {
                    text,
                    cursor,
                    exit_code: None,
                }),
                (Request::Restart { .. }, Response::Restart { text, exit_code }) => {
                    Ok(UnitAnswer {
                        text,
                        cursor: None,
                        exit_code: Some(exit_code),
                    })
                }
                (_, Response::Error(e)) => Err(failed(e)),
                (_, other) => Err(failed(format!(
                    "answered with the wrong kind of response: {other:?}"
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn requests_and_responses_round_trip() {
        for r in [
            Request::Status {
                unit: "a.service".into(),
                lines: 10,
            },
            Request::Journal {
                unit: "a@b.service".into(),
                lines: 3,
                cursor: Some("s=1;i=2".into()),
            },
            Request::Restart {
                unit: "a.service".into(),
            },
        ] {
            assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }
        for r in [
            Response::Status {
                text: "● a.service\n".into(),
                exit_code: 3,
            },
            Response::Journal {
                text: "x\n".into(),
                cursor: None,
            },
            Response::Restart {
                text: String::new(),
                exit_code: 0,
            },
            Response::Error("no".into()),
        ] {
            assert_eq!(Response::decode(&r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut b = Request::Status {
            unit: "a.service".into(),
            lines: 0,
        }
        .encode();
        b.push(0);
        assert!(Request::decode(&b).is_err());
    }

    #[test]
    fn garbage_requests_get_an_error_response() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut garbage: Vec<Vec<u8>> = vec![vec![], vec![0xff; 40], vec![7], vec![0, 0xff, 0xff]];
        for len in 0..200 {
            let mut g = Vec::with_capacity(len);
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                g.push(seed as u8);
            }
            garbage.push(g);
        }
        block(async {
            for g in garbage {
                let answer = handle(from(), &g, false).await;
                let r = Response::decode(&answer).expect("an encoded response");
                if Request::decode(&g).is_err() {
                    assert!(matches!(r, Response::Error(_)), "{g:?} -> {r:?}");
                }
            }
        });
    }

    #[test]
    fn bad_values_are_refused_before_any_command_runs() {
        let bad = [
            Request::Status {
                unit: "--help".into(),
                lines: 1,
            },
            Request::Status {
                unit: "a.service; rm -rf /".into(),
                lines: 1,
            },
            Request::Status {
                unit: "a.service".into(),
                lines: MAX_LINES + 1,
            },
            Request::Journal {
                unit: "noext".into(),
                lines: 1,
                cursor: None,
            },
            Request::Journal {
                unit: "a.service".into(),
                lines: 1,
                cursor: Some("--since=yesterday".into()),
            },
            Request::Journal {
                unit: "a.service".into(),
                lines: 1,
                cursor: Some("s=1 --merge".into()),
            },
            Request::Restart {
                unit: "--force".into(),
            },
            Request::Restart {
                unit: "a@.service".into(),
            },
        ];
        block(async {
            for r in bad {
                let got = answer(&r, false).await;
                let Response::Error(msg) = &got else {
                    panic!("{r:?} was answered: {got:?}");
                };
                assert!(
                    msg.starts_with("invalid")
                        || msg.starts_with("lines")
                        || msg.starts_with("cannot restart template"),
                    "{r:?}: {msg}"
                );
            }
        });
    }

    #[test]
    fn the_cursor_line_is_split_off() {
        let out = "Nov 25 10:00:00 m2 sh[12]: hello\nNov 25 10:00:01 m2 sh[12]: world\n-- cursor: s=ab;i=3;b=cd\n";
        let (text, cursor) = split_cursor(out);
        assert_eq!(
            text,
            "Nov 25 10:00:00 m2 sh[12]: hello\nNov 25 10:00:01 m2 sh[12]: world\n"
        );
        assert_eq!(cursor.as_deref(), Some("s=ab;i=3;b=cd"));
        assert_eq!(split_cursor("-- No entries --\n"), (String::new(), None));
    }

    #[test]
    fn journalctls_silent_exit_1_is_an_empty_answer_but_an_error_message_is_an_error() {
        let out = |stdout: &str, stderr: &str, code| Output {
            stdout: stdout.into(),
            stderr: stderr.into(),
            code,
        };
        assert_eq!(
            journal_response(out("a\n-- cursor: s=1\n", "", 0)),
            Response::Journal {
                text: "a\n".into(),
                cursor: Some("s=1".into())
            }
        );
        assert_eq!(
            journal_response(out("", "", 1)),
            Response::Journal {
                text: String::new(),
                cursor: None
            }
        );
        assert_eq!(
            journal_response(out("-- No entries --\n", "", 1)),
            Response::Journal {
                text: String::new(),
                cursor: None
            }
        );
        assert_eq!(
            journal_response(out("", "Failed to seek to cursor: Invalid argument\n", 1)),
            Response::Error(
                "journalctl exited with 1: Failed to seek to cursor: Invalid argument".into()
            )
        );
    }

    #[test]
    fn long_outputs_keep_the_head_or_the_tail() {
        let data: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        block(async {
            let head = read_bounded(data.as_bytes(), 100, Keep::Head)
                .await
                .unwrap();
            assert!(head.starts_with("line 0\n"), "{head}");
            assert!(head.ends_with("[output cut at 100 bytes]\n"), "{head}");
            let tail = read_bounded(data.as_bytes(), 100, Keep::Tail)
                .await
                .unwrap();
            assert!(tail.starts_with("[earlier output cut"), "{tail}");
            assert!(tail.ends_with("line 999\n"), "{tail}");
            let body = tail.split_once('\n').unwrap().1;
            assert!(body.len() <= 100 && body.starts_with("line "), "{body}");
            let short = read_bounded(&b"abc\n"[..], 100, Keep::Tail).await.unwrap();
            assert_eq!(short, "abc\n");
        });
    }

    #[test]
    fn without_gossip_other_machines_are_unreachable() {
        let local = MachineId::parse("m1").unwrap();
        let relay = GossipRelay::new(local, None, false);
        let unit = UnitName::parse("a.service").unwrap();
        block(async {
            let other = MachineId::parse("m2").unwrap();
            let e = relay
                .ask(
                    &other,
                    UnitQuery::Status {
                        unit: unit.clone(),
                        lines: 0,
                    },
                )
                .await
                .unwrap_err();
            assert!(matches!(e, RelayError::Unreachable { .. }), "{e:?}");
        });
    }
}
