#![no_main]
//! Writes the seed corpora of the binary fuzz targets, built from the inputs the project's
//! own tests use: `cargo xtask fuzz --seeds` (the files are checked in; rerun after a format
//! change). The text targets' seeds (HTTP, JSON, TOML, TLS) are checked-in files.
//!
//! It is a libFuzzer binary like the targets, built with the same flags in the same build:
//! the coverage instrumentation on every crate needs libFuzzer's runtime linked in, and a
//! plain `main` would not pull it. Its `init` writes the seeds and exits before any fuzzing.
//!
//! - tcp_frames: the SYN cookie tests' exchanges (tcp/tests/syn_cookies.rs): a SYN, the ACK
//!   of the SYN-ACK, data, FIN; an ARP request; an ICMP echo; an RST; in each cookie mode.
//! - wal_recovery: ledgers built like the WAL tests' (ledger-svc/tests/wal_recovery.rs): a
//!   formatted directory with accounts and transfers, with and without a checkpoint and a
//!   clean stop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;

use ledger_svc::verify::recover_in_memory;
use ledger_svc::{Account, Ledger, LedgerConfig, Operation, SimStorage, Transfer, TransferFlags};
use pantera_fuzz::{encode_files, encode_frame_records, flags, Segment};
use smoltcp::wire::TcpControl;

const NOW: u64 = 1_700_000_000_000_000_000;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("corpus directory");
    std::fs::write(dir.join(name), bytes).expect("seed file");
}

fn arp_request() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&pantera_fuzz::CLIENT_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&pantera_fuzz::CLIENT_MAC);
    f.extend_from_slice(&[10, 99, 0, 1]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[10, 99, 0, 2]);
    f
}

fn icmp_echo() -> Vec<u8> {
    let mut f = pantera_fuzz::SERVER_MAC.to_vec();
    f.extend_from_slice(&pantera_fuzz::CLIENT_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    // IPv4: 20-byte header, ICMP, 10.99.0.1 -> 10.99.0.2; checksums fixed by the harness flag
    // only for TCP, so the IPv4 one is computed here and ICMP's below.
    let mut ip = vec![0x45, 0, 0, 36, 0, 1, 0, 0, 64, 1, 0, 0, 10, 99, 0, 1, 10, 99, 0, 2];
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g', b'!', b'!', b'!', b'!'];
    let sum = checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn tcp_seeds(dir: &Path) {
    let syn = |port, seq| Segment::syn(pantera_fuzz::CLIENT_IP, port, seq);
    let after = |port, seq, control, payload| Segment {
        mac: pantera_fuzz::CLIENT_MAC,
        ip: pantera_fuzz::CLIENT_IP,
        port,
        control,
        seq,
        ack: Some(0), // replaced by the harness: ACK_LAST_SYN_ACK
        mss: None,
        window_scale: None,
        payload,
    };
    let ack = flags::ACK_LAST_SYN_ACK;
    let handshake = |port: u16| {
        vec![
            (flags::FIX_CHECKSUMS, syn(port, 1000).frame()),
            (ack, after(port, 1001, TcpControl::None, &[]).frame()),
            (ack, after(port, 1001, TcpControl::Psh, b"GET / HTTP/1.1\r\n\r\n").frame()),
            (ack | (1 << flags::STEP_SHIFT), after(port, 1019, TcpControl::Fin, &[]).frame()),
        ]
    };
    for (mode, name) in [(0u8, "off"), (1, "auto"), (2, "always")] {
        let mut input = vec![mode];
        input.extend(encode_frame_records(&handshake(40000)));
        write(dir, &format!("handshake-{name}"), &input);
    }
    // Three SYNs from different ports: with mode auto and a backlog of 2 the third is answered
    // with a cookie, and the ACK completes that one.
    let mut records: Vec<_> = (0..3).map(|i| (flags::FIX_CHECKSUMS, syn(41000 + i, 5000).frame())).collect();
    records.push((ack, after(41002, 5001, TcpControl::None, b"q").frame()));
    records.push((flags::LONG_PAUSE | ack, after(41002, 5002, TcpControl::Rst, &[]).frame()));
    let mut input = vec![1u8];
    input.extend(encode_frame_records(&records));
    write(dir, "cookie-overflow", &input);
    let mut input = vec![1u8];
    input.extend(encode_frame_records(&[(0, arp_request()), (0, icmp_echo())]));
    write(dir, "arp-icmp", &input);
}

fn accounts(count: u128) -> Operation {
    Operation::CreateAccounts(
        (1..=count).map(|id| Account { id, ledger: 1, code: 1, ..Default::default() }).collect(),
    )
}

fn transfers(batch: u64, count: u64) -> Operation {
    Operation::CreateTransfers(
        (0..count)
            .map(|i| {
                let id = u128::from(batch * 1000 + i + 1);
                Transfer {
                    id,
                    debit_account_id: 1 + id % 4,
                    credit_account_id: 1 + (id + 1) % 4,
                    amount: 10 + id,
                    ledger: 1,
                    code: 1,
                    flags: if i % 3 == 0 { TransferFlags::PENDING } else { TransferFlags::empty() },
                    ..Default::default()
                }
            })
            .collect(),
    )
}

fn wal_seeds(dir: &Path) {
    let config = LedgerConfig { checkpoint_every_batches: 0, ..LedgerConfig::default() };
    let mut ledger = Ledger::open(SimStorage::new(), config).expect("a fresh ledger");
    ledger.submit(NOW, &[accounts(4)]).expect("accounts");
    ledger.submit(NOW + 1, &[transfers(1, 3)]).expect("transfers");
    // Dropped without a clean stop: recovery replays the WAL.
    let files = |l: &Ledger<SimStorage>| -> BTreeMap<String, Vec<u8>> { l.storage().files() };
    write(dir, "wal-only", &encode_files(&files(&ledger)));
    ledger.checkpoint().expect("checkpoint");
    ledger.submit(NOW + 2, &[transfers(2, 2)]).expect("transfers");
    write(dir, "checkpoint-and-wal", &encode_files(&files(&ledger)));
    let stopped = ledger.close().expect("clean stop");
    let stopped_files = stopped.files();
    write(dir, "clean-stop", &encode_files(&stopped_files));
    // Every seed must recover: a seed that does not is a broken generator, not a finding.
    for name in ["wal-only", "checkpoint-and-wal", "clean-stop"] {
        let bytes = std::fs::read(dir.join(name)).expect("seed");
        let mut storage = SimStorage::new();
        for (file, content) in pantera_fuzz::decode_files(&bytes) {
            ledger_svc::Storage::append(&mut storage, &file, &content).expect("append");
        }
        recover_in_memory(storage).unwrap_or_else(|e| panic!("seed {name} does not recover: {e}"));
    }
}

/// The corpus root: `PANTERA_FUZZ_CORPUS`, or `corpus` in the working directory.
fn write_all() {
    let corpus: PathBuf =
        std::env::var_os("PANTERA_FUZZ_CORPUS").map(PathBuf::from).unwrap_or_else(|| "corpus".into());
    tcp_seeds(&corpus.join("tcp_frames"));
    wal_seeds(&corpus.join("wal_recovery"));
    println!("seeds written under {}", corpus.display());
    std::process::exit(0);
}

fuzz_target!(init: write_all(), |_data: &[u8]| {});
