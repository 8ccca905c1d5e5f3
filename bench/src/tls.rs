//! TLS for the `tokio-tls` system, with nothing on disk.
//!
//! Server and client are two processes that share no file, so the CA's
//! key is derived from a constant seed (Ed25519, whose key is its seed):
//! each process rebuilds the same CA, the client trusts it, and the server
//! has it sign a leaf for `localhost` and `127.0.0.1` made fresh at start
//! (ECDSA P-256, rcgen's default). The client checks the server's chain
//! and name as any client would; rustls (ring provider) picks TLS 1.3 and
//! its default cipher suite. The key is no secret: this is a benchmark.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ED25519,
};
use teleport_peer::tls::rustls::pki_types::PrivatePkcs8KeyDer;
use teleport_peer::tls::{TlsAcceptor, TlsConnector};

/// The CA key's seed (32 bytes).
const CA_SEED: &[u8; 32] = b"teleport-bench CA, not a secret.";

/// The PKCS#8 (v1) encoding of an Ed25519 key up to its 32-byte seed
/// (RFC 8410): SEQUENCE { version 0, AlgorithmIdentifier { 1.3.101.112 },
/// OCTET STRING { OCTET STRING seed } }.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The names the server's leaf carries (the client dials `127.0.0.1:port`).
const NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// The bench's CA: the same in every process. Returns its issuer (to sign
/// the leaf) and its certificate (PEM, to trust).
fn ca() -> (Issuer<'static, KeyPair>, String) {
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    der.extend_from_slice(CA_SEED);
    let key = KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(der), &PKCS_ED25519)
        .expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "teleport-bench CA");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let pem = params.self_signed(&key).expect("CA certificate").pem();
    (Issuer::new(params, key), pem)
}

/// The server's end: a fresh leaf the bench's CA signs; no client
/// certificate asked for.
pub fn acceptor() -> TlsAcceptor {
    let (issuer, _) = ca();
    let key = KeyPair::generate().expect("leaf key");
    let params = CertificateParams::new(NAMES.map(String::from).to_vec()).expect("leaf params");
    let cert = params.signed_by(&key, &issuer).expect("leaf certificate");
    TlsAcceptor::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).expect("acceptor")
}

/// The client's end: trusts the bench's CA, presents no certificate.
pub fn connector() -> TlsConnector {
    let (_, pem) = ca();
    TlsConnector::from_ca_pem(pem.as_bytes()).expect("connector")
}
