//! Unit state changes and job results, pushed by systemd (no polling).

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::sync::{mpsc, Notify};
use zbus::message::Type as MessageType;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};
use zbus::{Connection, MatchRule, Message, MessageStream};

use crate::error::{Error, Result};
use crate::manager::{ListedUnit, MANAGER_IFACE, MANAGER_PATH, SYSTEMD};
use crate::names::unit_name_from_path;
use crate::state::{ActiveState, JobResult, LoadState, SubState, UnitState};

mod backlog;

use backlog::Backlog;
pub use backlog::MAX_BACKLOG;

const UNIT_IFACE: &str = "org.freedesktop.systemd1.Unit";
const SERVICE_IFACE: &str = "org.freedesktop.systemd1.Service";
const PROPERTIES_IFACE: &str = "org.freedesktop.DBus.Properties";

/// Units whose `LoadState` one `ListUnitsByNames` call reads.
const LOAD_STATES_PER_CALL: usize = 256;

/// Something systemd told us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A unit's load/active/sub state or main PID changed; `state` is the complete new state. When
    /// the consumer reads more slowly than a unit changes, it sees the unit's newest state only (the
    /// states in between are skipped).
    UnitChanged {
        /// Unit name.
        name: String,
        /// Its state now.
        state: UnitState,
    },
    /// systemd freed a unit object (e.g. an unloaded, inactive unit); it is `not-found` now. A
    /// reload frees every unit object and creates again those that still exist: only a unit it did not
    /// create again is reported, when the reload ends (before [`Event::Reloaded`]).
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
    /// Events were dropped (more than [`MAX_BACKLOG`] waited for the consumer, or a unit's state could
    /// not be read): re-read the states of every unit you follow ([`crate::Systemd::list_units`]).
    /// The events after it are newer than what was dropped.
    Resync,
    /// The bus connection is gone; this is the last event. Reconnect (see [`crate::Systemd`]).
    Disconnected,
}

/// A stream of [`Event`]s from one systemd. Built by [`crate::Systemd::subscribe`] (which calls
/// `Manager.Subscribe()`); it follows `PropertiesChanged` of unit objects and the Manager's
/// `JobRemoved`, `UnitRemoved`, `UnitNew` and `Reloading` signals.
///
/// Events are only about changes after the subscription: read the current states once with
/// [`crate::Systemd::list_units`] after subscribing. A background task reads the signals as they come
/// (so a consumer that reads slowly never stalls the connection: zbus would stop reading replies once
/// a signal queue is full) into a bounded queue that keeps one state per unit (a newer state replaces
/// a queued one) and at most [`MAX_BACKLOG`] events; past that it drops them all for one
/// [`Event::Resync`]. systemd's signals do not carry `LoadState`: a second task reads it for every
/// unit that needs it (once per unit, and again after a reload) with one `ListUnitsByNames` call for
/// all of them. It covers every unit of the manager: filter by name.
///
/// Use [`Subscription::next`], or it as a `futures_core::Stream`.
#[derive(Debug)]
pub struct Subscription {
    shared: Arc<Mutex<Shared>>,
    /// Rung (capacity 1) whenever the queue may have something new.
    bell: mpsc::Receiver<()>,
    reader: tokio::task::JoinHandle<()>,
    resolver: tokio::task::JoinHandle<()>,
}

