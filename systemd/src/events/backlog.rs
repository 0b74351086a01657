//! The queue between systemd's signals and a [`super::Subscription`]'s reader: bounded, and
//! coalesced per unit.
//!
//! A consumer that follows unit states only needs each unit's newest state, so a unit's queued
//! `UnitChanged` is replaced in place by a newer one (it keeps its place in the queue); a
//! `UnitRemoved` is queued behind it, and a state after the removal behind that.
//! Job results and reloads are queued one each. A unit whose state cannot be told yet (its
//! `LoadState` is being read) holds a place ([`Backlog::reserve`]) that nothing behind it passes, so
//! the events come in the order of systemd's signals. When more than `cap` events wait anyway, all of them
//! are dropped and the consumer gets [`Event::Resync`] first: it re-reads every state, so no state
//! change is lost, and memory stays bounded however far behind the consumer falls (an unbounded
//! queue of raw signals grew to hundreds of MB while 1,000 units started: docs/benchmarks.md).

use std::collections::{HashMap, VecDeque};

use super::Event;

/// Events a [`super::Subscription`] holds before it drops them all for one [`Event::Resync`]. With
/// coalescing a queue holds at most one state per unit plus the job results and reloads not yet
/// taken, so this is only reached by a consumer that stopped reading for thousands of jobs.
pub const MAX_BACKLOG: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Open,
    /// The connection broke; `Disconnected` is delivered after the queued events.
    Disconnected,
    /// `Disconnected` was delivered.
    Finished,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct Backlog {
    cap: usize,
    items: VecDeque<Slot>,
    /// Sequence number of `items[0]`.
    first: u64,
    /// Unit → sequence number of its queued `UnitChanged` (a newer state replaces it). A
    /// `UnitRemoved` is queued after it and ends it: states after a removal come after it.
    queued: HashMap<String, u64>,
    /// Unit → sequence number of its reserved place, and whether a `UnitRemoved` was queued after
    /// that place.
    waiting: HashMap<String, (u64, bool)>,
    /// Events were dropped: the next event is `Resync`.
    lost: bool,
    end: End,
    /// Times the queue overflowed (for logs).
    overflows: u64,
    /// The longest the queue has been (for logs).
    high_water: usize,
}

/// A place in the queue.
#[derive(Debug)]
enum Slot {
    Ready(Event),
    /// The unit's state comes once its `LoadState` is read.
    Waiting,
    /// A reserved place that turned out to have nothing to report.
    Empty,
}

impl Backlog {
    pub(crate) fn new(cap: usize) -> Backlog {
        Backlog {
            cap: cap.max(1),
            items: VecDeque::new(),
            first: 0,
            queued: HashMap::new(),
            waiting: HashMap::new(),
            lost: false,
            end: End::Open,
            overflows: 0,
            high_water: 0,
        }
    }

    fn index(&self, seq: u64) -> usize {
        (seq - self.first) as usize
    }

    /// Queues `ev` (see the module documentation): a unit's state fills its reserved place, or
    /// replaces its queued state; `Disconnected` is delivered after everything already queued, and
    /// nothing is queued after it. Returns whether the queue overflowed.
    pub(crate) fn push(&mut self, ev: Event) -> bool {
        if self.end != End::Open {
            return false;
        }
        match ev {
            Event::Disconnected => {
                self.end = End::Disconnected;
                false
            }
            Event::UnitChanged { ref name, .. } => {
                let name = name.clone();
                if let Some((seq, removed_after)) = self.waiting.remove(&name) {
                    let i = self.index(seq);
                    self.items[i] = Slot::Ready(ev);
                    if !removed_after {
                        self.queued.insert(name, seq);
                    }
                    return false;
                }
                if let Some(&seq) = self.queued.get(&name) {
                    let i = self.index(seq);
                    self.items[i] = Slot::Ready(ev);
                    return false;
                }
                let (overflowed, seq) = self.append(Slot::Ready(ev));
                self.queued.insert(name, seq);
                overflowed
            }
            Event::UnitRemoved { ref name } => {
                let name = name.clone();
                self.queued.remove(&name);
                if let Some((_, removed_after)) = self.waiting.get_mut(&name) {
                    *removed_after = true;
                }
                self.append(Slot::Ready(ev)).0
            }
            ev => self.append(Slot::Ready(ev)).0,
        }
    }

