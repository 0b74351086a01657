//! A daemon reload seen through the subscription, against a real systemd 252 (root only).

mod common;

use common::{connect, states_until, wait_for};
use fleet_lab::{Lab, LabOptions};
use fleet_systemd::{ActiveState, Event};

/// A reload frees every unit object and creates again the ones that still exist (`UnitRemoved`,
/// then `UnitNew`, and no `PropertiesChanged` for a unit whose state did not change): a running unit
/// must not look removed (the agent took it for inactive until its next change or full re-read).
#[tokio::test]
async fn a_reload_does_not_report_a_running_unit_removed() {
    if !fleet_lab::require_root() {
        return;
    }
    let lab = Lab::up(1, LabOptions::new().without_etcd()).unwrap();
    let sd = connect(&lab, 1).await;
    let name = "t-reload-kept.service";
    sd.load_unit(name, "[Service]\nExecStart=/bin/sleep 1000\n", false)
        .await
        .unwrap();
    let mut events = sd
        .subscribe_filtered(|n| n == "t-reload-kept.service")
        .await
        .unwrap();
    sd.start_unit_and_wait(name).await.unwrap();
    for _ in 0..3 {
        lab.sh_ok(1, &["systemctl", "daemon-reload"]).unwrap();
        wait_for(&mut events, "Reloaded", |e| {
            assert!(
                !matches!(e, Event::UnitRemoved { .. }),
                "{name} reported removed by a reload"
            );
            *e == Event::Reloaded
        })
        .await;
    }
    // Still followed after the reloads; its removal once unloaded is reported.
    sd.stop_unit(name).await.unwrap();
    states_until(&mut events, name, |s| {
        s.active_state == ActiveState::Inactive
    })
    .await;
    sd.unload_unit(name).await.unwrap();
    wait_for(&mut events, "UnitRemoved", |e| {
        matches!(e, Event::UnitRemoved { .. })
    })
    .await;
}
