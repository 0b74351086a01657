//! Unit state changes and job results, pushed by systemd (no polling).

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::mpsc;
use zbus::message::Type as MessageType;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};
use zbus::{Connection, MatchRule, Message, MessageStream};

use crate::error::{Error, Result};
use crate::manager::{MANAGER_IFACE, MANAGER_PATH, SYSTEMD};
use crate::names::unit_name_from_path;
use crate::state::{ActiveState, JobResult, LoadState, UnitState};

const UNIT_IFACE: &str = "org.freedesktop.systemd1.Unit";
const SERVICE_IFACE: &str = "org.freedesktop.systemd1.Service";
const PROPERTIES_IFACE: &str = "org.freedesktop.DBus.Properties";

/// Something systemd told us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A unit's load/active/sub state or main PID changed; `state` is the complete new state.
    UnitChanged {
        /// Unit name.
        name: String,
        /// Its state now.
        state: UnitState,
    },
    /// systemd freed a unit object (e.g. an unloaded, inactive unit); it is `not-found` now.
    UnitRemoved {
        /// Unit name.
        name: String,
    },
    /// A job finished.
    JobRemoved {
        /// Job id.
        id: u32,
        /// Job object path (as returned by `start_unit` & co).
        job: String,
        /// The unit it was for.
        unit: String,
        /// How it ended.
        result: JobResult,
    },
    /// systemd finished a reload (`Reload`, `daemon-reload`): re-read states if you cache them.
    Reloaded,
    /// The bus connection is gone; this is the last event. Reconnect (see [`crate::Systemd`]).
    Disconnected,
}