    /// Holds a place for `unit`'s state, to be filled by [`Backlog::push`] of its next state (or
    /// freed by [`Backlog::unreserve`]); events behind it wait. A unit's queued state becomes its
    /// place; nothing happens when it has one already. Returns whether the queue overflowed.
    pub(crate) fn reserve(&mut self, unit: &str) -> bool {
        if self.end != End::Open || self.waiting.contains_key(unit) {
            return false;
        }
        if let Some(seq) = self.queued.remove(unit) {
            let i = self.index(seq);
            self.items[i] = Slot::Waiting;
            self.waiting.insert(unit.to_string(), (seq, false));
            return false;
        }
        let (overflowed, seq) = self.append(Slot::Waiting);
        self.waiting.insert(unit.to_string(), (seq, false));
        overflowed
    }

    /// Frees `unit`'s reserved place, if it has one (its state had nothing new, or is to come later).
    pub(crate) fn unreserve(&mut self, unit: &str) {
        if let Some((seq, _)) = self.waiting.remove(unit) {
            let i = self.index(seq);
            self.items[i] = Slot::Empty;
        }
    }

    /// Appends `slot` (dropping everything first if the queue is full); returns whether it overflowed
    /// and the slot's sequence number.
    fn append(&mut self, slot: Slot) -> (bool, u64) {
        let overflowed = self.items.len() >= self.cap;
        if overflowed {
            self.drop_all();
        }
        let seq = self.first + self.items.len() as u64;
        self.items.push_back(slot);
        self.high_water = self.high_water.max(self.items.len());
        (overflowed, seq)
    }

    /// Drops every queued event; the consumer gets [`Event::Resync`] next (a state that could not be
    /// read is such a loss too).
    pub(crate) fn drop_all(&mut self) {
        self.first += self.items.len() as u64;
        self.items.clear();
        self.queued.clear();
        self.waiting.clear();
        self.lost = true;
        self.overflows += 1;
    }

    /// The next event, if any.
    pub(crate) fn pop(&mut self) -> Option<Event> {
        if self.lost {
            self.lost = false;
            return Some(Event::Resync);
        }
        loop {
            match self.items.front() {
                None => break,
                Some(Slot::Waiting) => return None,
                Some(_) => {}
            }
            let slot = self.items.pop_front().expect("checked");
            let seq = self.first;
            self.first += 1;
            let Slot::Ready(ev) = slot else {
                continue; // Empty
            };
            if let Event::UnitChanged { name, .. } = &ev {
                if self.queued.get(name) == Some(&seq) {
                    self.queued.remove(name);
                }
            }
            return Some(ev);
        }
        if self.end == End::Disconnected {
            self.end = End::Finished;
            return Some(Event::Disconnected);
        }
        None
    }

    /// `Disconnected` was delivered: there will be nothing more.
    pub(crate) fn finished(&self) -> bool {
        self.end == End::Finished
    }

    /// Events queued now.
    pub(crate) fn len(&self) -> usize {
        self.items.len() + usize::from(self.lost)
    }

    pub(crate) fn overflows(&self) -> u64 {
        self.overflows
    }

    pub(crate) fn high_water(&self) -> usize {
        self.high_water
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ActiveState, JobResult, LoadState, UnitState};

    fn changed(name: &str, active: &str) -> Event {
        Event::UnitChanged {
            name: name.into(),
            state: UnitState {
                load_state: LoadState::Loaded,
                active_state: ActiveState::from(active.to_string()),
                sub_state: "x".into(),
                main_pid: None,
            },
        }
    }

    fn job(id: u32, unit: &str) -> Event {
        Event::JobRemoved {
            id,
            job: format!("/org/freedesktop/systemd1/job/{id}"),
            unit: unit.into(),
            result: JobResult::Done,
        }
    }

    fn drain(b: &mut Backlog) -> Vec<Event> {
        std::iter::from_fn(|| b.pop()).collect()
    }

    #[test]
    fn a_units_newer_state_replaces_its_queued_one_in_place() {
        let mut b = Backlog::new(100);
        b.push(changed("a.service", "activating"));
        b.push(job(1, "a.service"));
        b.push(changed("b.service", "activating"));
        b.push(changed("a.service", "active"));
        b.push(Event::UnitRemoved {
            name: "b.service".into(),
        });
        // A removal is queued behind the unit's state, and a state after it behind the removal.
        b.push(changed("b.service", "active"));
        assert_eq!(b.len(), 5);
        assert_eq!(
            drain(&mut b),
            vec![
                changed("a.service", "active"),
                job(1, "a.service"),
                changed("b.service", "activating"),
                Event::UnitRemoved {
                    name: "b.service".into()
                },
                changed("b.service", "active"),
            ]
        );
        // Once taken, a unit's next state is queued anew, behind what came meanwhile.
        b.push(job(2, "b.service"));
        b.push(changed("a.service", "deactivating"));
        b.push(changed("a.service", "inactive"));
        assert_eq!(
            drain(&mut b),
            vec![job(2, "b.service"), changed("a.service", "inactive")]
        );
    }

