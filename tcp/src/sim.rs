//! An in-memory Ethernet link for tests: two [`Device`] ends joined by two bounded queues,
//! with deterministic loss, reordering and duplication.
//!
//! ```text
//!   SimLink::port(Side::A) ──▶ queue toward B ──▶ SimLink::port(Side::B)
//!                          ◀── queue toward A ◀──
//! ```
//!
//! Time is whatever the caller passes to `receive`/`transmit` (the `now` it gives each
//! interface's poll): a frame sent at `t` can be received from `t + latency` on, or
//! `t + latency + reorder_delay` if it was picked for reordering, which lets later frames
//! overtake it. Faults are drawn from a seeded SplitMix64, so a seed replays a run exactly.
//!
//! A full queue refuses `transmit` (returns None), like a full NIC TX ring; smoltcp then keeps
//! the data and retries on a later poll.

use std::collections::VecDeque;

use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::{Duration, Instant};

/// Link parameters. Probabilities are in parts per million of frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    pub seed: u64,
    pub loss_ppm: u32,
    pub reorder_ppm: u32,
    pub duplicate_ppm: u32,
    /// One-way delay of every frame.
    pub latency: Duration,
    /// Extra delay of a frame picked for reordering.
    pub reorder_delay: Duration,
    /// Frames each direction's queue holds at most.
    pub queue_frames_max: usize,
    /// Largest Ethernet frame (header included), reported to smoltcp as the MTU.
    pub frame_bytes_max: usize,
}

impl Default for SimConfig {
    /// A perfect link: no faults, no latency, 1514-byte frames, 1024 frames per direction.
    fn default() -> Self {
        SimConfig {
            seed: 1,
            loss_ppm: 0,
            reorder_ppm: 0,
            duplicate_ppm: 0,
            latency: Duration::ZERO,
            reorder_delay: Duration::from_millis(2),
            queue_frames_max: 1024,
            frame_bytes_max: 1514,
        }
    }
}

/// What the link did since it was made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub reordered: u64,
    pub duplicated: u64,
    /// Frames refused because the queue was full (transmit returned None or the frame
    /// was dropped at consume time).
    pub queue_full: u64,
}

/// One end of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }

    pub fn peer(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough to draw faults.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `ppm` / 1_000_000.
    pub fn chance(&mut self, ppm: u32) -> bool {
        ppm > 0 && self.next_u64() % 1_000_000 < u64::from(ppm)
    }
}

#[derive(Debug)]
struct Frame {
    deliver_at: Instant,
    bytes: Vec<u8>,
}

/// The link. Borrow one end at a time with [`SimLink::port`].
#[derive(Debug)]
pub struct SimLink {
    config: SimConfig,
    rng: SplitMix64,
    /// `queues[side.index()]` holds frames travelling toward `side`, sorted by delivery time.
    queues: [VecDeque<Frame>; 2],
    stats: SimStats,
}

impl SimLink {
    pub fn new(config: SimConfig) -> Self {
        assert!(config.queue_frames_max > 0 && config.frame_bytes_max >= 60);
        SimLink {
            rng: SplitMix64::new(config.seed),
            queues: [
                VecDeque::with_capacity(config.queue_frames_max),
                VecDeque::with_capacity(config.queue_frames_max),
            ],
            config,
            stats: SimStats::default(),
        }
    }

    /// The device at `side`, for one poll.
    pub fn port(&mut self, side: Side) -> SimPort<'_> {
        SimPort { link: self, side }
    }

    pub fn config_mut(&mut self) -> &mut SimConfig {
        &mut self.config
    }

    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// Frames in flight in both directions.
    pub fn in_flight(&self) -> usize {
        self.queues[0].len() + self.queues[1].len()
    }

    /// The earliest time a queued frame becomes receivable, if any is queued.
    pub fn next_delivery(&self) -> Option<Instant> {
        self.queues
            .iter()
            .filter_map(|queue| queue.front().map(|frame| frame.deliver_at))
            .min()
    }

    /// Sends a hand-made frame toward `toward`, through the fault model.
    pub fn inject(&mut self, toward: Side, now: Instant, frame: &[u8]) -> bool {
        if self.queues[toward.index()].len() >= self.config.queue_frames_max {
            self.stats.queue_full += 1;
            return false;
        }
        self.enqueue(toward, now, frame.to_vec());
        true
    }

    /// Takes the next frame receivable at `toward` by `now`, bypassing any device.
    pub fn take(&mut self, toward: Side, now: Instant) -> Option<Vec<u8>> {
        let queue = &mut self.queues[toward.index()];
        if queue.front()?.deliver_at > now {
            return None;
        }
        self.stats.delivered += 1;
        queue.pop_front().map(|frame| frame.bytes)
    }

    fn enqueue(&mut self, toward: Side, now: Instant, bytes: Vec<u8>) {
        self.stats.sent += 1;
        if self.rng.chance(self.config.loss_ppm) {
            self.stats.lost += 1;
            return;
        }
        let mut deliver_at = now + self.config.latency;
        if self.rng.chance(self.config.reorder_ppm) {
            self.stats.reordered += 1;
            deliver_at += self.config.reorder_delay;
        }
        let duplicate = self.rng.chance(self.config.duplicate_ppm);
        let queue_frames_max = self.config.queue_frames_max;
        let queue = &mut self.queues[toward.index()];
        if duplicate && queue.len() + 1 < queue_frames_max {
            self.stats.duplicated += 1;
            Self::insert_sorted(queue, deliver_at, bytes.clone());
        }
        if queue.len() >= queue_frames_max {
            self.stats.queue_full += 1;
            return;
        }
        Self::insert_sorted(queue, deliver_at, bytes);
    }

    /// Inserts after every frame due no later: frames due at the same time keep their order.
    fn insert_sorted(queue: &mut VecDeque<Frame>, deliver_at: Instant, bytes: Vec<u8>) {
        let position = queue
            .iter()
            .rposition(|frame| frame.deliver_at <= deliver_at)
            .map_or(0, |index| index + 1);
        queue.insert(position, Frame { deliver_at, bytes });
    }
}

