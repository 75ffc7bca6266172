//! `pantera check-config`, as an operator runs it (issue 10, "check-config as deep as
//! nginx -t"): the TLS files are opened and checked, errors name the field and the reason and
//! exit non-zero, warnings are printed as `warning: ...` and exit 0, a section may set one key,
//! and `--print` writes the effective configuration as TOML that checks again. No root needed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const PANTERA: &str = env!("CARGO_BIN_EXE_pantera");

/// A directory with the dev certificates (`pantera certs init`), as an operator would have.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new(PANTERA)
            .args(["certs", "init", "--dir"])
            .arg(dir.path().join("tls"))
            .args(["--service-ip", "10.99.0.2"])
            .output()
            .expect("run pantera certs init");
        assert!(out.status.success(), "certs init: {}", String::from_utf8_lossy(&out.stderr));
        Setup { dir }
    }

    fn tls(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    /// A configuration over the dev certificates; `tls_extra` lines go in `[tls]`, `tail` after.
    fn config(&self, tls_extra: &str, tail: &str) -> String {
        format!(
            "[dataplane]\ninterface = \"lo\"\n\n[service]\naddress = \"10.99.0.2\"\n\n[tls]\ncert_chain = \"{t}/server.pem\"\nclient_ca = \"{t}/ca.pem\"\n{tls_extra}\n\n[ledger]\ndata_dir = \"{d}\"\n{tail}\n",
            t = self.tls().display(),
            d = self.dir.path().join("data").display(),
        )
    }

    /// The default key and roles for `config`.
    fn good(&self, tail: &str) -> String {
        self.config(
            &format!(
                "private_key = \"{}/server.key\"\nroles = {{ \"cn:client\" = \"write\", \"cn:reader\" = \"read\" }}",
                self.tls().display()
            ),
            tail,
        )
    }

    /// Runs `check-config` on `text` (written to a file); returns (success, stdout, stderr).
    fn check(&self, text: &str, args: &[&str]) -> (bool, String, String) {
        let path = self.dir.path().join("pantera.toml");
        std::fs::write(&path, text).expect("write config");
        check_file(&path, args)
    }
}

