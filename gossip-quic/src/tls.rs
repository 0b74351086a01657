//! Mutual TLS for the gossip transport: every node holds a certificate signed by the cluster CA; a
//! server requires a client certificate signed by that CA, and a client verifies the server's against
//! it. Also mints the CA and machine certificates, and offers an explicit insecure development mode.
//!
//! All certificates name the server `fleet` (the name every client dials, since peers are addressed
//! by IP), and carry the machine ID twice: as a URI subject alternative name
//! (`urn:fleet:machine:<ID>`, what [`certified_machine_id`] reads) and as the common name
//! (certificates minted before the URI existed are read by their common name). A peer speaks only
//! for the machine its certificate names: the transport hands that ID to the core with every input.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The TLS server name every node's certificate carries and every client dials.
pub const SERVER_NAME: &str = "fleet";
/// The ALPN protocol of fleet's gossip.
/// `2`: datagrams start with a kind byte, state travels in pushes of its own, summary syncs.
/// `3`: every state update carries its origin's signature; certificates travel with the state.
/// `4`: SWIM packets, pushes and summary offers also travel as sealed datagrams outside
/// connections (`crate::seal`), on the same UDP port.
pub const ALPN: &[u8] = b"fleet-gossip/4";
/// Whether a failed QUIC handshake failed because the peer offered no protocol this node speaks
/// (TLS alert 120, `no_application_protocol`): a peer of another version of fleet's gossip.
pub fn is_protocol_mismatch(e: &quinn::ConnectionError) -> bool {
    const NO_APPLICATION_PROTOCOL: u8 = 120;
    let code = match e {
        quinn::ConnectionError::TransportError(t) => t.code,
        quinn::ConnectionError::ConnectionClosed(c) => c.error_code,
        _ => return false,
    };
    code == quinn::TransportErrorCode::crypto(NO_APPLICATION_PROTOCOL)
}

/// The prefix of the URI subject alternative name that carries a machine ID.
pub const MACHINE_URI_PREFIX: &str = "urn:fleet:machine:";

/// How a node authenticates its peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsConfig {
    /// Mutual TLS with a cluster CA: only peers with a certificate signed by the CA get in.
    Mutual {
        /// PEM file of the cluster CA certificate.
        ca_cert: PathBuf,
        /// PEM file of this machine's certificate (signed by the CA).
        cert: PathBuf,
        /// PEM file of this machine's private key.
        key: PathBuf,
    },
    /// Development only: a fresh self-signed certificate, and no verification in either direction.
    /// Anyone who can reach the port can join the cluster and read its traffic. Logged loudly.
    InsecureDevelopment,
}

/// What went wrong setting up TLS or minting certificates.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("cannot load {what} from {path}: {reason}")]
    Pem {
        /// Which file it was (CA certificate, certificate, key).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The parser's complaint.
        reason: String,
    },
    /// A PEM file held no certificate.
    #[error("{0}: no certificate in the file")]
    NoCertificate(PathBuf),
    /// rustls refused the certificates or keys (e.g. a key that does not match the certificate).
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client certificate verifier could not be built (e.g. an unusable CA certificate).
    #[error("cannot build the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// quinn refused the TLS configuration (it needs TLS 1.3 with an AES-128-GCM suite).
    #[error("QUIC cannot use this TLS configuration: {0}")]
    Quic(String),
    /// Certificate generation failed.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The certificate does not name the machine it is used for.
    #[error(
        "{} is the certificate of {}, not of this machine {expected}",
        .path.display(),
        .certified.as_deref().map_or("no machine".to_string(), |id| format!("machine {id}"))
    )]
    WrongMachine {
        /// The certificate file.
        path: PathBuf,
        /// The machine ID it carries (None: none found).
        certified: Option<String>,
        /// This machine's ID.
        expected: String,
    },
    /// Writing a PEM file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        what: "private key",
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn quic_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Quic(e.to_string())
}

/// The QUIC server and client configurations for `tls` (the transport uses them; exposed for tools
/// and tests that speak to gossip endpoints directly).
pub fn quic_configs(
    tls: &TlsConfig,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), TlsError> {
    quic_configs_speaking(tls, ALPN)
}

