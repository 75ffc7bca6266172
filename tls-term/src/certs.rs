//! Development certificates for the lab: a private CA, the server's certificate and two client
//! certificates, written as PEM files into one directory.
//!
//! | file | content | mode |
//! |---|---|---|
//! | `ca.pem` / `ca.key` | self-signed CA "Pantera dev CA", path length 0 | 0644 / 0600 |
//! | `server.pem` / `server.key` | leaf for the service address: SAN IP + DNS `pantera.lab` | 0644 / 0600 |
//! | `client.pem` / `client.key` | client leaf, CN `client` (`cn:client`, the write role) | 0644 / 0600 |
//! | `reader.pem` / `reader.key` | client leaf, CN `reader` (`cn:reader`, the read role) | 0644 / 0600 |
//!
//! `server.pem` holds only the leaf: clients are given `ca.pem` as their trust anchor, and
//! RFC 8446 §4.4.2 lets the server omit the root, so sending it would only cost bytes on every
//! full handshake. All keys are ECDSA P-256 (fast handshakes, supported by every client).
//! Keys are created with mode 0600 from their first byte (never chmod-ed afterwards) and every
//! file is written to a temporary name and renamed, so a crash leaves no half-written file.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The DNS name in the server certificate, besides the service IP address.
pub const SERVER_DNS_NAME: &str = "pantera.lab";
/// Subject CN of the dev CA.
pub const CA_COMMON_NAME: &str = "Pantera dev CA";
/// Subject CN of the dev client that may write (its identity is `cn:client`).
pub const WRITER_IDENTITY: &str = "client";
/// Subject CN of the dev client that may only read (its identity is `cn:reader`).
pub const READER_IDENTITY: &str = "reader";

const CA_VALIDITY_DAYS: i64 = 10 * 365;
const LEAF_VALIDITY_DAYS: i64 = 2 * 365;
/// Certificates start one day in the past so a client with a slow clock accepts them.
const BACKDATE_DAYS: i64 = 1;
const CERT_MODE: u32 = 0o644;
const KEY_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

/// Where the dev certificate files live (fixed names inside one directory).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevCertPaths {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub reader_cert: PathBuf,
    pub reader_key: PathBuf,
    /// Files [`init`] wrote in this call (empty when everything was already there).
    pub written: Vec<PathBuf>,
}

impl DevCertPaths {
    /// The file names inside `dir`, without touching the file system.
    pub fn in_dir(dir: &Path) -> Self {
        DevCertPaths {
            dir: dir.to_owned(),
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            reader_cert: dir.join("reader.pem"),
            reader_key: dir.join("reader.key"),
            written: Vec::new(),
        }
    }

    fn all(&self) -> [&PathBuf; 8] {
        [
            &self.ca_cert,
            &self.ca_key,
            &self.server_cert,
            &self.server_key,
            &self.client_cert,
            &self.client_key,
            &self.reader_cert,
            &self.reader_key,
        ]
    }
}

/// Errors while creating the dev certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot generate {what}: {source}")]
    Generate {
        what: &'static str,
        source: rcgen::Error,
    },
    #[error(
        "{present} exists but {missing} does not: the CA is incomplete; \
         remove the directory or pass overwrite to issue a new CA and new certificates"
    )]
    PartialCa { present: PathBuf, missing: PathBuf },
    #[error("CA certificate {cert} is unreadable or does not match the CA key {key}")]
    CaKeyMismatch { cert: PathBuf, key: PathBuf },
}

