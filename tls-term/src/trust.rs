//! The client trust of one configuration: the client CAs, the certificate revocation lists
//! (CRLs) that go with them, and the verifiers built from both.
//!
//! The same object verifies full handshakes (inside rustls, [`ClientTrust::verifier`]),
//! verifies again the chain a resumed session carries (rustls does not: a session keeps the
//! chain it was issued for) and names the CA a chain ends at, for roles pinned to an issuer.
//! It is rebuilt on every reload and CRL change, so those checks always use the CAs and CRLs
//! configured now.
//!
//! Revocation policy (docs/tls.md, "Revocation"):
//! - Every certificate of the chain is checked against the CRLs (webpki's default depth).
//! - A certificate whose issuer has no CRL configured is accepted (`allow_unknown_revocation_
//!   status`): a CA the operator lists without a CRL is one they chose not to revoke through,
//!   and refusing all its clients would be an outage caused by a missing file. Start-up and
//!   reload name each such CA in a warning.
//! - An expired CRL (past its nextUpdate) keeps being applied (webpki's default, expiration
//!   not enforced): its revocations stay in force, and every client of the CA is not refused
//!   because the CRL publisher is late. The staleness is loud instead: an error in the log on
//!   every load and the `pantera_tls_crl_next_update_timestamp_seconds` gauge for alerting.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore};
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::config::TlsError;
use crate::roles::CaFingerprint;

/// Upper bound on one CRL file: CRLs of large CAs run to megabytes; a file much larger than
/// this is the wrong file, and it would be held in memory by every verifier.
pub const CRL_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Upper bound on configured CRL files.
pub const CRL_FILES_MAX: usize = 256;

/// One configured client CA.
#[derive(Debug)]
struct TrustedCa {
    fingerprint: CaFingerprint,
    /// Verifies chains ending at this CA only (no CRLs: it attributes chains the full
    /// verifier already checked).
    verifier: Arc<dyn ClientCertVerifier>,
}

/// What was loaded from one CRL file, for the metrics and the logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlInfo {
    pub path: PathBuf,
    /// The CRL's thisUpdate, Unix seconds.
    pub this_update: i64,
    /// The CRL's nextUpdate, Unix seconds (`None`: the CRL names none).
    pub next_update: Option<i64>,
    /// Revoked certificates it lists.
    pub revoked: usize,
}

/// Client CAs and CRLs, and the verifiers built from them.
#[derive(Debug)]
pub struct ClientTrust {
    cas: Vec<TrustedCa>,
    verifier: Arc<dyn ClientCertVerifier>,
    crls: Vec<CrlInfo>,
}

impl ClientTrust {
    /// Loads the CA bundle and the CRL files, checks that every CRL parses and is signed by
    /// one of the CAs, and builds the verifiers. Errors name the file at fault.
    pub fn load(
        ca_path: &Path,
        crl_paths: &[PathBuf],
        provider: Arc<CryptoProvider>,
    ) -> Result<ClientTrust, TlsError> {
        let ca_certs = crate::config::load_certs("client CA", ca_path)?;
        let mut roots = RootCertStore::empty();
        let mut cas = Vec::with_capacity(ca_certs.len());
        for cert in &ca_certs {
            roots
                .add(cert.clone())
                .map_err(|source| TlsError::BadClientCa {
                    path: ca_path.to_owned(),
                    source,
                })?;
            let mut one = RootCertStore::empty();
            one.add(cert.clone())
                .map_err(|source| TlsError::BadClientCa {
                    path: ca_path.to_owned(),
                    source,
                })?;
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(one), provider.clone())
                    .build()
                    .map_err(|source| TlsError::ClientVerifier {
                        path: ca_path.to_owned(),
                        source,
                    })?;
            cas.push(TrustedCa {
                fingerprint: fingerprint(cert),
                verifier,
            });
        }

        if crl_paths.len() > CRL_FILES_MAX {
            return Err(TlsError::InvalidSetting {
                name: "crls",
                value: crl_paths.len().to_string(),
                reason: "at most 256 CRL files",
            });
        }
        let mut crl_ders = Vec::new();
        let mut crls = Vec::new();
        let mut covered = vec![false; ca_certs.len()];
        for path in crl_paths {
            for der in load_crls(path)? {
                let (info, issuer_index) = check_crl(path, &der, &ca_certs)?;
                covered[issuer_index] = true;
                crls.push(info);
                crl_ders.push(der);
            }
        }

