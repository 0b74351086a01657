//! Signed state: every state update is signed by its origin's certificate key, and every node
//! checks the signature against the origin's certificate (signed by the cluster CA) before it
//! stores the update or passes it on. A peer that relays state can therefore not make up state in
//! another machine's name, whatever certificate it holds.
//!
//! The core holds no key and does no cryptography itself: it calls a [`Credentials`] (fleetd's is
//! `fleet_gossip_quic::tls::CertCredentials`: the machine's TLS key, the cluster CA, rustls and
//! ring). [`Unsigned`] is the insecure development mode's (and the simulator's): it signs nothing
//! and accepts everything, as that mode authenticates no peer either.
//!
//! Where a receiver gets the origin's certificate: each node publishes its own certificate once
//! per epoch as a pseudo-update ([`crate::Entry::Certificate`], stamp `(epoch, 0)`), which travels
//! like state (pushes, passed on when news) and is never stored with the state; a sync delta
//! carries an origin's certificate whenever the receiver's digest shows it lacks the origin's
//! current epoch (joins, restarts). A node keeps one checked certificate per origin (replaced by a
//! newer epoch's) and forgets it with the origin. See `docs/security.md`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::core::Node;
use crate::store::{Entry, OriginDelta, Update};
use crate::types::{MachineId, Stamp};

/// The largest signature accepted from the wire, in bytes (ECDSA P-384 in DER is at most 104, an
/// RSA-4096 signature 512).
pub const MAX_SIGNATURE: usize = 512;
/// The largest certificate accepted from the wire, in bytes.
pub const MAX_CERTIFICATE: usize = 8192;

/// The cryptography the core calls; see the module docs. Implementations must not panic on any
/// input.
pub trait Credentials: Send + Sync {
    /// Whether updates must be signed and checked. `false` only in the insecure development
    /// mode: then nothing is signed and every update is accepted.
    fn required(&self) -> bool;
    /// This machine's certificate (DER); empty when there is none.
    fn certificate(&self) -> &[u8];
    /// The signature of `message` with this machine's certificate key.
    fn sign(&self, message: &[u8]) -> Vec<u8>;
    /// Checks that `certificate` is signed by the cluster CA, valid now, and names `machine`.
    fn check_certificate(&self, machine: &MachineId, certificate: &[u8]) -> Result<(), String>;
    /// Whether `signature` is the signature of `message` by the key of `certificate` (one that
    /// [`Credentials::check_certificate`] accepted).
    fn verify(&self, certificate: &[u8], message: &[u8], signature: &[u8]) -> bool;
}

/// No signatures (the insecure development mode, simulations): signs nothing, accepts everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unsigned;

impl Credentials for Unsigned {
    fn required(&self) -> bool {
        false
    }
    fn certificate(&self) -> &[u8] {
        &[]
    }
    fn sign(&self, _: &[u8]) -> Vec<u8> {
        Vec::new()
    }
    fn check_certificate(&self, _: &MachineId, _: &[u8]) -> Result<(), String> {
        Ok(())
    }
    fn verify(&self, _: &[u8], _: &[u8], _: &[u8]) -> bool {
        true
    }
}

/// The bytes an origin signs for one update: a domain tag, then the origin, stamp and entry in
/// postcard.
pub fn signed_message(origin: &MachineId, stamp: Stamp, entry: &Entry) -> Vec<u8> {
    #[derive(Serialize)]
    struct Signed<'a> {
        origin: &'a MachineId,
        stamp: Stamp,
        entry: &'a Entry,
    }
    let mut out = b"fleet-gossip-state-v1\0".to_vec();
    postcard::to_io(
        &Signed {
            origin,
            stamp,
            entry,
        },
        &mut out,
    )
    .expect("encoding to a Vec cannot fail");
    out
}

/// Why an update was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No checked certificate of its origin is known here (yet).
    NoCertificate,
    /// Its signature is not its origin's.
    BadSignature,
    /// Not checked: the relay's budget of refusals is spent ([`crate::budget`]).
    OverBudget,
}

