//! fleet: fleetd (the agent) and fleetctl (the CLI).
