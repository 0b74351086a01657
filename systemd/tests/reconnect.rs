//! The bus going away: the subscription ends with `Disconnected`, calls fail with a
//! disconnect error, and `reconnect_with_backoff` gets a working handle back (root only).

mod common;

use std::time::Duration;

use common::{connect, states_until, wait_for};
use fleet_lab::{Lab, LabOptions};
use fleet_systemd::{ActiveState, Event, JobResult, SubState};

#[tokio::test]
async fn a_restarted_bus_ends_the_subscription_and_reconnecting_recovers() {
    if !fleet_lab::require_root() {
        return;
    }
    let lab = Lab::up(1, LabOptions::new().without_etcd()).unwrap();
    let sd = connect(&lab, 1).await;
    let name = "t-reconnect.service";
    sd.load_unit(name, "[Service]\nExecStart=/bin/sleep 1000\n", false)
        .await
        .unwrap();
    let mut events = sd.subscribe().await.unwrap();

    // Kill the machine's dbus-daemon (socket activation brings a new one up on demand).
    lab.sh_ok(1, &["systemctl", "kill", "-s", "KILL", "dbus.service"])
        .unwrap();
    wait_for(&mut events, "Disconnected", |e| *e == Event::Disconnected).await;
    assert_eq!(events.next().await, None, "Disconnected is the last event");
    let err = sd.start_unit(name).await.unwrap_err();
    assert!(err.is_disconnected(), "{err:?}");

    let sd = sd
        .reconnect_with_backoff(Duration::from_secs(20))
        .await
        .unwrap();
    let mut events = sd.subscribe().await.unwrap();
    // The unit loaded before the outage is still there; the new subscription sees it start.
    assert_eq!(
        sd.unit_state(name).await.unwrap().active_state,
        ActiveState::Inactive
    );
    assert_eq!(sd.start_unit_and_wait(name).await.unwrap(), JobResult::Done);
    let seen = states_until(&mut events, name, |s| s.sub_state == SubState::Running).await;
    assert!(seen.last().unwrap().main_pid.is_some());
}
