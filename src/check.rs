//! The deep configuration check, as deep as `nginx -t`: what `pantera check-config` reports and
//! what `serve` runs before it attaches anything, so a file the one accepts is a file the
//! other starts with.
//!
//! Beyond `Config::validate` (every field in its bounds): the TLS files open, the private key
//! is the certificate's and only its owner may read it, the certificate chain is in order
//! (leaf first, each certificate signed by the next), the client CA parses. Errors name the
//! field and the reason. What would start but probably not as meant is a warning: a
//! certificate expired or expiring within `EXPIRY_WARNING_DAYS`, mTLS with no roles (every
//! client would get 403), and, for `check-config` only, a data directory that `serve` would
//! refuse (the file may be checked on another host than the one it is for).
//!
//! `sandbox.user` must resolve (`check-config`, and `serve` before its privilege drop); when the
//! process is to switch to it, that user must be able to do what the process does after the
//! switch (docs/security.md): write the data directory and the audit log's directory, read the
//! TLS files (a reload reads them again).

use std::time::{SystemTime, UNIX_EPOCH};

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::{App, Config, ConfigError};

/// A certificate that expires within this many days is reported.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// Whether to look at the data directory: `check-config` does (warnings only); `serve` opens
/// it itself, and refuses what is wrong with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDir {
    Look,
    Skip,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Runs every check on `config` at time `now`; returns the warnings, or the first error.
pub fn deep(config: &Config, data_dir: DataDir, now: SystemTime) -> Result<Vec<String>, ConfigError> {
    config.validate()?;
    let mut warnings = Vec::new();
    if config.app()? != App::Ledger {
        warnings.push(format!(
            "service.app = {:?}: the [tls] files and the data directory are not used",
            config.service.app
        ));
        return Ok(warnings);
    }
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    tls(config, now, &mut warnings)?;
    if data_dir == DataDir::Look {
        service_user(config)?;
    }
    let t = &config.tls;
    if t.roles.is_empty() && t.anonymous_role == "none" {
        let who = if t.client_ca.is_some() { "client" } else { "request" };
        warnings.push(format!(
            "tls.roles is empty{}: every {who} would get 403 (add \"cn:NAME\" = \"write\" or \"read\" entries; dns:, email:, uri: for subjectAltNames)",
            if t.client_ca.is_some() {
                " with tls.client_ca set (mTLS)"
            } else {
                " and tls.anonymous_role is \"none\""
            }
        ));
    }
    if config.backend()? == crate::config::Backend::TigerBeetle {
        // The cluster keeps the books: the embedded ledger's settings do not apply.
        let l = &config.ledger;
        if l.durability != "fsync"
            || l.checkpoint_every_batches != crate::config::LEDGER_CHECKPOINT_EVERY_BATCHES_DEFAULT
            || l.checkpoint_every_events != crate::config::LEDGER_CHECKPOINT_EVERY_EVENTS_DEFAULT
        {
            warnings.push(
                "ledger.durability, ledger.checkpoint_every_batches and ledger.checkpoint_every_events apply to the embedded ledger only; with ledger.backend = \"tigerbeetle\" the cluster keeps the books".to_owned(),
            );
        }
    }
    if data_dir == DataDir::Look && config.backend()? == crate::config::Backend::Embedded {
        let dir = &config.ledger.data_dir;
        if let Err(e) = ledger_svc::data_dir::check(dir, Some(config.ledger.cluster_id)) {
            warnings.push(format!(
                "ledger.data_dir {}: {e} (serve refuses to start with it; fine if this file is for another host)",
                dir.display()
            ));
        }
        if let Err(e) = dataplane::interface_mac(&config.dataplane.interface) {
            warnings.push(format!(
                "dataplane.interface {:?}: {e} (fine if this file is for another host)",
                config.dataplane.interface
            ));
        }
    }
    Ok(warnings)
}

