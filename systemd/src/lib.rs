//! The systemd Manager over D-Bus.
