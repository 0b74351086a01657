//! Who may say what: a peer speaks only for the machine its certificate names, and what it relays
//! about other machines is limited to what SWIM's rules allow about the lives of them this node
//! already knows.

use std::net::SocketAddr;

use foca::{Member, State};

use crate::core::{Error, Node};
use crate::types::{MachineId, NodeIdentity};

/// How often one (certificate, claimed identity) pair is logged at most.
const IMPERSONATION_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Node {
    /// Refuses an input whose sender is not the machine of the peer's certificate (when the
    /// transport authenticated one).
    pub(crate) fn check_sender(
        &mut self,
        from: SocketAddr,
        certified: Option<&MachineId>,
        claimed: &NodeIdentity,
    ) -> Result<(), Error> {
        match certified {
            Some(cert) if claimed.machine_id != *cert => {
                Err(self.impersonation(from, cert, claimed))
            }
            _ => Ok(()),
        }
    }

    fn impersonation(
        &mut self,
        from: SocketAddr,
        certified: &MachineId,
        claimed: &NodeIdentity,
    ) -> Error {
        self.counters.impersonations_refused += 1;
        let key = (certified.clone(), claimed.machine_id.clone());
        let due = match self.warned.get(&key) {
            Some(at) => self.now >= *at + IMPERSONATION_LOG_EVERY,
            None => true,
        };
        if due {
            if self.warned.len() >= 1024 {
                self.warned.clear();
            }
            self.warned.insert(key, self.now);
            tracing::warn!(
                %from,
                certificate = %certified,
                claims = %claimed.machine_id,
                advertised = %claimed.addr,
                refused = self.counters.impersonations_refused,
                "refused gossip from a peer that claims another machine's identity: its \
                 certificate is for machine {certified}, it claims to be {}",
                claimed.machine_id
            );
        }
        Error::Impersonation {
            certified: certified.clone(),
            claimed: claimed.machine_id.clone(),
        }
    }

    /// Whether a membership update that `sender` passes on may reach foca. A sender speaks for
    /// itself (its own present or past lives), and news about this node is foca's to judge
    /// (refute, or rejoin). About a third machine, a sender may only relay what concerns the life
    /// of it this node already knows, or introduce a machine this node does not know at all
    /// (that is how joins spread); a different life of a known machine is refused, and the
    /// machine is asked directly.
    pub(crate) fn admit(&mut self, sender: &NodeIdentity, update: &Member<NodeIdentity>) -> bool {
        let id = update.id();
        if id.machine_id == self.identity().machine_id {
            if id == self.identity() && update.state() == State::Suspect {
                // Lifeguard: being suspected is a sign that our own packets are late.
                self.heard_self_suspected(update.incarnation());
                // If foca refutes, this node vouches for its new incarnation.
                self.heard_self_suspicion();
            }
            return true;
        }
        if id.machine_id == sender.machine_id {
            return id.incarnation <= sender.incarnation;
        }
        let Some(known) = self.roster.get(&id.machine_id) else {
            return true;
        };
        if known.identity == *id {
            // SWIM's rules, except that only the machine itself raises its incarnation.
            let (inc, state) = (known.incarnation, known.state);
            return self.vouched_for(sender, update, inc, state);
        }
        if id.incarnation > known.identity.incarnation {
            self.counters.rumours_refused += 1;
            tracing::debug!(relayed_by = %sender.machine_id, claimed = ?id, known = ?known.identity, "rumour of a new life refused; asking the machine");
            let machine = id.machine_id.clone();
            self.want_check(machine);
        }
        false
    }

    /// Whether foca takes a SWIM packet with this header at all: it drops, unread, a packet
    /// addressed to another identity than this node's (an older life of it: a datagram that
    /// waited out a partition in a connection's queue, say), unless it is an announce to this
    /// machine, and a packet from this machine itself.
    pub(crate) fn foca_accepts(&self, header: &foca::Header<NodeIdentity>) -> bool {
        let me = self.identity();
        if header.src.machine_id == me.machine_id {
            return false;
        }
        header.dst == *me
            || (header.message == foca::Message::Announce && header.dst.machine_id == me.machine_id)
    }

    /// Follows in the roster what foca is about to apply from a datagram it accepts
    /// ([`Node::foca_accepts`]): the sender is alive (at its incarnation), and the updates it
    /// passes on if foca then holds the sender active. foca ignores every update from a sender
    /// it holds down, or from an older life of a machine than the one it knows (its identity
    /// loses the conflict); the roster must not learn them either, or it drifts from foca (a
    /// stale verdict about a live member would stay in the roster, which anti-entropy then
    /// teaches to the others, and the member would be told it is down at every exchange).
    pub(crate) fn observe_datagram(
        &mut self,
        sender: &Member<NodeIdentity>,
        updates: &[Member<NodeIdentity>],
    ) {
        let id = sender.id();
        let active = match self.roster.get(&id.machine_id) {
            None => true,
            Some(k) if k.identity == *id => k.state != State::Down,
            Some(k) => k.identity.incarnation <= id.incarnation,
        };
        self.observe_sender(sender);
        if active {
            self.observe_updates(updates);
        }
    }

    /// Follows in the roster what foca is about to apply from a sync: all of `updates` (foca's
    /// `apply_many` takes each on its own merits, whoever sent them), and the sender alive.
    pub(crate) fn observe_sync(
        &mut self,
        sender: &Member<NodeIdentity>,
        updates: &[Member<NodeIdentity>],
    ) {
        self.observe_sender(sender);
        self.observe_updates(updates);
    }

    /// The sender is alive at its incarnation; state its identity publishes may now be accepted
    /// up to its epoch.
    fn observe_sender(&mut self, sender: &Member<NodeIdentity>) {
        let now = self.now;
        self.roster.observe(sender, now);
        self.heard_first_hand(sender.id(), sender.incarnation());
        self.store
            .allow_epoch(&sender.id().machine_id, sender.id().incarnation);
    }

    /// Updates foca applies: the roster follows them, and state of the identities they hold
    /// alive may be accepted up to their epochs.
    fn observe_updates(&mut self, updates: &[Member<NodeIdentity>]) {
        let now = self.now;
        let me = self.identity().machine_id.clone();
        for u in updates {
            if u.id().machine_id == me {
                continue;
            }
            self.roster.observe(u, now);
            if u.state() != State::Down {
                self.store
                    .allow_epoch(&u.id().machine_id, u.id().incarnation);
            }
        }
    }
}
