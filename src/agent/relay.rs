//! Requests between agents: a unit's status, journal and restart, and machine metadata changes. The
//! protocol on the gossip request channel, the [`Responder`] that answers on the unit's (or the
//! machine's) own machine, and the [`UnitRelay`] the HTTP API asks through.
//!
//! A request is one postcard-encoded [`Request`]; the answer is one postcard-encoded [`Response`]
//! (failures are [`Response::Error`], so the gossip stream itself only fails on transport trouble).
//! The responder runs `systemctl status` or `journalctl` for the unit on this machine, restarts it
//! through systemd's D-Bus API (`RestartUnit`, waiting for the job), or applies metadata changes to
//! this machine (a peer is trusted as far as mutual TLS admitted it; which units may be restarted is
//! decided by the API that sends the request: launched units of the registry, on their machine):
//! - the unit name must parse as a [`UnitName`] (and not be a template, for a restart) and the cursor
//!   must pass [`valid_cursor`], else the
//!   request is refused before any command runs; each value is passed as one argument, after `--` or
//!   as `--opt=value`, never through a shell;
//! - a command runs at most [`COMMAND_TIMEOUT`] and its output is cut at [`MAX_OUTPUT`] bytes
//!   (status keeps the head, journal keeps the tail, where the newest lines and the cursor are);
//! - a metadata change must name valid keys (`[A-Za-z0-9_.-]+`) and non-empty values, else nothing
//!   is applied;
//! - a request that does not decode gets [`Response::Error`], never a panic.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use fleet_gossip_quic::transport::{GossipHandle, RequestError};
use fleet_sched::{MachineId, UnitName};
use fleet_systemd::{Bus, Systemd};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::api::cluster::{ClusterView, MetadataOp};
use crate::api::relay::{
    valid_cursor, MetadataChange, MetadataFuture, RelayError, RelayFuture, UnitAnswer, UnitQuery,
    UnitRelay,
};
use crate::api::relay::{MAX_CURSOR, MAX_LINES};
use crate::config::valid_metadata_key;

mod client;
mod command;
mod wire;
pub use client::GossipRelay;
pub use command::split_cursor;
use command::*;
pub use wire::{DecodeError, Request, Response};

/// Most bytes of command output kept in an answer.
pub const MAX_OUTPUT: usize = 1 << 20;
/// How long `systemctl`/`journalctl` may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// The line `journalctl --show-cursor` ends with.
const CURSOR_PREFIX: &str = "-- cursor: ";

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

/// What this machine answers its peers (and its own API, for its own units and metadata): status and
/// journal through `systemctl`/`journalctl`, restarts through systemd's D-Bus API (one connection,
/// opened on first use and again after it broke), metadata changes through the cluster view.
pub struct Responder {
    local: MachineId,
    systemd_user: bool,
    units_directory: PathBuf,
    systemd: tokio::sync::Mutex<Option<Systemd>>,
    cluster: Option<Arc<dyn ClusterView>>,
    witness: Option<Witnessing>,
}

/// Where a machine's gossip endpoint is (`None`: unknown).
pub type AddrOf = Arc<dyn Fn(&MachineId) -> Option<SocketAddr> + Send + Sync>;

/// Whether this machine's gossip sees a machine alive and unsuspected.
pub type AliveOf = Arc<dyn Fn(&MachineId) -> bool + Send + Sync>;

/// What the responder needs to act as a witness.
struct Witnessing {
    service: Arc<super::witness::WitnessService>,
    /// The gossip address of a machine (a support request must come from the machine it names).
    addr_of: AddrOf,
    /// Whether gossip here sees a machine alive (no vote against a machine seen alive).
    alive_of: AliveOf,
}

impl Responder {
    /// Answers as machine `local` for units in `units_directory`, with systemd on the session bus
    /// when `systemd_user`. Metadata changes are refused until [`Responder::with_cluster`].
    pub fn new(local: MachineId, systemd_user: bool, units_directory: PathBuf) -> Responder {
        Responder {
            local,
            systemd_user,
            units_directory,
            systemd: tokio::sync::Mutex::new(None),
            cluster: None,
            witness: None,
        }
    }

    /// Answers support and vote requests with `service`; `addr_of` gives a machine's gossip address,
    /// `alive_of` whether gossip here sees it alive.
    pub fn with_witness(
        mut self,
        service: Arc<super::witness::WitnessService>,
        addr_of: AddrOf,
        alive_of: AliveOf,
    ) -> Responder {
        self.witness = Some(Witnessing {
            service,
            addr_of,
            alive_of,
        });
        self
    }