    #[test]
    fn thousands_of_signals_for_a_few_units_hold_one_event_per_unit() {
        let mut b = Backlog::new(8);
        for round in 0..10_000 {
            for u in 0..5 {
                let st = if round % 2 == 0 {
                    "activating"
                } else {
                    "active"
                };
                assert!(!b.push(changed(&format!("u{u}.service"), st)));
            }
        }
        assert_eq!(b.len(), 5);
        assert_eq!(b.overflows(), 0);
        let got = drain(&mut b);
        assert_eq!(got.len(), 5);
        assert!(got
            .iter()
            .all(|e| matches!(e, Event::UnitChanged { state, .. }
            if state.active_state == ActiveState::Active)));
    }

    #[test]
    fn overflow_drops_everything_queued_and_delivers_resync_first_then_newer_events() {
        let mut b = Backlog::new(4);
        for i in 0..4 {
            assert!(!b.push(changed(&format!("u{i}.service"), "active")));
        }
        assert_eq!(b.high_water(), 4);
        // The fifth distinct event does not fit: the four are dropped, a resync is due.
        assert!(b.push(job(9, "u9.service")));
        assert_eq!(b.overflows(), 1);
        // A unit whose queued state was dropped is queued anew (not "replaced" into a dropped slot).
        assert!(!b.push(changed("u0.service", "failed")));
        assert!(!b.push(changed("u0.service", "inactive")));
        assert_eq!(
            drain(&mut b),
            vec![
                Event::Resync,
                job(9, "u9.service"),
                changed("u0.service", "inactive")
            ]
        );
        assert_eq!(b.pop(), None);
        // Bounded whatever comes: 10,000 job results never hold more than `cap` events.
        for i in 0..10_000 {
            b.push(job(i, "x.service"));
            assert!(b.len() <= 5, "{}", b.len());
        }
        assert_eq!(b.pop(), Some(Event::Resync));
    }

    #[test]
    fn a_reserved_place_holds_back_what_came_after_it_until_filled_or_freed() {
        let mut b = Backlog::new(100);
        b.reserve("a.service");
        b.push(job(1, "a.service"));
        b.reserve("b.service");
        b.push(job(2, "b.service"));
        assert_eq!(b.pop(), None, "a's state comes first");
        b.push(changed("a.service", "active"));
        assert_eq!(
            drain(&mut b),
            vec![changed("a.service", "active"), job(1, "a.service")]
        );
        b.reserve("b.service"); // already has its place
        b.unreserve("b.service");
        // A removal while a place waits comes after the state that fills it.
        b.reserve("c.service");
        b.push(Event::UnitRemoved {
            name: "c.service".into(),
        });
        assert_eq!(b.pop(), Some(job(2, "b.service")));
        assert_eq!(b.pop(), None);
        b.push(changed("c.service", "active"));
        b.push(changed("c.service", "failed")); // after the removal: not into the filled place
        assert_eq!(
            drain(&mut b),
            vec![
                changed("c.service", "active"),
                Event::UnitRemoved {
                    name: "c.service".into()
                },
                changed("c.service", "failed"),
            ]
        );
        assert_eq!(b.len(), 0);
        // A reserved place counts toward the bound.
        let mut b = Backlog::new(2);
        b.reserve("a.service");
        b.push(job(1, "a.service"));
        assert!(b.reserve("b.service"));
        assert_eq!(b.pop(), Some(Event::Resync));
        assert_eq!(b.pop(), None, "b's place waits");
    }

    #[test]
    fn disconnected_comes_after_the_queued_events_and_ends_the_stream() {
        let mut b = Backlog::new(10);
        b.push(changed("a.service", "active"));
        b.push(Event::Disconnected);
        b.push(changed("b.service", "active")); // after the end: ignored
        assert!(!b.finished());
        assert_eq!(
            drain(&mut b),
            vec![changed("a.service", "active"), Event::Disconnected]
        );
        assert!(b.finished());
        assert_eq!(b.pop(), None);
    }
}
