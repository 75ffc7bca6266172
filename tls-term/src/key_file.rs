//! The server's private key file: who may own it, and reading it into locked memory.
//!
//! The file is opened, its owner and mode checked on the open descriptor (what is checked is
//! what is read), then read straight into a [`SecretBytes`] and decoded from PEM into another;
//! neither the PEM text nor the DER key ever sits in an ordinary heap buffer of ours. Rules and
//! their reasons: docs/security.md, "Key custody".

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};

use crate::config::TlsError;
use crate::secret::SecretBytes;

/// A key file larger than this is not a key: an RSA 8192 key in PEM is about 6.5 KiB.
pub const KEY_FILE_BYTES_MAX: usize = 64 * 1024;

/// The user the process serves as (after any switch at start-up): who may own the key file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyOwner {
    pub uid: u32,
    pub gid: u32,
}

impl KeyOwner {
    /// The effective user and group of this process.
    pub fn current() -> KeyOwner {
        #[allow(unsafe_code)]
        // SAFETY: geteuid and getegid cannot fail and touch no memory.
        unsafe {
            KeyOwner {
                uid: libc::geteuid(),
                gid: libc::getegid(),
            }
        }
    }
}

/// The key file's owner and mode are one of the two accepted layouts:
/// - owned by the service user, mode 0600 or 0400: only the service reads it;
/// - owned by root, group the service user's group, mode 0640 or 0440 (the usual
///   `root:pantera 0640`): root administers it, the service only reads it.
///
/// Anything else (readable or writable by others, group-writable, owned by a third user,
/// root-owned and readable only by root while the service runs as someone else) is refused,
/// by `serve`, `check-config` and a SIGHUP reload alike, all through this one function.
pub fn check_key_file(
    path: &Path,
    metadata: &fs::Metadata,
    owner: KeyOwner,
) -> Result<(), TlsError> {
    let refuse = |reason: String| TlsError::KeyFileAccess {
        path: path.to_owned(),
        uid: metadata.uid(),
        gid: metadata.gid(),
        mode: metadata.mode() & 0o7777,
        reason,
    };
    if !metadata.is_file() {
        return Err(refuse("it is not a regular file".to_owned()));
    }
    let (uid, gid, mode) = (metadata.uid(), metadata.gid(), metadata.mode() & 0o7777);
    let service_owned = uid == owner.uid && matches!(mode, 0o600 | 0o400);
    let root_group = uid == 0 && gid == owner.gid && matches!(mode, 0o640 | 0o440);
    if service_owned || root_group {
        return Ok(());
    }
    let why = if mode & 0o007 != 0 {
        "other users may read or write it"
    } else if mode & 0o020 != 0 {
        "its group may write it"
    } else if mode & 0o7111 != 0 {
        "it has execute or special mode bits"
    } else if uid != owner.uid && uid != 0 {
        "it belongs to a user other than the service user or root"
    } else if uid == 0 && owner.uid != 0 && gid != owner.gid {
        "it belongs to root, and its group is not the service user's group"
    } else {
        "its mode is not one of the accepted ones"
    };
    Err(refuse(format!(
        "{why}; expected owner uid {} with mode 0600 or 0400, or owner root with group gid {} and mode 0640 or 0440",
        owner.uid, owner.gid
    )))
}

/// Which DER structure the PEM label announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// `PRIVATE KEY` (PKCS#8).
    Pkcs8,
    /// `RSA PRIVATE KEY` (PKCS#1).
    Pkcs1,
    /// `EC PRIVATE KEY` (SEC1).
    Sec1,
}

/// A private key in DER, in locked memory, zeroed when dropped.
#[derive(Debug)]
pub struct PrivateKey {
    der: SecretBytes,
    kind: KeyKind,
}

impl PrivateKey {
    /// The key borrowed for rustls: no copy is made here.
    pub fn der(&self) -> PrivateKeyDer<'_> {
        let bytes = self.der.as_slice();
        match self.kind {
            KeyKind::Pkcs8 => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(bytes)),
            KeyKind::Pkcs1 => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(bytes)),
            KeyKind::Sec1 => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(bytes)),
        }
    }

    pub fn kind(&self) -> KeyKind {
        self.kind
    }
}

