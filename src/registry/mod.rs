//! The etcd registry: unit files by hash, desired states, claims, leases.