/// `check-config`, and `serve` before its privilege drop (not a reload, which runs confined:
/// the user database is out of its reach, and the sandbox section is restart-only):
/// `sandbox.user` resolves, and, when the process switches to it (the sandbox on and a user
/// configured), that user can write the data directory and the audit directory and the files
/// in them, and read the TLS files, by the permission bits as they apply after the switch: its
/// uid, and its primary group only (the drop sets no other group). ACLs are not read. Paths
/// that do not exist are left to the other checks.
pub fn service_user(config: &Config) -> Result<(), ConfigError> {
    use crate::sandbox::ServiceUser;
    let user = ServiceUser::resolve(&config.sandbox).map_err(|e| invalid("sandbox.user", e))?;
    if !config.sandbox.enabled || config.sandbox.user.trim().is_empty() {
        return Ok(());
    }
    let who = format!("sandbox.user {:?} (uid {}, gid {})", config.sandbox.user.trim(), user.uid, user.gid);
    let data_dir = &config.ledger.data_dir;
    if !data_dir.as_os_str().is_empty() && data_dir.exists() {
        reachable(data_dir, user, &who)?;
        need(data_dir, user, 0o7, &format!("{who} cannot write the data directory"))?;
        // What an earlier run as another user left there (WAL segments, checkpoints) must stay
        // writable too. Bounded: the first entries are enough to find a missed `chown -R`.
        let entries = std::fs::read_dir(data_dir).map_err(|e| invalid("sandbox.user", format!("cannot list {}: {e}", data_dir.display())))?;
        for entry in entries.take(10_000).flatten() {
            let path = entry.path();
            let want = if path.is_dir() { 0o7 } else { 0o6 };
            need(&path, user, want, &format!("{who} cannot use this file in the data directory"))?;
        }
    }
    if config.audit.enabled {
        let audit = config.audit.path_for(data_dir);
        let dir = audit.parent().filter(|p| !p.as_os_str().is_empty()).map_or_else(|| std::path::PathBuf::from("."), |p| p.to_path_buf());
        if dir.exists() {
            reachable(&dir, user, &who)?;
            // Rotation renames the files and creates a new one there (the file itself is
            // opened before the switch).
            need(&dir, user, 0o3, &format!("{who} cannot rotate the audit log in its directory"))?;
        }
    }
    let t = &config.tls;
    for (field, file) in [("tls.cert_chain", Some(&t.cert_chain)), ("tls.private_key", Some(&t.private_key)), ("tls.client_ca", t.client_ca.as_ref())] {
        let Some(file) = file.filter(|f| f.exists()) else { continue };
        reachable(file, user, &who)?;
        need(file, user, 0o4, &format!("{who} cannot read {field} (a reload reads it again)"))?;
    }
    Ok(())
}

/// Every directory above `path` lets `user` pass (search permission).
fn reachable(path: &std::path::Path, user: crate::sandbox::ServiceUser, who: &str) -> Result<(), ConfigError> {
    let full = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    for dir in full.ancestors().skip(1).filter(|d| !d.as_os_str().is_empty()) {
        need(dir, user, 0o1, &format!("{who} cannot reach {} through this directory", path.display()))?;
    }
    Ok(())
}

/// `user` has the permission bits `want` (rwx as 0o7) on `path` (following links).
fn need(path: &std::path::Path, user: crate::sandbox::ServiceUser, want: u32, what: &str) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| invalid("sandbox.user", format!("{what}: {}: {e}", path.display())))?;
    let mode = meta.mode();
    let bits = if meta.uid() == user.uid {
        (mode >> 6) & 0o7
    } else if meta.gid() == user.gid {
        (mode >> 3) & 0o7
    } else {
        mode & 0o7
    };
    if bits & want != want {
        return Err(invalid(
            "sandbox.user",
            format!("{what}: {} (owner {}:{}, mode {:04o}); chown or chmod it for the service user", path.display(), meta.uid(), meta.gid(), mode & 0o7777),
        ));
    }
    Ok(())
}

