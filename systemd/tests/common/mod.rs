//! Helpers for the lab tests of fleet-systemd.

#![allow(dead_code)] // each test binary uses a part

use std::time::Duration;

use fleet_lab::Lab;
use fleet_systemd::{Bus, Config, Event, Subscription, Systemd};

/// Connects to machine `i`'s systemd from the host, writing unit files through `/proc/<pid>/root`.
pub async fn connect(lab: &Lab, i: usize) -> Systemd {
    let config = Config::new(Bus::Address(lab.bus_address(i).unwrap()))
        .fs_root(lab.machine_root(i).unwrap())
        .call_timeout(Duration::from_secs(10));
    Systemd::connect(config).await.unwrap()
}

/// Waits (at most 10 s) for the first event matching `want`, skipping others.
pub async fn wait_for(sub: &mut Subscription, what: &str, want: impl Fn(&Event) -> bool) -> Event {
    let wait = async {
        loop {
            match sub.next().await {
                Some(ev) if want(&ev) => return ev,
                Some(_) => continue,
                None => panic!("subscription ended while waiting for {what}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("no event within 10 s: {what}"))
}

/// Every `UnitChanged` state of `name` seen until `stop` matches one of them (at most 10 s).
pub async fn states_until(
    sub: &mut Subscription,
    name: &str,
    stop: impl Fn(&fleet_systemd::UnitState) -> bool,
) -> Vec<fleet_systemd::UnitState> {
    let mut seen = Vec::new();
    let wait = async {
        loop {
            match sub.next().await {
                Some(Event::UnitChanged { name: n, state }) if n == name => {
                    let done = stop(&state);
                    seen.push(state);
                    if done {
                        return;
                    }
                }
                Some(_) => continue,
                None => panic!("subscription ended while following {name}"),
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .is_err()
    {
        panic!("{name} did not reach the expected state within 10 s");
    }
    seen
}