/// Creates the dev CA and certificates in `dir` (made with mode 0700 if missing).
///
/// Without `overwrite`, existing files are kept: when all exist this does nothing, an existing
/// CA (ca.pem + ca.key) signs any missing leaf, and a missing CA means a new CA and therefore
/// new leaves. With `overwrite`, everything is issued anew. The server certificate names
/// `service_ip` and [`SERVER_DNS_NAME`]; a kept server.pem is not re-checked against
/// `service_ip` (pass overwrite after changing the address).
pub fn init(dir: &Path, service_ip: IpAddr, overwrite: bool) -> Result<DevCertPaths, CertError> {
    let mut paths = DevCertPaths::in_dir(dir);
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| CertError::Io {
            action: "create directory",
            path: dir.to_owned(),
            source,
        })?;
    if !overwrite && paths.all().iter().all(|path| path.exists()) {
        return Ok(paths);
    }

    let ca_params = ca_params();
    let (ca_key, new_ca) = match (overwrite, paths.ca_cert.exists(), paths.ca_key.exists()) {
        (false, true, true) => (load_ca_key(&paths)?, false),
        (false, true, false) => {
            return Err(CertError::PartialCa {
                present: paths.ca_cert,
                missing: paths.ca_key,
            })
        }
        (false, false, true) => {
            return Err(CertError::PartialCa {
                present: paths.ca_key,
                missing: paths.ca_cert,
            })
        }
        _ => {
            let key = generate_key("CA key")?;
            let cert = ca_params
                .self_signed(&key)
                .map_err(|source| CertError::Generate {
                    what: "CA certificate",
                    source,
                })?;
            write_file(
                &paths.ca_key,
                key.serialize_pem().as_bytes(),
                KEY_MODE,
                &mut paths.written,
            )?;
            write_file(
                &paths.ca_cert,
                cert.pem().as_bytes(),
                CERT_MODE,
                &mut paths.written,
            )?;
            (key, true)
        }
    };
    // The issuer needs only the CA's name, key identifier method and key: rebuilding them
    // from the same parameters signs exactly as the certificate in ca.pem does.
    let issuer = Issuer::new(ca_params, ca_key);

    let leaves = [
        (
            paths.server_cert.clone(),
            paths.server_key.clone(),
            Leaf::Server(service_ip),
        ),
        (
            paths.client_cert.clone(),
            paths.client_key.clone(),
            Leaf::Client(WRITER_IDENTITY),
        ),
        (
            paths.reader_cert.clone(),
            paths.reader_key.clone(),
            Leaf::Client(READER_IDENTITY),
        ),
    ];
    for (cert_path, key_path, leaf) in leaves {
        if !overwrite && !new_ca && cert_path.exists() && key_path.exists() {
            continue;
        }
        let key = generate_key("leaf key")?;
        let cert =
            leaf.params()
                .signed_by(&key, &issuer)
                .map_err(|source| CertError::Generate {
                    what: "leaf certificate",
                    source,
                })?;
        write_file(
            &key_path,
            key.serialize_pem().as_bytes(),
            KEY_MODE,
            &mut paths.written,
        )?;
        write_file(
            &cert_path,
            cert.pem().as_bytes(),
            CERT_MODE,
            &mut paths.written,
        )?;
    }
    sync_dir(dir)?;
    Ok(paths)
}

/// Issues one more client certificate, CN `identity`, signed by the dev CA already in `dir`
/// (`init` made it): `<identity>.pem` and `<identity>.key`, replacing any of that name. For
/// the lab, where a test needs a client identity besides `client` and `reader`.
pub fn issue_client(dir: &Path, identity: &str) -> Result<(PathBuf, PathBuf), CertError> {
    let paths = DevCertPaths::in_dir(dir);
    let issuer = Issuer::new(ca_params(), load_ca_key(&paths)?);
    let key = generate_key("leaf key")?;
    let cert = Leaf::Client(identity)
        .params()
        .signed_by(&key, &issuer)
        .map_err(|source| CertError::Generate {
            what: "leaf certificate",
            source,
        })?;
    let (cert_path, key_path) = (
        dir.join(format!("{identity}.pem")),
        dir.join(format!("{identity}.key")),
    );
    let mut written = Vec::new();
    write_file(
        &key_path,
        key.serialize_pem().as_bytes(),
        KEY_MODE,
        &mut written,
    )?;
    write_file(&cert_path, cert.pem().as_bytes(), CERT_MODE, &mut written)?;
    sync_dir(dir)?;
    Ok((cert_path, key_path))
}

enum Leaf<'a> {
    Server(IpAddr),
    Client(&'a str),
}

