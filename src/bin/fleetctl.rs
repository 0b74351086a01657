//! fleetctl: the command-line client of fleetd's HTTP API v1 (see `fleet::cli`).

fn main() -> std::process::ExitCode {
    fleet::cli::main()
}