/// [`quic_configs`] offering another ALPN protocol than [`ALPN`]: what a node of another version
/// of the gossip protocol offers (tests of the refusal of such a peer).
pub fn quic_configs_speaking(
    tls: &TlsConfig,
    alpn: &[u8],
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), TlsError> {
    let provider = provider();
    let (mut server, mut client) = match tls {
        TlsConfig::Mutual { ca_cert, cert, key } => {
            let mut roots = RootCertStore::empty();
            for ca in load_certs("CA certificate", ca_cert)? {
                roots.add(ca)?;
            }
            let roots = Arc::new(roots);
            let chain = load_certs("certificate", cert)?;
            let key = load_key(key)?;
            let client_verifier =
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .build()?;
            let server = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .with_client_cert_verifier(client_verifier)
                .with_single_cert(chain.clone(), key.clone_key())?;
            let client = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)?;
            (server, client)
        }
        TlsConfig::InsecureDevelopment => {
            tracing::error!(
                "gossip runs in INSECURE DEVELOPMENT MODE: no peer authentication, no protection \
                 of cluster traffic; anyone who reaches the gossip port can join. Never use this \
                 outside development."
            );
            let rcgen::CertifiedKey { cert, signing_key } =
                rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])?;
            let key = PrivateKeyDer::try_from(signing_key.serialize_der()).map_err(quic_err)?;
            let server = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .with_no_client_auth()
                .with_single_cert(vec![cert.der().clone()], key)?;
            let client = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
                .with_no_client_auth();
            (server, client)
        }
    };
    server.alpn_protocols = vec![alpn.to_vec()];
    client.alpn_protocols = vec![alpn.to_vec()];
    let server = quinn::crypto::rustls::QuicServerConfig::try_from(server).map_err(quic_err)?;
    let client = quinn::crypto::rustls::QuicClientConfig::try_from(client).map_err(quic_err)?;
    Ok((
        quinn::ServerConfig::with_crypto(Arc::new(server)),
        quinn::ClientConfig::new(Arc::new(client)),
    ))
}

/// Insecure development mode: accepts any server certificate (still checks the handshake signature,
/// which proves nothing about who the peer is).
#[derive(Debug)]
struct AcceptAnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn write(path: &Path, contents: &str) -> Result<(), TlsError> {
    std::fs::write(path, contents).map_err(|source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn write_key(path: &Path, contents: &str) -> Result<(), TlsError> {
    write(path, contents)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| TlsError::Write {
                path: path.to_path_buf(),
                source,
            },
        )?;
    }
    Ok(())
}

/// Mints a cluster CA: writes its certificate and private key (mode 0600) as PEM.
pub fn mint_ca(cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fleet cluster CA");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write(cert_path, &cert.pem())?;
    write_key(key_path, &key.serialize_pem())
}

/// Mints a machine certificate signed by the CA in `ca_cert_path`/`ca_key_path`: usable both as a
/// server and as a client certificate, for the name [`SERVER_NAME`], naming `machine_id` (URI
/// subject alternative name and common name).
/// Writes the certificate and private key (mode 0600) as PEM.
pub fn mint_machine_cert(
    ca_cert_path: &Path,
    ca_key_path: &Path,
    machine_id: &str,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), TlsError> {
    let read = |what, path: &Path| {
        std::fs::read_to_string(path).map_err(|e| TlsError::Pem {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    };
    let ca_key = rcgen::KeyPair::from_pem(&read("CA private key", ca_key_path)?)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&read("CA certificate", ca_cert_path)?, ca_key)?;
    let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, machine_id);
    let uri = rcgen::string::Ia5String::try_from(format!("{MACHINE_URI_PREFIX}{machine_id}"))?;
    params.subject_alt_names.push(rcgen::SanType::URI(uri));
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write(cert_path, &cert.pem())?;
    write_key(key_path, &key.serialize_pem())
}

