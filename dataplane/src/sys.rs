//! The one module of this crate with `unsafe` code (docs/style.md, "Unsafe stays in one place"):
//! UMEM frames, the four AF_XDP rings (through xsk-rs), and the three libbpf calls that
//! libbpf-rs 0.25 does not wrap for XDP (link create with mode flags, query, detach).
//!
//! Frame ownership is a type. A [`Frame`] is neither `Clone` nor `Copy`; it is created only by
//! [`FrameLedger`] (the initial pool, or a descriptor the kernel hands back on the RX or
//! completion ring after it was checked), and it is consumed when it moves into the fill or TX
//! ring. So safe code can read or write a frame only while userspace owns it, and never twice.
//! The ledger also records, per frame, which ring holds it: a descriptor the kernel returns
//! from a ring that does not hold that frame is rejected and counted, never trusted.

use std::collections::VecDeque;
use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::socket::XdpStatistics;
use xsk_rs::umem::frame::FrameDesc;
use xsk_rs::{CompQueue, FillQueue, RxQueue, Socket, TxQueue, Umem};

use crate::error::DataplaneError;
use crate::port::XskConfig;

/// Where a frame is: with userspace, or inside one of the kernel-facing rings. (A frame in the
/// RX ring was taken from the fill ring by the kernel; it stays `Fill` until we consume it, and
/// a frame in the completion ring stays `Tx` likewise.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    User,
    Fill,
    Tx,
}

/// One UMEM frame owned by userspace. Moving it into a ring gives it to the kernel.
#[derive(Debug)]
pub(crate) struct Frame {
    desc: FrameDesc,
}

impl Frame {
    /// Bytes of packet data in the frame (received length, or length last written).
    pub(crate) fn len(&self) -> usize {
        self.desc.lengths().data()
    }
}

/// A descriptor the kernel returned that does not match a frame the ring held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InvalidDesc {
    pub(crate) addr: usize,
}

/// Bookkeeping of every frame's owner; pure logic, tested without a kernel.
#[derive(Debug)]
pub(crate) struct FrameLedger {
    owner: Vec<Owner>,
    frame_size: usize,
    in_fill: u32,
    in_tx: u32,
    /// Descriptors rejected by `take_back` (should stay 0: non-zero means a kernel or ring bug).
    invalid: u64,
}

impl FrameLedger {
    /// A ledger for `descs`, the frames of one UMEM in address order, all owned by userspace.
    pub(crate) fn new(descs: Vec<FrameDesc>, frame_size: usize) -> (FrameLedger, Vec<Frame>) {
        assert!(frame_size.is_power_of_two());
        for (i, desc) in descs.iter().enumerate() {
            assert_eq!(desc.addr() / frame_size, i, "xsk-rs lays frames out in order");
        }
        let ledger = FrameLedger {
            owner: vec![Owner::User; descs.len()],
            frame_size,
            in_fill: 0,
            in_tx: 0,
            invalid: 0,
        };
        // Reversed so that `Vec::pop` hands out low addresses first (easier to read in dumps).
        let frames = descs.into_iter().rev().map(|desc| Frame { desc }).collect();
        (ledger, frames)
    }

    pub(crate) fn frame_count(&self) -> usize {
        self.owner.len()
    }

    pub(crate) fn in_fill(&self) -> u32 {
        self.in_fill
    }

    pub(crate) fn in_tx(&self) -> u32 {
        self.in_tx
    }

    pub(crate) fn invalid(&self) -> u64 {
        self.invalid
    }

    fn index(&self, addr: usize) -> Option<usize> {
        let index = addr / self.frame_size;
        (index < self.owner.len()).then_some(index)
    }

