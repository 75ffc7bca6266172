//! The client identity a verified certificate carries.
//!
//! Precedence, first match wins:
//! 1. the first `dNSName` of the subjectAltName extension (RFC 5280 §4.2.1.6),
//! 2. else the first `rfc822Name` (email) of subjectAltName,
//! 3. else the first `commonName` of the subject (RFC 5280 §4.1.2.6).
//!
//! SAN comes first because RFC 6125 §6.4.4 retires the subject CN as a name where a SAN is
//! present; CN is the fallback because client certificates (ours included) often carry only a
//! CN. Only the top candidate is considered: when it is empty, longer than
//! [`crate::roles::IDENTITY_BYTES_MAX`] or holds a control character, the identity is `None`
//! (no role, refused), rather than falling back to a lower-precedence name the operator did
//! not expect to be used.

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::roles::IDENTITY_BYTES_MAX;

/// The identity of a (verified) end-entity certificate; `None` if it names nothing usable.
pub fn identity_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let candidate = top_candidate(&cert)?;
    let usable = !candidate.is_empty()
        && candidate.len() <= IDENTITY_BYTES_MAX
        && !candidate.chars().any(char::is_control);
    usable.then(|| candidate.to_owned())
}

fn top_candidate<'a>(cert: &'a X509Certificate<'_>) -> Option<&'a str> {
    // A malformed SAN extension yields no identity at all, never a CN fallback.
    let san = cert.subject_alternative_name().ok()?;
    if let Some(san) = san {
        let names = &san.value.general_names;
        let dns = names.iter().find_map(|name| match name {
            GeneralName::DNSName(dns) => Some(*dns),
            _ => None,
        });
        let email = names.iter().find_map(|name| match name {
            GeneralName::RFC822Name(email) => Some(*email),
            _ => None,
        });
        if let Some(found) = dns.or(email) {
            return Some(found);
        }
    }
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
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

    #[test]
    fn precedence_dns_then_email_then_cn() {
        let both = cert(
            Some("cn-name"),
            vec![email("ops@bank.example"), dns("payments.bank.example")],
        );
        assert_eq!(identity_of(&both).as_deref(), Some("payments.bank.example"));
        let email_only = cert(Some("cn-name"), vec![email("ops@bank.example")]);
        assert_eq!(
            identity_of(&email_only).as_deref(),
            Some("ops@bank.example")
        );
        let ip_only = cert(
            Some("cn-name"),
            vec![SanType::IpAddress([10, 99, 0, 1].into())],
        );
        assert_eq!(identity_of(&ip_only).as_deref(), Some("cn-name"));
        let cn_only = cert(Some("client"), vec![]);
        assert_eq!(identity_of(&cn_only).as_deref(), Some("client"));
        let first_dns = cert(None, vec![dns("a.example"), dns("b.example")]);
        assert_eq!(identity_of(&first_dns).as_deref(), Some("a.example"));
    }

    #[test]
    fn nothing_usable_is_none() {
        assert_eq!(identity_of(&cert(None, vec![])), None);
        assert_eq!(identity_of(&cert(Some("bad\nname"), vec![])), None);
        assert_eq!(identity_of(&cert(Some(""), vec![])), None);
        assert_eq!(
            identity_of(&CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01])),
            None
        );
        assert_eq!(identity_of(&CertificateDer::from(Vec::new())), None);
    }
}
