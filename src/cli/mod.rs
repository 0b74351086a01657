//! fleetctl: the command-line client of the HTTP API.