    /// Answers a witness request from `from` (`None` when this is not a witness request).
    fn answer_witness(&self, from: Option<SocketAddr>, request: &Request) -> Option<Response> {
        let (machine, lease, vote) = match request {
            Request::Support { machine, lease } => (machine, *lease, false),
            Request::Vote { machine, lease } => (machine, *lease, true),
            _ => return None,
        };
        let Some(w) = &self.witness else {
            return Some(Response::Error("this machine is not a witness".into()));
        };
        if vote {
            let seen_alive = (w.alive_of)(machine);
            return Some(Response::Granted(
                w.service.vote(machine, lease, seen_alive),
            ));
        }
        // Support only for the machine that asks (a peer cannot keep another's lease alive).
        let own = from.is_none_or(|f| (w.addr_of)(machine) == Some(f));
        if !own {
            return Some(Response::Error(format!(
                "support for {machine} must be asked by {machine}"
            )));
        }
        if w.service.support(machine, lease) {
            Some(Response::Granted(true))
        } else if w.service.voted_away(machine, lease) {
            Some(Response::VotedAway)
        } else {
            Some(Response::Granted(false))
        }
    }

    /// Whether fleet manages unit `name` on this machine: its file in the units directory is one fleet
    /// wrote (recorded by its first line, see `fleet_systemd::OWNER_MARKER`; a file left there by hand
    /// is not fleet's).
    pub fn manages(&self, name: &UnitName) -> bool {
        fleet_systemd::written_by_fleet(&self.units_directory.join(name.as_str()))
    }

    /// Applies metadata changes to `cluster`'s local machine.
    pub fn with_cluster(mut self, cluster: Arc<dyn ClusterView>) -> Responder {
        self.cluster = Some(cluster);
        self
    }

    /// Answers `request` on this machine (always with a [`Response`]).
    pub async fn answer(&self, request: &Request) -> Response {
        self.answer_from(None, request).await
    }

    /// Answers `request` from peer `from` (`None`: this machine itself).
    pub async fn answer_from(&self, from: Option<SocketAddr>, request: &Request) -> Response {
        if let Some(r) = self.answer_witness(from, request) {
            return r;
        }
        match request {
            Request::Restart { unit } => match check(unit, 0, None) {
                Ok(n) if n.is_template() => Response::Error(format!("cannot restart template {n}")),
                Ok(n) => self.restart(&n).await,
                Err(e) => Response::Error(e),
            },
            Request::SetMetadata { changes } => self.set_metadata(changes),
            other => run_command(other, self.systemd_user).await,
        }
    }

    /// `RestartUnit(name, "replace")` and wait for its job, at most [`COMMAND_TIMEOUT`].
    async fn restart(&self, name: &UnitName) -> Response {
        let mut conn = self.systemd.lock().await;
        for attempt in 0..2 {
            let sd = match conn.as_ref() {
                Some(sd) => sd.clone(),
                None => match self.connect().await {
                    Ok(sd) => conn.insert(sd).clone(),
                    Err(e) => return Response::Error(format!("cannot reach systemd: {e}")),
                },
            };
            let job =
                tokio::time::timeout(COMMAND_TIMEOUT, sd.restart_unit_and_wait(name.as_str()));
            match job.await {
                Err(_) => {
                    return Response::Error(format!(
                        "the restart of {name} did not finish within {COMMAND_TIMEOUT:?} (systemd's job may still be running)"
                    ))
                }
                Ok(Ok(r)) if r.is_success() => {
                    return Response::Restart {
                        text: String::new(),
                        exit_code: 0,
                    }
                }
                Ok(Ok(r)) => {
                    return Response::Restart {
                        text: format!("systemd's restart job for {name} ended with result {r}"),
                        exit_code: 1,
                    }
                }
                Ok(Err(e)) if e.is_disconnected() && attempt == 0 => {
                    tracing::debug!("relay: systemd connection lost ({e}); reconnecting");
                    *conn = None;
                }
                Ok(Err(e)) => return Response::Error(format!("restarting {name}: {e}")),
            }
        }
        Response::Error(format!("restarting {name}: systemd connection lost"))
    }

    async fn connect(&self) -> Result<Systemd, fleet_systemd::Error> {
        let bus = if self.systemd_user {
            Bus::Session
        } else {
            Bus::System
        };
        Systemd::connect(
            fleet_systemd::Config::new(bus)
                .units_directory(&self.units_directory)
                .call_timeout(COMMAND_TIMEOUT),
        )
        .await
    }

