//! A secured etcd (TLS with client certificates, users and roles) on loopback: the registry and fleetd
//! work with the right settings and say what is wrong with a wrong CA, certificate, password or role.

mod pki;
mod support;

use std::time::{Duration, Instant};

use fleet::registry::{Registry, RegistryError, RegistryOptions};
use fleet_sched::{DesiredState, UnitFile, UnitName};
use pki::Pki;
use support::own_etcd::OwnEtcd;
use support::{put_inactive_unit, Etcd, Fleetd};

/// An etcd serving clients over TLS with client certificates, auth enabled: user `root` (by its
/// certificate's CN), user `fleet` (password `fleetpw`, role `fleet`: readwrite on the prefix), user
/// `reader` (`readerpw`, read only on the prefix), user `other` (`otherpw`, readwrite elsewhere).
struct SecureEtcd {
    url: String,
    _etcd: OwnEtcd,
}

impl SecureEtcd {
    fn start(pki: &Pki, prefix: &str) -> SecureEtcd {
        let p = |f: &str| pki.path(f).display().to_string();
        let flags = [
            "--cert-file",
            &p("server.pem"),
            "--key-file",
            &p("server.key"),
            "--client-cert-auth",
            "--trusted-ca-file",
            &p("ca.pem"),
        ]
        .map(String::from);
        // etcdctl as root (client certificate CN=root).
        let root = [
            "--command-timeout=3s",
            "--cacert",
            &p("ca.pem"),
            "--cert",
            &p("root.pem"),
            "--key",
            &p("root.key"),
        ]
        .map(String::from);
        let e = OwnEtcd::start("secure", "https", &flags, &root);
        let end = prefix_end(prefix);
        for args in [
            vec!["user", "add", "root", "--no-password"],
            vec!["user", "grant-role", "root", "root"],
            vec!["role", "add", "fleet"],
            vec![
                "role",
                "grant-permission",
                "fleet",
                "readwrite",
                prefix,
                &end,
            ],
            vec!["user", "add", "fleet:fleetpw"],
            vec!["user", "grant-role", "fleet", "fleet"],
            vec!["role", "add", "reader"],
            vec!["role", "grant-permission", "reader", "read", prefix, &end],
            vec!["user", "add", "reader:readerpw"],
            vec!["user", "grant-role", "reader", "reader"],
            vec!["role", "add", "other"],
            vec![
                "role",
                "grant-permission",
                "other",
                "--prefix",
                "readwrite",
                "/other/",
            ],
            vec!["user", "add", "other:otherpw"],
            vec!["user", "grant-role", "other", "other"],
            vec!["auth", "enable"],
        ] {
            e.etcdctl(&args).unwrap();
        }
        SecureEtcd {
            url: e.url().to_string(),
            _etcd: e,
        }
    }
}

/// The end of the key range of `prefix` (etcd's `--prefix` as an explicit range).
fn prefix_end(prefix: &str) -> String {
    let mut b = prefix.as_bytes().to_vec();
    *b.last_mut().unwrap() += 1;
    String::from_utf8(b).unwrap()
}

struct Settings<'a> {
    ca: Option<&'a str>,
    cert: Option<&'a str>,
    user: Option<(&'a str, &'a str)>,
}

const GOOD: Settings<'static> = Settings {
    ca: Some("ca.pem"),
    cert: Some("fleet"),
    user: Some(("fleet", "fleetpw")),
};

fn options(pki: &Pki, url: &str, prefix: &str, s: &Settings) -> RegistryOptions {
    let mut o = RegistryOptions::new(vec![url.to_string()], prefix);
    o.backoff_max = Duration::from_millis(300);
    o.ca_file = s.ca.map(|f| pki.path(f));
    o.cert_key_files = s
        .cert
        .map(|n| (pki.path(&format!("{n}.pem")), pki.path(&format!("{n}.key"))));
    o.user = s.user.map(|(u, p)| (u.to_string(), p.to_string()));
    o
}

