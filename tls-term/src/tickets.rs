//! Session tickets (RFC 8446 §4.6.1, RFC 5077) sealed with keys that live in locked memory.
//!
//! rustls' own ticketer keeps its keys on the ordinary heap; this one keeps them in a
//! [`Locked`] region (never swapped, not in core dumps, zeroed when replaced or dropped).
//!
//! A ticket is `key name (16) ‖ nonce (12) ‖ AES-256-GCM(state) ‖ tag (16)`, the key name as
//! associated data. Two keys are held: the current one seals, both open. Every half lifetime
//! the older key is overwritten by a fresh one, so a ticket can be opened for at most one
//! lifetime after it was issued: the lifetime is enforced by erasing keys, as rustls asks of a
//! `ProducesTickets`, not by a date inside the ticket. Nonces are random (96 bits): with a key
//! in use for half a lifetime, the 2^32 tickets per key that random GCM nonces allow
//! (NIST SP 800-38D §8.3) would take hundreds of thousands of handshakes a second for hours.
//!
//! Each instance draws its own keys: two processes (or two instances in one) cannot open each
//! other's tickets.

use std::io;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

use crate::secret::{overwrite, Locked};

/// Default ticket lifetime: 6 hours, rustls' own figure.
pub const TICKET_LIFETIME_S_DEFAULT: u32 = 6 * 3600;
/// RFC 8446 §4.6.1: servers must not use a ticket lifetime above 7 days.
pub const TICKET_LIFETIME_S_MAX: u32 = 7 * 24 * 3600;
/// Below 2 s the half-lifetime rotation would be under a second.
pub const TICKET_LIFETIME_S_MIN: u32 = 2;

const KEY_NAME_LEN: usize = 16;
const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;
/// rustls' tickets are a few hundred bytes; RFC 8446 bounds a ticket at 2^16 - 1 bytes.
const TICKET_BYTES_MAX: usize = u16::MAX as usize;

/// One ticket key: its public name and the expanded AES key.
struct Slot {
    name: [u8; KEY_NAME_LEN],
    key: Option<LessSafeKey>,
}

/// Everything secret, in one locked page: two key slots and the scratch the raw key bytes are
/// drawn into (zeroed as soon as the AES key is expanded from them).
struct Keys {
    slots: [Slot; 2],
    scratch: [u8; KEY_LEN],
}

struct State {
    keys: Locked<Keys>,
    /// Index of the slot that seals new tickets.
    current: usize,
    /// When the next rotation is due.
    next_rotation: Instant,
}

/// A [`ProducesTickets`] whose keys are locked in memory and rotate every half lifetime.
pub struct Ticketer {
    state: RwLock<State>,
    lifetime_s: u32,
    /// Half the lifetime: how long a key seals before it is only kept to open.
    period: Duration,
    rng: SystemRandom,
}

impl std::fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticketer")
            .field("lifetime_s", &self.lifetime_s)
            .finish_non_exhaustive()
    }
}

/// Why a ticketer could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TicketerError {
    #[error("ticket lifetime {0} s is outside 2..=604800")]
    Lifetime(u32),
    #[error("cannot lock memory for the ticket keys: {0}")]
    Lock(io::Error),
    #[error("the system random number generator failed")]
    Random,
}

impl Ticketer {
    /// A ticketer whose tickets can be opened for at most `lifetime_s` seconds after they are
    /// issued (also the lifetime announced to clients).
    pub fn new(lifetime_s: u32) -> Result<Ticketer, TicketerError> {
        if !(TICKET_LIFETIME_S_MIN..=TICKET_LIFETIME_S_MAX).contains(&lifetime_s) {
            return Err(TicketerError::Lifetime(lifetime_s));
        }
        let empty = || Slot {
            name: [0; KEY_NAME_LEN],
            key: None,
        };
        let keys = Locked::new(Keys {
            slots: [empty(), empty()],
            scratch: [0; KEY_LEN],
        })
        .map_err(TicketerError::Lock)?;
        let period = Duration::from_secs(u64::from(lifetime_s)) / 2;
        let rng = SystemRandom::new();
        let mut state = State {
            keys,
            current: 0,
            next_rotation: Instant::now() + period,
        };
        fill_slot(&rng, &mut state.keys, 0)?;
        Ok(Ticketer {
            state: RwLock::new(state),
            lifetime_s,
            period,
            rng,
        })
    }