    /// Validates every change, then applies them all to this machine.
    fn set_metadata(&self, changes: &[(String, Option<String>)]) -> Response {
        let Some(cluster) = &self.cluster else {
            return Response::Error("this machine cannot change its metadata".into());
        };
        let me = &self.local;
        let mut ops = Vec::with_capacity(changes.len());
        for (i, (key, value)) in changes.iter().enumerate() {
            if !valid_metadata_key(key) {
                let shown: String = key.chars().take(100).collect();
                return Response::Error(format!("change {i}: invalid metadata key {shown:?}"));
            }
            ops.push(match value {
                Some(v) if v.is_empty() => {
                    return Response::Error(format!("change {i}: empty value for {key}"))
                }
                Some(v) => MetadataOp::Set {
                    machine: me.clone(),
                    key: key.clone(),
                    value: v.clone(),
                },
                None => MetadataOp::Remove {
                    machine: me.clone(),
                    key: key.clone(),
                },
            });
        }
        match cluster.apply_metadata(&ops) {
            Ok(()) => {
                tracing::info!(changes = ops.len(), "machine metadata changed by a peer");
                Response::MetadataSet
            }
            Err(e) => Response::Error(e.to_string()),
        }
    }
}

/// Makes this machine answer requests from its peers through `responder`: status, journal and
/// restart for the units fleet manages here only ([`Responder::manages`]: a peer cannot read or restart
/// the machine's other services, sshd, etcd, ..., nor a file left in the units directory by hand), and
/// metadata changes.
pub fn install(gossip: &GossipHandle, responder: Arc<Responder>) {
    gossip.set_request_handler(move |from: SocketAddr, request: Vec<u8>| {
        let responder = responder.clone();
        async move {
            if let Ok(r) = Request::decode(&request) {
                if let Some(unit) = r.unit() {
                    let managed = UnitName::parse(unit)
                        .map(|n| responder.manages(&n))
                        .unwrap_or(true); // invalid names get their own error below
                    if !managed {
                        return Ok(Response::Error(format!(
                            "{unit} is not a unit fleet runs on this machine"
                        ))
                        .encode());
                    }
                }
            }
            Ok(handle(from, &request, &responder).await)
        }
    });
}

