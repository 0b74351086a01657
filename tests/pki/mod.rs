//! Test certificates for a TLS etcd (rcgen).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Certificates for a TLS etcd, in a temp dir: `ca.pem` (etcd's and its clients' CA), `rogue-ca.pem`
/// (someone else's), and leaves (`<name>.pem` + `<name>.key`): `server` (for the given IP SANs),
/// `root` (etcd's root user, by its CN; also as `client.pem`/`client.key` for the lab's etcdctl),
/// `fleet` (fleetd) and `rogue` (signed by rogue-ca).
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new(server_ips: &[&str]) -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("fleet-etcd-pki")
            .tempdir()
            .unwrap();
        let ca = Self::ca(dir.path(), "ca", "etcd test CA");
        let rogue = Self::ca(dir.path(), "rogue-ca", "someone else");
        Self::leaf(dir.path(), &ca, "server", server_ips);
        Self::leaf(dir.path(), &ca, "root", &[]);
        Self::leaf(dir.path(), &ca, "fleet", &[]);
        Self::leaf(dir.path(), &rogue, "rogue", &[]);
        for (from, to) in [("root.pem", "client.pem"), ("root.key", "client.key")] {
            std::fs::copy(dir.path().join(from), dir.path().join(to)).unwrap();
        }
        Pki { dir }
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A self-signed CA `<name>.pem` (common name `cn`) in `dir`; its issuer for [`Pki::leaf`].
    pub fn ca(dir: &Path, name: &str, cn: &str) -> rcgen::Issuer<'static, rcgen::KeyPair> {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        rcgen::Issuer::new(p, key)
    }

    /// A leaf `<name>.pem` + `<name>.key` (CN `name`, SANs `sans`, server and client use) signed by
    /// `issuer`, in `dir`.
    pub fn leaf(dir: &Path, issuer: &rcgen::Issuer<'_, rcgen::KeyPair>, name: &str, sans: &[&str]) {
        let mut p =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    /// A file of the directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
}