    /// Gives `frame` to the kernel side `ring` (fill or TX) and returns its descriptor.
    pub(crate) fn hand_over(&mut self, frame: Frame, ring: Owner) -> FrameDesc {
        let index = self.index(frame.desc.addr()).expect("a Frame always lies inside its UMEM");
        assert_eq!(self.owner[index], Owner::User, "a Frame value is always owned by userspace");
        self.owner[index] = ring;
        match ring {
            Owner::Fill => self.in_fill += 1,
            Owner::Tx => self.in_tx += 1,
            Owner::User => unreachable!("hand_over is called with a kernel ring"),
        }
        frame.desc
    }

    /// Takes back a descriptor the kernel returned from `ring` (RX → `Fill`, completion → `Tx`).
    pub(crate) fn take_back(&mut self, desc: FrameDesc, ring: Owner) -> Result<Frame, InvalidDesc> {
        let invalid = InvalidDesc { addr: desc.addr() };
        let Some(index) = self.index(desc.addr()) else {
            self.invalid += 1;
            return Err(invalid);
        };
        if self.owner[index] != ring {
            self.invalid += 1;
            return Err(invalid);
        }
        self.owner[index] = Owner::User;
        match ring {
            Owner::Fill => self.in_fill -= 1,
            Owner::Tx => self.in_tx -= 1,
            Owner::User => unreachable!("take_back is called with a kernel ring"),
        }
        Ok(Frame { desc })
    }
}

/// The UMEM of one port: the frame memory. Shared by reference between the smoltcp tokens.
#[derive(Debug)]
pub(crate) struct UmemArea {
    umem: Umem,
    frame_count: usize,
    frame_size: usize,
    /// Bytes a frame can hold after the kernel's XDP headroom (4096 - 256 = 3840).
    usable: usize,
}

impl UmemArea {
    pub(crate) fn usable(&self) -> usize {
        self.usable
    }

    fn check(&self, frame: &Frame) {
        assert!(frame.desc.addr() / self.frame_size < self.frame_count, "frame outside its UMEM");
    }

    /// The received bytes of `frame`.
    pub(crate) fn data<'a>(&'a self, frame: &'a Frame) -> &'a [u8] {
        self.check(frame);
        // SAFETY: `frame` is a `Frame`, so userspace owns it (module docs): the kernel neither
        // writes it (it is not in the fill ring) nor reads it (not in the TX ring) while this
        // borrow of `frame` lives. Its descriptor came from this UMEM's ledger (`check` holds),
        // and the returned slice borrows `frame`, so nobody can hand it to a ring meanwhile.
        unsafe { self.umem.data(&frame.desc) }.contents()
    }

    /// Sets the length of `frame` to `len` and lets `f` write its bytes.
    pub(crate) fn write<R>(&self, frame: &mut Frame, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        self.check(frame);
        assert!(len <= self.usable, "frame of {len} bytes exceeds the {} usable", self.usable);
        // SAFETY: as in `data`; in addition `&mut Frame` makes this the only access to the
        // frame's bytes (frames do not overlap: xsk-rs lays them out at multiples of the size).
        let mut data = unsafe { self.umem.data_mut(&mut frame.desc) };
        let mut cursor = data.cursor();
        cursor.set_pos(len);
        // xsk-rs clamps set_pos to the frame silently (docs/facts.md): check it took.
        assert_eq!(cursor.pos(), len);
        f(&mut data.contents_mut()[..len])
    }
}

/// The four rings of one AF_XDP socket, and the ledger of who holds which frame.
#[derive(Debug)]
pub(crate) struct Rings {
    fill: FillQueue,
    comp: CompQueue,
    rx: RxQueue,
    tx: TxQueue,
    ledger: FrameLedger,
    /// Scratch descriptors for one ring operation; sized to the largest ring at open.
    scratch: Vec<FrameDesc>,
}