fn check_file(path: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(PANTERA)
        .arg("check-config")
        .arg(path)
        .args(args)
        .output()
        .expect("run pantera check-config");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_good_file_is_valid_with_only_the_data_directory_warning() {
    let s = Setup::new();
    let (ok, out, err) = s.check(&s.good(""), &[]);
    assert!(ok, "{err}");
    assert!(out.contains("valid"), "{out}");
    // The data directory is not formatted here: a warning (the file may be for another host).
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(warnings[0].contains("ledger.data_dir"), "{err}");
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_refused() {
    let s = Setup::new();
    // The client's key (a real key, mode 0600) beside the server's certificate.
    let text = s.config(
        &format!(
            "private_key = \"{}/client.key\"\nroles = {{ \"cn:client\" = \"write\" }}",
            s.tls().display()
        ),
        "",
    );
    let (ok, _, err) = s.check(&text, &[]);
    assert!(!ok, "a mismatched key passed: {err}");
    assert!(err.contains("tls.private_key") && err.contains("does not match"), "{err}");
}

#[test]
fn a_missing_certificate_file_is_refused_naming_the_field_and_the_path() {
    let s = Setup::new();
    let missing = s.tls().join("nope.pem");
    let text = s
        .good("")
        .replace(&format!("{}/server.pem", s.tls().display()), &missing.display().to_string());
    let (ok, _, err) = s.check(&text, &[]);
    assert!(!ok, "a missing certificate passed: {err}");
    assert!(
        err.contains("tls.cert_chain") && err.contains(&missing.display().to_string()) && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn a_key_others_may_read_is_refused_as_serve_refuses_it() {
    let s = Setup::new();
    std::fs::set_permissions(s.tls().join("server.key"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (ok, _, err) = s.check(&s.good(""), &[]);
    assert!(!ok, "a world-readable key passed: {err}");
    assert!(err.contains("tls.private_key") && err.contains("0644"), "{err}");
}

/// The `root:<service group> 0640` layout passes when the group is the service user's
/// (`sandbox.user`), and is refused naming owner, group and mode when it is not. Needs root
/// (chown); skipped otherwise.
#[test]
fn a_key_owned_by_root_and_the_service_group_passes() {
    // SAFETY: geteuid touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: chown needs root");
        return;
    }
    let s = Setup::new();
    let key = s.tls().join("server.key");
    std::os::unix::fs::chown(&key, Some(0), Some(4343)).expect("chown");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let (ok, _, err) = s.check(&s.good("[sandbox]\nuser = \"0:4343\"\n"), &[]);
    assert!(ok, "root:4343 0640 with the service group 4343: {err}");
    let (ok, _, err) = s.check(&s.good("[sandbox]\nuser = \"0:4344\"\n"), &[]);
    assert!(!ok, "root:4343 0640 with the service group 4344 passed");
    assert!(
        err.contains("tls.private_key") && err.contains("0:4343") && err.contains("0640") && err.contains("gid 4344"),
        "{err}"
    );
}

#[test]
fn the_umem_bound_of_serve_is_checked() {
    let s = Setup::new();
    // Twice the rings, but no room for an RX batch: the sockets would refuse it at start.
    let text = s
        .good("")
        .replace("interface = \"lo\"", "interface = \"lo\"\numem_frames = 8192\nring_size = 4096");
    let (ok, _, err) = s.check(&text, &[]);
    assert!(!ok, "{err}");
    assert!(err.contains("dataplane.umem_frames"), "{err}");
}

#[test]
fn a_section_may_set_a_single_key() {
    let s = Setup::new();
    for section in [
        "[tcp]\nconnections_max = 512",
        "[http]\nbody_bytes_max = 65536",
        "[edge]\nsyn_rate_per_source = 100",
        "[management]\nlisten = \"127.0.0.1:9999\"",
        "[log]\nformat = \"json\"",
        "[log]\nlevel = \"warn,pantera=debug\"",
    ] {
        let (ok, _, err) = s.check(&s.good(section), &[]);
        assert!(ok, "{section}: {err}");
    }
    let (ok, _, err) = s.check(&s.good("[log]\nlevel = \"loud\""), &[]);
    assert!(!ok && err.contains("log.level"), "{err}");
}

#[test]
fn mtls_without_roles_is_a_warning_not_an_error() {
    let s = Setup::new();
    let text = s.config(&format!("private_key = \"{}/server.key\"", s.tls().display()), "");
    let (ok, _, err) = s.check(&text, &[]);
    assert!(ok, "{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("warning: tls.roles is empty") && l.contains("403")),
        "{err}"
    );
}

#[test]
fn print_writes_the_effective_configuration_which_checks_again() {
    let s = Setup::new();
    let (ok, printed, err) = s.check(&s.good("[tcp]\nconnections_max = 512"), &["--print"]);
    assert!(ok, "{err}");
    // Defaults filled in, paths (never key material) printed.
    assert!(printed.contains("connections_max = 512"), "{printed}");
    assert!(printed.contains("[http]") && printed.contains("body_bytes_max"), "{printed}");
    assert!(printed.contains("[log]") && printed.contains("level = \"info\""), "{printed}");
    assert!(printed.contains("server.key") && !printed.contains("PRIVATE KEY"), "{printed}");
    let again = s.dir.path().join("printed.toml");
    std::fs::write(&again, &printed).expect("write");
    let (ok, reprinted, err) = check_file(&again, &["--print"]);
    assert!(ok, "the printed configuration does not check: {err}\n{printed}");
    assert_eq!(reprinted, printed, "printing is a fixed point");
}

#[test]
fn a_bad_crl_is_refused_naming_the_field_and_the_file() {
    let s = Setup::new();
    let ca = tls_term::certs::LabCa::dev(&s.tls()).expect("the dev CA");
    let good_crl = s.tls().join("clients.crl");
    let next = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64 + 3600;
    std::fs::write(&good_crl, ca.crl(&[7], 1, next).expect("CRL")).expect("write CRL");
    let with_crl = |path: &Path| s.good("").replace("roles = {", &format!("crls = [\"{}\"]\nroles = {{", path.display()));
    let (ok, _, err) = s.check(&with_crl(&good_crl), &[]);
    assert!(ok, "a good CRL: {err}");

    let bad = s.tls().join("not-a.crl");
    std::fs::write(&bad, "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n").expect("write");
    let (ok, _, err) = s.check(&with_crl(&bad), &[]);
    assert!(!ok, "a bad CRL passed");
    assert!(err.contains("tls.crls") && err.contains(&bad.display().to_string()), "{err}");

    let missing = s.tls().join("missing.crl");
    let (ok, _, err) = s.check(&with_crl(&missing), &[]);
    assert!(!ok && err.contains("tls.crls") && err.contains("missing.crl"), "{err}");
}
