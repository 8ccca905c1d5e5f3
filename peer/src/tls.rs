//! TLS under a session (feature `tls`): rustls with its `ring` provider.
//!
//! A [`TlsAcceptor`] makes a listener serve TLS, a [`TlsConnector`] makes a
//! dial speak it; both come from PEM files named in the config
//! ([`TlsListenSettings`], [`TlsDialSettings`]) or from a rustls config built
//! in code. The adapters run the handshake (with a timeout) before a
//! session starts, and the sans-IO stream under it is rustls's own, so the
//! session does not know TLS is there. Failures are [`TlsError`]s that say
//! what went wrong: the wrong CA, an expired certificate, a wrong name, a
//! peer that does not speak TLS.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use rustls;

use crate::config::{TlsDialSettings, TlsListenSettings};

/// How long a TLS handshake may take unless configured otherwise.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong with TLS: reading the configured files, or a handshake.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A configured PEM file could not be read or holds nothing usable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// rustls refused the configuration (a key that does not match its
    /// certificate, say).
    #[error("tls config: {0}")]
    Config(String),
    /// The other side's certificate is not signed by a CA this side trusts.
    #[error("the other side's certificate is not signed by a trusted CA")]
    UnknownIssuer,
    /// The other side's certificate has expired (or is not valid yet).
    #[error("the other side's certificate has expired or is not valid yet")]
    Expired,
    /// The server's certificate does not carry the name dialed.
    #[error("the server's certificate is not valid for {name}")]
    WrongName {
        /// The name this side expected.
        name: String,
    },
    /// The other side sent no certificate (a server requiring one).
    #[error("the other side sent no certificate")]
    NoCertificate,
    /// The other side refused the handshake with this alert (our
    /// certificate was not good enough for it, say).
    #[error("the other side refused the handshake: {0}")]
    Refused(String),
    /// The other side does not speak TLS (it sent something else).
    #[error("the other side does not speak TLS: {0}")]
    NotTls(String),
    /// The connection ended during the handshake (a plaintext server hangs
    /// up on a client hello, say).
    #[error("the connection ended during the TLS handshake")]
    Closed,
    /// The handshake did not finish in time.
    #[error("the TLS handshake took longer than {0:?}")]
    Timeout(Duration),
    /// The name to dial is not a valid TLS server name.
    #[error("{0:?} is not a valid TLS server name")]
    BadName(String),
    /// Any other TLS failure.
    #[error("tls: {0}")]
    Other(rustls::Error),
    /// The transport failed during the handshake.
    #[error("transport error during the TLS handshake: {0}")]
    Io(io::Error),
}

impl TlsError {
    /// What a failed handshake's `io::Error` (as tokio-rustls and
    /// futures-rustls return them, with the rustls error inside) was.
    /// `name` is the server name a client checked.
    pub fn from_handshake(e: io::Error, name: Option<&str>) -> TlsError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            return TlsError::Closed;
        }
        let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
        match inner {
            Some(r) => TlsError::from_rustls(r.clone(), name),
            None => TlsError::Io(e),
        }
    }

    /// Names a rustls error.
    pub fn from_rustls(e: rustls::Error, name: Option<&str>) -> TlsError {
        use rustls::CertificateError as C;
        use rustls::Error as E;
        match e {
            E::InvalidCertificate(C::UnknownIssuer) => TlsError::UnknownIssuer,
            E::InvalidCertificate(
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. },
            ) => TlsError::Expired,
            E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                TlsError::WrongName {
                    name: name.unwrap_or_default().to_string(),
                }
            }
            E::NoCertificatesPresented => TlsError::NoCertificate,
            E::AlertReceived(a) => TlsError::Refused(format!("{a:?}")),
            E::InvalidMessage(m) => TlsError::NotTls(format!("{m:?}")),
            E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
                TlsError::NotTls(e.to_string())
            }
            other => TlsError::Other(other),
        }
    }
}

