//! The typed names a verified client certificate carries.
//!
//! Every usable name is kept with its type (see [`crate::roles`]): each subjectAltName
//! dNSName (`dns:`), rfc822Name (`email:`) and uniformResourceIdentifier (`uri:`), RFC 5280
//! §4.2.1.6, and each subject commonName (`cn:`), RFC 5280 §4.1.2.6. A name is usable when it
//! is valid text, not empty, at most [`crate::roles::IDENTITY_BYTES_MAX`] bytes and free of
//! control characters; others are skipped (they could match no configured entry, which is
//! held to the same rules). A certificate whose subjectAltName extension does not parse has no
//! names at all: no role, refused, rather than a CN the operator did not expect to be used.

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::roles::{Identity, NameKind};

/// Upper bound on names kept per certificate: a certificate with thousands of SANs costs
/// lookups on every handshake, and no honest client certificate carries more.
pub const NAMES_PER_CERTIFICATE_MAX: usize = 64;

/// The typed names of one end-entity certificate, in precedence order: dns, email, uri, cn
/// (subjectAltName first, RFC 6125 §6.4.4 retires the CN where a SAN is present), each in
/// certificate order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerNames {
    names: Vec<Identity>,
}

impl PeerNames {
    /// Names given directly (sorted into precedence order); for tests and tools.
    pub fn from_identities(mut names: Vec<Identity>) -> Self {
        names.sort_by_key(|n| n.kind);
        names.truncate(NAMES_PER_CERTIFICATE_MAX);
        PeerNames { names }
    }

    /// Precedence order: dns, email, uri, cn.
    pub fn in_precedence_order(&self) -> impl Iterator<Item = &Identity> {
        self.names.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// The names of a (verified) end-entity certificate; `None` when it does not parse or its
/// subjectAltName extension is malformed.
pub fn names_of(cert: &CertificateDer<'_>) -> Option<PeerNames> {
    let (_, cert) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let mut names = Vec::new();
    // A malformed SAN extension yields no names at all, never a CN fallback.
    if let Some(san) = cert.subject_alternative_name().ok()? {
        for name in &san.value.general_names {
            let typed = match name {
                GeneralName::DNSName(s) => Identity::new(NameKind::Dns, s),
                GeneralName::RFC822Name(s) => Identity::new(NameKind::Email, s),
                GeneralName::URI(s) => Identity::new(NameKind::Uri, s),
                _ => None,
            };
            names.extend(typed);
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Some(typed) = cn
            .as_str()
            .ok()
            .and_then(|s| Identity::new(NameKind::Cn, s))
        {
            names.push(typed);
        }
    }
    Some(PeerNames::from_identities(names))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(cn: Option<&str>, sans: Vec<SanType>) -> CertificateDer<'static> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    fn dns(name: &str) -> SanType {
        SanType::DnsName(name.try_into().unwrap())
    }

    fn email(name: &str) -> SanType {
        SanType::Rfc822Name(name.try_into().unwrap())
    }

    fn typed(cert: &CertificateDer<'_>) -> Vec<String> {
        names_of(cert)
            .unwrap()
            .in_precedence_order()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn every_name_typed_in_precedence_order() {
        let all = cert(
            Some("cn-name"),
            vec![
                SanType::URI("spiffe://bank.example/payments".try_into().unwrap()),
                email("ops@bank.example"),
                dns("payments.bank.example"),
                dns("b.example"),
                SanType::IpAddress([10, 99, 0, 1].into()),
            ],
        );
        assert_eq!(
            typed(&all),
            [
                "dns:payments.bank.example",
                "dns:b.example",
                "email:ops@bank.example",
                "uri:spiffe://bank.example/payments",
                "cn:cn-name"
            ]
        );
        assert_eq!(typed(&cert(Some("client"), vec![])), ["cn:client"]);
    }

    #[test]
    fn unusable_names_are_skipped() {
        assert!(names_of(&cert(None, vec![])).unwrap().is_empty());
        assert!(names_of(&cert(Some("bad\nname"), vec![]))
            .unwrap()
            .is_empty());
        assert!(names_of(&cert(Some(""), vec![])).unwrap().is_empty());
        assert_eq!(
            names_of(&CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01])),
            None
        );
        assert_eq!(names_of(&CertificateDer::from(Vec::new())), None);
    }
}
