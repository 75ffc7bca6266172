//! Root lab test of WAL integrity through the whole appliance: after a clean stop (SIGTERM),
//! a bit flipped in the newest record's body or the first record's header makes `pantera
//! serve` refuse to start, naming the file and the byte offset, and leaves every file of the
//! data directory byte-identical; undamaged, it starts with the acknowledged transfer. After
//! a SIGKILL, a torn tail is cut automatically and kept aside.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ledger_svc::repair;

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("readdir")
        .map(|e| {
            let e = e.expect("entry");
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).expect("read"))
        })
        .collect()
}

fn flip(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[at as usize] ^= 0x20;
    std::fs::write(path, bytes).expect("write");
}

/// (segment, offset, length) of every record.
fn records(data: &Path) -> Vec<(String, u64, u64)> {
    let mut storage = ledger_svc::FileStorage::open(data).expect("open");
    let scan = repair::scan(&mut storage).expect("scan");
    assert!(scan.findings().is_empty());
    scan.records().map(|(n, o, h)| (n.to_string(), o, h.record_bytes())).collect()
}

fn credits_of_account_2(lab: &Lab, config: &Arc<rustls::ClientConfig>) -> String {
    let (config, addr) = (Arc::clone(config), SocketAddr::from((lab.spec.service_ipv4, PORT)));
    in_netns(&lab.spec.netns, move || {
        let mut s = tls_connect(&config, addr).expect("connect");
        account_field(&mut s, 2, "credits_posted")
    })
    .join()
    .expect("client")
}

#[test]
fn a_flipped_bit_after_a_clean_stop_refuses_start_up_and_a_torn_tail_after_a_kill_is_cut() {
    let lab = lab("integ", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(&lab, dir.path(), "ledger", "");
    let data = dir.path().join("data");
    let config = tls_client_config(&dir.path().join("tls"), Some("client"));
    {
        let (config, addr) = (Arc::clone(&config), SocketAddr::from((lab.spec.service_ipv4, PORT)));
        in_netns(&lab.spec.netns, move || {
            let mut s = tls_connect(&config, addr).expect("connect");
            let accounts = r#"[{"id":"1","ledger":1,"code":1},{"id":"2","ledger":1,"code":1}]"#;
            let (st, b) = request(&mut s, "POST", "/v1/accounts", accounts).expect("accounts");
            assert_eq!(st, 200, "{b}");
            for id in [10, 11] {
                let t = format!(r#"[{{"id":"{id}","debit_account_id":"1","credit_account_id":"2","amount":"7","ledger":1,"code":1}}]"#);
                let (st, b) = request(&mut s, "POST", "/v1/transfers", &t).expect("transfer");
                assert_eq!(st, 200, "{b}");
            }
        })
        .join()
        .expect("client");
    }
    assert_eq!(credits_of_account_2(&lab, &config), "14");
    assert!(server.terminate().success(), "clean stop");
    assert!(data.join("clean-stop").exists(), "a clean stop leaves its marker");

    let all = records(&data);
    assert!(all.len() >= 3, "{all:?}");
    let newest = all.last().expect("records").clone();
    let first = all[0].clone();
    for ((segment, offset, length), at, part) in [
        (newest.clone(), newest.1 + newest.2 - 9, "body of the newest record"),
        (first.clone(), first.1 + 20, "header of the first record"),
    ] {
        let path = data.join(&segment);
        flip(&path, at);
        let before = files(&data);
        let (status, stderr) = server.spawn_refused(Duration::from_secs(30));
        assert!(!status.success(), "{part}: started");
        let expected = format!("{} at byte offset {offset}", path.display());
        assert!(stderr.contains(&expected), "{part}: expected {expected:?} in:\n{stderr}");
        assert_eq!(files(&data), before, "{part}: the data directory changed");
        flip(&path, at);
        let _ = length;
    }

    // Undamaged: it starts, with both acknowledged transfers.
    server.spawn();
    assert_eq!(credits_of_account_2(&lab, &config), "14");
    assert!(!data.join("clean-stop").exists(), "the marker is removed at start");
    assert_eq!(server.metric_sum("pantera_ledger_recovery_clean_stop", &[]), 1.0);
    assert_eq!(server.metric_sum("pantera_ledger_recovery_cut_bytes", &[]), 0.0);

    // A crash, then half a record of garbage at the tail (a write never acknowledged): cut
    // at start, kept aside, nothing acknowledged lost.
    server.kill();
    let (segment, offset, length) = newest;
    let end = offset + length;
    let mut bytes = std::fs::read(data.join(&segment)).expect("read");
    assert_eq!(bytes.len() as u64, end);
    bytes.extend_from_slice(&[0x5a; 100]);
    std::fs::write(data.join(&segment), &bytes).expect("write");
    server.spawn();
    assert_eq!(credits_of_account_2(&lab, &config), "14");
    let kept = data.join(format!("{segment}.cut-{end}"));
    assert_eq!(std::fs::read(&kept).expect("the cut bytes are kept"), vec![0x5a; 100]);
    assert_eq!(server.metric_sum("pantera_ledger_recovery_clean_stop", &[]), 0.0);
    assert_eq!(server.metric_sum("pantera_ledger_recovery_cut_bytes", &[]), 100.0);
    assert!(server.terminate().success());
}