/// Answers one encoded request (always with an encoded [`Response`]).
pub async fn handle(from: SocketAddr, request: &[u8], responder: &Responder) -> Vec<u8> {
    let response = match Request::decode(request) {
        Ok(r) => {
            tracing::debug!(%from, request = ?r, "relay request");
            responder.answer_from(Some(from), &r).await
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

#[cfg(test)]
mod tests {
    use super::*;

    fn from() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    fn responder() -> Responder {
        Responder::new(
            MachineId::parse("m1").unwrap(),
            false,
            "/nonexistent/fleet-units".into(),
        )
    }

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn only_units_whose_file_fleet_wrote_are_managed() {
        let dir = tempfile::tempdir().unwrap();
        let r = Responder::new(MachineId::parse("m1").unwrap(), false, dir.path().into());
        let unit = "[Service]\nExecStart=/bin/true\n";
        std::fs::write(
            dir.path().join("ours.service"),
            format!("{}\n{unit}", fleet_systemd::OWNER_MARKER),
        )
        .unwrap();
        std::fs::write(dir.path().join("stray.service"), unit).unwrap();
        let n = |s: &str| UnitName::parse(s).unwrap();
        assert!(r.manages(&n("ours.service")));
        assert!(
            !r.manages(&n("stray.service")),
            "a file fleet did not write"
        );
        assert!(!r.manages(&n("sshd.service")), "no file at all");
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
            Request::SetMetadata {
                changes: vec![("a".into(), Some("b".into())), ("c".into(), None)],
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
            Response::MetadataSet,
            Response::Error("no".into()),
        ] {
            assert_eq!(Response::decode(&r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn machine_ids_are_typed_checked_when_decoded_and_encoded_as_strings() {
        let typed = [
            Request::Support {
                machine: MachineId::parse("m1").unwrap(),
                lease: -3,
            },
            Request::Vote {
                machine: MachineId::parse("0123456789abcdef0123456789abcdef").unwrap(),
                lease: 1 << 40,
            },
        ];
        let raw: [Request<String>; 2] = [
            Request::Support {
                machine: "m1".into(),
                lease: -3,
            },
            Request::Vote {
                machine: "0123456789abcdef0123456789abcdef".into(),
                lease: 1 << 40,
            },
        ];
        for (t, r) in typed.into_iter().zip(raw) {
            // The same bytes as when the wire carried strings (what older fleetds send and read).
            assert_eq!(t.encode(), postcard::to_stdvec(&r).unwrap());
            assert_eq!(Request::decode(&t.encode()), Ok(t));
        }
        let long = "a".repeat(65);
        for bad in ["", "m-1", "m 1", long.as_str()] {
            let b = postcard::to_stdvec(&Request::<String>::Vote {
                machine: bad.into(),
                lease: 7,
            })
            .unwrap();
            let e = Request::decode(&b).unwrap_err().to_string();
            assert!(e.contains("machine ID"), "{bad:?}: {e}");
            if !bad.is_empty() {
                assert!(e.contains(&format!("{bad:?}")), "{bad:?}: {e}");
            }
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
        let responder = responder();
        block(async {
            for g in garbage {
                let answer = handle(from(), &g, &responder).await;
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
                let got = responder().answer(&r).await;
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

    /// A cluster view that records the metadata ops it applies.
    #[derive(Default)]
    struct Recorder(std::sync::Mutex<Vec<MetadataOp>>);

    impl ClusterView for Recorder {
        fn machines(&self) -> Vec<crate::api::MachineInfo> {
            Vec::new()
        }
        fn unit_states(&self) -> Vec<crate::api::UnitStateInfo> {
            Vec::new()
        }
        fn apply_metadata(
            &self,
            ops: &[MetadataOp],
        ) -> Result<(), crate::api::cluster::MetadataError> {
            self.0.lock().unwrap().extend_from_slice(ops);
            Ok(())
        }
    }

    #[test]
    fn metadata_changes_are_all_validated_then_applied_to_this_machine() {
        let rec = Arc::new(Recorder::default());
        let r = responder().with_cluster(rec.clone());
        let set = |k: &str, v: Option<&str>| (k.to_string(), v.map(str::to_string));
        block(async {
            for bad in [
                vec![set("region", Some("eu")), set("bad key", Some("x"))],
                vec![set("region", Some("eu")), set("disk", Some(""))],
                vec![set("", None)],
            ] {
                let req = Request::SetMetadata { changes: bad };
                let got = Response::decode(&handle(from(), &req.encode(), &r).await).unwrap();
                assert!(matches!(got, Response::Error(_)), "{req:?} -> {got:?}");
            }
            assert!(rec.0.lock().unwrap().is_empty(), "nothing applied");
            let req = Request::SetMetadata {
                changes: vec![set("region", Some("eu")), set("disk", None)],
            };
            let got = Response::decode(&handle(from(), &req.encode(), &r).await).unwrap();
            assert_eq!(got, Response::MetadataSet);
        });
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![
                MetadataOp::Set {
                    machine: MachineId::parse("m1").unwrap(),
                    key: "region".into(),
                    value: "eu".into()
                },
                MetadataOp::Remove {
                    machine: MachineId::parse("m1").unwrap(),
                    key: "disk".into()
                }
            ]
        );
        // Without a cluster view, a machine refuses metadata changes.
        let req = Request::SetMetadata {
            changes: vec![set("region", Some("eu"))],
        };
        assert!(matches!(
            block(responder().answer(&req)),
            Response::Error(_)
        ));
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
        let relay = GossipRelay::new(local, None, Arc::new(responder()));
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

    #[test]
    fn a_witness_votes_only_against_a_machine_its_gossip_does_not_see_alive() {
        let t = fleet_decide::Timing::new(
            std::time::Duration::from_millis(30),
            std::time::Duration::from_secs(1),
        );
        let service = Arc::new(crate::agent::witness::WitnessService::load(t.clone(), None));
        // A fresh witness stays quiet for a while (it may have supported before a restart).
        std::thread::sleep(t.vote_after_support() + std::time::Duration::from_millis(30));
        let seen_alive = MachineId::parse("m2").unwrap();
        let r = responder().with_witness(
            service,
            Arc::new(|_: &MachineId| None),
            Arc::new(move |m: &MachineId| *m == seen_alive),
        );
        let vote = |m: &str| Request::Vote {
            machine: MachineId::parse(m).unwrap(),
            lease: 7,
        };
        block(async {
            let alive = r.answer_from(Some(from()), &vote("m2")).await;
            assert!(matches!(alive, Response::Granted(false)), "{alive:?}");
            let gone = r.answer_from(Some(from()), &vote("m3")).await;
            assert!(matches!(gone, Response::Granted(true)), "{gone:?}");
        });
    }
}
