//! One AF_XDP socket and its UMEM on one NIC queue, and the smoltcp `Device` over its rings.
//!
//! Shared-nothing: each worker owns one `XskPort` (its own UMEM, its own four rings). The frame
//! pool lives in four places on the userspace side: `free` (for TX), `recycle` (received and
//! done with, on their way back to the fill ring), `rx_ready` (received, not yet handed to the
//! stack) and `tx_pending` (written by the stack, not yet in the TX ring). Everything else is
//! in the kernel, which the ledger in `sys` tracks.

use std::collections::VecDeque;
use std::time::Duration;

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::error::DataplaneError;
use crate::sys::{self, Frame, Rings, UmemArea};

/// Ethernet header bytes: smoltcp's `max_transmission_unit` is the link MTU plus these.
pub const ETHERNET_HEADER_BYTES: u32 = 14;

/// Sizes of one port's UMEM and rings, and its per-turn work bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XskConfig {
    /// Frames in the UMEM. Must cover the fill and TX rings plus an RX batch: 16384 frames
    /// with rings of 4096 kept 0 drops at 200 concurrent connections (docs/facts.md).
    pub frame_count: u32,
    /// Bytes per frame, a power of two; 4096 leaves 3840 for the packet after the kernel's
    /// 256 bytes of XDP headroom.
    pub frame_size: u32,
    pub rx_ring: u32,
    pub tx_ring: u32,
    pub fill_ring: u32,
    pub comp_ring: u32,
    /// Frames taken from the RX ring per batch (and handed to smoltcp before the next batch).
    pub rx_batch_max: usize,
    /// Empty loop turns a worker spins before it blocks in `wait` (read by the worker loop).
    pub busy_poll_turns: u32,
    /// Link MTU the stack may use (IP packet bytes); capped by the usable frame bytes minus
    /// the Ethernet header. Native XDP on veth caps the peer at 3506 (docs/facts.md).
    pub mtu_max: u32,
}

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig {
            frame_count: 16384,
            frame_size: 4096,
            rx_ring: 4096,
            tx_ring: 4096,
            fill_ring: 4096,
            comp_ring: 4096,
            rx_batch_max: 64,
            busy_poll_turns: 1000,
            mtu_max: 1500,
        }
    }
}

/// The kernel's XDP headroom before each received packet (uapi XDP_PACKET_HEADROOM).
const XDP_PACKET_HEADROOM: u32 = 256;
/// Largest ring the kernel accepts per socket: far above what a worker can use per turn.
const RING_SIZE_MAX: u32 = 1 << 16;

impl XskConfig {
    /// Bytes of packet a frame can hold.
    pub fn frame_usable_bytes(&self) -> u32 {
        self.frame_size.saturating_sub(XDP_PACKET_HEADROOM)
    }

    pub fn validate(&self) -> Result<(), DataplaneError> {
        let bad = |detail: String| Err(DataplaneError::Config(detail));
        if !self.frame_size.is_power_of_two() || !(2048..=4096).contains(&self.frame_size) {
            // The kernel's aligned UMEM mode needs a power of two between 2048 and PAGE_SIZE.
            return bad(format!("frame_size {} must be a power of two in 2048..=4096", self.frame_size));
        }
        for (name, size) in [
            ("rx_ring", self.rx_ring),
            ("tx_ring", self.tx_ring),
            ("fill_ring", self.fill_ring),
            ("comp_ring", self.comp_ring),
        ] {
            if !size.is_power_of_two() || size > RING_SIZE_MAX {
                return bad(format!("{name} {size} must be a power of two <= {RING_SIZE_MAX}"));
            }
        }
        if self.rx_batch_max == 0 || self.rx_batch_max > self.rx_ring as usize {
            return bad(format!("rx_batch_max {} must be in 1..=rx_ring", self.rx_batch_max));
        }
        // The fill ring and the TX reserve are handed out at once; an RX batch is held on top.
        let needed = self.fill_ring as u64 + self.tx_ring as u64 + self.rx_batch_max as u64;
        if (self.frame_count as u64) < needed {
            return bad(format!(
                "frame_count {} must be >= fill_ring + tx_ring + rx_batch_max = {needed}",
                self.frame_count
            ));
        }
        if self.mtu_max < 576 || self.mtu_max + ETHERNET_HEADER_BYTES > self.frame_usable_bytes() {
            // RFC 791: every host must accept 576-byte datagrams; above the usable frame bytes
            // the kernel drops the frame before it reaches the socket (docs/facts.md).
            return bad(format!(
                "mtu_max {} must be in 576..={}",
                self.mtu_max,
                self.frame_usable_bytes() - ETHERNET_HEADER_BYTES
            ));
        }
        Ok(())
    }
}