/// What the reader, the resolver and the consumer share.
#[derive(Debug)]
struct Shared {
    backlog: Backlog,
    decoder: Decoder,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Subscription {
    pub(crate) async fn start(
        conn: &Connection,
        wanted: UnitFilter,
        max_backlog: usize,
    ) -> Result<Subscription> {
        let rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender(SYSTEMD)
            .and_then(|b| b.path_namespace(MANAGER_PATH))
            .map_err(|e| Error::from_call("AddMatch", "", e))?
            .build();
        let stream = MessageStream::for_match_rule(rule, conn, Some(1024))
            .await
            .map_err(|e| Error::from_call("AddMatch", "", e))?;
        let shared = Arc::new(Mutex::new(Shared {
            backlog: Backlog::new(max_backlog),
            decoder: Decoder::default(),
        }));
        let (bell_tx, bell) = mpsc::channel(1);
        let resolve = Arc::new(Notify::new());
        let reader = tokio::spawn(read_signals(
            stream,
            wanted,
            shared.clone(),
            bell_tx.clone(),
            resolve.clone(),
        ));
        let resolver = tokio::spawn(read_load_states(
            conn.clone(),
            shared.clone(),
            bell_tx,
            resolve,
        ));
        Ok(Subscription {
            shared,
            bell,
            reader,
            resolver,
        })
    }

    /// The next event; `None` after [`Event::Disconnected`]. Cancel safe.
    pub async fn next(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// The next event if one is already queued, without waiting: lets a consumer take a burst of
    /// signals (a batch of starts sends several per unit) in one go.
    pub fn try_next(&mut self) -> Option<Event> {
        lock(&self.shared).backlog.pop()
    }

    /// Events queued now, not yet taken.
    pub fn queued(&self) -> usize {
        lock(&self.shared).backlog.len()
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        loop {
            {
                let mut shared = lock(&self.shared);
                if let Some(ev) = shared.backlog.pop() {
                    return Poll::Ready(Some(ev));
                }
                if shared.backlog.finished() {
                    return Poll::Ready(None);
                }
            }
            match self.bell.poll_recv(cx) {
                Poll::Ready(Some(())) => continue,
                Poll::Ready(None) => return Poll::Ready(lock(&self.shared).backlog.pop()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.reader.abort();
        self.resolver.abort();
    }
}

impl futures_core::Stream for Subscription {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.poll_event(cx)
    }
}

/// Reads the subscription's signals as they come, decodes them (no D-Bus call) and queues what they
/// mean; wakes the resolver when a unit's `LoadState` must be read.
async fn read_signals(
    mut stream: MessageStream,
    wanted: UnitFilter,
    shared: Arc<Mutex<Shared>>,
    bell: mpsc::Sender<()>,
    resolve: Arc<Notify>,
) {
    let mut logged_high_water = 0;
    loop {
        let next =
            std::future::poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut stream), cx))
                .await;
        let signal = match next {
            Some(Ok(msg)) => match Signal::decode(&msg, &wanted) {
                Some(s) => s,
                None => continue,
            },
            // zbus reports errors only when the connection broke.
            Some(Err(_)) | None => {
                lock(&shared).backlog.push(Event::Disconnected);
                let _ = bell.try_send(());
                return;
            }
        };
        let (unresolved, overflowed, high_water) = {
            let mut guard = lock(&shared);
            let Shared { backlog, decoder } = &mut *guard;
            let before = backlog.overflows();
            decoder.apply(signal, backlog);
            (
                decoder.has_unresolved(),
                backlog.overflows() > before,
                backlog.high_water(),
            )
        };
        if overflowed {
            tracing::warn!(
                "systemd's signals came faster than they were taken: dropped the queue, the consumer re-reads every state"
            );
        }
        if high_water >= 2 * logged_high_water.max(64) {
            logged_high_water = high_water;
            tracing::debug!(
                events = high_water,
                "systemd subscription: longest queue so far"
            );
        }
        if unresolved {
            resolve.notify_one();
        }
        let _ = bell.try_send(());
    }
}

/// Reads the `LoadState` of the units the decoder needs it for, many per call.
async fn read_load_states(
    conn: Connection,
    shared: Arc<Mutex<Shared>>,
    bell: mpsc::Sender<()>,
    resolve: Arc<Notify>,
) {
    loop {
        resolve.notified().await;
        loop {
            let (names, epoch) = lock(&shared).decoder.take_unresolved();
            if names.is_empty() {
                break;
            }
            for chunk in names.chunks(LOAD_STATES_PER_CALL) {
                let read = load_states(&conn, chunk).await;
                {
                    let mut guard = lock(&shared);
                    let Shared { backlog, decoder } = &mut *guard;
                    match read {
                        Ok(read) => decoder.resolved(epoch, chunk, read, backlog),
                        Err(e) => {
                            tracing::debug!("reading the load state of {} units: {e}", chunk.len());
                            decoder.unreadable(chunk, backlog);
                        }
                    }
                }
                let _ = bell.try_send(());
            }
        }
    }
}

/// `LoadState` of each of `names` (one `ListUnitsByNames`).
async fn load_states(
    conn: &Connection,
    names: &[String],
) -> zbus::Result<Vec<(String, LoadState)>> {
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let reply = conn
        .call_method(
            Some(SYSTEMD),
            MANAGER_PATH,
            Some(MANAGER_IFACE),
            "ListUnitsByNames",
            &(names,),
        )
        .await?;
    let listed: Vec<ListedUnit> = reply.body().deserialize()?;
    Ok(listed
        .into_iter()
        .map(|l| (l.0, LoadState::from(l.2)))
        .collect())
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

/// Which units a subscription is about.
pub(crate) type UnitFilter = Box<dyn Fn(&str) -> bool + Send>;

/// A signal of a wanted unit, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Signal {
    /// `PropertiesChanged` of a unit's `Service` interface (systemd sends it just before the `Unit`
    /// interface's).
    Service { name: String, main_pid: Option<u32> },
    /// `PropertiesChanged` of a unit's `Unit` interface.
    Unit {
        name: String,
        load: Option<LoadState>,
        active: Option<ActiveState>,
        sub: Option<SubState>,
    },
    /// The Manager's `JobRemoved`.
    Job {
        id: u32,
        job: String,
        unit: String,
        result: JobResult,
    },
    /// The Manager's `UnitRemoved`.
    Removed { name: String },
    /// The Manager's `UnitNew`.
    New { name: String },
    /// The Manager's `Reloading(true)`: a reload started.
    Reloading,
    /// The Manager's `Reloading(false)`: a reload finished.
    Reloaded,
}

impl Signal {
    /// What `msg` says, if it is about a unit `wanted` accepts (or a reload); no D-Bus call.
    fn decode(msg: &Message, wanted: &UnitFilter) -> Option<Signal> {
        let header = msg.header();
        let path = header.path()?.as_str();
        let iface = header.interface()?.as_str();
        let member = header.member()?.as_str();
        let body = msg.body();
        match (iface, member) {
            (PROPERTIES_IFACE, "PropertiesChanged") => {
                let name = unit_name_from_path(path).filter(|n| wanted(n))?;
                let (iface, changed, _invalidated) = body
                    .deserialize::<(String, HashMap<String, OwnedValue>, Vec<String>)>()
                    .ok()?;
                let text = |key: &str| changed.get(key).and_then(|v| <&str>::try_from(v).ok());
                match iface.as_str() {
                    SERVICE_IFACE => Some(Signal::Service {
                        name,
                        main_pid: changed.get("MainPID").and_then(|v| u32::try_from(v).ok()),
                    }),
                    UNIT_IFACE => Some(Signal::Unit {
                        load: text("LoadState").map(LoadState::from),
                        active: text("ActiveState").map(ActiveState::from),
                        sub: text("SubState").map(SubState::from),
                        name,
                    }),
                    _ => None,
                }
            }
            (MANAGER_IFACE, "JobRemoved") if path == MANAGER_PATH => {
                let (id, job, unit, result) = body
                    .deserialize::<(u32, OwnedObjectPath, String, String)>()
                    .ok()?;
                if !wanted(&unit) {
                    return None;
                }
                Some(Signal::Job {
                    id,
                    job: job.as_str().to_string(),
                    unit,
                    result: result.into(),
                })
            }
            (MANAGER_IFACE, "UnitRemoved") if path == MANAGER_PATH => {
                let (name, _path) = body.deserialize::<(String, OwnedObjectPath)>().ok()?;
                wanted(&name).then_some(Signal::Removed { name })
            }
            (MANAGER_IFACE, "UnitNew") if path == MANAGER_PATH => {
                let (name, _path) = body.deserialize::<(String, OwnedObjectPath)>().ok()?;
                wanted(&name).then_some(Signal::New { name })
            }
            (MANAGER_IFACE, "Reloading") if path == MANAGER_PATH => {
                let active: bool = body.deserialize().ok()?;
                Some(if active {
                    Signal::Reloading
                } else {
                    Signal::Reloaded
                })
            }
            _ => None,
        }
    }
}

/// Turns signals into events, merging the `Service` (MainPID) and `Unit` (states) property changes
/// systemd sends one after the other (type-specific interface first), and dropping repeats of an
/// unchanged state. Sans-IO: the `LoadState` reads it needs are made by the caller
/// ([`Decoder::take_unresolved`], [`Decoder::resolved`]).
#[derive(Debug, Default)]
struct Decoder {
    units: HashMap<String, Known>,
    /// Units whose `LoadState` must be read before their state is reported, not asked yet.
    unresolved: BTreeSet<String>,
    /// Units whose `LoadState` is being read.
    asked: BTreeSet<String>,
    /// Counts reloads: a `LoadState` read before one may be stale.
    epoch: u64,
    /// A reload is under way (`Reloading(true)` seen, `Reloading(false)` not yet).
    reloading: bool,
    /// Units systemd freed during the reload under way and has not created again (`UnitNew`) yet. A
    /// reload frees every unit object and creates again all that still exist, running ones included,
    /// without a `PropertiesChanged` for those whose state did not change: only the units still here
    /// at its end were really removed.
    freed_in_reload: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct Known {
    load: Option<LoadState>,
    active: Option<ActiveState>,
    sub: Option<SubState>,
    main_pid: Option<u32>,
    last_sent: Option<UnitState>,
    /// systemd removed the unit while its `LoadState` was being read: the state read is reported
    /// (before the removal), then the unit forgotten.
    removed: bool,
}

impl Decoder {
    /// Takes one signal into account; queues the events it makes on `out`.
    fn apply(&mut self, signal: Signal, out: &mut Backlog) {
        match signal {
            Signal::Service { name, main_pid } => {
                if let Some(pid) = main_pid {
                    self.units.entry(name).or_default().main_pid = Some(pid);
                }
                // The Unit interface's signal follows and carries the event.
            }
            Signal::Unit {
                name,
                load,
                active,
                sub,
            } => {
                let known = self.units.entry(name.clone()).or_default();
                if known.removed {
                    // A new life after the removal: its state comes after the removal, and the
                    // state from before is not reported.
                    known.removed = false;
                    out.unreserve(&name);
                }
                if load.is_some() {
                    known.load = load;
                }
                if active.is_some() {
                    known.active = active;
                }
                if sub.is_some() {
                    known.sub = sub;
                }
                if known.load.is_none() {
                    // systemd does not include LoadState in PropertiesChanged: read it once per
                    // unit (and again after a reload), not per change. Until then the unit's place
                    // in the queue holds back what comes after it.
                    out.reserve(&name);
                    if !self.asked.contains(&name) {
                        self.unresolved.insert(name);
                    }
                    return;
                }
                self.report(&name, out);
            }
            Signal::Job {
                id,
                job,
                unit,
                result,
            } => {
                out.push(Event::JobRemoved {
                    id,
                    job,
                    unit,
                    result,
                });
            }
            Signal::Removed { name } if self.reloading => {
                self.freed_in_reload.insert(name);
            }
            Signal::New { name } => {
                self.freed_in_reload.remove(&name);
            }
            Signal::Reloading => self.reloading = true,
            Signal::Removed { name } => self.removed(name, out),
            Signal::Reloaded => {
                self.reloading = false;
                for name in std::mem::take(&mut self.freed_in_reload) {
                    self.removed(name, out);
                }
                self.epoch += 1;
                for known in self.units.values_mut() {
                    known.load = None; // may have changed: read again on the next change
                }
                out.push(Event::Reloaded);
            }
        }
    }

