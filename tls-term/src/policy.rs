//! Who a client is and what it may do, for the sessions of one configuration: the role map,
//! the client trust (CAs and CRLs) and the resumption bound. Built with the server
//! configuration at start and on every reload or CRL change; a session keeps the policy it
//! started with.
//!
//! Resumption (docs/tls.md, "Resumption"): rustls resumes a session without verifying the
//! client chain again, so [`crate::Session`] checks a resumed session itself, right after the
//! ClientHello and before the server answers it: the chain the session carries is verified as
//! a full handshake would be now (validity period, a CA configured now, the CRLs loaded now),
//! and the session must be younger than `resumption_max_age_s`, counted from the full
//! handshake that authenticated the client (the time travels inside the tickets and cache
//! entries as rustls "resumption data", so chained resumptions do not reset it).

use std::sync::Arc;

use rustls::{AlertDescription, CertificateError};
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::config::RESUMPTION_MAX_AGE_S_DEFAULT;
use crate::roles::RoleMap;
use crate::trust::ClientTrust;

/// The roles, trust and resumption bound sessions apply.
#[derive(Debug, Clone)]
pub struct ClientPolicy {
    pub roles: RoleMap,
    /// `None` without mTLS (then a resumed session carries no chain to check).
    pub trust: Option<Arc<ClientTrust>>,
    /// See [`crate::TlsSettings::resumption_max_age_s`].
    pub resumption_max_age_s: u64,
}

impl Default for ClientPolicy {
    fn default() -> Self {
        ClientPolicy {
            roles: RoleMap::default(),
            trust: None,
            resumption_max_age_s: RESUMPTION_MAX_AGE_S_DEFAULT,
        }
    }
}

/// Why a resumed session was refused.
#[derive(Clone, Debug, PartialEq)]
pub enum ResumptionRefused {
    /// The chain no longer verifies now (expired, revoked, CA no longer configured, ...).
    Certificate(CertificateError),
    /// Older than `resumption_max_age_s`.
    TooOld { age_s: u64, max_age_s: u64 },
    /// The session carries no authentication time (not issued by this policy's sessions).
    NoAuthenticationTime,
}

impl ResumptionRefused {
    /// The fatal alert the client gets (RFC 8446 §6.2).
    pub fn alert(&self) -> AlertDescription {
        use CertificateError as E;
        match self {
            ResumptionRefused::Certificate(E::Revoked) => AlertDescription::CertificateRevoked,
            ResumptionRefused::Certificate(E::Expired | E::ExpiredContext { .. }) => {
                AlertDescription::CertificateExpired
            }
            ResumptionRefused::Certificate(E::UnknownIssuer) => AlertDescription::UnknownCA,
            ResumptionRefused::Certificate(_) => AlertDescription::BadCertificate,
            ResumptionRefused::TooOld { .. } | ResumptionRefused::NoAuthenticationTime => {
                AlertDescription::HandshakeFailure
            }
        }
    }
}

/// Resumption data: the full handshake's time, Unix seconds, big-endian.
pub(crate) fn encode_auth_time(secs: u64) -> [u8; 8] {
    secs.to_be_bytes()
}

pub(crate) fn decode_auth_time(data: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(data.try_into().ok()?))
}

/// When the full handshake a resumed session descends from took place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthenticatedAt {
    /// Unix seconds, from the session's resumption data (TLS 1.3).
    Known(u64),
    /// TLS 1.3 session without our resumption data.
    Unknown,
    /// TLS 1.2: rustls carries no application data in TLS 1.2 sessions, so the age is not
    /// known; the chain is still verified again, and the session cache and ticket lifetimes
    /// bound how long the session lives.
    NotCarried,
}

impl ClientPolicy {
    /// Checks a resumed session: its chain (`None`: the client had no certificate) and the
    /// time of the full handshake it descends from.
    pub fn check_resumed(
        &self,
        chain: Option<&[CertificateDer<'static>]>,
        authenticated_at: AuthenticatedAt,
        now: UnixTime,
    ) -> Result<(), ResumptionRefused> {
        let max_age_s = self.resumption_max_age_s;
        match authenticated_at {
            AuthenticatedAt::Known(at) => {
                let age_s = now.as_secs().saturating_sub(at);
                if max_age_s == 0 || age_s > max_age_s {
                    return Err(ResumptionRefused::TooOld { age_s, max_age_s });
                }
            }
            AuthenticatedAt::Unknown => return Err(ResumptionRefused::NoAuthenticationTime),
            AuthenticatedAt::NotCarried if max_age_s == 0 => {
                return Err(ResumptionRefused::TooOld {
                    age_s: 0,
                    max_age_s,
                })
            }
            AuthenticatedAt::NotCarried => {}
        }
        match (&self.trust, chain) {
            (Some(trust), Some(chain)) => trust
                .verify(chain, now)
                .map_err(ResumptionRefused::Certificate),
            // mTLS is on now, and the session has no client certificate (it dates from a
            // configuration without mTLS): it must authenticate in full.
            (Some(_), None) => Err(ResumptionRefused::Certificate(
                CertificateError::UnknownIssuer,
            )),
            (None, _) => Ok(()),
        }
    }
}