    /// Rotates as often as the time passed since the last rotation asks: once per period,
    /// and after two periods or more both keys are new (nothing old may still open).
    fn rotate_if_due(&self, now: Instant) {
        if self
            .state
            .read()
            .map(|s| now < s.next_rotation)
            .unwrap_or(false)
        {
            return;
        }
        let Ok(mut state) = self.state.write() else {
            return;
        };
        if now < state.next_rotation {
            return; // another thread rotated meanwhile
        }
        let late = now.duration_since(state.next_rotation);
        let periods = 1 + late.as_nanos() / self.period.as_nanos().max(1);
        let sealing = state.current;
        match self.rotate(&mut state) {
            // Two periods or more without a rotation: the key that was sealing is older than
            // a period too; it goes as well, so nothing issued before the pause may open.
            Ok(()) if periods >= 2 => erase_slot(&mut state.keys, sealing),
            Ok(()) => {}
            Err(_) => {
                // No randomness: better no tickets (every resumption falls back to a full
                // handshake) than keys kept past their time. Retried at the next period.
                log::error!("session ticket key rotation failed: the system random number generator failed; tickets are off until it works");
                erase_slot(&mut state.keys, 0);
                erase_slot(&mut state.keys, 1);
            }
        }
        // On the fixed grid (not `now + period`): a late rotation must not stretch the time
        // a key may open tickets beyond two periods from the grid point it began sealing at.
        let periods = u32::try_from(periods).unwrap_or(u32::MAX);
        let next = state
            .next_rotation
            .checked_add(self.period.saturating_mul(periods));
        state.next_rotation = next.unwrap_or(now + self.period);
    }

    /// The older key is replaced by a fresh one, which becomes current.
    fn rotate(&self, state: &mut State) -> Result<(), TicketerError> {
        let next = 1 - state.current;
        fill_slot(&self.rng, &mut state.keys, next)?;
        state.current = next;
        Ok(())
    }

    /// Rotates now, as if the period had passed (tests).
    #[cfg(test)]
    fn force_rotation(&self) {
        let mut state = self.state.write().unwrap();
        self.rotate(&mut state).unwrap();
    }
}

/// Draws a new key name and key into slot `index`, erasing what it held.
fn fill_slot(rng: &SystemRandom, keys: &mut Keys, index: usize) -> Result<(), TicketerError> {
    let mut name = [0u8; KEY_NAME_LEN];
    rng.fill(&mut name).map_err(|_| TicketerError::Random)?;
    // The raw key goes straight into the locked scratch; ring expands it (the AES key schedule
    // is built on the stack, then moved into the slot) and the scratch is zeroed at once.
    let filled = rng
        .fill(&mut keys.scratch)
        .map_err(|_| TicketerError::Random);
    let key = filled.and_then(|()| {
        UnboundKey::new(&AES_256_GCM, &keys.scratch).map_err(|_| TicketerError::Random)
    });
    zeroize::Zeroize::zeroize(&mut keys.scratch);
    let key = LessSafeKey::new(key?);
    overwrite(
        &mut keys.slots[index],
        Slot {
            name,
            key: Some(key),
        },
    );
    Ok(())
}

fn erase_slot(keys: &mut Keys, index: usize) {
    overwrite(
        &mut keys.slots[index],
        Slot {
            name: [0; KEY_NAME_LEN],
            key: None,
        },
    );
}