/// The machine ID a certificate (DER) names: its `urn:fleet:machine:` URI subject alternative name,
/// or else its common name. `None` if it names none (or does not parse).
pub fn certified_machine_id(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                if let Some(id) = uri.strip_prefix(MACHINE_URI_PREFIX) {
                    return Some(id.to_string());
                }
            }
        }
    }
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// The machine ID named by the first certificate of a QUIC peer's identity (what
/// `quinn::Connection::peer_identity` returns with rustls), if any.
pub fn peer_machine_id(identity: Option<Box<dyn std::any::Any>>) -> Option<String> {
    let certs = identity?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certified_machine_id(certs.first()?.as_ref())
}

/// Checks that the certificate file of `tls` names `machine_id` (in the insecure mode there is
/// nothing to check): a node whose own certificate names another machine would be refused by
/// every peer, so it should not start.
pub fn check_own_certificate(tls: &TlsConfig, machine_id: &str) -> Result<(), TlsError> {
    let TlsConfig::Mutual { cert, .. } = tls else {
        return Ok(());
    };
    let chain = load_certs("certificate", cert)?;
    let certified = certified_machine_id(chain[0].as_ref());
    if certified.as_deref() == Some(machine_id) {
        Ok(())
    } else {
        Err(TlsError::WrongMachine {
            path: cert.clone(),
            certified,
            expected: machine_id.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_certificates_make_a_usable_mutual_config() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        mint_ca(&p("ca.pem"), &p("ca.key")).unwrap();
        mint_machine_cert(&p("ca.pem"), &p("ca.key"), "m1", &p("m1.pem"), &p("m1.key")).unwrap();
        let tls = TlsConfig::Mutual {
            ca_cert: p("ca.pem"),
            cert: p("m1.pem"),
            key: p("m1.key"),
        };
        quic_configs(&tls).unwrap();
        assert!(quic_configs(&TlsConfig::InsecureDevelopment).is_ok());
        check_own_certificate(&tls, "m1").unwrap();
        let err = check_own_certificate(&tls, "m2").unwrap_err();
        assert!(
            err.to_string()
                .contains("m1.pem is the certificate of machine m1, not of this machine m2"),
            "{err}"
        );
    }

    #[test]
    fn the_machine_id_is_read_from_the_uri_or_else_the_common_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        mint_ca(&p("ca.pem"), &p("ca.key")).unwrap();
        mint_machine_cert(
            &p("ca.pem"),
            &p("ca.key"),
            "abc123",
            &p("m.pem"),
            &p("m.key"),
        )
        .unwrap();
        let der = load_certs("certificate", &p("m.pem")).unwrap().remove(0);
        assert_eq!(
            certified_machine_id(der.as_ref()).as_deref(),
            Some("abc123")
        );
        let pem = std::fs::read_to_string(p("m.pem")).unwrap();
        assert!(!pem.is_empty());
        // A certificate minted before the URI (common name only).
        let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "old-style");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            certified_machine_id(cert.der().as_ref()).as_deref(),
            Some("old-style")
        );
        assert_eq!(certified_machine_id(b"not a certificate"), None);
    }

    #[test]
    fn missing_or_mismatched_files_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let err = quic_configs(&TlsConfig::Mutual {
            ca_cert: p("nope.pem"),
            cert: p("m1.pem"),
            key: p("m1.key"),
        })
        .unwrap_err();
        assert!(err.to_string().contains("nope.pem"), "{err}");
        mint_ca(&p("ca.pem"), &p("ca.key")).unwrap();
        mint_machine_cert(&p("ca.pem"), &p("ca.key"), "m1", &p("m1.pem"), &p("m1.key")).unwrap();
        mint_machine_cert(&p("ca.pem"), &p("ca.key"), "m2", &p("m2.pem"), &p("m2.key")).unwrap();
        let mismatched = quic_configs(&TlsConfig::Mutual {
            ca_cert: p("ca.pem"),
            cert: p("m1.pem"),
            key: p("m2.key"),
        });
        assert!(
            mismatched.is_err(),
            "a key that does not match the certificate"
        );
    }
}
