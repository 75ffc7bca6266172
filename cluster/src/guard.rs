//! Requests that would stop a TigerBeetle 0.16.78 cluster, found before they are sent.
//!
//! TigerBeetle 0.16.78's `post_or_void_pending_transfer` asserts `p.timestamp < timestamp`
//! (the pending transfer is older than the post or void) before it checks an imported event's
//! timestamp (`imported_event_timestamp_must_not_regress`). For an ordinary event the cluster
//! chooses the timestamp and the assertion holds; an imported event brings its own, and one
//! that is not after its pending transfer's fails the assertion: the replica stops. The request
//! is already in the log, so every replica stops again when it replays it at restart: one
//! client request takes the whole cluster down for good.
//!
//! The appliance's TigerBeetle backend and the differential oracle both refuse such a batch
//! before it reaches the cluster, with the rule of this module.

use ledger_svc::model::{Transfer, TransferFlags};

/// An imported post or void: the only event that brings both its own timestamp and a pending
/// transfer to compare it with.
fn imported_resolve(t: &Transfer) -> bool {
    t.flags.contains(TransferFlags::IMPORTED)
        && t.flags
            .intersects(TransferFlags::POST_PENDING_TRANSFER | TransferFlags::VOID_PENDING_TRANSFER)
}

/// Whether a `create_transfers` batch is imported: TigerBeetle decides it from the first event
/// (`batch_imported = events[0].flags.imported`), and an event that differs fails
/// `imported_event_not_expected` before it reaches the assertion. So only an imported batch can
/// stop the cluster.
fn batch_imported(events: &[Transfer]) -> bool {
    events
        .first()
        .is_some_and(|t| t.flags.contains(TransferFlags::IMPORTED))
}

/// The pending transfers whose timestamps [`stops_tigerbeetle_0_16_78`] needs from the cluster,
/// sorted, each once; empty when the batch holds no imported post or void (the common case:
/// no lookup is needed).
pub fn pending_ids_to_check(events: &[Transfer]) -> Vec<u128> {
    if !batch_imported(events) {
        return Vec::new();
    }
    let mut ids: Vec<u128> = events
        .iter()
        .filter(|t| imported_resolve(t))
        .map(|t| t.pending_id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The first event of a `create_transfers` batch that would stop a TigerBeetle 0.16.78
/// replica, if any: in an imported batch, an imported post or void whose timestamp is not after
/// its pending transfer's. `stored` gives the timestamp of a transfer the cluster already
/// holds; pending transfers earlier in the same batch count too.
///
/// Conservative: it does not ask whether the event would fail one of the checks TigerBeetle
/// makes before the assertion (`exists`, `pending_transfer_not_found`, a broken linked chain,
/// ...), so it may refuse an event the cluster would have answered with an error. It never
/// lets through one that reaches the assertion.
pub fn stops_tigerbeetle_0_16_78(
    events: &[Transfer],
    stored: impl Fn(u128) -> Option<u64>,
) -> Option<usize> {
    if !batch_imported(events) {
        return None;
    }
    events.iter().enumerate().position(|(index, t)| {
        if !imported_resolve(t) {
            return false;
        }
        let in_batch = events[..index]
            .iter()
            .filter(|e| e.id == t.pending_id)
            .map(|e| e.timestamp)
            .max();
        let pending_timestamp = in_batch.into_iter().chain(stored(t.pending_id)).max();
        pending_timestamp.is_some_and(|p| p >= t.timestamp)
    })
}

/// For submissions joined into one `create_transfers` request, in order: the index (within
/// the submission) of the first event that would stop a TigerBeetle 0.16.78 replica, or `None`
/// for a submission that may go. A refused submission is left out of the request as a whole,
/// so the submissions after it are checked without its events (its pending transfers will not
/// exist). Every submission of the request must share its first event's `imported` flag (the
/// backend joins only such submissions), so leaving one out does not change whether the batch
/// is imported.
pub fn stopping_events(
    submissions: &[&[Transfer]],
    stored: impl Fn(u128) -> Option<u64>,
) -> Vec<Option<usize>> {
    let mut kept: Vec<Transfer> = Vec::new();
    submissions
        .iter()
        .map(|events| {
            let start = kept.len();
            kept.extend_from_slice(events);
            let index = stops_tigerbeetle_0_16_78(&kept, &stored)?;
            // The events before `start` passed with the same events before them.
            assert!(index >= start, "a kept submission cannot stop the cluster");
            kept.truncate(start);
            Some(index - start)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(id: u128, timestamp: u64) -> Transfer {
        Transfer {
            id,
            flags: TransferFlags::PENDING | TransferFlags::IMPORTED,
            timestamp,
            ..Default::default()
        }
    }

    fn post(id: u128, pending_id: u128, timestamp: u64) -> Transfer {
        Transfer {
            id,
            pending_id,
            flags: TransferFlags::POST_PENDING_TRANSFER | TransferFlags::IMPORTED,
            timestamp,
            ..Default::default()
        }
    }

    #[test]
    fn an_imported_post_or_void_not_after_its_pending_transfer_is_caught() {
        let p = pending(10, 50);
        assert_eq!(
            stops_tigerbeetle_0_16_78(&[p, post(11, 10, 50)], |_| None),
            Some(1),
            "in the same batch"
        );
        assert_eq!(
            stops_tigerbeetle_0_16_78(&[p, post(11, 10, 51)], |_| None),
            None
        );
        assert_eq!(
            stops_tigerbeetle_0_16_78(&[post(11, 10, 51)], |_| Some(60)),
            Some(0),
            "stored"
        );
        assert_eq!(
            stops_tigerbeetle_0_16_78(&[post(11, 10, 61)], |_| Some(60)),
            None
        );
        let void = Transfer {
            flags: TransferFlags::VOID_PENDING_TRANSFER | TransferFlags::IMPORTED,
            ..post(11, 10, 60)
        };
        assert_eq!(
            stops_tigerbeetle_0_16_78(&[void], |_| Some(60)),
            Some(0),
            "a void too"
        );
        let unimported = Transfer {
            flags: TransferFlags::POST_PENDING_TRANSFER,
            ..post(11, 10, 0)
        };
        assert_eq!(
            stops_tigerbeetle_0_16_78(&[unimported], |_| Some(60)),
            None,
            "only imports carry a timestamp"
        );
        // In a batch whose first event is not imported, the import fails
        // `imported_event_not_expected` first.
        let plain = Transfer {
            id: 9,
            ..Default::default()
        };
        assert_eq!(
            stops_tigerbeetle_0_16_78(&[plain, post(11, 10, 51)], |_| Some(60)),
            None
        );
        assert!(pending_ids_to_check(&[plain, post(11, 10, 51)]).is_empty());
        assert_eq!(
            pending_ids_to_check(&[post(11, 10, 51), p, post(12, 10, 52), post(13, 7, 53)]),
            vec![7, 10]
        );
    }

    #[test]
    fn a_refused_submission_is_left_out_of_what_follows_it() {
        let stored = |id| (id == 10).then_some(100);
        let first = [pending(20, 150)];
        let attack = [pending(21, 200), post(22, 21, 200)];
        let after_attack = [post(23, 21, 300)];
        let fine = [post(24, 10, 400)];
        let old = [post(25, 10, 90)];
        let got = stopping_events(&[&first, &attack, &after_attack, &fine, &old], stored);
        // 23's pending transfer was in the refused submission: it will not exist, and the
        // cluster answers `pending_transfer_not_found` without reaching the assertion.
        assert_eq!(got, vec![None, Some(1), None, None, Some(0)]);
    }
}