/// Opens the key file, checks it with [`check_key_file`], and decodes its first private key.
pub fn load_private_key(path: &Path, owner: KeyOwner) -> Result<PrivateKey, TlsError> {
    const WHAT: &str = "private key";
    let io_error = |source: io::Error| crate::config::file_error(WHAT, path, source);
    let locked = |source: io::Error| TlsError::LockedMemory {
        what: "the private key",
        source,
    };
    let mut file = File::open(path).map_err(io_error)?;
    // fstat on the descriptor just opened: a file swapped in after the check is not read.
    let metadata = file.metadata().map_err(io_error)?;
    check_key_file(path, &metadata, owner)?;

    // Sized by the file (a page or two for any real key), so that loading it fits in even a
    // small RLIMIT_MEMLOCK.
    let too_large = || TlsError::KeyPem {
        path: path.to_owned(),
        reason: format!("the file is larger than {KEY_FILE_BYTES_MAX} bytes"),
    };
    let size = usize::try_from(metadata.len()).map_err(|_| too_large())?;
    if size > KEY_FILE_BYTES_MAX {
        return Err(too_large());
    }
    let mut text = SecretBytes::with_capacity(size).map_err(locked)?;
    if !text.read_to_end_from(&mut file).map_err(io_error)? {
        return Err(TlsError::KeyPem {
            path: path.to_owned(),
            reason: "the file grew while it was read".to_owned(),
        });
    }
    // DER is 3/4 of its base64: the text's length bounds it.
    let mut der = SecretBytes::with_capacity(text.len()).map_err(locked)?;
    let kind = decode_pem_key(text.as_slice(), &mut der).map_err(|e| match e {
        PemKeyError::NoKey => TlsError::NoPrivateKey {
            path: path.to_owned(),
        },
        PemKeyError::Invalid(reason) => TlsError::KeyPem {
            path: path.to_owned(),
            reason: reason.to_owned(),
        },
    })?;
    Ok(PrivateKey { der, kind })
}

#[derive(Debug, PartialEq, Eq)]
enum PemKeyError {
    NoKey,
    Invalid(&'static str),
}

/// Decodes the first private-key section of PEM `text` (RFC 7468) into `out`; other sections
/// (certificates kept in the same file) are skipped. Written here, not taken from
/// rustls-pki-types, because its decoder returns the key in a `Vec` of its own.
fn decode_pem_key(text: &[u8], out: &mut SecretBytes) -> Result<KeyKind, PemKeyError> {
    let mut section: Option<(&[u8], Option<KeyKind>)> = None;
    let mut base64 = Base64::default();
    for line in text.split(|b| *b == b'\n') {
        let line = line.trim_ascii();
        match section {
            None => {
                let Some(label) = line
                    .strip_prefix(b"-----BEGIN ")
                    .and_then(|l| l.strip_suffix(b"-----"))
                else {
                    continue;
                };
                let kind = match label {
                    b"PRIVATE KEY" => Some(KeyKind::Pkcs8),
                    b"RSA PRIVATE KEY" => Some(KeyKind::Pkcs1),
                    b"EC PRIVATE KEY" => Some(KeyKind::Sec1),
                    b"ENCRYPTED PRIVATE KEY" => {
                        return Err(PemKeyError::Invalid(
                            "the key is encrypted (ENCRYPTED PRIVATE KEY); store it unencrypted, readable only as documented",
                        ))
                    }
                    _ => None,
                };
                section = Some((label, kind));
            }
            Some((label, kind)) => {
                if let Some(end) = line
                    .strip_prefix(b"-----END ")
                    .and_then(|l| l.strip_suffix(b"-----"))
                {
                    if end != label {
                        return Err(PemKeyError::Invalid(
                            "a PEM section ends with another label than it began with",
                        ));
                    }
                    if let Some(kind) = kind {
                        base64.finish(out)?;
                        if out.is_empty() {
                            return Err(PemKeyError::Invalid("the private key section is empty"));
                        }
                        return Ok(kind);
                    }
                    section = None;
                    continue;
                }
                if kind.is_none() {
                    continue;
                }
                if line.contains(&b':') {
                    // RFC 1421 headers (Proc-Type, DEK-Info): an OpenSSL-encrypted legacy key.
                    return Err(PemKeyError::Invalid(
                        "the key has PEM headers (an encrypted legacy key); store it unencrypted",
                    ));
                }
                for &c in line {
                    base64.push(c, out)?;
                }
            }
        }
    }
    match section {
        Some((_, Some(_))) => Err(PemKeyError::Invalid(
            "the private key section has no END line",
        )),
        _ => Err(PemKeyError::NoKey),
    }
}

/// A streaming base64 decoder (RFC 4648 §4, padding only at the end) writing into locked
/// memory; at most 18 bits of the key are ever held in `bits`, zeroed when done.
#[derive(Default)]
struct Base64 {
    bits: u32,
    count: u8,
    padding: u8,
}

impl Base64 {
    fn push(&mut self, c: u8, out: &mut SecretBytes) -> Result<(), PemKeyError> {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                self.padding += 1;
                if self.padding > 2 || self.count < 2 {
                    return Err(PemKeyError::Invalid("misplaced base64 padding"));
                }
                return Ok(());
            }
            b' ' | b'\t' => return Ok(()),
            _ => {
                return Err(PemKeyError::Invalid(
                    "a character outside base64 in the key",
                ))
            }
        };
        if self.padding > 0 {
            return Err(PemKeyError::Invalid("base64 data after padding"));
        }
        self.bits = (self.bits << 6) | u32::from(value);
        self.count += 1;
        if self.count == 4 {
            for shift in [16, 8, 0] {
                if !out.push((self.bits >> shift) as u8) {
                    return Err(PemKeyError::Invalid("the key is larger than its file"));
                }
            }
            self.bits = 0;
            self.count = 0;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut SecretBytes) -> Result<(), PemKeyError> {
        // 2 or 3 characters left: 1 or 2 final bytes; the padding, when present, must match.
        let result = match (self.count, self.padding) {
            (0, 0) => Ok(()),
            (2, 0 | 2) => {
                let b = self.bits << 12;
                if out.push((b >> 16) as u8) {
                    Ok(())
                } else {
                    Err(PemKeyError::Invalid("the key is larger than its file"))
                }
            }
            (3, 0 | 1) => {
                let b = self.bits << 6;
                if out.push((b >> 16) as u8) && out.push((b >> 8) as u8) {
                    Ok(())
                } else {
                    Err(PemKeyError::Invalid("the key is larger than its file"))
                }
            }
            _ => Err(PemKeyError::Invalid("truncated base64 in the key")),
        };
        self.bits = 0;
        self.count = 0;
        result
    }
}

