//! The example alerts in docs/operations.md ("Metrics") are rules Prometheus accepts: the
//! block is cut out of the document and given to `promtool check rules`, so the documented
//! expressions cannot drift into ones that do not parse. The names they read are checked
//! against a live scrape by tests/lab_metrics.rs.

use std::process::Command;

#[test]
fn the_documented_alert_rules_pass_promtool() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md")).expect("read docs/operations.md");
    let start = doc.find("```yaml\ngroups:").expect("docs/operations.md has the example alerts as a ```yaml groups: block");
    let body = &doc[start + "```yaml\n".len()..];
    let rules = &body[..body.find("```").expect("the yaml block ends")];
    assert!(rules.matches("- alert:").count() >= 5, "the example alerts are all there:\n{rules}");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pantera-rules.yml");
    std::fs::write(&path, rules).expect("write the rules");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("promtool (Debian package prometheus; cargo xtask deps installs it)");
    assert!(
        out.status.success(),
        "promtool check rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