    /// systemd removed `name` (outside a reload, or at the end of one that did not create it again).
    fn removed(&mut self, name: String, out: &mut Backlog) {
        let reading = self.unresolved.contains(&name) || self.asked.contains(&name);
        match self.units.get_mut(&name) {
            Some(known) if reading => known.removed = true,
            _ => {
                self.units.remove(&name);
            }
        }
        out.push(Event::UnitRemoved { name });
    }

    /// Queues `name`'s state if it is complete and not the one last queued (else frees its place).
    fn report(&mut self, name: &str, out: &mut Backlog) {
        let Some(known) = self.units.get_mut(name) else {
            out.unreserve(name);
            return;
        };
        let (Some(load_state), Some(active_state), Some(sub_state)) =
            (known.load.clone(), known.active.clone(), known.sub.clone())
        else {
            out.unreserve(name);
            return;
        };
        let main_pid = known
            .main_pid
            .filter(|p| *p != 0 && active_state.may_have_main_pid());
        let state = UnitState {
            load_state,
            active_state,
            sub_state,
            main_pid,
        };
        if known.last_sent.as_ref() == Some(&state) {
            out.unreserve(name);
            return;
        }
        known.last_sent = Some(state.clone());
        out.push(Event::UnitChanged {
            name: name.to_string(),
            state,
        });
    }

