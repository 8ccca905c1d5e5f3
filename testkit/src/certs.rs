//! Certificates made in the test (rcgen, ring): a CA, leaves it signs
//! (valid, expired, for other names), and the acceptors and connectors
//! over them. Runtime-free: it builds `teleport_peer::tls` values only.
//! `teleport_testkit::certs` with the feature `tls`; an adapter's tests,
//! whose dev-dependency on the testkit has no features, include this file
//! with `#[path]`.
#![allow(dead_code)] // each test binary uses a different subset

use std::sync::Arc;

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use teleport_peer::tls::rustls::pki_types::pem::PemObject;
use teleport_peer::tls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use teleport_peer::tls::rustls::{self, RootCertStore};
use teleport_peer::tls::{TlsAcceptor, TlsConnector};

/// The names every valid test leaf carries: dial `127.0.0.1:port`, or any
/// path with the server name `localhost`.
pub const NAMES: &[&str] = &["localhost", "127.0.0.1"];

/// A certificate authority of the test's own.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate (PEM), what a peer trusts.
    pub pem: String,
}

/// A certificate and its key (PEM).
pub struct Leaf {
    /// The certificate.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Ca {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).expect("CA certificate").pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    fn sign(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A leaf valid now for `names`.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        self.sign(CertificateParams::new(names).expect("leaf params"))
    }

    /// A leaf for `names` that expired long ago.
    pub fn expired_leaf(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.not_before = date_time_ymd(2000, 1, 1);
        params.not_after = date_time_ymd(2001, 1, 1);
        self.sign(params)
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.pem.as_bytes()).expect("CA PEM"))
            .expect("CA trusted");
        roots
    }
}

fn chain(leaf: &Leaf) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let certs = CertificateDer::pem_slice_iter(leaf.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("leaf PEM");
    let key = PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).expect("key PEM");
    (certs, key)
}

/// Serves `leaf`, asks clients for no certificate.
pub fn acceptor(leaf: &Leaf) -> TlsAcceptor {
    TlsAcceptor::from_pem(leaf.cert.as_bytes(), leaf.key.as_bytes()).expect("acceptor")
}

/// Serves `leaf` to clients that must present a certificate `clients`
/// signed (mutual TLS).
pub fn mtls_acceptor(leaf: &Leaf, clients: &Ca) -> TlsAcceptor {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(clients.roots()),
        provider(),
    )
    .build()
    .expect("client verifier");
    let (certs, key) = chain(leaf);
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .expect("server config");
    TlsAcceptor::new(Arc::new(config))
}

/// Trusts `ca`; presents no certificate.
pub fn connector(ca: &Ca) -> TlsConnector {
    TlsConnector::from_ca_pem(ca.pem.as_bytes()).expect("connector")
}

/// Trusts `ca`; presents `me` to servers that ask.
pub fn client_connector(ca: &Ca, me: &Leaf) -> TlsConnector {
    let (certs, key) = chain(me);
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(ca.roots())
        .with_client_auth_cert(certs, key)
        .expect("client config");
    TlsConnector::new(Arc::new(config))
}
