//! Why a TLS connection to etcd fails, in words an operator can act on.
//!
//! gRPC reports a refused client certificate as "transport error" or "operation was canceled" (in
//! TLS 1.3 the server checks the client's certificate after the client considers the handshake done,
//! so the alert races with the first request). When a session fails like that, the registry makes one
//! TLS connection of its own with the same settings, sends the HTTP/2 preface and reads the answer:
//! the alert, or the certificate error, is then certain.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::RegistryOptions;

/// A diagnosis of `endpoint` (an `https://` URL) with the TLS settings of `opts`; `None` when the TLS
/// connection works (or the failure is not about TLS).
pub(super) async fn tls_problem(endpoint: &str, opts: &RegistryOptions) -> Option<String> {
    let rest = endpoint.strip_prefix("https://")?;
    let authority = rest.split('/').next()?;
    let host = authority
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(authority)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let addr = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:443")
    };
    let has_cert = opts.cert_key_files.is_some();
    let config = match client_config(opts) {
        Ok(c) => c,
        Err(e) => return Some(e),
    };
    let name = ServerName::try_from(host.clone()).ok()?;
    let t = opts.request_timeout.max(Duration::from_millis(500));
    let tcp = tokio::time::timeout(t, tokio::net::TcpStream::connect(&addr))
        .await
        .ok()?
        .ok()?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = match tokio::time::timeout(t, connector.connect(name, tcp)).await {
        Err(_) => return None,
        Ok(Err(e)) => {
            let text = e.to_string();
            if text.to_ascii_lowercase().contains("connection reset") {
                return Some(format!(
                    "etcd does not speak TLS there: it reset the connection during the TLS handshake; use an http:// URL, or enable TLS in etcd ({text})"
                ));
            }
            return Some(explain(&text, has_cert));
        }
        Ok(Ok(s)) => s,
    };
    // HTTP/2 preface + an empty SETTINGS frame; the server answers with its SETTINGS, or with the
    // alert that refuses our certificate.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    if let Err(e) = tls.write_all(&hello).await {
        return Some(explain(&e.to_string(), has_cert));
    }
    let mut buf = [0u8; 64];
    match tokio::time::timeout(t, tls.read(&mut buf)).await {
        Ok(Err(e)) => Some(explain(&e.to_string(), has_cert)),
        Ok(Ok(0)) => Some(
            "etcd closed the TLS connection (does it expect a client certificate from another CA?)"
                .into(),
        ),
        _ => None,
    }
}

fn client_config(opts: &RegistryOptions) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &opts.ca_file {
        let certs = CertificateDer::pem_file_iter(ca)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("etcd_cafile {}: {e}", ca.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "etcd_cafile {}: no certificate in it",
                ca.display()
            ));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("etcd_cafile {}: {e}", ca.display()))?;
        }
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match &opts.cert_key_files {
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("etcd_certfile {}: {e}", cert.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "etcd_certfile {}: no certificate in it",
                    cert.display()
                ));
            }
            let k = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("etcd_keyfile {}: {e}", key.display()))?;
            b.with_client_auth_cert(certs, k).map_err(|e| {
                format!(
                    "etcd_certfile {} and etcd_keyfile {} do not match: {e}",
                    cert.display(),
                    key.display()
                )
            })?
        }
        None => b.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A TLS error text (rustls' wording) as the cause an operator can fix; `has_cert`: a client
/// certificate was presented.
pub(super) fn explain(err: &str, has_cert: bool) -> String {
    let c = err.to_ascii_lowercase();
    let refused = c.contains("badcertificate")
        || c.contains("bad certificate")
        || c.contains("unknownca")
        || c.contains("unknown ca")
        || c.contains("handshakefailure")
        || c.contains("certificaterequired")
        || c.contains("certificate required");
    let cause = if c.contains("unknownissuer") || c.contains("unknown issuer") {
        "etcd's server certificate is not signed by etcd_cafile"
    } else if c.contains("notvalidforname") || c.contains("not valid for name") {
        "etcd's server certificate does not name this endpoint's host or IP (its SANs)"
    } else if c.contains("expired") {
        "a certificate has expired"
    } else if refused && !has_cert {
        "etcd wants a client certificate: set etcd_certfile and etcd_keyfile"
    } else if refused {
        "etcd refused the client certificate: etcd_certfile is not signed by a CA etcd trusts (--trusted-ca-file)"
    } else if c.contains("invalidcontenttype")
        || c.contains("handshake eof")
        || c.contains("corrupt message")
        || c.contains("invalid content type")
    {
        "etcd does not speak TLS there: use an http:// URL, or enable TLS in etcd"
    } else {
        return format!("TLS: {err}");
    };
    format!("{cause} ({err})")
}