/// How long `XskPort::open` waits for a queue held by another AF_XDP socket to be released.
const QUEUE_BUSY_WAIT_MAX: Duration = Duration::from_secs(5);

/// Counters of one port, for metrics. Frame counts are a snapshot of where the frames are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XskStats {
    /// Frames handed to the stack.
    pub rx_frames: u64,
    /// Frames put on the TX ring.
    pub tx_frames: u64,
    /// `transmit()` calls refused for want of a free frame.
    pub tx_no_frame: u64,
    /// Frames the kernel dropped for this socket (XDP_STATISTICS: rx_dropped).
    pub rx_dropped: u64,
    /// Frames dropped because the RX ring was full (the worker is too slow).
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty (frames dropped: refill more often).
    pub fill_ring_empty: u64,
    pub rx_invalid: u64,
    pub tx_invalid: u64,
    pub tx_ring_empty: u64,
    /// Ring descriptors we rejected (a frame the ring did not hold); should stay 0.
    pub ring_desc_invalid: u64,
    /// Failed TX kicks or fill wakeups (errno other than the transient ones).
    pub wakeup_errors: u64,
    pub frames_total: u64,
    /// Frames userspace holds, free for TX.
    pub frames_free: u64,
    /// Frames in the fill ring or in the RX ring.
    pub frames_in_fill: u64,
    /// Frames in the TX ring or in the completion ring.
    pub frames_in_tx: u64,
    /// Frames received and not yet recycled, or written and not yet on the TX ring.
    pub frames_held: u64,
}

/// One AF_XDP socket with its own UMEM, bound to one queue of one interface.
///
/// Built on any thread and moved into the worker that drives it (it is `Send`). Per loop
/// turn the worker polls its smoltcp `Interface` over this device, then calls [`service`],
/// and blocks in [`wait`] when several turns found nothing to do.
///
/// [`service`]: XskPort::service
/// [`wait`]: XskPort::wait
#[derive(Debug)]
pub struct XskPort {
    // Field order is drop order: the rings (socket) go before the UMEM they map.
    rings: Rings,
    umem: UmemArea,
    free: Vec<Frame>,
    recycle: Vec<Frame>,
    rx_ready: VecDeque<Frame>,
    tx_pending: VecDeque<Frame>,
    ifname: String,
    queue_id: u32,
    config: XskConfig,
    rx_frames: u64,
    tx_frames: u64,
    tx_no_frame: u64,
    wakeup_errors: u64,
}

impl XskPort {
    /// Creates the UMEM, binds an AF_XDP socket to `queue_id` of `ifname` (copy or zero-copy,
    /// whichever the driver gives) and fills the fill ring. Register it with
    /// [`Steering::register`](crate::Steering::register) to receive anything.
    pub fn open(ifname: &str, queue_id: u32, config: &XskConfig) -> Result<Self, DataplaneError> {
        config.validate()?;
        crate::iface::check_ifname(ifname)?;
        // A socket of a process killed a moment ago may still hold the queue: the kernel
        // releases it asynchronously. Retry for a bounded time before giving up.
        let deadline = std::time::Instant::now() + QUEUE_BUSY_WAIT_MAX;
        let (umem, rings, free) = loop {
            match sys::open(ifname, queue_id, config) {
                Err(DataplaneError::QueueBusy { .. }) if std::time::Instant::now() < deadline => {
                    log::info!("{ifname} queue {queue_id} is still held by another AF_XDP socket; retrying");
                    std::thread::sleep(Duration::from_millis(50));
                }
                result => break result?,
            }
        };
        let mut port = XskPort {
            rings,
            umem,
            free,
            recycle: Vec::with_capacity(config.fill_ring as usize),
            rx_ready: VecDeque::with_capacity(config.rx_batch_max),
            tx_pending: VecDeque::with_capacity(config.tx_ring as usize),
            ifname: ifname.to_owned(),
            queue_id,
            config: config.clone(),
            rx_frames: 0,
            tx_frames: 0,
            tx_no_frame: 0,
            wakeup_errors: 0,
        };
        port.service();
        Ok(port)
    }

    pub fn queue_id(&self) -> u32 {
        self.queue_id
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The socket's file descriptor (what goes into the XSKMAP).
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.rings.fd()
    }

    pub fn config(&self) -> &XskConfig {
        &self.config
    }

    /// Ring upkeep, once per loop turn: reap completions, push pending TX frames and kick the
    /// kernel while any are in flight, and top up the fill ring (a starved fill ring drops
    /// frames, docs/facts.md). Work is bounded by the ring sizes.
    pub fn service(&mut self) {
        self.rings.complete(&mut self.free, self.config.comp_ring as usize);
        self.flush_tx();
        self.refill();
    }