    fn has_unresolved(&self) -> bool {
        !self.unresolved.is_empty()
    }

    /// The units whose `LoadState` to read now, and the epoch to give [`Decoder::resolved`].
    fn take_unresolved(&mut self) -> (Vec<String>, u64) {
        let names: Vec<String> = std::mem::take(&mut self.unresolved).into_iter().collect();
        self.asked.extend(names.iter().cloned());
        (names, self.epoch)
    }

    /// The `LoadState`s read for `asked` (taken at `epoch`): reports those units. A read that a
    /// reload overtook may be stale: it is used for this report only, and the unit's next change reads
    /// it again (re-reading at once instead could starve the queue while reloads keep coming).
    fn resolved(
        &mut self,
        epoch: u64,
        asked: &[String],
        read: Vec<(String, LoadState)>,
        out: &mut Backlog,
    ) {
        for name in asked {
            self.asked.remove(name);
        }
        let fresh = epoch == self.epoch;
        let listed: BTreeSet<&str> = read.iter().map(|(n, _)| n.as_str()).collect();
        for name in asked.iter().filter(|n| !listed.contains(n.as_str())) {
            out.unreserve(name); // not in the reply (systemd lists every name asked)
        }
        for (name, load) in read {
            let Some(known) = self.units.get_mut(&name) else {
                out.unreserve(&name); // removed meanwhile
                continue;
            };
            if known.load.is_some() {
                // A signal carried it meanwhile.
                self.report(&name, out);
            } else {
                known.load = Some(load);
                self.report(&name, out);
                if !fresh {
                    if let Some(known) = self.units.get_mut(&name) {
                        known.load = None;
                    }
                }
            }
            if self.units.get(&name).is_some_and(|k| k.removed) {
                self.units.remove(&name);
            }
        }
    }

    /// The `LoadState`s of `asked` could not be read: their states are not known, so the consumer
    /// must re-read everything ([`Event::Resync`]).
    fn unreadable(&mut self, asked: &[String], out: &mut Backlog) {
        for name in asked {
            self.asked.remove(name);
        }
        out.drop_all();
    }
}

#[cfg(test)]
mod tests;