impl From<TlsError> for io::Error {
    fn from(e: TlsError) -> io::Error {
        match e {
            TlsError::Io(e) => e,
            TlsError::Closed => io::Error::new(io::ErrorKind::UnexpectedEof, e),
            TlsError::Timeout(_) => io::Error::new(io::ErrorKind::TimedOut, e),
            e => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::File {
        path: path.to_path_buf(),
        reason,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// Makes a listener serve TLS: a rustls server config and a handshake
/// timeout.
#[derive(Clone)]
pub struct TlsAcceptor {
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// Serves with this config (build it with the `ring` provider, or any
    /// other of the user's choosing).
    pub fn new(config: Arc<ServerConfig>) -> Self {
        TlsAcceptor {
            config,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// A certificate chain and its key, from PEM data; clients are not
    /// asked for certificates.
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        let certs = CertificateDer::pem_slice_iter(cert_chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let key =
            PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::Config(e.to_string()))?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(TlsAcceptor::new(Arc::new(config)))
    }

    /// The acceptor the settings describe (PEM files; with a client CA,
    /// clients must present a certificate it signed, unless
    /// `client_cert_optional`).
    pub fn from_settings(s: &TlsListenSettings) -> Result<Self, TlsError> {
        let certs = read_certs(&s.cert)?;
        let key = read_key(&s.key)?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &s.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let roots = Arc::new(read_roots(ca)?);
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider());
                let verifier = if s.client_cert_optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(TlsAcceptor {
            config: Arc::new(config),
            handshake_timeout: s.handshake_timeout,
        })
    }

    /// With another handshake timeout.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The rustls config.
    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    /// How long a handshake may take.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }
}

/// Makes a dial speak TLS: a rustls client config, the name the server's
/// certificate must carry, and a handshake timeout.
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
    server_name: Option<String>,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector")
            .field("server_name", &self.server_name)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl TlsConnector {
    /// Dials with this config; the server's name is the dialed host unless
    /// [`TlsConnector::with_server_name`] says otherwise.
    pub fn new(config: Arc<ClientConfig>) -> Self {
        TlsConnector {
            config,
            server_name: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// Trusts the CAs in this PEM data; presents no client certificate.
    pub fn from_ca_pem(ca: &[u8]) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca) {
            let cert = cert.map_err(|e| TlsError::Config(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| TlsError::Config(e.to_string()))?;
        }
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsConnector::new(Arc::new(config)))
    }

    /// The connector the settings describe (PEM files: the CA bundle that
    /// signs the server's certificate, and for mutual TLS this side's
    /// certificate chain and key).
    pub fn from_settings(s: &TlsDialSettings) -> Result<Self, TlsError> {
        let roots = read_roots(&s.ca)?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots);
        let config = match (&s.cert, &s.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
                .map_err(|e| TlsError::Config(e.to_string()))?,
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(TlsError::Config(
                    "a client certificate needs both `cert` and `key`".into(),
                ))
            }
        };
        Ok(TlsConnector {
            config: Arc::new(config),
            server_name: s.server_name.clone(),
            handshake_timeout: s.handshake_timeout,
        })
    }

    /// The name the server's certificate must carry, whatever is dialed.
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// With another handshake timeout.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The rustls config.
    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    /// How long a handshake may take.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// The name to check the server's certificate against when dialing
    /// `addr`: the configured one, else the host part of `addr` (a unix
    /// path needs a configured name).
    pub fn server_name_for(&self, addr: &str) -> Result<ServerName<'static>, TlsError> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => host_of(addr).to_string(),
        };
        ServerName::try_from(name.clone()).map_err(|_| TlsError::BadName(name))
    }
}

/// The host of `host:port` (`[v6]:port` too); the whole string otherwise.
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            return &rest[..end];
        }
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_is_the_dialed_host() {
        assert_eq!(host_of("localhost:9000"), "localhost");
        assert_eq!(host_of("127.0.0.1:9000"), "127.0.0.1");
        assert_eq!(host_of("[::1]:9000"), "::1");
        assert_eq!(host_of("example.com"), "example.com");
    }

    #[test]
    fn rustls_errors_are_named() {
        use rustls::{CertificateError as C, Error as E};
        assert!(matches!(
            TlsError::from_rustls(E::InvalidCertificate(C::UnknownIssuer), None),
            TlsError::UnknownIssuer
        ));
        assert!(matches!(
            TlsError::from_rustls(E::InvalidCertificate(C::Expired), None),
            TlsError::Expired
        ));
        match TlsError::from_rustls(E::InvalidCertificate(C::NotValidForName), Some("x.test")) {
            TlsError::WrongName { name } => assert_eq!(name, "x.test"),
            e => panic!("{e:?}"),
        }
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert!(matches!(
            TlsError::from_handshake(eof, None),
            TlsError::Closed
        ));
        let wrapped = io::Error::new(io::ErrorKind::InvalidData, E::NoCertificatesPresented);
        assert!(matches!(
            TlsError::from_handshake(wrapped, None),
            TlsError::NoCertificate
        ));
    }
}