/// The checked certificates of the origins this node knows: per origin, the epoch it came with
/// and its DER.
#[derive(Default)]
pub(crate) struct Certificates {
    by_origin: BTreeMap<MachineId, (u64, Vec<u8>)>,
}

impl Certificates {
    pub(crate) fn get(&self, origin: &MachineId) -> Option<&[u8]> {
        self.by_origin.get(origin).map(|(_, c)| c.as_slice())
    }

    /// The kept certificate of `origin` and the epoch it came with.
    fn get_with_epoch(&self, origin: &MachineId) -> Option<(u64, &[u8])> {
        self.by_origin.get(origin).map(|(e, c)| (*e, c.as_slice()))
    }

    /// Whether a certificate that came with `epoch` would be news (none known, or one of an older
    /// epoch that differs). The same certificate with a later epoch only moves the epoch on.
    pub(crate) fn wants(&mut self, origin: &MachineId, epoch: u64, der: &[u8]) -> bool {
        match self.by_origin.get_mut(origin) {
            None => true,
            Some((e, c)) if epoch > *e && c.as_slice() == der => {
                *e = epoch;
                false
            }
            Some((e, _)) => epoch > *e,
        }
    }

    pub(crate) fn insert(&mut self, origin: MachineId, epoch: u64, der: Vec<u8>) {
        self.by_origin.insert(origin, (epoch, der));
    }

    pub(crate) fn forget(&mut self, origin: &MachineId) {
        self.by_origin.remove(origin);
    }

    pub(crate) fn len(&self) -> usize {
        self.by_origin.len()
    }
}

/// Checks an update's signature against its origin's known certificate.
pub(crate) fn verify_update(
    credentials: &dyn Credentials,
    certificates: &Certificates,
    update: &Update,
) -> Result<(), Refusal> {
    if !credentials.required() {
        return Ok(());
    }
    let Some((cert_epoch, cert)) = certificates.get_with_epoch(&update.origin) else {
        return Err(Refusal::NoCertificate);
    };
    let message = signed_message(&update.origin, update.stamp, &update.entry);
    if !update.signature.is_empty()
        && update.signature.len() <= MAX_SIGNATURE
        && credentials.verify(cert, &message, &update.signature)
    {
        Ok(())
    } else if cert_epoch < update.stamp.epoch {
        // A later life of the origin may sign with a new certificate (rotated at its restart)
        // that has not arrived yet: wait for it rather than call the update forged.
        Err(Refusal::NoCertificate)
    } else {
        Err(Refusal::BadSignature)
    }
}