/// Starts a registry with `s` and returns the reason it gives for being unavailable after a while.
async fn refused(pki: &Pki, url: &str, prefix: &str, s: &Settings<'_>) -> String {
    let r = Registry::start(options(pki, url, prefix, s));
    let t0 = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let st = r.status();
        assert!(!st.available, "connected with wrong settings");
        if let Some(e) = st.error.filter(|e| e != "not connected yet") {
            if t0.elapsed() > Duration::from_secs(1) {
                return e;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no error reported");
    }
}

#[tokio::test]
// long: one secured etcd, each wrong setting tried against it in turn (an etcd start costs seconds)
async fn the_registry_works_with_tls_and_a_user_and_says_what_is_wrong_otherwise() {
    let pki = Pki::new(&["127.0.0.1"]);
    let prefix = support::unique_prefix();
    let etcd = SecureEtcd::start(&pki, &prefix);
    let url = etcd.url.clone();

    // Right settings: reads, writes, a lease, TimeToLive of another user's lease.
    let r = Registry::start(options(&pki, &url, &prefix, &GOOD));
    r.wait_available(Duration::from_secs(20)).await.unwrap();
    let n = UnitName::parse("secure.service").unwrap();
    let f = UnitFile::parse("[Service]\nExecStart=/bin/true\n").unwrap();
    r.create_unit(&n, &f, DesiredState::Loaded).await.unwrap();
    assert_eq!(r.units().unwrap().len(), 1);

    let cases: [(&str, Settings, &str); 6] = [
        (
            "a CA that did not sign etcd's certificate",
            Settings {
                ca: Some("rogue-ca.pem"),
                ..GOOD
            },
            "etcd's server certificate is not signed by etcd_cafile",
        ),
        (
            "a client certificate of another CA",
            Settings {
                cert: Some("rogue"),
                ..GOOD
            },
            "etcd refused the client certificate: etcd_certfile is not signed by a CA etcd trusts",
        ),
        (
            "no client certificate",
            Settings { cert: None, ..GOOD },
            "etcd wants a client certificate: set etcd_certfile and etcd_keyfile",
        ),
        (
            "a wrong password",
            Settings {
                user: Some(("fleet", "wrong")),
                ..GOOD
            },
            "check etcd_username and etcd_password",
        ),
        (
            "a user whose role does not cover the prefix",
            Settings {
                user: Some(("other", "otherpw")),
                ..GOOD
            },
            "permission denied (the etcd user's role must grant readwrite on fleet's key prefix",
        ),
        (
            "http:// against a TLS etcd",
            Settings {
                ca: None,
                cert: None,
                ..GOOD
            },
            "if etcd serves TLS, use https:// URLs",
        ),
    ];
    for (what, s, expect) in cases {
        let target = if what.starts_with("http://") {
            url.replace("https://", "http://")
        } else {
            url.clone()
        };
        let reason = refused(&pki, &target, &prefix, &s).await;
        eprintln!("{what}: {reason}");
        assert!(
            reason.contains(expect),
            "{what}: {reason:?} lacks {expect:?}"
        );
    }

    // A read-only role: the mirror works, writes are refused with a clear error.
    let ro = Registry::start(options(
        &pki,
        &url,
        &prefix,
        &Settings {
            user: Some(("reader", "readerpw")),
            ..GOOD
        },
    ));
    ro.wait_available(Duration::from_secs(20)).await.unwrap();
    assert_eq!(ro.units().unwrap().len(), 1);
    let e = ro
        .create_unit(
            &UnitName::parse("nope.service").unwrap(),
            &f,
            DesiredState::Loaded,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, RegistryError::Etcd(m) if m.contains("permission denied")),
        "{e:?}"
    );

    // https:// against a plain etcd.
    let plain = Etcd::shared();
    let reason = refused(
        &pki,
        &plain.endpoint().replace("http://", "https://"),
        plain.prefix(),
        &GOOD,
    )
    .await;
    eprintln!("https:// against a plain etcd: {reason}");
    assert!(
        reason.contains("etcd does not speak TLS there"),
        "{reason:?}"
    );
}

/// A fleetd on `etcd` with `s` (FLEET_ETCD_* variables, which win over its config file).
fn fleetd(pki: &Pki, etcd: &SecureEtcd, prefix: &str, s: &Settings) -> Fleetd {
    let plain = Etcd::shared(); // (the builder wants one; its endpoint and prefix are overridden)
    let p = |f: &str| pki.path(f).display().to_string();
    let mut b = Fleetd::builder(&plain)
        .env("FLEET_ETCD_SERVERS", &etcd.url)
        .env("FLEET_ETCD_KEY_PREFIX", prefix);
    if let Some(ca) = s.ca {
        b = b.env("FLEET_ETCD_CAFILE", &p(ca));
    }
    if let Some(c) = s.cert {
        b = b
            .env("FLEET_ETCD_CERTFILE", &p(&format!("{c}.pem")))
            .env("FLEET_ETCD_KEYFILE", &p(&format!("{c}.key")));
    }
    if let Some((u, pw)) = s.user {
        b = b
            .env("FLEET_ETCD_USERNAME", u)
            .env("FLEET_ETCD_PASSWORD", pw);
    }
    b.start()
}

#[test]
fn fleetd_works_with_a_secured_etcd_and_logs_what_is_wrong() {
    let pki = Pki::new(&["127.0.0.1"]);
    let prefix = support::unique_prefix();
    let etcd = SecureEtcd::start(&pki, &prefix);

    let good = fleetd(&pki, &etcd, &prefix, &GOOD);
    good.wait_ready();
    assert_eq!(put_inactive_unit(&good, "tls.service").status, 201);

    // A wrong password: 503, and an ERROR line that says what to check.
    let bad = fleetd(
        &pki,
        &etcd,
        &prefix,
        &Settings {
            user: Some(("fleet", "nope")),
            ..GOOD
        },
    );
    bad.wait_for_status(503);
    let t0 = Instant::now();
    while !bad.log().contains("check etcd_username and etcd_password") {
        assert!(t0.elapsed() < Duration::from_secs(10), "{}", bad.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let line = bad
        .log()
        .lines()
        .find(|l| l.contains("check etcd_username"))
        .unwrap()
        .to_string();
    assert!(line.contains("ERROR"), "{line}");

    // A read-only role: fleetd reads, but a write answers 500 naming the missing permission.
    let ro = fleetd(
        &pki,
        &etcd,
        &prefix,
        &Settings {
            user: Some(("reader", "readerpw")),
            ..GOOD
        },
    );
    ro.wait_ready();
    let r = put_inactive_unit(&ro, "ro.service");
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(
        r.error_message().contains("permission denied"),
        "{}",
        r.text()
    );
}
