//! `pantera inspect` and `pantera verify`: the operator's side of `ledger_svc::verify`, which
//! does the work and returns a typed report; this module only prints it.
//!
//! Both are offline and read-only: the directory's files are copied into memory
//! (`verify::load_dir`, which opens each file for reading only) and everything runs on that
//! copy, including the recovery that `--account` and `--transfer` need, so no path of
//! recovery that cuts or removes a file can reach the real files. Run them on a stopped
//! ledger (or on a backup): on a serving one they see a log that grows while it is read.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use ledger_svc::verify::{self, Report};

/// What `pantera inspect` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Superblock, checkpoints, segments, clean-stop marker.
    Summary,
    /// Every record.
    Records,
    /// One account, recovered as `serve` would.
    Account(u128),
    /// One transfer, recovered as `serve` would.
    Transfer(u128),
}

/// `writeln!` into the output string (writing into a `String` cannot fail).
macro_rules! outln {
    ($o:expr, $($arg:tt)*) => {{
        let _ = writeln!($o, $($arg)*);
    }};
}

/// Writes the whole output at once; a reader that went away (`| head`) is not an error.
fn emit(o: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(o.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

fn report(dir: &Path) -> Result<Report> {
    let mut storage = verify::load_dir(dir)
        .with_context(|| format!("cannot read the data directory {}", dir.display()))?;
    verify::verify(&mut storage).with_context(|| format!("cannot read {}", dir.display()))
}

fn json(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string_pretty(value).context("cannot encode JSON")
}

pub fn inspect(dir: &Path, view: View, as_json: bool) -> Result<()> {
    let o = &mut String::new();
    match view {
        View::Summary => {
            let report = report(dir)?;
            if as_json {
                let summary = serde_json::json!({
                    "superblock": report.superblock,
                    "checkpoints": report.checkpoints,
                    "segments": report.segments,
                    "clean_stop": report.clean_stop,
                    "last_sequence": report.last_sequence,
                    "findings": report.findings,
                });
                outln!(o, "{}", json(&summary)?);
            } else {
                print_summary(o, dir, &report);
            }
        }
        View::Records => {
            let report = report(dir)?;
            if as_json {
                outln!(o, "{}", json(&report.records)?);
            } else {
                for r in &report.records {
                    let sequence = r.sequence.map_or("?".to_string(), |s| s.to_string());
                    let time = r.now_ns.map_or("?".to_string(), |t| t.to_string());
                    let ops: Vec<String> = r
                        .operations
                        .iter()
                        .map(|o| format!("{} x{}", o.kind, o.events))
                        .collect();
                    outln!(
                        o,
                        "{} offset {} record {sequence} time {time} bytes {} [{}] {}",
                        r.segment,
                        r.offset,
                        r.bytes.map_or("?".to_string(), |b| b.to_string()),
                        ops.join(", "),
                        r.status
                    );
                }
                if report.records.is_empty() {
                    outln!(o, "no records");
                }
            }
        }
        View::Account(id) | View::Transfer(id) => {
            let storage = verify::load_dir(dir)
                .with_context(|| format!("cannot read the data directory {}", dir.display()))?;
            let ledger = verify::recover_in_memory(storage).with_context(|| {
                format!("recovery of {} fails (run `pantera verify`)", dir.display())
            })?;
            if let Some((file, offset, bytes)) = &ledger.recovery().truncated {
                eprintln!("note: start-up would cut a torn tail of {bytes} bytes from {file} at byte offset {offset}; shown without it");
            }
            let mut out = Vec::new();
            let what = match view {
                View::Account(_) => {
                    let account = ledger.state().lookup_account(id).with_context(|| {
                        format!(
                            "no account {id} (the ledger at batch {})",
                            ledger.sequence()
                        )
                    })?;
                    ledger_svc::api::write_account(&mut out, account);
                    "account"
                }
                _ => {
                    let transfer = ledger.state().lookup_transfer(id).with_context(|| {
                        format!(
                            "no transfer {id} (the ledger at batch {})",
                            ledger.sequence()
                        )
                    })?;
                    ledger_svc::api::write_transfer(&mut out, transfer);
                    "transfer"
                }
            };
            let value: serde_json::Value =
                serde_json::from_slice(&out).context("the API's JSON does not parse")?;
            if as_json {
                outln!(o, "{}", json(&value)?);
            } else {
                outln!(
                    o,
                    "{what} {id} (the ledger at batch {}):",
                    ledger.sequence()
                );
                if let serde_json::Value::Object(fields) = value {
                    for (name, value) in fields {
                        let text = match value {
                            serde_json::Value::String(s) => s,
                            other => other.to_string(),
                        };
                        outln!(o, "  {name}: {text}");
                    }
                }
            }
        }
    }
    emit(o)
}

fn print_summary(o: &mut String, dir: &Path, report: &Report) {
    outln!(o, "data directory {}", dir.display());
    match &report.superblock {
        Some(sb) => outln!(
            o,
            "  superblock: format version {}, cluster {}, ledger {}, created {} ns",
            sb.format_version,
            sb.cluster_id,
            sb.ledger_id,
            sb.created_ns
        ),
        None => outln!(o, "  superblock: missing or damaged"),
    }
    for c in &report.checkpoints {
        let status = c
            .damage
            .as_deref()
            .map_or("ok".to_string(), |d| format!("DAMAGED: {d}"));
        outln!(
            o,
            "  checkpoint {}: batch {}, {} bytes, {status}",
            c.name,
            c.sequence,
            c.bytes
        );
    }
    if report.checkpoints.is_empty() {
        outln!(o, "  checkpoint: none (the log replays from batch 1)");
    }
    for s in &report.segments {
        let range = match (s.first_sequence, s.last_sequence) {
            (Some(a), Some(b)) => format!("batches {a}..{b}"),
            _ => "no whole record".to_string(),
        };
        let damaged = if s.damaged > 0 {
            format!(", {} DAMAGED", s.damaged)
        } else {
            String::new()
        };
        outln!(
            o,
            "  segment {}: {} bytes, {} records, {range}{damaged}",
            s.name,
            s.bytes,
            s.records
        );
    }
    match &report.clean_stop {
        Some(m) => outln!(
            o,
            "  clean-stop marker: batch {}, {} at {} bytes (start-up refuses any damage)",
            m.sequence,
            m.segment,
            m.segment_bytes
        ),
        None => outln!(
            o,
            "  clean-stop marker: none or damaged (a crash, a running ledger, or see below)"
        ),
    }
    outln!(o, "  last batch: {}", report.last_sequence);
    print_findings(o, dir, report);
}

fn print_findings(o: &mut String, dir: &Path, report: &Report) {
    if report.findings.is_empty() {
        return;
    }
    outln!(o, "{} findings:", report.findings.len());
    for f in &report.findings {
        outln!(o, "  {}/{f}", dir.display());
    }
}

/// Prints the report; `Err` (a non-zero exit) unless every check holds.
pub fn verify(dir: &Path, as_json: bool) -> Result<()> {
    let o = &mut String::new();
    let report = report(dir)?;
    if as_json {
        let mut value = serde_json::to_value(&report).context("cannot encode JSON")?;
        // The record list is `inspect --records`; keep `verify --json` a verdict.
        if let Some(object) = value.as_object_mut() {
            object.remove("records");
            object.insert("ok".to_string(), report.ok().into());
        }
        outln!(o, "{}", json(&value)?);
    } else {
        let records: u64 = report.segments.iter().map(|s| s.records).sum();
        outln!(
            o,
            "{}: {} checkpoints, {} segments, {records} whole records",
            dir.display(),
            report.checkpoints.len(),
            report.segments.len()
        );
        outln!(
            o,
            "  replayed {} batches from {} to batch {}: state hash {}",
            report.records_replayed,
            if report.replayed_from == 0 {
                "an empty ledger".to_string()
            } else {
                format!("the checkpoint at batch {}", report.replayed_from)
            },
            report.last_sequence,
            report.state_hash
        );
        let t = &report.totals;
        outln!(o,
            "  {} accounts, {} transfers; Σ debits_posted {} Σ credits_posted {}; Σ debits_pending {} Σ credits_pending {}",
            report.accounts, report.transfers, t.debits_posted, t.credits_posted, t.debits_pending, t.credits_pending
        );
        if report.first_bad_record().is_some() {
            outln!(o, "  the replay stopped before the first bad record: the state hash above is batch {}'s", report.last_sequence);
        }
        print_findings(o, dir, &report);
        if report.ok() {
            outln!(
                o,
                "OK: every checksum, the parent chain, the replay, the sums and the limits hold"
            );
        }
    }
    emit(o)?;
    if let Some(first) = report.first_bad_record() {
        anyhow::bail!(
            "verification FAILED: first bad record: {}/{first}",
            dir.display()
        );
    }
    if let Some(first) = report.findings.first() {
        anyhow::bail!("verification FAILED: {}/{first}", dir.display());
    }
    Ok(())
}