        let mut builder =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        if !crl_ders.is_empty() {
            builder = builder
                .with_crls(crl_ders)
                .allow_unknown_revocation_status();
            for (cert, covered) in ca_certs.iter().zip(&covered) {
                if !*covered {
                    log::warn!(
                        "client CA {:?} in {} has no CRL in tls.crls: its certificates cannot be revoked",
                        subject_of(cert),
                        ca_path.display()
                    );
                }
            }
        }
        // Anonymous clients are refused (allow_unauthenticated is not called): with mTLS
        // configured, the certificate is the only identity a request has.
        let verifier = builder.build().map_err(|source| TlsError::ClientVerifier {
            path: ca_path.to_owned(),
            source,
        })?;
        Ok(ClientTrust {
            cas,
            verifier,
            crls,
        })
    }

    /// The verifier rustls runs on every full handshake: all CAs, all CRLs.
    pub fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::clone(&self.verifier)
    }

    /// The CRLs loaded, one per CRL in the files, in configuration order.
    pub fn crls(&self) -> &[CrlInfo] {
        &self.crls
    }

    /// Verifies `chain` (end entity first) as a full handshake would now: validity period at
    /// `now`, chain to a CA configured now, revocation by the CRLs loaded now.
    pub fn verify(
        &self,
        chain: &[CertificateDer<'static>],
        now: UnixTime,
    ) -> Result<(), CertificateError> {
        let (leaf, intermediates) = chain.split_first().ok_or(CertificateError::BadEncoding)?;
        match self.verifier.verify_client_cert(leaf, intermediates, now) {
            Ok(_) => Ok(()),
            Err(rustls::Error::InvalidCertificate(e)) => Err(e),
            Err(_) => Err(CertificateError::BadEncoding),
        }
    }

    /// The fingerprint of the configured CA `chain` ends at; `None` when none verifies it.
    pub fn issuer_of(
        &self,
        chain: &[CertificateDer<'static>],
        now: UnixTime,
    ) -> Option<CaFingerprint> {
        let (leaf, intermediates) = chain.split_first()?;
        self.cas
            .iter()
            .find(|ca| {
                ca.verifier
                    .verify_client_cert(leaf, intermediates, now)
                    .is_ok()
            })
            .map(|ca| ca.fingerprint)
    }
}

/// SHA-256 of a certificate's DER: how `issuer = "sha256:..."` names a CA.
pub fn fingerprint(cert: &CertificateDer<'_>) -> CaFingerprint {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn subject_of(cert: &CertificateDer<'_>) -> String {
    X509Certificate::from_der(cert.as_ref())
        .map(|(_, c)| c.subject().to_string())
        .unwrap_or_else(|_| "?".to_owned())
}

/// The CRLs of one file: PEM ("X509 CRL" sections, several allowed) or one DER CRL.
fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    const WHAT: &str = "CRL";
    let meta = std::fs::metadata(path).map_err(|source| crate::config::file_error(WHAT, path, source))?;
    if meta.len() > CRL_FILE_BYTES_MAX {
        return Err(TlsError::BadCrl {
            path: path.to_owned(),
            reason: format!("{} bytes, more than the 64 MiB allowed", meta.len()),
        });
    }
    let bytes = std::fs::read(path).map_err(|source| TlsError::Io {
        what: WHAT,
        path: path.to_owned(),
        source,
    })?;
    // DER starts with a SEQUENCE tag (0x30); anything else is read as PEM.
    if bytes.first() != Some(&0x30) {
        let mut out = Vec::new();
        for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes) {
            match item {
                Ok((SectionKind::Crl, der)) => out.push(CertificateRevocationListDer::from(der)),
                Ok(_) => {}
                Err(e) => {
                    return Err(TlsError::BadCrl {
                        path: path.to_owned(),
                        reason: format!("not valid PEM: {e}"),
                    })
                }
            }
        }
        if out.is_empty() {
            return Err(TlsError::BadCrl {
                path: path.to_owned(),
                reason: "holds no PEM \"X509 CRL\" section".to_owned(),
            });
        }
        Ok(out)
    } else {
        Ok(vec![CertificateRevocationListDer::from(bytes)])
    }
}

/// Parses one CRL and checks it is signed by one of `cas`; returns what the metrics show and
/// the index of its issuer.
fn check_crl(
    path: &Path,
    der: &CertificateRevocationListDer<'_>,
    cas: &[CertificateDer<'static>],
) -> Result<(CrlInfo, usize), TlsError> {
    let bad = |reason: String| TlsError::BadCrl {
        path: path.to_owned(),
        reason,
    };
    let (rest, crl) = CertificateRevocationList::from_der(der.as_ref())
        .map_err(|e| bad(format!("not a DER X.509 CRL: {e}")))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the CRL".to_owned()));
    }
    let issuer = cas
        .iter()
        .enumerate()
        .filter_map(|(i, ca)| Some((i, X509Certificate::from_der(ca.as_ref()).ok()?.1)))
        .find(|(_, ca)| {
            ca.subject() == crl.issuer() && crl.verify_signature(ca.public_key()).is_ok()
        })
        .map(|(i, _)| i)
        .ok_or_else(|| {
            bad(format!(
                "not signed by any client CA (its issuer is {:?})",
                crl.issuer().to_string()
            ))
        })?;
    let info = CrlInfo {
        path: path.to_owned(),
        this_update: crl.last_update().timestamp(),
        next_update: crl.next_update().map(|t| t.timestamp()),
        revoked: crl.iter_revoked_certificates().count(),
    };
    Ok((info, issuer))
}