impl Leaf<'_> {
    fn params(&self) -> CertificateParams {
        let mut params = CertificateParams::default();
        set_validity(&mut params, LEAF_VALIDITY_DAYS);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let mut name = DistinguishedName::new();
        match self {
            Leaf::Server(ip) => {
                name.push(DnType::CommonName, SERVER_DNS_NAME);
                params.subject_alt_names = vec![
                    SanType::IpAddress(*ip),
                    SanType::DnsName(SERVER_DNS_NAME.try_into().expect("ASCII name")),
                ];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }
            Leaf::Client(identity) => {
                // CN only: the typed identity is `cn:<identity>` (crate::identity), the key
                // the lab's roles use.
                name.push(DnType::CommonName, *identity);
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
        }
        params.distinguished_name = name;
        params
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    set_validity(&mut params, CA_VALIDITY_DAYS);
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = name;
    // Path length 0: this CA signs leaves only (RFC 5280 §4.2.1.9).
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn generate_key(what: &'static str) -> Result<KeyPair, CertError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|source| CertError::Generate { what, source })
}

/// Loads ca.key and checks that ca.pem carries its public key, so a kept CA never signs leaves
/// that chain to a different certificate.
fn load_ca_key(paths: &DevCertPaths) -> Result<KeyPair, CertError> {
    let pem = fs::read_to_string(&paths.ca_key).map_err(|source| CertError::Io {
        action: "read",
        path: paths.ca_key.clone(),
        source,
    })?;
    let mismatch = || CertError::CaKeyMismatch {
        cert: paths.ca_cert.clone(),
        key: paths.ca_key.clone(),
    };
    let key = KeyPair::from_pem(&pem).map_err(|_| mismatch())?;
    let cert = CertificateDer::from_pem_file(&paths.ca_cert).map_err(|_| mismatch())?;
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).map_err(|_| mismatch())?;
    if parsed.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
        return Err(mismatch());
    }
    Ok(key)
}

/// Writes `contents` to a temporary file created with `mode`, syncs it and renames it over
/// `path`.
fn write_file(
    path: &Path,
    contents: &[u8],
    mode: u32,
    written: &mut Vec<PathBuf>,
) -> Result<(), CertError> {
    let file_name = path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("file");
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    fn io_error<'a>(
        action: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(io::Error) -> CertError + 'a {
        move |source| CertError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("remove", &tmp)(e)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_error("create", &tmp))?;
    file.write_all(contents).map_err(io_error("write", &tmp))?;
    file.sync_all().map_err(io_error("sync", &tmp))?;
    fs::rename(&tmp, path).map_err(io_error("rename into", path))?;
    written.push(path.to_owned());
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), CertError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| CertError::Io {
            action: "sync directory",
            path: dir.to_owned(),
            source,
        })
}

/// Valid from today − BACKDATE_DAYS to today + `days`.
fn set_validity(params: &mut CertificateParams, days: i64) {
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| (d.as_secs() / 86_400) as i64)
        .unwrap_or(0);
    let date = |day: i64| {
        let (year, month, day) = civil_from_days(day);
        rcgen::date_time_ymd(year, month, day)
    };
    params.not_before = date(today - BACKDATE_DAYS);
    params.not_after = date(today + days);
}

/// Proleptic Gregorian (year, month, day) of a count of days since 1970-01-01
/// (H. Hinnant, "chrono-Compatible Low-Level Date Algorithms", `civil_from_days`). Also the
/// audit log's timestamps.
pub fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_416), (2025, 11, 24));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}

/// A DER blob that does not parse as an X.509 certificate.
#[derive(Debug, thiserror::Error)]
#[error("not a valid X.509 certificate: {0}")]
pub struct NotACertificate(String);

/// The certificate's notAfter, in seconds since the Unix epoch (for the expiry metric).
pub fn not_after_unix(der: &CertificateDer<'_>) -> Result<i64, NotACertificate> {
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| NotACertificate(e.to_string()))?;
    Ok(cert.validity().not_after.timestamp())
}

