//! TigerBeetle's client library (tb_client), driven without async: requests go in with a tag,
//! completions come back on a channel.
//!
//! tb_client runs its own I/O thread, which calls [`Completions::completion`] for every request;
//! the callback only moves the reply onto a channel, so the thread that owns the [`Client`]
//! decides what to do with it (the ledger backend maps it back to a waiting connection). One
//! client is one TigerBeetle client session: the cluster serves a session one request at a
//! time, and tb_client queues (and batches) what is submitted behind it.
//!
//! The client retries forever: it never gives up on a request, whatever the cluster does, and
//! never reports a timeout. Every use needs its own deadline ([`BlockingClient::request`] has
//! one; the backend keeps one per request and answers 503 when it passes). A completion that
//! arrives after its deadline is dropped by its reader, never applied twice: the request
//! carries its ids, and TigerBeetle answers a retry with `exists`.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tigerbeetle_unofficial_core as tb;

use crate::wire::Op;
use crate::ClusterError;

/// One reply, or why there is none. `body` hands the request's buffer back for reuse.
#[derive(Debug)]
pub struct Completion {
    pub tag: u64,
    pub op: Op,
    pub result: Result<Vec<u8>, ClusterError>,
    pub body: Vec<u8>,
    /// The reply header's timestamp (ns since the Unix epoch; 0 without a reply): the
    /// timestamp the cluster prepared the request with. A create request of one batch of n
    /// events gives event i the timestamp `timestamp - n + i + 1` unless it is imported
    /// (TigerBeetle 0.16.78's `execute_create`).
    pub timestamp: u64,
}

/// What a packet carries through tb_client: the request bytes and our tag.
#[derive(Debug)]
struct Request {
    tag: u64,
    op: Op,
    body: Vec<u8>,
}

impl tb::UserData for Request {
    fn data(&self) -> &[u8] {
        &self.body
    }
}

/// The completion callback: runs on tb_client's thread, so it only forwards.
#[derive(Debug)]
struct Completions {
    tx: Sender<Completion>,
}

impl tb::Callbacks for Completions {
    type UserDataPtr = Box<Request>;

    fn completion(&self, packet: tb::Packet<Box<Request>>, reply: Option<tb::Reply<'_>>) {
        let status = packet.status();
        let request = packet.into_user_data();
        let Request { tag, op, body } = *request;
        let timestamp = reply
            .as_ref()
            .and_then(|r| r.timestamp.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0));
        let result = match (status, reply) {
            (Ok(()), Some(reply)) => Ok(reply.payload.to_vec()),
            (Err(e), _) => Err(ClusterError::Packet(format!("{:?}", e.kind()))),
            (Ok(()), None) => Err(ClusterError::Packet("no reply".to_owned())),
        };
        // The receiver is gone only while the owner shuts down: nothing waits for this reply.
        let _ = self.tx.send(Completion { tag, op, result, body, timestamp });
    }
}

/// A TigerBeetle client session.
pub struct Client {
    inner: tb::Client<Box<Completions>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// Opens a session to the cluster `cluster_id` at `addresses` (comma-separated
    /// `host:port` of every replica, in replica order). Returns at once: tb_client connects in
    /// the background, and requests wait until it has.
    ///
    /// Completions are unbounded on the channel: the owner bounds them by bounding what it has
    /// submitted and not yet received.
    pub fn connect(cluster_id: u128, addresses: &str) -> Result<(Client, Receiver<Completion>), ClusterError> {
        let (tx, rx) = crossbeam_channel::unbounded();
        Ok((Client::connect_to(cluster_id, addresses, tx)?, rx))
    }

    /// As [`Client::connect`], delivering completions to `tx`: several sessions may share one
    /// channel when their tags are distinct (the ledger backend's sessions do).
    pub fn connect_to(cluster_id: u128, addresses: &str, tx: Sender<Completion>) -> Result<Client, ClusterError> {
        let inner = tb::Client::with_callback(cluster_id, addresses.as_bytes(), Box::new(Completions { tx }))
            .map_err(|e| ClusterError::Connect(format!("{:?}", e.kind())))?;
        Ok(Client { inner })
    }

    /// Queues one request; its completion arrives on the channel with `tag`.
    pub fn submit(&self, tag: u64, op: Op, body: Vec<u8>) {
        let kind = match op {
            Op::CreateAccounts => tb::OperationKind::CreateAccounts,
            Op::CreateTransfers => tb::OperationKind::CreateTransfers,
            Op::LookupAccounts => tb::OperationKind::LookupAccounts,
            Op::LookupTransfers => tb::OperationKind::LookupTransfers,
            Op::GetAccountTransfers => tb::OperationKind::GetAccountTransfers,
            Op::GetAccountBalances => tb::OperationKind::GetAccountBalances,
            Op::QueryAccounts => tb::OperationKind::QueryAccounts,
            Op::QueryTransfers => tb::OperationKind::QueryTransfers,
        };
        debug_assert_eq!(kind as u8, op as u8, "wire::Op codes are TigerBeetle 0.16's");
        self.inner.submit(tb::Packet::new(Box::new(Request { tag, op, body }), kind));
    }
}

/// One request at a time with a deadline: for tools and tests (the differential oracle, the
/// readiness wait of a local cluster), not for the request path.
#[derive(Debug)]
pub struct BlockingClient {
    client: Client,
    completions: Receiver<Completion>,
    next_tag: u64,
}

impl BlockingClient {
    pub fn connect(cluster_id: u128, addresses: &str) -> Result<Self, ClusterError> {
        let (client, completions) = Client::connect(cluster_id, addresses)?;
        Ok(BlockingClient { client, completions, next_tag: 0 })
    }

    /// Sends `body` as `op` and waits at most `timeout` for its reply. On a timeout the request
    /// stays queued inside tb_client (it cannot be withdrawn) and its late reply is skipped by
    /// the next call.
    pub fn request(&mut self, op: Op, body: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, ClusterError> {
        self.next_tag += 1;
        let tag = self.next_tag;
        self.client.submit(tag, op, body);
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.completions.recv_timeout(left) {
                Ok(completion) if completion.tag == tag => return completion.result,
                Ok(_late) => continue,
                Err(RecvTimeoutError::Timeout) => return Err(ClusterError::Deadline(timeout)),
                Err(RecvTimeoutError::Disconnected) => return Err(ClusterError::Packet("client shut down".to_owned())),
            }
        }
    }
}
