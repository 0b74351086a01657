//! Gossip: membership, metadata and unit-state dissemination. Comes with issue 4; nothing here yet.