/// Creates the UMEM and socket of one queue. The socket is bound with libxdp's program load
/// inhibited: our own steering program redirects into it through the XSKMAP (docs/facts.md).
pub(crate) fn open(
    ifname: &str,
    queue_id: u32,
    config: &XskConfig,
) -> Result<(UmemArea, Rings, Vec<Frame>), DataplaneError> {
    let err = |what: &'static str, detail: String| DataplaneError::Socket {
        ifname: ifname.to_owned(),
        queue_id,
        what,
        detail,
    };
    let queue = |size: u32| QueueSize::new(size).map_err(|e| err("ring size", e.to_string()));
    let umem_config = UmemConfig::builder()
        .frame_size(FrameSize::new(config.frame_size).map_err(|e| err("frame size", e.to_string()))?)
        .fill_queue_size(queue(config.fill_ring)?)
        .comp_queue_size(queue(config.comp_ring)?)
        .frame_headroom(0)
        .build()
        .map_err(|e| err("UMEM config", e.to_string()))?;
    let usable = umem_config.mtu() as usize;
    let frame_count = NonZeroU32::new(config.frame_count).ok_or_else(|| err("frame count", "0".into()))?;
    let (umem, descs) = Umem::new(umem_config, frame_count, false)
        .map_err(|e| err("UMEM create", error_chain(&e)))?;
    let socket_config = SocketConfig::builder()
        .rx_queue_size(queue(config.rx_ring)?)
        .tx_queue_size(queue(config.tx_ring)?)
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        .bind_flags(BindFlags::XDP_USE_NEED_WAKEUP)
        .build();
    let interface: Interface = ifname.parse().map_err(|_| err("interface name", ifname.to_owned()))?;
    // SAFETY: the UMEM was created just above and is not shared with any other socket, so the
    // shared-UMEM double-free hazard of `Socket::new` does not apply (and the inhibit flag is
    // set anyway).
    let (tx, rx, fill_comp) = unsafe { Socket::new(socket_config, &umem, &interface, queue_id) }.map_err(|e| {
        if os_error_in_chain(&e) == Some(libc::EBUSY) {
            DataplaneError::QueueBusy { ifname: ifname.to_owned(), queue_id }
        } else {
            err("socket create/bind", error_chain(&e))
        }
    })?;
    let (fill, comp) = fill_comp.ok_or_else(|| err("socket create", "no fill/completion ring".into()))?;
    let frame_size = config.frame_size as usize;
    let (ledger, frames) = FrameLedger::new(descs, frame_size);
    let ring_max = [config.fill_ring, config.comp_ring, config.rx_ring, config.tx_ring]
        .into_iter()
        .max()
        .unwrap_or(0) as usize;
    let area = UmemArea { umem, frame_count: config.frame_count as usize, frame_size, usable };
    let rings = Rings { fill, comp, rx, tx, ledger, scratch: vec![FrameDesc::default(); ring_max] };
    Ok((area, rings, frames))
}