/// The names a lab client certificate carries (each optional, any combination).
#[derive(Clone, Debug, Default)]
pub struct LabNames<'a> {
    pub cn: Option<&'a str>,
    pub dns: Option<&'a str>,
    pub email: Option<&'a str>,
    pub uri: Option<&'a str>,
}

/// A CA for lab tests of mutual TLS: the dev CA of a directory, or a new one. Issues client
/// certificates with chosen names, serial and expiry, and CRLs.
#[derive(Debug)]
pub struct LabCa {
    /// The CA certificate, DER.
    pub cert: CertificateDer<'static>,
    /// The CA certificate, PEM (to append to a `client_ca` bundle).
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl LabCa {
    /// The dev CA that [`init`] wrote into `dir`.
    pub fn dev(dir: &Path) -> Result<LabCa, CertError> {
        let paths = DevCertPaths::in_dir(dir);
        let key = load_ca_key(&paths)?;
        let cert = CertificateDer::from_pem_file(&paths.ca_cert).map_err(|_| {
            CertError::CaKeyMismatch {
                cert: paths.ca_cert.clone(),
                key: paths.ca_key.clone(),
            }
        })?;
        let pem = fs::read_to_string(&paths.ca_cert).map_err(|source| CertError::Io {
            action: "read",
            path: paths.ca_cert.clone(),
            source,
        })?;
        Ok(LabCa {
            cert,
            pem,
            issuer: Issuer::new(ca_params(), key),
        })
    }

    /// A new CA named `common_name` (kept in memory only).
    pub fn generate(common_name: &str) -> Result<LabCa, CertError> {
        let key = generate_key("CA key")?;
        let mut params = ca_params();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, common_name);
        params.distinguished_name = name;
        let cert = params
            .clone()
            .self_signed(&key)
            .map_err(|source| CertError::Generate {
                what: "CA certificate",
                source,
            })?;
        Ok(LabCa {
            cert: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A client certificate (PEM) and its key (PEM): `names`, `serial`, valid from a day ago
    /// until `not_after` (Unix seconds).
    pub fn issue(
        &self,
        names: &LabNames<'_>,
        serial: u64,
        not_after: i64,
    ) -> Result<(String, String), CertError> {
        let key = generate_key("leaf key")?;
        let mut params = CertificateParams::default();
        set_validity(&mut params, LEAF_VALIDITY_DAYS);
        params.not_after = unix_time(not_after);
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let mut dn = DistinguishedName::new();
        if let Some(cn) = names.cn {
            dn.push(DnType::CommonName, cn);
        }
        params.distinguished_name = dn;
        let bad_name = |_| CertError::Generate {
            what: "subjectAltName",
            source: rcgen::Error::CouldNotParseCertificate,
        };
        if let Some(dns) = names.dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(dns.try_into().map_err(bad_name)?));
        }
        if let Some(email) = names.email {
            params
                .subject_alt_names
                .push(SanType::Rfc822Name(email.try_into().map_err(bad_name)?));
        }
        if let Some(uri) = names.uri {
            params
                .subject_alt_names
                .push(SanType::URI(uri.try_into().map_err(bad_name)?));
        }
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| CertError::Generate {
                what: "leaf certificate",
                source,
            })?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A CRL (PEM) revoking `serials`, issued now, next update at `next_update` (Unix seconds).
    pub fn crl(
        &self,
        serials: &[u64],
        crl_number: u64,
        next_update: i64,
    ) -> Result<String, CertError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let params = rcgen::CertificateRevocationListParams {
            this_update: unix_time(now - 60),
            next_update: unix_time(next_update),
            crl_number: rcgen::SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*serial),
                    revocation_time: unix_time(now - 60),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.issuer)
            .map_err(|source| CertError::Generate {
                what: "CRL",
                source,
            })?;
        crl.pem().map_err(|source| CertError::Generate {
            what: "CRL",
            source,
        })
    }

    /// SHA-256 of the CA certificate, as `issuer = "sha256:<hex>"` names it.
    pub fn fingerprint_hex(&self) -> String {
        crate::trust::fingerprint(&self.cert)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

fn unix_time(secs: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}