impl Drop for Base64 {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.bits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::fs::{chown, OpenOptionsExt};

    fn decode(text: &str) -> Result<(KeyKind, Vec<u8>), PemKeyError> {
        let mut out = SecretBytes::with_capacity(text.len()).unwrap();
        let kind = decode_pem_key(text.as_bytes(), &mut out)?;
        Ok((kind, out.as_slice().to_vec()))
    }

    #[test]
    fn pem_decodes_like_rustls_pki_types() {
        let dir = tempfile::tempdir().unwrap();
        let paths = crate::certs::init(dir.path(), "192.0.2.10".parse().unwrap(), false).unwrap();
        let text = fs::read_to_string(&paths.server_key).unwrap();
        let (kind, der) = decode(&text).unwrap();
        use rustls_pki_types::pem::PemObject;
        let reference = PrivateKeyDer::from_pem_slice(text.as_bytes()).unwrap();
        assert_eq!(kind, KeyKind::Pkcs8);
        assert_eq!(der, reference.secret_der());
        // A certificate before the key is skipped; CRLF line ends are fine.
        let cert = fs::read_to_string(&paths.server_cert).unwrap();
        let both = format!("{cert}{text}").replace('\n', "\r\n");
        assert_eq!(decode(&both).unwrap().1, der);
    }

