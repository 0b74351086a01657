//! Fixtures of the verbs' tests: machines, units, a scripted API, captured output.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::rc::Rc;
use std::time::Duration;

use fleet_api_types::{Machine, Unit};
use fleet_sched::{MachineId, UnitOption};

use super::Ctx;
use crate::args::{JournalArgs, SshArgs};
use crate::client::fake::Scripted;
use crate::client::Api;

pub(crate) fn machine(id: &str, ip: &str, meta: &[(&str, &str)]) -> Machine {
    Machine {
        id: MachineId::parse(id).unwrap(),
        primary_ip: ip.into(),
        metadata: meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        refused_units: Default::default(),
    }
}

pub(crate) fn unit(name: &str, opts: &[(&str, &str, &str)], d: &str, c: &str, m: &str) -> Unit {
    Unit {
        name: name.into(),
        options: opts
            .iter()
            .map(|(s, n, v)| UnitOption::new(*s, *n, *v))
            .collect(),
        desired_state: (!d.is_empty()).then(|| d.parse().unwrap()),
        current_state: (!c.is_empty()).then(|| c.parse().unwrap()),
        machine_id: (!m.is_empty()).then(|| MachineId::parse(m).unwrap()),
        damaged: None,
    }
}

pub(crate) const M1: &str = "113f16a7c5e44a1cb2e8a6e8b8f4d7a1";
pub(crate) const M2: &str = "2cb2e8a6e8b8f4d7a1113f16a7c5e44a";

pub(crate) fn machines() -> BTreeMap<MachineId, Machine> {
    [
        machine(M1, "10.0.0.1", &[("region", "us"), ("disk", "ssd")]),
        machine(M2, "", &[]),
    ]
    .into_iter()
    .map(|m| (m.id.clone(), m))
    .collect()
}

pub(crate) fn sample_units() -> Vec<Unit> {
    vec![
        unit(
            "world.service",
            &[("Service", "ExecStart", "/bin/true")],
            "loaded",
            "inactive",
            "",
        ),
        unit(
            "hello.service",
            &[
                ("Unit", "Description", "Hello World"),
                ("Service", "ExecStart", "/bin/sh -c 'echo hi; sleep 1d'"),
            ],
            "launched",
            "launched",
            M1,
        ),
        unit(
            "everywhere.service",
            &[
                ("Service", "ExecStart", "/bin/true"),
                ("X-Fleet", "Global", "true"),
            ],
            "launched",
            "",
            "",
        ),
        unit(
            "nomachine.service",
            &[("Service", "ExecStart", "/bin/false")],
            "launched",
            "loaded",
            M2,
        ),
    ]
}

/// A writer the test can read back.
#[derive(Clone, Default)]
pub(crate) struct Buf(pub(crate) Rc<RefCell<Vec<u8>>>);
impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl Buf {
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.borrow().clone()).unwrap()
    }
}

pub(crate) fn ctx(answers: &[(u16, &str)]) -> (Ctx<Scripted>, Buf, Buf) {
    let (out, err) = (Buf::default(), Buf::default());
    let mut c = Ctx::new(
        Api::new(Scripted::new(answers)),
        Box::new(out.clone()),
        Box::new(err.clone()),
    );
    c.poll_interval = Duration::from_millis(1);
    (c, out, err)
}

pub(crate) fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

pub(crate) const UNIT_A: &str = r#"{"name":"a.service","options":[{"section":"Service","name":"ExecStart","value":"/bin/a"}],"desiredState":"launched","machineID":"m2"}"#;
pub(crate) const UNIT_B: &str = r#"{"name":"b.service","options":[{"section":"Service","name":"ExecStart","value":"/bin/b"}],"desiredState":"loaded","machineID":"m2"}"#;

pub(crate) fn journal_args(follow: bool) -> JournalArgs {
    JournalArgs {
        lines: 3,
        follow,
        output: "short".into(),
        machine: None,
        sudo: false,
        ssh_port: None,
        unit: "a".into(),
    }
}

pub(crate) const MACHINES_2: &str = r#"{"machines":[{"id":"113f16a7aa","primaryIP":"10.0.0.1"},{"id":"113f99bbcc","primaryIP":"10.0.0.2"},{"id":"2cb2e8a6ee","primaryIP":"10.0.0.3"}]}"#;

pub(crate) fn ssh_args(args: &[&str]) -> SshArgs {
    SshArgs {
        machine: None,
        unit: None,
        forward_agent: false,
        ssh_port: 22,
        args: args.iter().map(|a| a.to_string()).collect(),
    }
}
