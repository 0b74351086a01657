//! The cluster lab as a Rust guard for tests (wraps cluster-lab.sh).