    #[test]
    fn pem_edge_cases() {
        // "Man" = TWFu, "Ma" = TWE=, "M" = TQ==.
        let pem = |label: &str, body: &str| {
            format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n")
        };
        assert_eq!(
            decode(&pem("PRIVATE KEY", "TWFu")).unwrap(),
            (KeyKind::Pkcs8, b"Man".to_vec())
        );
        assert_eq!(
            decode(&pem("RSA PRIVATE KEY", "TWE=")).unwrap(),
            (KeyKind::Pkcs1, b"Ma".to_vec())
        );
        assert_eq!(
            decode(&pem("EC PRIVATE KEY", "TQ==")).unwrap(),
            (KeyKind::Sec1, b"M".to_vec())
        );
        assert_eq!(
            decode(&pem("PRIVATE KEY", "TW\nFu\nTQ")).unwrap().1,
            b"ManM".to_vec()
        );
        assert_eq!(decode(&pem("CERTIFICATE", "TWFu")), Err(PemKeyError::NoKey));
        assert_eq!(decode(""), Err(PemKeyError::NoKey));
        for bad in [
            pem("PRIVATE KEY", "TW!u"),
            pem("PRIVATE KEY", "T"),
            pem("PRIVATE KEY", "TQ==TWFu"),
            pem("PRIVATE KEY", "TWFu="),
            pem("PRIVATE KEY", ""),
            pem("ENCRYPTED PRIVATE KEY", "TWFu"),
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nTWFu\n-----END RSA PRIVATE KEY-----\n".to_owned(),
            "-----BEGIN PRIVATE KEY-----\nTWFu\n".to_owned(),
            "-----BEGIN PRIVATE KEY-----\nTWFu\n-----END CERTIFICATE-----\n".to_owned(),
        ] {
            assert!(matches!(decode(&bad), Err(PemKeyError::Invalid(_))), "{bad:?}: {:?}", decode(&bad));
        }
    }

    /// Writes a file with `uid:gid` and `mode` and checks it against the service user `owner`.
    fn check(uid: u32, gid: u32, mode: u32, owner: KeyOwner) -> Result<(), TlsError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.key");
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        chown(&path, Some(uid), Some(gid)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        check_key_file(&path, &fs::metadata(&path).unwrap(), owner)
    }

    #[test]
    fn ownership_and_mode_layouts() {
        if KeyOwner::current().uid != 0 {
            eprintln!("skipped: chown needs root");
            return;
        }
        let service = KeyOwner {
            uid: 4242,
            gid: 4343,
        };
        let root = KeyOwner { uid: 0, gid: 0 };
        // Accepted.
        for (uid, gid, mode, owner) in [
            (4242, 4343, 0o600, service),
            (4242, 4343, 0o400, service),
            (4242, 0, 0o600, service),
            (0, 4343, 0o640, service),
            (0, 4343, 0o440, service),
            (0, 0, 0o600, root),
            (0, 0, 0o400, root),
            (0, 0, 0o640, root),
        ] {
            check(uid, gid, mode, owner).unwrap_or_else(|e| panic!("{uid}:{gid} {mode:o}: {e}"));
        }
        // Refused, each with the reason it gives.
        for (uid, gid, mode, owner, why) in [
            (4242, 4343, 0o644, service, "other users"),
            (4242, 4343, 0o604, service, "other users"),
            (4242, 4343, 0o602, service, "other users"),
            (4242, 4343, 0o640, service, "not one of the accepted"),
            (4242, 4343, 0o660, service, "group may write"),
            (0, 4343, 0o660, service, "group may write"),
            (0, 4343, 0o644, service, "other users"),
            (0, 4343, 0o600, service, "not one of the accepted"),
            (0, 0, 0o640, service, "group is not the service user's"),
            (0, 4343, 0o700, service, "execute"),
            (0, 4343, 0o4640, service, "execute or special"),
            (1000, 4343, 0o600, service, "other than the service user"),
            (1000, 0, 0o640, root, "other than the service user"),
            (4242, 4343, 0o600, root, "other than the service user"),
        ] {
            let error = check(uid, gid, mode, owner).expect_err(&format!("{uid}:{gid} {mode:o}"));
            let message = error.to_string();
            assert!(message.contains(why), "{uid}:{gid} {mode:o}: {message}");
            assert!(message.contains(&format!("{mode:04o}")), "{message}");
            assert!(message.contains(&format!("{uid}:{gid}")), "{message}");
            assert!(message.contains("server.key"), "{message}");
            assert!(
                message.contains(&format!("owner uid {}", owner.uid)),
                "{message}"
            );
        }
    }

    #[test]
    fn a_key_file_too_large_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.key");
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        fs::write(&path, vec![b'A'; KEY_FILE_BYTES_MAX + 1]).unwrap();
        let error = load_private_key(&path, KeyOwner::current()).unwrap_err();
        assert!(matches!(error, TlsError::KeyPem { .. }), "{error}");
        assert!(
            error.to_string().contains("larger than 65536 bytes"),
            "{error}"
        );
    }

    #[test]
    fn a_directory_is_not_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let error = load_private_key(dir.path(), KeyOwner::current()).unwrap_err();
        assert!(error.to_string().contains("not a regular file"), "{error}");
    }
}
