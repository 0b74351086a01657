//! The HTTP API v1 (fleet-compatible), served on a unix socket and optionally TCP.
