//! The commands a status or journal request runs on this machine (`systemctl status`, `journalctl`):
//! no shell, bounded in time ([`COMMAND_TIMEOUT`]) and output ([`MAX_OUTPUT`]).

use super::*;

/// Runs the command a status or journal request asks for on this machine.
pub(super) async fn run_command(request: &Request, systemd_user: bool) -> Response {
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
        Request::Restart { .. }
        | Request::SetMetadata { .. }
        | Request::Support { .. }
        | Request::Vote { .. } => Response::Error("not a command request".into()),
    }
}

/// The answer for journalctl's output.
pub(super) fn journal_response(out: Output) -> Response {
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

pub(super) fn first_line<'a>(a: &'a str, b: &'a str) -> &'a str {
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
pub(super) enum Keep {
    Head,
    Tail,
}

pub(super) struct Output {
    pub(super) stdout: String,
    pub(super) stderr: String,
    pub(super) code: i32,
}

/// Runs `program` with `args` (no shell), at most [`COMMAND_TIMEOUT`], keeping at most
/// [`MAX_OUTPUT`] bytes of stdout and 4 KiB of stderr.
pub(super) async fn run(program: &str, args: &[String], keep: Keep) -> Result<Output, String> {
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
pub(super) async fn read_bounded(
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