/// The TLS files: each opened and parsed as `serve` does, then the chain and the expiry dates.
fn tls(config: &Config, now: i64, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
    let t = &config.tls;
    // One file at a time first, so the error names the field whose file is wrong.
    let chain = tls_term::load_certs("certificate chain", &t.cert_chain).map_err(|e| invalid("tls.cert_chain", e.to_string()))?;
    // Its owner and mode as well: the same check as `serve` and a reload make.
    tls_term::load_private_key(&t.private_key, config.key_owner()?).map_err(|e| invalid("tls.private_key", e.to_string()))?;
    let client_ca = match &t.client_ca {
        Some(path) => tls_term::load_certs("client CA", path).map_err(|e| invalid("tls.client_ca", e.to_string()))?,
        None => Vec::new(),
    };
    // Then exactly what `serve` builds: the key must be the leaf's (rustls compares the key's
    // public half with the certificate's), the CA must be a usable trust anchor.
    tls_term::server_config(&config.tls_settings()?).map_err(|e| {
        use tls_term::TlsError as E;
        let field = match &e {
            E::KeyMismatch { .. } | E::CertifiedKey { .. } => "tls.private_key",
            E::BadClientCa { .. } | E::ClientVerifier { .. } => "tls.client_ca",
            E::BadCrl { .. } => "tls.crls",
            E::Missing { what: "CRL", .. } | E::Io { what: "CRL", .. } => "tls.crls",
            _ => "tls",
        };
        invalid(field, e.to_string())
    })?;

    let parsed = chain
        .iter()
        .enumerate()
        .map(|(i, der)| {
            X509Certificate::from_der(der).map(|(_, cert)| cert).map_err(|e| {
                invalid(
                    "tls.cert_chain",
                    format!("certificate {i} of {} does not parse: {e}", t.cert_chain.display()),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Leaf first, then each certificate's issuer: what a client needs to build the path to
    // its trust anchor. A chain out of order fails at some clients and not others.
    for (i, pair) in parsed.windows(2).enumerate() {
        let (cert, issuer) = (&pair[0], &pair[1]);
        if cert.issuer() != issuer.subject() {
            return Err(invalid(
                "tls.cert_chain",
                format!(
                    "certificate {i} ({}) is issued by {}, but the next certificate is {}: the file must hold the leaf first, then each issuer in turn",
                    cert.subject(),
                    cert.issuer(),
                    issuer.subject()
                ),
            ));
        }
        cert.verify_signature(Some(issuer.public_key())).map_err(|e| {
            invalid(
                "tls.cert_chain",
                format!("certificate {i} ({}) is not signed by the key of the next one: {e}", cert.subject()),
            )
        })?;
    }
    for (i, cert) in parsed.iter().enumerate() {
        expiry("tls.cert_chain", i, cert, now, warnings);
    }
    for (i, der) in client_ca.iter().enumerate() {
        // The verifier built above accepted them; a parse failure here would be our own bug.
        if let Ok((_, cert)) = X509Certificate::from_der(der) {
            expiry("tls.client_ca", i, &cert, now, warnings);
        }
    }
    Ok(())
}

/// A warning for a certificate not valid yet, expired, or expiring soon.
fn expiry(field: &str, index: usize, cert: &X509Certificate<'_>, now: i64, warnings: &mut Vec<String>) {
    let validity = cert.validity();
    let (not_before, not_after) = (validity.not_before.timestamp(), validity.not_after.timestamp());
    let what = format!("{field}: certificate {index} ({})", cert.subject());
    if now < not_before {
        warnings.push(format!("{what} is not valid before {}", validity.not_before));
    } else if not_after < now {
        warnings.push(format!("{what} EXPIRED on {}", validity.not_after));
    } else if not_after - now < EXPIRY_WARNING_DAYS * 86_400 {
        warnings.push(format!(
            "{what} expires on {} (in {} days)",
            validity.not_after,
            (not_after - now) / 86_400
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A configuration over the dev certificates written into `dir`.
    fn config_in(dir: &Path, roles: &str) -> Config {
        let tls = dir.join("tls");
        tls_term::certs::init(&tls, "10.99.0.2".parse().unwrap(), false).expect("dev certificates");
        let text = format!(
            "[dataplane]\ninterface = \"lo\"\n[service]\naddress = \"10.99.0.2\"\n[tls]\ncert_chain = \"{t}/server.pem\"\nprivate_key = \"{t}/server.key\"\nclient_ca = \"{t}/ca.pem\"\n{roles}\n[ledger]\ndata_dir = \"{d}\"\n",
            t = tls.display(),
            d = dir.join("data").display()
        );
        Config::parse(Path::new("t.toml"), &text).expect("valid")
    }

    #[test]
    fn good_files_pass_and_the_missing_data_directory_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path(), "roles = { \"cn:client\" = \"write\" }");
        let warnings = deep(&config, DataDir::Look, SystemTime::now()).expect("valid");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("ledger.data_dir"), "{warnings:?}");
        assert!(deep(&config, DataDir::Skip, SystemTime::now()).expect("valid").is_empty());
    }

    #[test]
    fn the_service_user_must_resolve_and_reach_the_data_directory_and_the_tls_files() {
        use std::os::unix::fs::chown;
        let dir = tempfile::tempdir().unwrap();
        let mut config = config_in(dir.path(), "roles = { \"cn:client\" = \"write\" }");
        std::fs::create_dir(dir.path().join("data")).unwrap();
        config.sandbox.user = "no-such-user-pantera".to_owned();
        let e = deep(&config, DataDir::Look, SystemTime::now()).unwrap_err().to_string();
        assert!(e.contains("sandbox.user") && e.contains("no such user"), "{e}");
        // SAFETY: geteuid touches no memory.
        if unsafe { libc::geteuid() } != 0 {
            println!("not root: the files cannot be given to another user; the rest is skipped");
            return;
        }
        // The files belong to root with owner-only modes: nobody can use none of them.
        config.sandbox.user = "65534:65534".to_owned();
        let e = deep(&config, DataDir::Look, SystemTime::now()).unwrap_err().to_string();
        // Whichever check meets it first: the user's reach, or the key file's owner rule.
        let key_owner_refused = e.contains("tls.private_key") && e.contains("expected owner uid 65534");
        assert!((e.contains("sandbox.user") || key_owner_refused) && e.contains(&dir.path().display().to_string()), "{e}");
        for entry in [dir.path().to_path_buf(), dir.path().join("data"), dir.path().join("tls")] {
            chown(&entry, Some(65534), Some(65534)).unwrap();
        }
        let e = deep(&config, DataDir::Look, SystemTime::now()).unwrap_err().to_string();
        let key_owner_refused = e.contains("tls.private_key") && e.contains("expected owner uid 65534");
        assert!(e.contains("cannot read tls.cert_chain") || e.contains("cannot read tls.private_key") || key_owner_refused, "{e}");
        assert!(e.contains("/tls/server"), "the message names the file: {e}");
        for file in std::fs::read_dir(dir.path().join("tls")).unwrap() {
            chown(file.unwrap().path(), Some(65534), Some(65534)).unwrap();
        }
        deep(&config, DataDir::Look, SystemTime::now()).expect("everything is the service user's");
        assert!(deep(&config, DataDir::Skip, SystemTime::now()).is_ok(), "a reload does not look");
        // A file an earlier run as root left in the data directory.
        std::fs::write(dir.path().join("data").join("wal-0.log"), "").unwrap();
        let e = deep(&config, DataDir::Look, SystemTime::now()).unwrap_err().to_string();
        assert!(e.contains("wal-0.log") && e.contains("the data directory"), "{e}");
        // The sandbox off: no user switch, so the data directory is not looked at for one; the
        // key file must then belong to the user the process runs as (root here), not 65534.
        config.sandbox.enabled = false;
        let e = deep(&config, DataDir::Look, SystemTime::now()).unwrap_err().to_string();
        assert!(!e.contains("wal-0.log") && e.contains("tls.private_key") && e.contains("expected owner uid 0"), "{e}");
    }

    #[test]
    fn mtls_without_roles_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path(), "");
        let warnings = deep(&config, DataDir::Skip, SystemTime::now()).expect("valid");
        assert!(
            warnings.iter().any(|w| w.contains("tls.roles is empty") && w.contains("403")),
            "{warnings:?}"
        );
    }

    #[test]
    fn expiry_is_reported_ahead_and_after() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path(), "roles = { \"cn:client\" = \"write\" }");
        let leaf = tls_term::load_certs("c", &config.tls.cert_chain).unwrap();
        let (_, cert) = X509Certificate::from_der(&leaf[0]).unwrap();
        let not_after = cert.validity().not_after.timestamp();
        let at = |t: i64| UNIX_EPOCH + std::time::Duration::from_secs(t as u64);
        let soon = deep(&config, DataDir::Skip, at(not_after - 3 * 86_400)).unwrap();
        assert!(
            soon.iter()
                .any(|w| w.contains("tls.cert_chain: certificate 0") && w.contains("in 3 days")),
            "{soon:?}"
        );
        let after = deep(&config, DataDir::Skip, at(not_after + 1)).unwrap();
        assert!(
            after
                .iter()
                .any(|w| w.contains("tls.cert_chain: certificate 0") && w.contains("EXPIRED")),
            "{after:?}"
        );
    }

    #[test]
    fn a_chain_out_of_order_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config_in(dir.path(), "roles = { \"cn:client\" = \"write\" }");
        // Leaf, then a certificate that did not issue it (the client's): not a chain.
        let tls = dir.path().join("tls");
        let chain = std::fs::read_to_string(tls.join("server.pem")).unwrap() + &std::fs::read_to_string(tls.join("client.pem")).unwrap();
        std::fs::write(tls.join("bad-chain.pem"), chain).unwrap();
        config.tls.cert_chain = tls.join("bad-chain.pem");
        let e = deep(&config, DataDir::Skip, SystemTime::now()).expect_err("refused").to_string();
        assert!(e.contains("tls.cert_chain") && e.contains("leaf first"), "{e}");
        // Leaf then its CA: in order, and the signature verifies.
        let chain = std::fs::read_to_string(tls.join("server.pem")).unwrap() + &std::fs::read_to_string(tls.join("ca.pem")).unwrap();
        std::fs::write(tls.join("good-chain.pem"), chain).unwrap();
        config.tls.cert_chain = tls.join("good-chain.pem");
        deep(&config, DataDir::Skip, SystemTime::now()).expect("leaf, then its issuer");
    }
}