/// A stream of [`Event`]s from one systemd. Built by [`crate::Systemd::subscribe`] (which calls
/// `Manager.Subscribe()`); it follows `PropertiesChanged` of unit objects and the Manager's
/// `JobRemoved`, `UnitRemoved` and `Reloading` signals.
///
/// Events are only about changes after the subscription: read the current states once with
/// [`crate::Systemd::list_units`] after subscribing. A background task moves signals from the bus
/// into an unbounded queue, so a consumer that reads slowly never stalls the connection (zbus
/// would otherwise stop reading replies once a signal queue is full); the queue grows instead.
/// It covers every unit of the manager: filter by name.
///
/// Use [`Subscription::next`], or it as a `futures_core::Stream`.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::UnboundedReceiver<Event>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscription {
    pub(crate) async fn start(conn: &Connection, wanted: UnitFilter) -> Result<Subscription> {
        let rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender(SYSTEMD)
            .and_then(|b| b.path_namespace(MANAGER_PATH))
            .map_err(|e| Error::from_call("AddMatch", "", e))?
            .build();
        let stream = MessageStream::for_match_rule(rule, conn, Some(1024))
            .await
            .map_err(|e| Error::from_call("AddMatch", "", e))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = conn.clone();
        let task = tokio::spawn(async move {
            let mut signals = drain(stream);
            let mut decoder = Decoder {
                conn,
                wanted,
                units: HashMap::new(),
            };
            loop {
                tokio::select! {
                    msg = signals.recv() => match msg {
                        Some(Ok(msg)) => {
                            if let Some(ev) = decoder.decode(&msg).await {
                                if tx.send(ev).is_err() {
                                    return;
                                }
                            }
                        }
                        Some(Err(_)) | None => {
                            let _ = tx.send(Event::Disconnected);
                            return;
                        }
                    },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Subscription { rx, task })
    }

    /// The next event; `None` after [`Event::Disconnected`].
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is already queued, without waiting: lets a consumer take a burst of
    /// signals (a batch of starts sends several per unit) in one go.
    pub fn try_next(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl futures_core::Stream for Subscription {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

/// Moves messages from a zbus stream into an unbounded channel (so the connection's reader never
/// waits for us) until the stream ends or the receiver is dropped. A stream error is forwarded
/// and ends it (zbus reports errors only when the connection broke).
pub(crate) fn drain(mut stream: MessageStream) -> mpsc::UnboundedReceiver<zbus::Result<Message>> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let next = std::future::poll_fn(|cx| {
                futures_core::Stream::poll_next(Pin::new(&mut stream), cx)
            });
            tokio::select! {
                item = next => match item {
                    Some(Ok(msg)) => {
                        if tx.send(Ok(msg)).is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                    None => return,
                },
                _ = tx.closed() => return,
            }
        }
    });
    rx
}

/// Turns signals into events, merging the `Service` (MainPID) and `Unit` (states) property
/// changes systemd sends one after the other (type-specific interface first), and dropping
/// repeats of an unchanged state.
/// Which units a subscription is about.
pub(crate) type UnitFilter = Box<dyn Fn(&str) -> bool + Send>;

struct Decoder {
    conn: Connection,
    wanted: UnitFilter,
    units: HashMap<String, Known>,
}

/// `LoadState` of the unit object at `path`; `None` if it cannot be read (unit gone).
async fn load_state(conn: &Connection, path: &str) -> Option<LoadState> {
    let reply = conn
        .call_method(
            Some(SYSTEMD),
            path,
            Some(PROPERTIES_IFACE),
            "Get",
            &(UNIT_IFACE, "LoadState"),
        )
        .await
        .ok()?;
    let value: OwnedValue = reply.body().deserialize().ok()?;
    <&str>::try_from(&value).ok().map(LoadState::from)
}

#[derive(Debug, Default)]
struct Known {
    load: Option<LoadState>,
    active: Option<ActiveState>,
    sub: Option<String>,
    main_pid: Option<u32>,
    last_sent: Option<UnitState>,
}

impl Decoder {
    async fn decode(&mut self, msg: &Message) -> Option<Event> {
        let header = msg.header();
        let path = header.path()?.as_str().to_string();
        let iface = header.interface()?.as_str().to_string();
        let member = header.member()?.as_str().to_string();
        let body = msg.body();
        match (iface.as_str(), member.as_str()) {
            (PROPERTIES_IFACE, "PropertiesChanged") => {
                let name = unit_name_from_path(&path).filter(|n| (self.wanted)(n))?;
                let (iface, changed, _invalidated) = body
                    .deserialize::<(String, HashMap<String, OwnedValue>, Vec<String>)>()
                    .ok()?;
                self.properties_changed(name, &path, &iface, &changed).await
            }
            (MANAGER_IFACE, "JobRemoved") if path == MANAGER_PATH => {
                let (id, job, unit, result) = body
                    .deserialize::<(u32, OwnedObjectPath, String, String)>()
                    .ok()?;
                if !(self.wanted)(&unit) {
                    return None;
                }
                Some(Event::JobRemoved {
                    id,
                    job: job.as_str().to_string(),
                    unit,
                    result: result.into(),
                })
            }
            (MANAGER_IFACE, "UnitRemoved") if path == MANAGER_PATH => {
                let (name, _path) = body.deserialize::<(String, OwnedObjectPath)>().ok()?;
                if !(self.wanted)(&name) {
                    return None;
                }
                self.units.remove(&name);
                Some(Event::UnitRemoved { name })
            }
            (MANAGER_IFACE, "Reloading") if path == MANAGER_PATH => {
                let active: bool = body.deserialize().ok()?;
                if active {
                    return None;
                }
                for known in self.units.values_mut() {
                    known.load = None; // may have changed: read again on the next change
                }
                Some(Event::Reloaded)
            }
            _ => None,
        }
    }

    async fn properties_changed(
        &mut self,
        name: String,
        path: &str,
        iface: &str,
        changed: &HashMap<String, OwnedValue>,
    ) -> Option<Event> {
        let text = |key: &str| changed.get(key).and_then(|v| <&str>::try_from(v).ok());
        let known = self.units.entry(name.clone()).or_default();
        match iface {
            SERVICE_IFACE => {
                if let Some(pid) = changed.get("MainPID").and_then(|v| u32::try_from(v).ok()) {
                    known.main_pid = Some(pid);
                }
                None // the Unit interface's signal follows and carries the event
            }
            UNIT_IFACE => {
                if let Some(s) = text("LoadState") {
                    known.load = Some(s.into());
                }
                if known.load.is_none() {
                    // systemd does not include LoadState in PropertiesChanged: read it once per
                    // unit (and again after a reload), not per change.
                    known.load = Some(load_state(&self.conn, path).await?);
                }
                if let Some(s) = text("ActiveState") {
                    known.active = Some(s.into());
                }
                if let Some(s) = text("SubState") {
                    known.sub = Some(s.to_string());
                }
                let active_state = known.active.clone()?;
                let main_pid = known
                    .main_pid
                    .filter(|p| *p != 0 && active_state.may_have_main_pid());
                let state = UnitState {
                    load_state: known.load.clone()?,
                    active_state,
                    sub_state: known.sub.clone()?,
                    main_pid,
                };
                if known.last_sent.as_ref() == Some(&state) {
                    return None;
                }
                known.last_sent = Some(state.clone());
                Some(Event::UnitChanged { name, state })
            }
            _ => None,
        }
    }
}