    /// Moves pending TX frames into the TX ring and kicks the kernel if any are in flight.
    /// Copy mode moves at most 32 per syscall and only inside one, so this must run every turn
    /// until the ring drains (docs/facts.md).
    pub fn flush_tx(&mut self) {
        self.tx_frames += self.rings.transmit(&mut self.tx_pending) as u64;
        if self.rings.ledger().in_tx() > 0 && self.rings.kick_tx().is_err() {
            self.wakeup_errors += 1;
        }
    }

    /// Frames written by the stack and not yet on the TX ring, or on it and not yet complete.
    pub fn tx_in_flight(&self) -> usize {
        self.tx_pending.len() + self.rings.ledger().in_tx() as usize
    }

    fn refill(&mut self) {
        let mut room = self.rings.fill_free();
        // Received frames go straight back; beyond them, free frames too, but never the last
        // `tx_ring` of them, which the stack needs to answer.
        let from_recycle = room.min(self.recycle.len());
        let mut filled = self.rings.fill(&mut self.recycle, from_recycle);
        room -= filled;
        let spare = self.free.len().saturating_sub(self.config.tx_ring as usize);
        filled += self.rings.fill(&mut self.free, room.min(spare));
        // Whatever the fill ring had no room for serves TX.
        self.free.append(&mut self.recycle);
        if filled > 0 && self.rings.fill_needs_wakeup() && self.rings.wake_fill().is_err() {
            self.wakeup_errors += 1;
        }
    }

    /// Moves up to `rx_batch_max` frames from the RX ring to the stack's queue.
    fn pull_rx(&mut self) {
        let room = self.config.rx_batch_max.saturating_sub(self.rx_ready.len());
        if room > 0 {
            self.rings.receive(&mut self.rx_ready, room);
        }
    }

    /// Whether received frames wait for the stack (in our queue or in the RX ring).
    pub fn rx_pending(&mut self) -> bool {
        !self.rx_ready.is_empty() || self.rings.rx_ready() > 0
    }

    /// Blocks in ppoll(2) until the RX ring has frames or `timeout` passes; returns at once if
    /// frames are already waiting, or while TX frames are in flight (copy mode moves them only
    /// inside a syscall, 32 per call, so the worker must keep kicking rather than sleep). Run
    /// [`service`](Self::service) first, so that the fill ring is stocked (an empty fill ring
    /// means nothing can arrive to wake us).
    pub fn wait(&mut self, timeout: Duration) -> Result<(), DataplaneError> {
        if self.rx_pending() {
            return Ok(());
        }
        if self.tx_in_flight() > 0 {
            self.flush_tx();
            return Ok(());
        }
        self.rings.poll_rx(timeout).map_err(|source| DataplaneError::Syscall {
            call: "ppoll",
            ifname: self.ifname.clone(),
            source,
        })?;
        Ok(())
    }

    pub fn stats(&self) -> XskStats {
        let ledger = self.rings.ledger();
        let kernel = self.rings.statistics().unwrap_or_default();
        XskStats {
            rx_frames: self.rx_frames,
            tx_frames: self.tx_frames,
            tx_no_frame: self.tx_no_frame,
            rx_dropped: kernel.rx_dropped(),
            rx_ring_full: kernel.rx_ring_full(),
            fill_ring_empty: kernel.rx_fill_ring_empty_descs(),
            rx_invalid: kernel.rx_invalid_descs(),
            tx_invalid: kernel.tx_invalid_descs(),
            tx_ring_empty: kernel.tx_ring_empty_descs(),
            ring_desc_invalid: ledger.invalid(),
            wakeup_errors: self.wakeup_errors,
            frames_total: ledger.frame_count() as u64,
            frames_free: self.free.len() as u64,
            frames_in_fill: ledger.in_fill() as u64,
            frames_in_tx: ledger.in_tx() as u64,
            frames_held: (self.recycle.len() + self.rx_ready.len() + self.tx_pending.len()) as u64,
        }
    }

    /// Receives one frame for callers that do not use smoltcp (benchmarks, tests): `f` sees
    /// the frame and may return bytes' length to send back in place (reflect), or None to
    /// recycle it. Returns false if no frame was waiting.
    pub fn receive_raw(&mut self, f: impl FnOnce(&mut [u8]) -> Option<usize>) -> bool {
        if self.rx_ready.is_empty() {
            self.pull_rx();
        }
        let Some(mut frame) = self.rx_ready.pop_front() else {
            return false;
        };
        self.rx_frames += 1;
        let len = frame.len();
        let usable = self.umem.usable();
        let reply = self.umem.write(&mut frame, len, |buf| f(buf)).filter(|n| *n <= usable);
        match reply {
            Some(n) => {
                self.umem.write(&mut frame, n, |_| ());
                self.tx_pending.push_back(frame);
            }
            None => self.recycle.push(frame),
        }
        true
    }