impl ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime_s
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.rotate_if_due(Instant::now());
        let state = self.state.read().ok()?;
        let slot = &state.keys.slots[state.current];
        let key = slot.key.as_ref()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(KEY_NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        ticket.extend_from_slice(&slot.name);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(plain);
        let (head, body) = ticket.split_at_mut(KEY_NAME_LEN + NONCE_LEN);
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&head[..KEY_NAME_LEN]),
                body,
            )
            .ok()?;
        ticket.extend_from_slice(tag.as_ref());
        (ticket.len() <= TICKET_BYTES_MAX).then_some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        // The ticket is the client's: every length is checked before it is split.
        if ticket.len() < KEY_NAME_LEN + NONCE_LEN + TAG_LEN || ticket.len() > TICKET_BYTES_MAX {
            return None;
        }
        self.rotate_if_due(Instant::now());
        let (name, rest) = ticket.split_at(KEY_NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let state = self.state.read().ok()?;
        // The key name is not secret (it is sent in the clear): a plain comparison is fine.
        let key = state
            .keys
            .slots
            .iter()
            .find(|s| s.key.is_some() && s.name == name)?
            .key
            .as_ref()?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut plain = sealed.to_vec();
        let len = key
            .open_in_place(nonce, Aad::from(name), &mut plain)
            .ok()?
            .len();
        plain.truncate(len);
        Some(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = Ticketer::new(TICKET_LIFETIME_S_DEFAULT).unwrap();
        assert!(t.enabled());
        assert_eq!(t.lifetime(), 21600);
        let ticket = t.encrypt(b"session state").unwrap();
        assert_eq!(ticket.len(), KEY_NAME_LEN + NONCE_LEN + 13 + TAG_LEN);
        assert!(
            !ticket.windows(13).any(|w| w == b"session state"),
            "sealed, not in the clear"
        );
        assert_eq!(t.decrypt(&ticket).unwrap(), b"session state");
        // Fresh nonce each time: the same state seals to different tickets.
        assert_ne!(t.encrypt(b"session state").unwrap(), ticket);
        assert_eq!(t.decrypt(&t.encrypt(b"").unwrap()).unwrap(), b"");
    }

    #[test]
    fn tampered_tickets_are_refused() {
        let t = Ticketer::new(60).unwrap();
        let ticket = t.encrypt(b"session state").unwrap();
        for i in 0..ticket.len() {
            let mut bad = ticket.clone();
            bad[i] ^= 0x01;
            assert_eq!(t.decrypt(&bad), None, "bit flipped at byte {i}");
        }
        assert_eq!(t.decrypt(&ticket[..ticket.len() - 1]), None);
        assert_eq!(t.decrypt(&[]), None);
        assert_eq!(t.decrypt(&[0u8; KEY_NAME_LEN + NONCE_LEN + TAG_LEN]), None);
        assert_eq!(t.decrypt(&vec![0u8; TICKET_BYTES_MAX + 1]), None);
    }

    #[test]
    fn rotated_out_keys_are_refused() {
        let t = Ticketer::new(60).unwrap();
        let old = t.encrypt(b"old").unwrap();
        t.force_rotation();
        // One rotation: the previous key still opens, the new one seals.
        assert_eq!(t.decrypt(&old).unwrap(), b"old");
        let newer = t.encrypt(b"newer").unwrap();
        assert_ne!(newer[..KEY_NAME_LEN], old[..KEY_NAME_LEN], "a new key name");
        t.force_rotation();
        assert_eq!(
            t.decrypt(&old),
            None,
            "two rotations: the first key is erased"
        );
        assert_eq!(t.decrypt(&newer).unwrap(), b"newer");
    }

    #[test]
    fn time_rotates_and_a_long_pause_erases_both_keys() {
        let t = Ticketer::new(60).unwrap();
        let ticket = t.encrypt(b"x").unwrap();
        let due = t.state.read().unwrap().next_rotation;
        // One period passed: rotated once, the old ticket still opens.
        t.rotate_if_due(due);
        assert_eq!(t.decrypt(&ticket).unwrap(), b"x");
        let second = t.encrypt(b"y").unwrap();
        // Two periods and more without traffic: nothing issued before may open.
        let due = t.state.read().unwrap().next_rotation;
        t.rotate_if_due(due + Duration::from_secs(30));
        assert_eq!(t.decrypt(&ticket), None);
        assert_eq!(t.decrypt(&second), None);
        assert_eq!(t.decrypt(&t.encrypt(b"z").unwrap()).unwrap(), b"z");
    }

    #[test]
    fn instances_cannot_read_each_others_tickets() {
        let a = Ticketer::new(60).unwrap();
        let b = Ticketer::new(60).unwrap();
        let ticket = a.encrypt(b"for a").unwrap();
        assert_eq!(b.decrypt(&ticket), None);
        assert_eq!(a.decrypt(&ticket).unwrap(), b"for a");
    }

    #[test]
    fn lifetime_bounds() {
        assert!(matches!(Ticketer::new(1), Err(TicketerError::Lifetime(1))));
        assert!(matches!(
            Ticketer::new(TICKET_LIFETIME_S_MAX + 1),
            Err(TicketerError::Lifetime(_))
        ));
        assert_eq!(
            Ticketer::new(TICKET_LIFETIME_S_MAX).unwrap().lifetime(),
            604800
        );
        assert!(!format!("{:?}", Ticketer::new(2).unwrap()).contains("key"));
    }
}