/// How often one (relay, origin) pair's refusals are logged at most.
const REFUSAL_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Node {
    /// Sets the credentials this node signs its state with and checks others' state against
    /// (the default is [`Unsigned`]), and publishes this node's certificate. Call it before the
    /// node publishes any state or joins: state set before is not signed.
    pub fn set_credentials(&mut self, now: Instant, credentials: Arc<dyn Credentials>) {
        self.now = now;
        self.credentials = credentials;
        let cert = self.credentials.certificate().to_vec();
        if cert.is_empty() {
            return;
        }
        let me = self.identity().machine_id.clone();
        let epoch = self.store.local_epoch();
        self.certs.insert(me.clone(), epoch, cert.clone());
        let update = Update {
            origin: me,
            stamp: Stamp { epoch, version: 0 },
            entry: Entry::Certificate(cert),
            signature: Vec::new(),
        };
        if self.fits_push(&update) {
            self.publish_claim(update);
        }
    }

    /// The certificate of `origin` to send along in a sync delta (none in the development mode).
    pub(crate) fn certificate_of(&self, origin: &MachineId) -> Option<Vec<u8>> {
        if !self.credentials.required() {
            return None;
        }
        self.certs.get(origin).map(<[u8]>::to_vec)
    }

    /// Whether an update fits in a push datagram on its own (a certificate may not: it then
    /// travels in syncs only).
    fn fits_push(&self, update: &Update) -> bool {
        let room = self
            .config
            .max_packet_size
            .max(256)
            .saturating_sub(crate::wire::state_header_len(self.identity()));
        postcard::experimental::serialized_size(update).is_ok_and(|n| n <= room)
    }

    /// Takes in a certificate of `origin` that came with `epoch` from `sender`: checked (cluster
    /// CA, names the origin) and kept if it is news. Returns whether it was.
    fn take_certificate(
        &mut self,
        sender: &MachineId,
        origin: &MachineId,
        epoch: u64,
        der: &[u8],
    ) -> bool {
        if *origin == self.identity().machine_id
            || !self.credentials.required()
            || !self.store.allows(origin, epoch)
            || !self.certs.wants(origin, epoch, der)
        {
            return false;
        }
        if self.budget_left(sender) == 0 {
            self.over_budget(sender, 1);
            return false;
        }
        let checked = if der.len() > MAX_CERTIFICATE {
            Err(format!("{} bytes, more than {MAX_CERTIFICATE}", der.len()))
        } else {
            self.credentials.check_certificate(origin, der)
        };
        match checked {
            Ok(()) => {
                self.certs.insert(origin.clone(), epoch, der.to_vec());
                true
            }
            Err(why) => {
                self.counters.certificates_refused += 1;
                self.charge(sender);
                if self.log_due(sender, origin) {
                    tracing::warn!(
                        relayed_by = %sender,
                        %origin,
                        refused = self.counters.certificates_refused,
                        "refused a gossip certificate for machine {origin} relayed by {sender}: {why}"
                    );
                }
                false
            }
        }
    }

    /// Applies one state update (metadata or a unit) if it is news and its origin signed it.
    fn take_update(&mut self, sender: &MachineId, update: &Update) -> bool {
        let left = self.budget_left(sender);
        let credentials = &*self.credentials;
        let certs = &self.certs;
        match self.store.apply(update, &mut |u| {
            if left == 0 {
                return Err(Refusal::OverBudget);
            }
            verify_update(credentials, certs, u)
        }) {
            Ok(news) => news,
            Err(why) => {
                self.refused_update(sender, update, why);
                false
            }
        }
    }

    fn refused_update(&mut self, sender: &MachineId, update: &Update, why: Refusal) {
        let origin = &update.origin;
        match why {
            Refusal::NoCertificate => {
                // Expected for a moment after a machine joins: its certificate travels apart
                // from its state. Anti-entropy brings the update again with the certificate.
                self.counters.state_unverified += 1;
                tracing::debug!(relayed_by = %sender, %origin, stamp = ?update.stamp, "state update of a machine whose certificate this node does not hold yet: refused");
            }
            Refusal::OverBudget => self.over_budget(sender, 1),
            Refusal::BadSignature => {
                self.counters.signatures_refused += 1;
                self.charge(sender);
                if self.log_due(sender, origin) {
                    tracing::warn!(
                        relayed_by = %sender,
                        %origin,
                        stamp = ?update.stamp,
                        refused = self.counters.signatures_refused,
                        "refused a gossip state update of machine {origin} relayed by {sender}: \
                         it does not carry {origin}'s signature"
                    );
                }
            }
        }
    }

    /// Checks an update's signature unless `sender`'s budget of refusals is spent.
    fn verify_within_budget(&mut self, sender: &MachineId, update: &Update) -> Result<(), Refusal> {
        if self.budget_left(sender) == 0 {
            return Err(Refusal::OverBudget);
        }
        verify_update(&*self.credentials, &self.certs, update)
    }

    pub(crate) fn log_due(&mut self, sender: &MachineId, origin: &MachineId) -> bool {
        let key = (sender.clone(), origin.clone());
        if self
            .warned_state
            .get(&key)
            .is_some_and(|at| self.now < *at + REFUSAL_LOG_EVERY)
        {
            return false;
        }
        if self.warned_state.len() >= 1024 {
            self.warned_state.clear();
        }
        self.warned_state.insert(key, self.now);
        true
    }

    /// Takes in the updates of a push from `sender`: certificates first (a push may carry an
    /// origin's certificate with its first updates), then each update if its origin signed it.
    /// Returns the news, to pass on.
    pub(crate) fn take_push(&mut self, sender: &MachineId, updates: Vec<Update>) -> Vec<Update> {
        let mut news = Vec::new();
        let (certificates, state): (Vec<Update>, Vec<Update>) = updates
            .into_iter()
            .partition(|u| matches!(u.entry, Entry::Certificate(_)));
        for update in certificates {
            if let Entry::Certificate(der) = &update.entry {
                if self.take_certificate(sender, &update.origin, update.stamp.epoch, der)
                    && self.fits_push(&update)
                {
                    news.push(update);
                }
            }
        }
        for update in state {
            let fresh = match &update.entry {
                Entry::Suspicion {
                    target,
                    incarnation,
                } => match self.verify_within_budget(sender, &update) {
                    Ok(()) => self.heard_claim(&update.origin, target, *incarnation),
                    Err(why) => {
                        self.refused_update(sender, &update, why);
                        false
                    }
                },
                _ => self.take_update(sender, &update),
            };
            if fresh {
                news.push(update);
            }
        }
        news
    }

    /// Takes in sync deltas from `sender`: each delta's certificate first, then its entries if
    /// their origin signed them. Returns the news (certificates included).
    pub(crate) fn take_deltas(
        &mut self,
        sender: &MachineId,
        mut deltas: Vec<OriginDelta>,
    ) -> Vec<Update> {
        let mut news = Vec::new();
        for delta in &mut deltas {
            if let Some(der) = delta.certificate.take() {
                if self.take_certificate(sender, &delta.origin, delta.synced.epoch, &der) {
                    let update = Update {
                        origin: delta.origin.clone(),
                        stamp: Stamp {
                            epoch: delta.synced.epoch,
                            version: 0,
                        },
                        entry: Entry::Certificate(der),
                        signature: Vec::new(),
                    };
                    if self.fits_push(&update) {
                        news.push(update);
                    }
                }
            }
        }
        // Each refused signature spends one of the sender's budget; once it is spent, the rest
        // is dropped unchecked.
        let mut left = self.budget_left(sender);
        let credentials = &*self.credentials;
        let certs = &self.certs;
        let (state, refused) = self.store.merge(deltas, &mut |u| {
            if left == 0 {
                return Err(Refusal::OverBudget);
            }
            let checked = verify_update(credentials, certs, u);
            if checked == Err(Refusal::BadSignature) {
                left -= 1;
            }
            checked
        });
        for (update, why) in refused {
            self.refused_update(sender, &update, why);
        }
        news.extend(state);
        news
    }

    /// The checked certificate of `machine` this node holds (DER) and the epoch it came with; the
    /// transport checks `machine`'s sealed datagrams against it. `None` in the insecure
    /// development mode, and for an unknown machine.
    pub fn certificate_for(&self, machine: &MachineId) -> Option<(u64, &[u8])> {
        if !self.credentials.required() {
            return None;
        }
        self.certs.get_with_epoch(machine)
    }

    /// The identity the membership holds for `machine` (any liveness; never this node's own).
    pub fn member_identity(&self, machine: &MachineId) -> Option<&crate::NodeIdentity> {
        self.roster.get(machine).map(|k| &k.identity)
    }

    /// The member whose identity has address `addr`, if any (a walk over the membership: for
    /// the transport's once-per-sync use, not per datagram).
    pub fn member_at(&self, addr: std::net::SocketAddr) -> Option<&crate::NodeIdentity> {
        self.roster
            .iter()
            .map(|(_, k)| &k.identity)
            .find(|id| id.addr == addr)
    }

    /// How many origins' certificates this node holds (its own included).
    pub fn certificates_known(&self) -> usize {
        self.certs.len()
    }
}
