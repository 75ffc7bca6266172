//! Resumption state that expires with `resumption_max_age_s`: wrappers around a ticket producer
//! and a session store that stamp what they hand out with the time and refuse it once older
//! than the bound. A refused ticket or cache entry is simply not resumed: the client falls back
//! to a full handshake, where its certificate is verified in full.
//!
//! This bounds each ticket and cache entry from the moment it was issued. The bound from the
//! full handshake that authenticated the client, through chained resumptions, is the session's
//! own check ([`crate::policy`]); under TLS 1.2, where rustls carries no data in the session,
//! these stamps are the only age bound.

use std::fmt;
use std::sync::Arc;

use rustls::server::{ProducesTickets, StoresServerSessions};
use rustls_pki_types::UnixTime;

const STAMP_BYTES: usize = 8;

fn stamp(now_s: u64, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(STAMP_BYTES + data.len());
    out.extend_from_slice(&now_s.to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// The data behind a stamp no older than `max_age_s` at `now_s`.
fn unstamp(stamped: Vec<u8>, max_age_s: u64, now_s: u64) -> Option<Vec<u8>> {
    let at = u64::from_be_bytes(stamped.get(..STAMP_BYTES)?.try_into().ok()?);
    (now_s.saturating_sub(at) <= max_age_s).then(|| stamped[STAMP_BYTES..].to_vec())
}

fn now_s() -> u64 {
    UnixTime::now().as_secs()
}

/// A ticket producer whose tickets are refused once older than `max_age_s`; their advertised
/// lifetime is at most that too (RFC 8446 §4.6.1: clients drop tickets past it).
pub struct MaxAgeTickets {
    inner: Arc<dyn ProducesTickets>,
    max_age_s: u64,
}

impl MaxAgeTickets {
    pub fn new(inner: Arc<dyn ProducesTickets>, max_age_s: u64) -> MaxAgeTickets {
        MaxAgeTickets { inner, max_age_s }
    }
}

impl fmt::Debug for MaxAgeTickets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaxAgeTickets")
            .field("inner", &self.inner)
            .field("max_age_s", &self.max_age_s)
            .finish()
    }
}

impl ProducesTickets for MaxAgeTickets {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner
            .lifetime()
            .min(u32::try_from(self.max_age_s).unwrap_or(u32::MAX))
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.inner.encrypt(&stamp(now_s(), plain))
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        unstamp(self.inner.decrypt(cipher)?, self.max_age_s, now_s())
    }
}

/// A session store whose entries are not resumed once older than `max_age_s`.
pub struct MaxAgeCache {
    inner: Arc<dyn StoresServerSessions>,
    max_age_s: u64,
}

impl MaxAgeCache {
    pub fn new(inner: Arc<dyn StoresServerSessions>, max_age_s: u64) -> MaxAgeCache {
        MaxAgeCache { inner, max_age_s }
    }
}

impl fmt::Debug for MaxAgeCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaxAgeCache")
            .field("inner", &self.inner)
            .field("max_age_s", &self.max_age_s)
            .finish()
    }
}

impl StoresServerSessions for MaxAgeCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.inner.put(key, stamp(now_s(), &value))
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        unstamp(self.inner.get(key)?, self.max_age_s, now_s())
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        unstamp(self.inner.take(key)?, self.max_age_s, now_s())
    }

    fn can_cache(&self) -> bool {
        self.inner.can_cache()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ServerSessionMemoryCache;

    #[test]
    fn stamps_expire_after_the_max_age() {
        let s = stamp(1_000, b"session");
        assert_eq!(
            unstamp(s.clone(), 60, 1_000).as_deref(),
            Some(&b"session"[..])
        );
        assert_eq!(
            unstamp(s.clone(), 60, 1_060).as_deref(),
            Some(&b"session"[..])
        );
        assert_eq!(unstamp(s.clone(), 60, 1_061), None);
        // A clock that went back does not make it older.
        assert!(unstamp(s, 60, 10).is_some());
        assert_eq!(
            unstamp(vec![1, 2, 3], 60, 0),
            None,
            "too short to hold a stamp"
        );
    }

    #[test]
    fn wrappers_round_trip_and_bound_the_lifetime() {
        let cache = MaxAgeCache::new(ServerSessionMemoryCache::new(4), 60);
        assert!(cache.put(b"k".to_vec(), b"v".to_vec()));
        assert_eq!(cache.get(b"k").as_deref(), Some(&b"v"[..]));
        assert_eq!(cache.take(b"k").as_deref(), Some(&b"v"[..]));
        assert_eq!(cache.get(b"k"), None);
        let tickets = MaxAgeTickets::new(rustls::crypto::ring::Ticketer::new().unwrap(), 600);
        assert!(tickets.enabled());
        assert_eq!(tickets.lifetime(), 600);
        let t = tickets.encrypt(b"state").unwrap();
        assert_eq!(tickets.decrypt(&t).as_deref(), Some(&b"state"[..]));
        assert_eq!(tickets.decrypt(b"forged"), None);
        let long = MaxAgeTickets::new(rustls::crypto::ring::Ticketer::new().unwrap(), 86_400);
        assert!(long.lifetime() <= 86_400);
    }
}