    /// Sends one frame of `len` bytes written by `f`, for callers that do not use smoltcp.
    /// Returns false if no frame is free (counted as `tx_no_frame`).
    pub fn transmit_raw(&mut self, len: usize, f: impl FnOnce(&mut [u8])) -> bool {
        let Some(mut frame) = self.free.pop() else {
            self.tx_no_frame += 1;
            return false;
        };
        self.umem.write(&mut frame, len.min(self.umem.usable()), f);
        self.tx_pending.push_back(frame);
        true
    }
}

/// A received frame lent to smoltcp; goes back to the fill ring when consumed or dropped.
#[derive(Debug)]
pub struct XskRxToken<'a> {
    umem: &'a UmemArea,
    frame: Option<Frame>,
    recycle: &'a mut Vec<Frame>,
}

impl phy::RxToken for XskRxToken<'_> {
    fn consume<R, F>(mut self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let frame = self.frame.take().expect("a token is consumed once");
        let result = f(self.umem.data(&frame));
        self.recycle.push(frame);
        result
    }
}

impl Drop for XskRxToken<'_> {
    fn drop(&mut self) {
        if let Some(frame) = self.frame.take() {
            self.recycle.push(frame);
        }
    }
}

/// A free frame reserved for one packet from smoltcp; goes to the TX queue when consumed, back
/// to the free list when dropped unused.
#[derive(Debug)]
pub struct XskTxToken<'a> {
    umem: &'a UmemArea,
    frame: Option<Frame>,
    free: &'a mut Vec<Frame>,
    pending: &'a mut VecDeque<Frame>,
}

impl phy::TxToken for XskTxToken<'_> {
    fn consume<R, F>(mut self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut frame = self.frame.take().expect("a token is consumed once");
        // smoltcp never asks for more than `max_transmission_unit`, which we capped at the
        // usable frame bytes; `write` asserts it.
        let result = self.umem.write(&mut frame, len, f);
        self.pending.push_back(frame);
        result
    }
}

impl Drop for XskTxToken<'_> {
    fn drop(&mut self) {
        if let Some(frame) = self.frame.take() {
            self.free.push(frame);
        }
    }
}

impl phy::Device for XskPort {
    type RxToken<'a> = XskRxToken<'a>;
    type TxToken<'a> = XskTxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if self.rx_ready.is_empty() {
            self.pull_rx();
        }
        if self.rx_ready.is_empty() {
            return None;
        }
        // smoltcp may answer inside the RX closure (ARP, ICMP echo, RST), so the TX token needs
        // a frame of its own. Without one, leave the packet queued until completions return.
        let Some(tx_frame) = self.free.pop() else {
            self.tx_no_frame += 1;
            return None;
        };
        let rx_frame = self.rx_ready.pop_front().expect("checked non-empty");
        self.rx_frames += 1;
        Some((
            XskRxToken { umem: &self.umem, frame: Some(rx_frame), recycle: &mut self.recycle },
            XskTxToken {
                umem: &self.umem,
                frame: Some(tx_frame),
                free: &mut self.free,
                pending: &mut self.tx_pending,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        let Some(frame) = self.free.pop() else {
            self.tx_no_frame += 1;
            return None;
        };
        Some(XskTxToken {
            umem: &self.umem,
            frame: Some(frame),
            free: &mut self.free,
            pending: &mut self.tx_pending,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        // max_transmission_unit is the Ethernet frame size (link MTU + 14), docs/facts.md.
        caps.max_transmission_unit =
            ((self.config.mtu_max + ETHERNET_HEADER_BYTES) as usize).min(self.umem.usable());
        // Leave max_burst_size None, and the default checksum capabilities: smoltcp computes
        // and verifies every checksum in software. Never skip RX verification (docs/facts.md).
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_leaves_3840_usable_bytes() {
        let config = XskConfig::default();
        config.validate().unwrap();
        assert_eq!(config.frame_usable_bytes(), 3840);
    }

    #[test]
    fn invalid_configs_are_rejected_with_the_field_named() {
        let cases: Vec<(XskConfig, &str)> = vec![
            (XskConfig { frame_size: 3000, ..Default::default() }, "frame_size"),
            (XskConfig { frame_size: 8192, ..Default::default() }, "frame_size"),
            (XskConfig { rx_ring: 1000, ..Default::default() }, "rx_ring"),
            (XskConfig { rx_batch_max: 0, ..Default::default() }, "rx_batch_max"),
            (XskConfig { frame_count: 8192, ..Default::default() }, "frame_count"),
            (XskConfig { mtu_max: 3827, ..Default::default() }, "mtu_max"),
            (XskConfig { mtu_max: 100, ..Default::default() }, "mtu_max"),
        ];
        for (config, field) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err} should name {field}");
        }
        XskConfig { mtu_max: 3826, ..Default::default() }.validate().unwrap();
    }
}
