//! The gossip core's [`Credentials`] in fleetd: state updates are signed with the machine's TLS
//! key and checked against the origin's certificate, itself checked against the cluster CA (the
//! same checks as a TLS client certificate: chain, validity period, client-auth usage) and bound
//! to the origin's machine ID ([`tls::certified_machine_id`]).
//!
//! Machine certificates must be signed by the cluster CA directly (as `fleetctl gen-certs` makes
//! them): a certificate travels alone, without intermediates.

use std::sync::Arc;

use fleet_gossip::{Credentials, MachineId};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::Signer;
use rustls::{RootCertStore, SignatureScheme};

use crate::tls::{self, TlsConfig, TlsError};

/// The schemes a machine signs its state with, in order of preference; the key's type decides
/// which one applies (rcgen's default, and `fleetctl gen-certs`', is ECDSA P-256).
const SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ED25519,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::RSA_PSS_SHA256,
];

/// A machine's credentials from its mutual-TLS files: its certificate and key, and the cluster CA.
pub struct CertCredentials {
    certificate: Vec<u8>,
    signer: Box<dyn Signer>,
    verifier: Arc<dyn ClientCertVerifier>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for CertCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertCredentials")
            .field("scheme", &self.signer.scheme())
            .finish_non_exhaustive()
    }
}

impl CertCredentials {
    /// Loads the credentials of a mutual-TLS configuration; `None` in the insecure development
    /// mode (which signs nothing: see [`fleet_gossip::Unsigned`]).
    pub fn load(config: &TlsConfig) -> Result<Option<Self>, TlsError> {
        let TlsConfig::Mutual { ca_cert, cert, key } = config else {
            return Ok(None);
        };
        let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for ca in tls::load_certs("CA certificate", ca_cert)? {
            roots.add(ca)?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()?;
        let certificate = tls::load_certs("certificate", cert)?.remove(0).to_vec();
        let key = provider
            .key_provider
            .load_private_key(tls::load_key(key)?)?;
        let signer = key.choose_scheme(SCHEMES).ok_or_else(|| TlsError::Pem {
            what: "private key",
            path: key_path(config),
            reason: format!("its type ({:?}) cannot sign gossip state", key.algorithm()),
        })?;
        Ok(Some(CertCredentials {
            certificate,
            signer,
            verifier,
            algorithms: provider.signature_verification_algorithms,
        }))
    }
}

fn key_path(config: &TlsConfig) -> std::path::PathBuf {
    match config {
        TlsConfig::Mutual { key, .. } => key.clone(),
        TlsConfig::InsecureDevelopment => std::path::PathBuf::new(),
    }
}

impl Credentials for CertCredentials {
    fn required(&self) -> bool {
        true
    }

    fn certificate(&self) -> &[u8] {
        &self.certificate
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        // ring's signers fail only on a broken key, which loading refused; an empty signature
        // would be refused by every peer, which is what a broken key deserves.
        self.signer.sign(message).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot sign gossip state");
            Vec::new()
        })
    }

    fn check_certificate(&self, machine: &MachineId, certificate: &[u8]) -> Result<(), String> {
        let der = CertificateDer::from(certificate);
        self.verifier
            .verify_client_cert(&der, &[], UnixTime::now())
            .map_err(|e| format!("not a valid certificate of the cluster CA: {e}"))?;
        match tls::certified_machine_id(certificate) {
            Some(id) if id == machine.as_str() => Ok(()),
            Some(id) => Err(format!("the certificate names machine {id}")),
            None => Err("the certificate names no machine".to_string()),
        }
    }

    fn verify(&self, certificate: &[u8], message: &[u8], signature: &[u8]) -> bool {
        let der = CertificateDer::from(certificate);
        let Ok(cert) = webpki::EndEntityCert::try_from(&der) else {
            return false;
        };
        SCHEMES
            .iter()
            .flat_map(|scheme| {
                self.algorithms
                    .mapping
                    .iter()
                    .filter(move |(s, _)| s == scheme)
                    .flat_map(|(_, algs)| algs.iter())
            })
            .any(|alg| cert.verify_signature(*alg, message, signature).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_gossip::crypto::signed_message;
    use fleet_gossip::{Entry, Metadata, Stamp};

    fn minted(dir: &std::path::Path, machines: &[&str], ca: &str) -> Vec<TlsConfig> {
        let p = |n: &str| dir.join(n);
        tls::mint_ca(&p(&format!("{ca}.pem")), &p(&format!("{ca}.key"))).unwrap();
        machines
            .iter()
            .map(|m| {
                tls::mint_machine_cert(
                    &p(&format!("{ca}.pem")),
                    &p(&format!("{ca}.key")),
                    m,
                    &p(&format!("{m}.pem")),
                    &p(&format!("{m}.key")),
                )
                .unwrap();
                TlsConfig::Mutual {
                    ca_cert: p(&format!("{ca}.pem")),
                    cert: p(&format!("{m}.pem")),
                    key: p(&format!("{m}.key")),
                }
            })
            .collect()
    }

    /// A machine's signature checks against its certificate and no other; certificates of
    /// another CA, or naming another machine, are refused; nothing panics on garbage.
    #[test]
    fn signatures_check_against_the_origins_certificate_only() {
        let dir = tempfile::tempdir().unwrap();
        let configs = minted(dir.path(), &["m1", "m2"], "ca");
        let other = minted(dir.path(), &["m3"], "other-ca");
        let m1 = CertCredentials::load(&configs[0]).unwrap().unwrap();
        let m2 = CertCredentials::load(&configs[1]).unwrap().unwrap();
        let m3 = CertCredentials::load(&other[0]).unwrap().unwrap();
        let id = |s: &str| MachineId::parse(s).unwrap();
        let message = signed_message(
            &id("m1"),
            Stamp {
                epoch: 1,
                version: 2,
            },
            &Entry::Metadata(Metadata::default()),
        );
        let sig = m1.sign(&message);
        // gen-certs' certificates (392 bytes here, about 450 with a 32-character machine ID)
        // travel in pushes of at most 1,100 bytes.
        assert!(m1.certificate().len() < 600, "{}", m1.certificate().len());
        assert!(!sig.is_empty() && sig.len() <= fleet_gossip::crypto::MAX_SIGNATURE);
        m2.check_certificate(&id("m1"), m1.certificate()).unwrap();
        assert!(m2.verify(m1.certificate(), &message, &sig));
        assert!(!m2.verify(m2.certificate(), &message, &sig), "m2's key");
        assert!(!m2.verify(m1.certificate(), &message, &m2.sign(&message)));
        let mut tampered = message.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(!m2.verify(m1.certificate(), &tampered, &sig));
        let err = m2
            .check_certificate(&id("m2"), m1.certificate())
            .unwrap_err();
        assert!(err.contains("names machine m1"), "{err}");
        let err = m2
            .check_certificate(&id("m3"), m3.certificate())
            .unwrap_err();
        assert!(
            err.contains("not a valid certificate of the cluster CA"),
            "{err}"
        );
        assert!(m2.check_certificate(&id("m1"), b"garbage").is_err());
        assert!(!m2.verify(b"garbage", &message, &sig));
        assert!(!m2.verify(m1.certificate(), &message, b""));
        assert!(CertCredentials::load(&TlsConfig::InsecureDevelopment)
            .unwrap()
            .is_none());
    }
}