/// The first OS error code in an error's source chain.
fn os_error_in_chain(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(error) = next {
        if let Some(code) = error.downcast_ref::<std::io::Error>().and_then(std::io::Error::raw_os_error) {
            return Some(code);
        }
        next = error.source();
    }
    None
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Rings {
    pub(crate) fn ledger(&self) -> &FrameLedger {
        &self.ledger
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }

    /// Free slots in the fill ring.
    pub(crate) fn fill_free(&mut self) -> usize {
        self.fill.nb_free_exact() as usize
    }

    /// Moves up to `count` frames from the end of `frames` into the fill ring. xsk-rs' produce
    /// is all-or-nothing (docs/facts.md), so the count is capped by the free slots first.
    pub(crate) fn fill(&mut self, frames: &mut Vec<Frame>, count: usize) -> usize {
        let n = count.min(frames.len()).min(self.fill.nb_free_exact() as usize).min(self.scratch.len());
        if n == 0 {
            return 0;
        }
        for slot in 0..n {
            let frame = frames.pop().expect("n <= frames.len()");
            self.scratch[slot] = self.ledger.hand_over(frame, Owner::Fill);
        }
        // SAFETY: every descriptor came from a `Frame` of this UMEM that `hand_over` just
        // consumed, so userspace keeps no handle to it until the RX ring returns it.
        let produced = unsafe { self.fill.produce(&self.scratch[..n]) };
        assert_eq!(produced, n, "fill ring had {n} free slots");
        n
    }

    /// Whether the kernel asked to be woken to see new fill-ring entries.
    pub(crate) fn fill_needs_wakeup(&self) -> bool {
        self.fill.needs_wakeup()
    }

    /// Wakes the kernel for the fill ring (a zero-timeout poll, as libxdp's samples do).
    pub(crate) fn wake_fill(&mut self) -> io::Result<()> {
        self.fill.wakeup(self.rx.fd_mut(), 0)
    }

    /// Frames waiting in the RX ring.
    pub(crate) fn rx_ready(&mut self) -> usize {
        self.rx.nb_avail_exact() as usize
    }

    /// Appends up to `max` received frames to `out`.
    pub(crate) fn receive(&mut self, out: &mut VecDeque<Frame>, max: usize) -> usize {
        let n = max.min(self.scratch.len());
        // SAFETY: the descriptors are written into our scratch array and ownership goes
        // through `take_back`, which rejects any the fill ring did not hold.
        let got = unsafe { self.rx.consume(&mut self.scratch[..n]) };
        let mut taken = 0;
        for desc in &self.scratch[..got] {
            if let Ok(frame) = self.ledger.take_back(*desc, Owner::Fill) {
                out.push_back(frame);
                taken += 1;
            }
        }
        taken
    }

    /// Moves frames from the front of `pending` into the TX ring, as many as fit.
    pub(crate) fn transmit(&mut self, pending: &mut VecDeque<Frame>) -> usize {
        let n = pending.len().min(self.tx.nb_free_exact() as usize).min(self.scratch.len());
        if n == 0 {
            return 0;
        }
        for slot in 0..n {
            let frame = pending.pop_front().expect("n <= pending.len()");
            self.scratch[slot] = self.ledger.hand_over(frame, Owner::Tx);
        }
        // SAFETY: as in `fill`; the kernel only reads these frames and returns them on the
        // completion ring.
        let produced = unsafe { self.tx.produce(&self.scratch[..n]) };
        assert_eq!(produced, n, "TX ring had {n} free slots");
        n
    }

    /// Asks the kernel to move TX frames. In copy mode it moves at most 32 per call, and only
    /// inside a syscall, so the caller repeats this every loop turn while frames are in flight.
    pub(crate) fn kick_tx(&mut self) -> io::Result<()> {
        if self.tx.needs_wakeup() {
            self.tx.wakeup()?;
        }
        Ok(())
    }

    /// Appends up to `max` completed TX frames to `out`.
    pub(crate) fn complete(&mut self, out: &mut Vec<Frame>, max: usize) -> usize {
        let n = max.min(self.scratch.len());
        // SAFETY: as in `receive`.
        let got = unsafe { self.comp.consume(&mut self.scratch[..n]) };
        let mut taken = 0;
        for desc in &self.scratch[..got] {
            if let Ok(frame) = self.ledger.take_back(*desc, Owner::Tx) {
                out.push(frame);
                taken += 1;
            }
        }
        taken
    }

    /// Blocks in ppoll(2) until the RX ring has frames or `timeout` passes; true when it has.
    /// Not poll(2): its timeout is whole milliseconds, so a worker due again in 0.9 ms (a TCP
    /// timer, handshake steps waiting for their time share) would not sleep at all.
    pub(crate) fn poll_rx(&mut self, timeout: Duration) -> io::Result<bool> {
        let mut pollfd = libc::pollfd { fd: self.rx.fd().as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let timeout = libc::timespec {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: timeout.subsec_nanos() as _,
        };
        // SAFETY: one valid pollfd and a timespec, both outliving the call; no signal mask.
        let ready = unsafe { libc::ppoll(&mut pollfd, 1, &timeout, std::ptr::null()) };
        match ready {
            n if n > 0 => Ok(true),
            0 => Ok(false),
            _ => match io::Error::last_os_error() {
                // A signal (the stop) ends the wait early: the caller looks again.
                e if e.kind() == io::ErrorKind::Interrupted => Ok(false),
                e => Err(e),
            },
        }
    }

    pub(crate) fn statistics(&self) -> io::Result<XdpStatistics> {
        self.rx.fd().xdp_statistics()
    }
}

/// XDP attach modes as netlink flags (uapi/linux/if_link.h).
pub(crate) const XDP_FLAGS_SKB_MODE: u32 = libbpf_rs::libbpf_sys::XDP_FLAGS_SKB_MODE;
pub(crate) const XDP_FLAGS_DRV_MODE: u32 = libbpf_rs::libbpf_sys::XDP_FLAGS_DRV_MODE;

/// Attaches program `prog_fd` to `ifindex` through a bpf_link with the given mode flag. The
/// kernel detaches it when the returned fd closes, including when the process is killed
/// (docs/facts.md, "XDP program lifecycle"). libbpf-rs' `attach_xdp` takes no mode flag, hence this.
pub(crate) fn xdp_link_create(prog_fd: RawFd, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    use libbpf_rs::libbpf_sys;
    let opts = libbpf_sys::bpf_link_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as libbpf_sys::size_t,
        flags,
        ..Default::default()
    };
    let ifindex = i32::try_from(ifindex).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `opts` is a fully initialised struct that outlives the call; libbpf reads it
    // and returns a new fd or a negative errno.
    let fd = unsafe { libbpf_sys::bpf_link_create(prog_fd, ifindex, libbpf_sys::BPF_XDP, &opts) };
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: libbpf returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What is attached to an interface, per mode (0 = nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct XdpQuery {
    pub(crate) drv_prog_id: u32,
    pub(crate) skb_prog_id: u32,
    pub(crate) hw_prog_id: u32,
    pub(crate) attach_mode: u8,
}

pub(crate) fn xdp_query(ifindex: u32) -> io::Result<XdpQuery> {
    use libbpf_rs::libbpf_sys;
    let mut opts = libbpf_sys::bpf_xdp_query_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_xdp_query_opts>() as libbpf_sys::size_t,
        ..Default::default()
    };
    let ifindex = i32::try_from(ifindex).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `opts` is initialised, sized, and exclusively borrowed for the call.
    let rc = unsafe { libbpf_sys::bpf_xdp_query(ifindex, 0, &mut opts) };
    if rc < 0 {
        return Err(io::Error::from_raw_os_error(-rc));
    }
    Ok(XdpQuery {
        drv_prog_id: opts.drv_prog_id,
        skb_prog_id: opts.skb_prog_id,
        hw_prog_id: opts.hw_prog_id,
        attach_mode: opts.attach_mode,
    })
}

/// Detaches the netlink-attached program of `ifindex` in the mode of `flags`. Fails with
/// EBUSY if the program is held by a bpf_link (whose owner must close it instead).
pub(crate) fn xdp_detach(ifindex: u32, flags: u32) -> io::Result<()> {
    use libbpf_rs::libbpf_sys;
    let ifindex = i32::try_from(ifindex).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a null opts pointer is allowed by libbpf (no expected old program).
    let rc = unsafe { libbpf_sys::bpf_xdp_detach(ifindex, flags, std::ptr::null()) };
    if rc < 0 {
        return Err(io::Error::from_raw_os_error(-rc));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Frame descriptors laid out as xsk-rs lays them out (`Umem::new`), without a UMEM.
    pub(crate) fn descs(count: usize, frame_size: usize, headroom: usize) -> Vec<FrameDesc> {
        // FrameDesc has no public constructor taking an address, so let xsk-rs lay out a small
        // UMEM (this registers memory with an AF_XDP socket, so it needs root, but no
        // interface and no ring traffic).
        let umem_config = UmemConfig::builder()
            .frame_size(FrameSize::new(frame_size as u32).unwrap())
            .frame_headroom(0)
            .build()
            .unwrap();
        let (_umem, descs) = Umem::new(umem_config, NonZeroU32::new(count as u32).unwrap(), false).unwrap();
        assert!(descs.iter().all(|d| d.addr() % frame_size == headroom));
        descs
    }

    /// A kernel that takes frames from the fill ring into RX, and from TX into completion,
    /// modelled with queues; returns descriptors as the real one does.
    #[derive(Default)]
    struct FakeKernel {
        fill: VecDeque<FrameDesc>,
        tx: VecDeque<FrameDesc>,
    }

    #[test]
    fn frames_are_conserved_through_fill_rx_tx_completion() {
        let frame_size = 4096;
        let (mut ledger, mut free) = FrameLedger::new(descs(64, frame_size, 256), frame_size);
        let total = free.len();
        let mut kernel = FakeKernel::default();
        let mut user_rx: Vec<Frame> = Vec::new();
        // Many rounds of: fill 40, receive 25, transmit 10 of them, recycle the rest, complete.
        for round in 0..100 {
            while free.len() > 8 && kernel.fill.len() < 40 {
                kernel.fill.push_back(ledger.hand_over(free.pop().unwrap(), Owner::Fill));
            }
            for _ in 0..25.min(kernel.fill.len()) {
                let desc = kernel.fill.pop_front().unwrap();
                user_rx.push(ledger.take_back(desc, Owner::Fill).expect("fill frame comes back on RX"));
            }
            for frame in user_rx.drain(..) {
                if round % 2 == 0 && kernel.tx.len() < 10 {
                    kernel.tx.push_back(ledger.hand_over(frame, Owner::Tx));
                } else {
                    free.push(frame);
                }
            }
            if round % 3 == 0 {
                while let Some(desc) = kernel.tx.pop_front() {
                    free.push(ledger.take_back(desc, Owner::Tx).expect("tx frame completes"));
                }
            }
            assert_eq!(free.len() + ledger.in_fill() as usize + ledger.in_tx() as usize, total);
            assert_eq!(kernel.fill.len(), ledger.in_fill() as usize);
            assert_eq!(kernel.tx.len(), ledger.in_tx() as usize);
        }
        assert_eq!(ledger.invalid(), 0);
        // No address is held twice by userspace.
        let mut addrs: Vec<usize> = free.iter().map(|f| f.desc.addr()).collect();
        addrs.sort_unstable();
        addrs.dedup();
        assert_eq!(addrs.len(), free.len());
    }

    #[test]
    fn a_descriptor_the_ring_did_not_hold_is_rejected() {
        let frame_size = 4096;
        let (mut ledger, mut free) = FrameLedger::new(descs(4, frame_size, 256), frame_size);
        let frame = free.pop().unwrap();
        let desc = ledger.hand_over(frame, Owner::Tx);
        // Completed once: fine. Completed twice (a duplicated completion): rejected.
        let back = ledger.take_back(desc, Owner::Tx).unwrap();
        assert_eq!(ledger.take_back(desc, Owner::Tx).unwrap_err().addr, desc.addr());
        // A TX frame coming back on RX, and an address past the UMEM, are rejected too.
        let desc = ledger.hand_over(back, Owner::Tx);
        assert!(ledger.take_back(desc, Owner::Fill).is_err());
        let far = descs(8, frame_size, 256)[7];
        assert!(ledger.take_back(far, Owner::Tx).is_err());
        assert_eq!(ledger.invalid(), 3);
        assert_eq!(ledger.in_tx(), 1);
        assert!(ledger.take_back(desc, Owner::Tx).is_ok());
        assert_eq!(ledger.in_tx(), 0);
    }
}
