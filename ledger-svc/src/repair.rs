//! Offline look at a WAL and the operator's repair: what `pantera wal repair` runs.
//!
//! Recovery never drops a record that may have been acknowledged (docs/ledger.md,
//! "Recovery"). When it refuses to start, an operator can restore a backup, or choose to
//! lose the damaged record and everything after it: `truncate` does that, and keeps every
//! byte it takes out of the log in a file beside it (`<segment>.cut-<offset>`; whole later
//! segments are renamed `<segment>.cut-0`), so the choice can be undone by hand.
//!
//! `scan` reads every segment with `wal::scan` and reports every record and every damaged
//! place, with the verdict recovery would give it; other tools (inspect, verify) can read the
//! same report.

use crate::checkpoint::parse_checkpoint_name;
use crate::ledger::LedgerError;
use crate::storage::Storage;
use crate::wal::{self, CleanStop, ScanEntry, Verdict};

/// One segment as `scan` found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentScan {
    pub name: String,
    pub bytes: u64,
    pub entries: Vec<ScanEntry>,
}

/// The whole WAL as `scan` found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalScan {
    /// The newest checkpoint's sequence (0: none), from its file name.
    pub checkpoint_sequence: u64,
    /// The clean-stop marker: absent, valid, or damaged (with what is wrong).
    pub clean_stop: Option<Result<CleanStop, &'static str>>,
    pub segments: Vec<SegmentScan>,
}

/// A place recovery refuses, or the torn tail it would cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub segment: String,
    pub offset: u64,
    /// The damaged record's sequence, when its header is intact.
    pub sequence: Option<u64>,
    pub what: String,
    pub verdict: Verdict,
}

impl WalScan {
    /// Every damaged place, with the verdict recovery would give it (the first `Corrupt`
    /// is where start-up stops).
    pub fn findings(&self) -> Vec<Finding> {
        let clean = matches!(self.clean_stop, Some(Ok(_)));
        let mut findings = Vec::new();
        let count = self.segments.len();
        for (position, segment) in self.segments.iter().enumerate() {
            for entry in &segment.entries {
                if let ScanEntry::Damaged(damage) = entry {
                    findings.push(Finding {
                        segment: segment.name.clone(),
                        offset: damage.offset,
                        sequence: damage.header.map(|h| h.sequence),
                        what: damage.kind.describe(),
                        verdict: wal::classify(damage, position + 1 == count, clean),
                    });
                }
            }
        }
        findings
    }

    /// The records' sequences, in order, that pass their checksums.
    pub fn records(&self) -> impl Iterator<Item = (&str, u64, wal::RecordHeader)> {
        self.segments.iter().flat_map(|s| {
            s.entries.iter().filter_map(move |e| match e {
                ScanEntry::Record { offset, header, .. } => {
                    Some((s.name.as_str(), *offset, *header))
                }
                ScanEntry::Damaged(_) => None,
            })
        })
    }
}

/// Reads every segment and the clean-stop marker; changes nothing.
pub fn scan<S: Storage>(storage: &mut S) -> Result<WalScan, LedgerError> {
    let names = storage.list()?;
    let checkpoint_sequence = names
        .iter()
        .filter_map(|n| parse_checkpoint_name(n))
        .max()
        .unwrap_or(0);
    let clean_stop = if names.iter().any(|n| n == wal::CLEAN_STOP_NAME) {
        Some(CleanStop::parse(&storage.read(wal::CLEAN_STOP_NAME)?))
    } else {
        None
    };
    let mut segments: Vec<(u64, &String)> = names
        .iter()
        .filter_map(|n| wal::parse_segment_name(n).map(|s| (s, n)))
        .collect();
    segments.sort();
    let mut scans = Vec::with_capacity(segments.len());
    let mut previous = None;
    for (_, name) in segments {
        let bytes = storage.read(name)?;
        let entries = wal::scan(&bytes, previous);
        previous = match entries.last() {
            Some(ScanEntry::Record { header, .. }) => Some(header.checksum_header),
            _ => None,
        };
        scans.push(SegmentScan {
            name: name.clone(),
            bytes: bytes.len() as u64,
            entries,
        });
    }
    Ok(WalScan {
        checkpoint_sequence,
        clean_stop,
        segments: scans,
    })
}

/// Where `truncate` cuts: `segment` from `offset` on, and every later segment whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TruncatePlan {
    pub segment: String,
    pub offset: u64,
    pub later_segments: Vec<String>,
    /// Records (whole or damaged) the cut removes with sequences above the checkpoint:
    /// acknowledged batches the ledger will not have after the repair.
    pub records_lost: u64,
}

