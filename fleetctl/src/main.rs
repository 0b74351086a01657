//! fleetctl: the command-line client of fleetd's HTTP API v1 (the `fleetctl` library).

fn main() -> std::process::ExitCode {
    fleetctl::main()
}
