//! fleetd configuration: /etc/fleet/fleet.conf, FLEET_* environment, command-line flags.