/// One end of a [`SimLink`], borrowed for a poll; implements smoltcp's [`Device`].
#[derive(Debug)]
pub struct SimPort<'l> {
    link: &'l mut SimLink,
    side: Side,
}

/// A received frame.
#[derive(Debug)]
pub struct SimRxToken {
    bytes: Vec<u8>,
}

/// Room for one frame toward the peer.
#[derive(Debug)]
pub struct SimTxToken<'l> {
    link: &'l mut SimLink,
    toward: Side,
    now: Instant,
}

impl Device for SimPort<'_> {
    type RxToken<'a>
        = SimRxToken
    where
        Self: 'a;
    type TxToken<'a>
        = SimTxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let bytes = self.link.take(self.side, now)?;
        Some((
            SimRxToken { bytes },
            SimTxToken {
                link: &mut *self.link,
                toward: self.side.peer(),
                now,
            },
        ))
    }

    fn transmit(&mut self, now: Instant) -> Option<Self::TxToken<'_>> {
        let toward = self.side.peer();
        if self.link.queues[toward.index()].len() >= self.link.config.queue_frames_max {
            self.link.stats.queue_full += 1;
            return None;
        }
        Some(SimTxToken {
            link: &mut *self.link,
            toward,
            now,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut capabilities = DeviceCapabilities::default();
        capabilities.medium = Medium::Ethernet;
        capabilities.max_transmission_unit = self.link.config.frame_bytes_max;
        capabilities
    }
}

impl RxToken for SimRxToken {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.bytes)
    }
}

impl TxToken for SimTxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        assert!(
            len <= self.link.config.frame_bytes_max,
            "frame of {len} bytes exceeds the link's {}",
            self.link.config.frame_bytes_max
        );
        let mut bytes = vec![0; len];
        let result = f(&mut bytes);
        self.link.enqueue(self.toward, self.now, bytes);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_is_deterministic_and_matches_reference() {
        // First outputs for seed 0 from the reference implementation (Vigna's splitmix64.c).
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
    }

    #[test]
    fn chance_follows_the_rate() {
        let mut rng = SplitMix64::new(7);
        let hits = (0..100_000).filter(|_| rng.chance(50_000)).count();
        assert!((4_000..6_000).contains(&hits), "{hits} of 100000 at 5%");
        assert!(!(0..1000).any(|_| rng.chance(0)));
    }

    #[test]
    fn perfect_link_delivers_in_order_after_latency() {
        let mut link = SimLink::new(SimConfig {
            latency: Duration::from_millis(5),
            ..SimConfig::default()
        });
        let t0 = Instant::from_millis(100);
        for i in 0..10u8 {
            assert!(link.inject(Side::B, t0, &[i; 60]));
        }
        assert_eq!(link.next_delivery(), Some(Instant::from_millis(105)));
        assert_eq!(link.take(Side::B, Instant::from_millis(104)), None);
        let got: Vec<u8> = std::iter::from_fn(|| link.take(Side::B, Instant::from_millis(105)))
            .map(|frame| frame[0])
            .collect();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        assert_eq!(link.take(Side::A, Instant::from_millis(105)), None);
    }

    #[test]
    fn faults_lose_reorder_and_duplicate_deterministically() {
        let run = || {
            let mut link = SimLink::new(SimConfig {
                seed: 9,
                loss_ppm: 100_000,
                reorder_ppm: 100_000,
                duplicate_ppm: 100_000,
                queue_frames_max: 4096,
                ..SimConfig::default()
            });
            for i in 0..1000u16 {
                link.inject(Side::A, Instant::ZERO, &[(i >> 8) as u8, i as u8, 0, 0]);
            }
            let frames: Vec<u16> = std::iter::from_fn(|| link.take(Side::A, Instant::from_secs(1)))
                .map(|f| u16::from(f[0]) << 8 | u16::from(f[1]))
                .collect();
            (frames, link.stats().clone())
        };
        let (frames, stats) = run();
        assert_eq!(
            run(),
            (frames.clone(), stats.clone()),
            "same seed, same run"
        );
        assert!(stats.lost > 50 && stats.reordered > 50 && stats.duplicated > 50);
        assert_eq!(
            frames.len() as u64,
            1000 - stats.lost + stats.duplicated,
            "{stats:?}"
        );
        assert!(
            frames.windows(2).any(|w| w[0] > w[1]),
            "some frames overtaken"
        );
    }

    #[test]
    fn full_queue_refuses_transmit() {
        let mut link = SimLink::new(SimConfig {
            queue_frames_max: 2,
            ..SimConfig::default()
        });
        let now = Instant::ZERO;
        for _ in 0..2 {
            let mut port = link.port(Side::A);
            let token = port.transmit(now).expect("room");
            token.consume(60, |frame| frame.fill(1));
        }
        assert!(link.port(Side::A).transmit(now).is_none());
        assert_eq!(link.stats().queue_full, 1);
        assert!(link.port(Side::B).receive(now).is_some());
        assert!(link.port(Side::A).transmit(now).is_some());
    }
}