impl WalScan {
    fn plan_at(&self, segment_index: usize, offset: u64) -> TruncatePlan {
        let segment = &self.segments[segment_index];
        let later: Vec<&SegmentScan> = self.segments[segment_index + 1..].iter().collect();
        // A damaged record counts too (when its header is unreadable, as one batch).
        let lost = |e: &ScanEntry| match e {
            ScanEntry::Record { header, .. } => header.sequence > self.checkpoint_sequence,
            ScanEntry::Damaged(d) => d
                .header
                .is_none_or(|h| h.sequence > self.checkpoint_sequence),
        };
        let at = |e: &ScanEntry| match e {
            ScanEntry::Record { offset, .. } => *offset,
            ScanEntry::Damaged(d) => d.offset,
        };
        let records_lost = segment
            .entries
            .iter()
            .filter(|e| at(e) >= offset)
            .filter(|e| lost(e))
            .count()
            + later
                .iter()
                .flat_map(|s| s.entries.iter())
                .filter(|e| lost(e))
                .count();
        TruncatePlan {
            segment: segment.name.clone(),
            offset,
            later_segments: later.iter().map(|s| s.name.clone()).collect(),
            records_lost: records_lost as u64,
        }
    }

    /// Cut at the first damaged place that recovery would refuse; `None` if there is none.
    pub fn plan_at_damage(&self) -> Option<TruncatePlan> {
        let clean = matches!(self.clean_stop, Some(Ok(_)));
        let count = self.segments.len();
        for (index, segment) in self.segments.iter().enumerate() {
            for entry in &segment.entries {
                if let ScanEntry::Damaged(damage) = entry {
                    if wal::classify(damage, index + 1 == count, clean) != Verdict::TornTail {
                        return Some(self.plan_at(index, damage.offset));
                    }
                }
            }
        }
        None
    }

    /// Cut at the record with `sequence` (its header must be intact): it and everything
    /// after it leave the log. `None` if no header carries that sequence.
    pub fn plan_at_record(&self, sequence: u64) -> Option<TruncatePlan> {
        for (index, segment) in self.segments.iter().enumerate() {
            for entry in &segment.entries {
                let (offset, header) = match entry {
                    ScanEntry::Record { offset, header, .. } => (*offset, Some(*header)),
                    ScanEntry::Damaged(d) => (d.offset, d.header),
                };
                if header.is_some_and(|h| h.sequence == sequence) {
                    return Some(self.plan_at(index, offset));
                }
            }
        }
        None
    }
}

/// Carries out `plan`: moves a clean-stop marker aside (`clean-stop.cut-0`), renames each
/// later segment to `<name>.cut-0`, keeps the cut bytes aside (`<segment>.cut-<offset>`,
/// synced), then truncates the segment (synced).
/// Returns the names of the files kept. The next start is recovered as after a crash; the
/// log then ends at a whole record, so nothing more is cut.
pub fn truncate<S: Storage>(
    storage: &mut S,
    plan: &TruncatePlan,
) -> Result<Vec<String>, LedgerError> {
    let names = storage.list()?;
    let unique = |base: &str, offset: u64| {
        let mut n = 0;
        loop {
            let candidate = wal::cut_name(base, offset, n);
            if !names.contains(&candidate) {
                return candidate;
            }
            n += 1;
        }
    };
    let mut kept = Vec::new();
    // The clean-stop marker first (it describes the WAL before the cut), then the later
    // segments newest first, then the cut: a crash at any point leaves a log that is a
    // prefix of the one before, which recovers (and the repair can be run again).
    if names.iter().any(|n| n == wal::CLEAN_STOP_NAME) {
        let name = unique(wal::CLEAN_STOP_NAME, 0);
        storage.rename(wal::CLEAN_STOP_NAME, &name)?;
        kept.push(name);
    }
    for later in plan.later_segments.iter().rev() {
        let name = unique(later, 0);
        storage.rename(later, &name)?;
        kept.push(name);
    }
    storage.sync_dir()?;
    let bytes = storage.read(&plan.segment)?;
    let offset = plan.offset.min(bytes.len() as u64);
    if (offset as usize) < bytes.len() {
        let name = unique(&plan.segment, offset);
        let temp = format!("{name}.tmp");
        storage.remove(&temp)?;
        storage.append(&temp, &bytes[offset as usize..])?;
        storage.sync(&temp)?;
        storage.rename(&temp, &name)?;
        storage.sync_dir()?;
        storage.truncate(&plan.segment, offset)?;
        storage.sync(&plan.segment)?;
        kept.push(name);
    }
    Ok(kept)
}

/// Moves the clean-stop marker aside (`clean-stop.cut-0`), for a marker that is itself
/// damaged or does not match the WAL: the next start is then recovered as after a crash.
pub fn drop_clean_stop<S: Storage>(storage: &mut S) -> Result<Option<String>, LedgerError> {
    let names = storage.list()?;
    if !names.iter().any(|n| n == wal::CLEAN_STOP_NAME) {
        return Ok(None);
    }
    let mut n = 0;
    let name = loop {
        let candidate = wal::cut_name(wal::CLEAN_STOP_NAME, 0, n);
        if !names.contains(&candidate) {
            break candidate;
        }
        n += 1;
    };
    storage.rename(wal::CLEAN_STOP_NAME, &name)?;
    storage.sync_dir()?;
    Ok(Some(name))
}
