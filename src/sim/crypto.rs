//! TLS that a seed replays: a crypto provider whose randomness and key exchange come from the
//! simulation's seed, and certificates made deterministically for the run.
//!
//! rustls draws its randomness (hello randoms, session ids, ticket nonces) from the provider's
//! `secure_random`, which is seeded here. ring's own X25519 and ECDSA draw from the OS RNG
//! internally, so the provider's only key exchange group is X25519 computed by `x25519-dalek`
//! from seeded bytes, and every certificate is Ed25519 (deterministic signatures of a fixed
//! size). The cipher suites are the production ones (`tls_term::crypto_provider`): record
//! encryption is deterministic given the keys.

use std::sync::{Arc, Mutex};

use ledger_svc::storage::SimRng;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::crypto::{
    ActiveKeyExchange, CryptoProvider, GetRandomFailed, SecureRandom, SharedSecret,
    SupportedKxGroup,
};
use rustls::{NamedGroup, PeerMisbehaved};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A `SecureRandom` drawing from the simulation's seed. Shared by the appliance and the
/// clients: the simulation is one thread, so the order of draws is the run's order.
#[derive(Debug, Clone)]
pub struct SeededRandom(Arc<Mutex<SimRng>>);

impl SeededRandom {
    pub fn new(seed: u64) -> Self {
        SeededRandom(Arc::new(Mutex::new(SimRng::new(seed))))
    }

    fn bytes<const N: usize>(&self) -> Result<[u8; N], GetRandomFailed> {
        let mut out = [0; N];
        self.fill(&mut out)?;
        Ok(out)
    }
}

impl SecureRandom for SeededRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        let mut rng = self.0.lock().map_err(|_| GetRandomFailed)?;
        for chunk in buf.chunks_mut(8) {
            let word = rng.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        Ok(())
    }
}

/// X25519 with the ephemeral secret drawn from the seed.
#[derive(Debug)]
struct SeededX25519(SeededRandom);

impl SupportedKxGroup for SeededX25519 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        let secret = x25519_dalek::StaticSecret::from(
            self.0
                .bytes::<32>()
                .map_err(|_| rustls::Error::FailedToGetRandomBytes)?,
        );
        let public = x25519_dalek::PublicKey::from(&secret);
        Ok(Box::new(ActiveX25519 { secret, public }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

struct ActiveX25519 {
    secret: x25519_dalek::StaticSecret,
    public: x25519_dalek::PublicKey,
}

impl ActiveKeyExchange for ActiveX25519 {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, rustls::Error> {
        let peer: [u8; 32] = peer
            .try_into()
            .map_err(|_| PeerMisbehaved::InvalidKeyShare)?;
        let shared = self
            .secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(peer));
        // An all-zero secret (a low-order peer key) is refused, as ring refuses it.
        if !shared.was_contributory() {
            return Err(PeerMisbehaved::InvalidKeyShare.into());
        }
        Ok(SharedSecret::from(&shared.as_bytes()[..]))
    }

    fn pub_key(&self) -> &[u8] {
        self.public.as_bytes()
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

/// The production provider (`tls_term::crypto_provider`: ring's cipher suites) with the
/// seeded randomness and the seeded X25519 as its only group.
pub fn provider(random: &SeededRandom) -> CryptoProvider {
    let mut provider = tls_term::crypto_provider();
    // rustls wants the groups as `&'static`: one small allocation per run is left behind
    // (the simulator is test tooling; a run is short).
    let group: &'static SeededX25519 = Box::leak(Box::new(SeededX25519(random.clone())));
    provider.kx_groups = vec![group];
    provider.secure_random = Box::leak(Box::new(random.clone()));
    provider
}

/// The run's certificates, PEM: a CA, the server's (its address in subjectAltName) and the
/// client's (CN `client`, the lab's writer identity).
#[derive(Debug)]
pub struct Certs {
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    pub server_pem: String,
    pub server_key_pem: String,
    pub client_chain: Vec<CertificateDer<'static>>,
    pub client_key: PrivateKeyDer<'static>,
}

/// Ed25519 PKCS#8 v1 (RFC 8410) of a 32-byte seed: this fixed prefix, then the seed.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

fn ed25519_key(random: &SeededRandom) -> Result<(KeyPair, Vec<u8>), rcgen::Error> {
    let seed = random
        .bytes::<32>()
        .map_err(|_| rcgen::Error::RingUnspecified)?;
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    der.extend_from_slice(&seed);
    let key = KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(der.clone()),
        &rcgen::PKCS_ED25519,
    )?;
    Ok((key, der))
}

/// Fixed dates, so a certificate's bytes never depend on the day a seed runs.
fn validity(params: &mut CertificateParams) {
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
}

/// Makes the run's certificates from `random` (the same seed makes the same bytes).
pub fn certs(random: &SeededRandom, server_ip: std::net::IpAddr) -> Result<Certs, rcgen::Error> {
    let (ca_key, _) = ed25519_key(random)?;
    let mut ca = CertificateParams::default();
    validity(&mut ca);
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "Pantera simulation CA");
    ca.distinguished_name = name;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.serial_number = Some(rcgen::SerialNumber::from(1u64));
    let ca_cert = ca.clone().self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let (server_key, _) = ed25519_key(random)?;
    let mut server = CertificateParams::default();
    validity(&mut server);
    server.subject_alt_names = vec![SanType::IpAddress(server_ip)];
    server.serial_number = Some(rcgen::SerialNumber::from(2u64));
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server.signed_by(&server_key, &issuer)?;

    let (client_key, client_der) = ed25519_key(random)?;
    let mut client = CertificateParams::default();
    validity(&mut client);
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "client");
    client.distinguished_name = name;
    client.serial_number = Some(rcgen::SerialNumber::from(3u64));
    client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &issuer)?;

    Ok(Certs {
        ca_pem: ca_cert.pem(),
        ca_der: ca_cert.der().clone(),
        server_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
        client_chain: vec![client_cert.der().clone()],
        client_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(client_der)),
    })
}

/// The clients' TLS configuration: the run's CA, the client certificate, the seeded
/// provider; no resumption (a resumed hello carries the ticket's age, read from the wall
/// clock).
pub fn client_config(
    provider: CryptoProvider,
    certs: &Certs,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certs.ca_der.clone())?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs.client_chain.clone(), certs.client_key.clone_key())?;
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![tls_term::ALPN_HTTP_1_1.to_vec()];
    Ok(config.into())
}
