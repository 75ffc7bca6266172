//! One TLS server session per TCP connection, driven without I/O.
//!
//! The caller owns the socket: it feeds received ciphertext in with [`Session::handle_input`],
//! drains decrypted requests with [`Session::read_plaintext`], queues responses with
//! [`Session::write_plaintext`] and copies the resulting ciphertext out with
//! [`Session::poll_output`]. Time only enters as an `Instant` argument, so the handshake
//! deadline is testable without sleeping.
//!
//! Memory per session is bounded: rustls keeps at most 64 KiB of buffered handshake input and
//! about 32 KiB of received plaintext (it stops reading once 16 KiB are unread, which
//! `handle_input` reports by consuming fewer bytes); the plaintext send queue holds at most
//! `plaintext_buffer_bytes_max`, plus rustls' own 64 KiB of encrypted output.

use std::collections::VecDeque;
use std::io::{self, BufRead, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{
    AlertDescription, CertificateError, CipherSuite, HandshakeKind, InvalidMessage,
    PeerIncompatible, PeerMisbehaved, ProtocolVersion, ServerConfig, ServerConnection,
};

use rustls_pki_types::UnixTime;

use crate::config::{SessionLimits, TlsError};
use crate::identity::names_of;
use crate::policy::{
    decode_auth_time, encode_auth_time, AuthenticatedAt, ClientPolicy, ResumptionRefused,
};
use crate::roles::Role;

/// Why a session ended badly. Every variant but the last two is the peer's doing; for those the
/// caller sends whatever [`Session::poll_output`] still yields (rustls queues the matching alert,
/// RFC 8446 §6.2) and then closes the TCP connection.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SessionError {
    #[error("handshake not finished within {timeout_ms} ms")]
    HandshakeTimeout { timeout_ms: u64 },
    #[error("the client presented no certificate, and one is required")]
    NoClientCertificate,
    #[error("the client certificate was rejected: {0:?}")]
    BadClientCertificate(CertificateError),
    #[error("nothing in common with the client (version, suite or group): {0:?}")]
    Incompatible(PeerIncompatible),
    #[error("the client offered ALPN protocols but not http/1.1")]
    NoApplicationProtocol,
    #[error("the client violated the protocol: {0:?}")]
    Misbehaved(PeerMisbehaved),
    #[error("the client sent a malformed TLS message: {0:?}")]
    InvalidMessage(InvalidMessage),
    #[error("the client sent a message that is not allowed in this state")]
    UnexpectedMessage,
    #[error("the client sent a record larger than the protocol allows")]
    OversizedRecord,
    #[error("the client sent a handshake message larger than 64 KiB")]
    HandshakeTooLarge,
    #[error("a record from the client failed authentication")]
    Decrypt,
    #[error("the client sent the fatal alert {0:?}")]
    AlertReceived(AlertDescription),
    #[error("TLS error: {0}")]
    Other(rustls::Error),
    /// A resumed session failed the checks of [`ClientPolicy::check_resumed`].
    #[error("resumption refused: {0:?}")]
    ResumptionRefused(ResumptionRefused),
    /// Local: plaintext written after [`Session::close`] or after a fatal error.
    #[error("the session is closed")]
    Closed,
    /// Local backpressure: the caller must drain [`Session::poll_output`] first.
    #[error("plaintext send queue full: {queued} queued + {requested} requested > {max} bytes")]
    TxBufferFull {
        queued: usize,
        requested: usize,
        max: usize,
    },
}

impl SessionError {
    /// A short, fixed label for a metric such as `tls_session_errors_total{reason=...}`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SessionError::HandshakeTimeout { .. } => "handshake_timeout",
            SessionError::NoClientCertificate => "no_client_certificate",
            SessionError::BadClientCertificate(e) => bad_certificate_label(e),
            SessionError::Incompatible(_) => "incompatible",
            SessionError::NoApplicationProtocol => "no_application_protocol",
            SessionError::Misbehaved(_) => "misbehaved",
            SessionError::InvalidMessage(_) => "invalid_message",
            SessionError::UnexpectedMessage => "unexpected_message",
            SessionError::OversizedRecord => "oversized_record",
            SessionError::HandshakeTooLarge => "handshake_too_large",
            SessionError::Decrypt => "decrypt_error",
            SessionError::AlertReceived(_) => "alert_received",
            SessionError::Other(_) => "other",
            SessionError::ResumptionRefused(ResumptionRefused::Certificate(e)) => {
                bad_certificate_label(e)
            }
            SessionError::ResumptionRefused(_) => "resumption_too_old",
            SessionError::Closed => "closed",
            SessionError::TxBufferFull { .. } => "tx_buffer_full",
        }
    }
}

/// Why a client certificate was refused, as a bounded label: the causes an operator acts on
/// differently (a client from another CA, an expired client, a forged one) by name, the rest
/// under `bad_client_certificate`.
fn bad_certificate_label(error: &rustls::CertificateError) -> &'static str {
    use rustls::CertificateError as E;
    match error {
        E::UnknownIssuer => "unknown_ca",
        E::Expired | E::ExpiredContext { .. } => "certificate_expired",
        E::NotValidYet | E::NotValidYetContext { .. } => "certificate_not_yet_valid",
        E::Revoked => "certificate_revoked",
        E::BadSignature => "bad_certificate_signature",
        _ => "bad_client_certificate",
    }
}

impl From<rustls::Error> for SessionError {
    fn from(error: rustls::Error) -> Self {
        use rustls::Error as E;
        match error {
            E::NoCertificatesPresented => SessionError::NoClientCertificate,
            E::InvalidCertificate(e) => SessionError::BadClientCertificate(e),
            E::PeerIncompatible(e) => SessionError::Incompatible(e),
            E::NoApplicationProtocol => SessionError::NoApplicationProtocol,
            E::PeerMisbehaved(e) => SessionError::Misbehaved(e),
            E::InvalidMessage(e) => SessionError::InvalidMessage(e),
            E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
                SessionError::UnexpectedMessage
            }
            E::PeerSentOversizedRecord => SessionError::OversizedRecord,
            E::DecryptError => SessionError::Decrypt,
            E::AlertReceived(alert) => SessionError::AlertReceived(alert),
            other => SessionError::Other(other),
        }
    }
}

/// Capacity the emptied plaintext send queue may keep; a larger one is freed.
const TX_PLAINTEXT_IDLE_CAPACITY_MAX: usize = 4 * 1024;

/// One server-side TLS session. See the module documentation for the call sequence.
#[derive(Debug)]
pub struct Session {
    conn: ServerConnection,
    handshake_deadline: Instant,
    handshake_timeout: Duration,
    /// Plaintext accepted by `write_plaintext` that rustls has not taken yet (its own send
    /// buffer is full). Bounded by `tx_plaintext_bytes_max`.
    tx_plaintext: VecDeque<u8>,
    tx_plaintext_bytes_max: usize,
    /// Roles, client trust and resumption bound this session applies.
    policy: Arc<ClientPolicy>,
    /// Computed once, when the handshake completes: the typed identity that gave the role
    /// (or the certificate's first name when none did), and the role.
    identity: Option<String>,
    role: Option<Role>,
    identity_done: bool,
    /// A resumed handshake was checked against the policy.
    resumption_checked: bool,
    /// A refused resumption: the plaintext fatal alert sent instead of the server's flight,
    /// and how much of it was written.
    refusal_alert: Option<([u8; 7], usize)>,
    /// The first fatal error; every later call reports it again.
    error: Option<SessionError>,
    /// `close()` was called: no more plaintext is accepted.
    closing: bool,
    /// close_notify has been handed to rustls (after all queued plaintext).
    close_notify_queued: bool,
    /// The TCP peer sent FIN.
    eof: bool,
    /// The peer's close_notify was processed.
    close_notify_received: bool,
}

impl Session {
    /// A session with the default plaintext bound and the given handshake timeout.
    pub fn new(
        config: &Arc<ServerConfig>,
        now: Instant,
        handshake_timeout: Duration,
    ) -> Result<Self, TlsError> {
        Session::with_limits(
            config,
            now,
            SessionLimits {
                handshake_timeout,
                ..SessionLimits::default()
            },
        )
    }

    /// A session with explicit limits (see [`crate::TlsSettings::session_limits`]), no roles
    /// and no client trust to check resumed sessions with (tests, tools, the echo app).
    pub fn with_limits(
        config: &Arc<ServerConfig>,
        now: Instant,
        limits: SessionLimits,
    ) -> Result<Self, TlsError> {
        Session::with_policy(config, now, limits, Arc::new(ClientPolicy::default()))
    }

    /// A session that resolves its client's role with `policy` and checks a resumed session
    /// against it (see [`crate::policy`]).
    pub fn with_policy(
        config: &Arc<ServerConfig>,
        now: Instant,
        limits: SessionLimits,
        policy: Arc<ClientPolicy>,
    ) -> Result<Self, TlsError> {
        let mut conn =
            ServerConnection::new(config.clone()).map_err(|source| TlsError::Rustls {
                what: "new server connection",
                source,
            })?;
        // The tickets and cache entries of a full handshake carry its time; a resumed
        // session passes its original time on (after_progress), so the age bound counts from
        // the last time the client's certificate was verified in full.
        conn.set_resumption_data(&encode_auth_time(UnixTime::now().as_secs()));
        Ok(Session {
            policy,
            role: None,
            resumption_checked: false,
            refusal_alert: None,
            conn,
            handshake_deadline: now + limits.handshake_timeout,
            handshake_timeout: limits.handshake_timeout,
            tx_plaintext: VecDeque::new(),
            tx_plaintext_bytes_max: limits.plaintext_buffer_bytes_max,
            identity: None,
            identity_done: false,
            error: None,
            closing: false,
            close_notify_queued: false,
            eof: false,
            close_notify_received: false,
        })
    }

    /// Feeds ciphertext received from TCP and processes every complete record in it.
    ///
    /// Returns how many bytes were consumed: fewer than `ciphertext.len()` when rustls' received
    /// plaintext buffer is full; the caller keeps the rest, drains [`Session::read_plaintext`]
    /// and feeds it again. Bytes after the peer's close_notify are consumed and ignored
    /// (RFC 8446 §6.1). On a protocol error the alert rustls queued is still available from
    /// [`Session::poll_output`]: flush it, then close the connection.
    pub fn handle_input(&mut self, now: Instant, ciphertext: &[u8]) -> Result<usize, SessionError> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        self.check_deadline(now)?;
        let mut consumed = 0;
        while consumed < ciphertext.len() {
            if self.close_notify_received {
                consumed = ciphertext.len();
                break;
            }
            let mut rest = &ciphertext[consumed..];
            match self.conn.read_tls(&mut rest) {
                // Only after close_notify, handled above; a slice never reports EOF early.
                Ok(0) => {
                    consumed = ciphertext.len();
                    break;
                }
                Ok(n) => consumed += n,
                // "received plaintext buffer full": backpressure, not an error.
                Err(e) if e.kind() == io::ErrorKind::Other => break,
                // "message buffer full": a handshake message over rustls' 64 KiB cap.
                Err(_) => return Err(self.fail(SessionError::HandshakeTooLarge)),
            }
            match self.conn.process_new_packets() {
                Ok(state) => self.close_notify_received = state.peer_has_closed(),
                Err(e) => return Err(self.fail(e.into())),
            }
        }
        self.after_progress()?;
        Ok(consumed)
    }

    /// The TCP peer sent FIN: no more ciphertext will come. Without a prior close_notify this is
    /// a truncation (RFC 8446 §6.1); [`Session::received_close_notify`] tells the two apart.
    pub fn handle_eof(&mut self) {
        self.eof = true;
        // An empty reader tells rustls about the EOF, so it never waits for more input.
        let _ = self.conn.read_tls(&mut io::empty());
    }

    /// Moves up to `max` bytes of decrypted plaintext to the end of `out`; returns how many.
    pub fn read_plaintext(&mut self, out: &mut Vec<u8>, max: usize) -> usize {
        let mut moved = 0;
        let mut reader = self.conn.reader();
        while moved < max {
            let take = match reader.fill_buf() {
                Ok(chunk) if !chunk.is_empty() => {
                    let take = chunk.len().min(max - moved);
                    out.extend_from_slice(&chunk[..take]);
                    take
                }
                // Empty: close_notify received. Err: nothing buffered (WouldBlock) or a TCP EOF
                // without close_notify (UnexpectedEof); `peer_closed` reports both.
                _ => break,
            };
            reader.consume(take);
            moved += take;
        }
        moved
    }

    /// Queues `data` for encryption, all of it or nothing.
    ///
    /// Fails with `TxBufferFull` when more than `plaintext_buffer_bytes_max` would wait for
    /// [`Session::poll_output`] (so a single call may pass at most that many bytes), and with
    /// `Closed` after [`Session::close`] or a fatal error.
    pub fn write_plaintext(&mut self, data: &[u8]) -> Result<(), SessionError> {
        if self.error.is_some() || self.closing {
            return Err(SessionError::Closed);
        }
        let queued = self.tx_plaintext.len();
        if queued + data.len() > self.tx_plaintext_bytes_max {
            return Err(SessionError::TxBufferFull {
                queued,
                requested: data.len(),
                max: self.tx_plaintext_bytes_max,
            });
        }
        // Hand rustls what it takes now (encrypted at once after the handshake); queue the rest
        // behind anything already queued, which must go first.
        let taken = if queued == 0 {
            self.conn.writer().write(data).unwrap_or(0)
        } else {
            0
        };
        self.tx_plaintext.extend(&data[taken..]);
        Ok(())
    }

    /// Writes pending ciphertext (handshake messages, records, alerts) into `out`, typically
    /// the free space of the TCP send buffer; returns how many bytes were written.
    pub fn poll_output(&mut self, out: &mut [u8]) -> usize {
        if let Some((alert, sent)) = &mut self.refusal_alert {
            // Only the alert: the server's flight rustls prepared is never sent.
            let n = (alert.len() - *sent).min(out.len());
            out[..n].copy_from_slice(&alert[*sent..*sent + n]);
            *sent += n;
            return n;
        }
        let mut written = 0;
        while written < out.len() {
            if !self.conn.wants_write() && !self.refill() {
                break;
            }
            let mut window = &mut out[written..];
            match self.conn.write_tls(&mut window) {
                Ok(n) if n > 0 => written += n,
                _ => break,
            }
        }
        written
    }

    /// Whether [`Session::poll_output`] would write something now.
    pub fn wants_output(&self) -> bool {
        if let Some((alert, sent)) = &self.refusal_alert {
            return *sent < alert.len();
        }
        self.conn.wants_write()
            || (!self.conn.is_handshaking()
                && self.error.is_none()
                && (!self.tx_plaintext.is_empty() || (self.closing && !self.close_notify_queued)))
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The next instant [`Session::handle_timeout`] must be called: the handshake deadline
    /// while the handshake runs, then nothing (idle timeouts belong to the HTTP layer).
    pub fn poll_at(&self) -> Option<Instant> {
        (self.error.is_none() && self.conn.is_handshaking()).then_some(self.handshake_deadline)
    }

    /// Fails with `HandshakeTimeout` once `now` passes the handshake deadline.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SessionError> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        self.check_deadline(now)
    }

    /// The client's typed identity once the handshake is complete: the name that gave its
    /// role (e.g. `cn:client`), or with no role the certificate's first name in precedence
    /// order dns, email, uri, cn. `None` without a client certificate or when the certificate
    /// names nothing usable.
    pub fn identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }

    /// The client's role once the handshake is complete (see [`crate::roles::RoleMap::resolve`]).
    pub fn role(&self) -> Option<Role> {
        self.role
    }

    /// Queues close_notify (RFC 8446 §6.1) after any plaintext still queued; later writes fail.
    pub fn close(&mut self) {
        self.closing = true;
        self.queue_close_notify_if_drained();
    }

    /// `close()` was called and close_notify has left through [`Session::poll_output`]: the
    /// caller may now shut down its TCP send side.
    pub fn close_sent(&self) -> bool {
        self.close_notify_queued && !self.conn.wants_write()
    }

    /// The peer will send nothing more: it sent close_notify, or TCP EOF was seen.
    pub fn peer_closed(&self) -> bool {
        self.close_notify_received || self.eof
    }

    /// The peer ended its side cleanly with close_notify (not a bare TCP FIN).
    pub fn received_close_notify(&self) -> bool {
        self.close_notify_received
    }

    /// The first fatal error, if any.
    pub fn error(&self) -> Option<&SessionError> {
        self.error.as_ref()
    }

    /// The negotiated protocol version, once known.
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// The negotiated cipher suite (`CipherSuite::as_str` gives its IANA name), once known.
    pub fn cipher_suite(&self) -> Option<CipherSuite> {
        self.conn
            .negotiated_cipher_suite()
            .map(|suite| suite.suite())
    }

    /// The ALPN protocol agreed on; `None` when the client offered none.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// Whether the handshake resumed an earlier session (ticket or session id).
    pub fn resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(HandshakeKind::Resumed)
    }

    /// The SNI server name the client asked for, if any.
    pub fn server_name(&self) -> Option<&str> {
        self.conn.server_name()
    }

    fn fail(&mut self, error: SessionError) -> SessionError {
        self.error = Some(error.clone());
        error
    }

    fn check_deadline(&mut self, now: Instant) -> Result<(), SessionError> {
        if self.conn.is_handshaking() && now >= self.handshake_deadline {
            let timeout_ms = u64::try_from(self.handshake_timeout.as_millis()).unwrap_or(u64::MAX);
            return Err(self.fail(SessionError::HandshakeTimeout { timeout_ms }));
        }
        Ok(())
    }

    fn after_progress(&mut self) -> Result<(), SessionError> {
        // rustls decides to resume while processing the ClientHello and, for a resumption,
        // does not verify the client chain again: check it here, before the server's flight
        // leaves (poll_output comes after this), so a refused client never completes.
        if !self.resumption_checked && self.conn.handshake_kind() == Some(HandshakeKind::Resumed) {
            self.resumption_checked = true;
            let authenticated_at = match self.conn.protocol_version() {
                Some(ProtocolVersion::TLSv1_2) => AuthenticatedAt::NotCarried,
                _ => self
                    .conn
                    .received_resumption_data()
                    .and_then(decode_auth_time)
                    .map_or(AuthenticatedAt::Unknown, AuthenticatedAt::Known),
            };
            let checked = self.policy.check_resumed(
                self.conn.peer_certificates(),
                authenticated_at,
                UnixTime::now(),
            );
            if let Err(refused) = checked {
                return Err(self.refuse(refused));
            }
            if let AuthenticatedAt::Known(at) = authenticated_at {
                self.conn.set_resumption_data(&encode_auth_time(at));
            }
        }
        if !self.identity_done && !self.conn.is_handshaking() {
            self.identity_done = true;
            let chain = self.conn.peer_certificates();
            // A certificate that does not parse has no names (no role), never the anonymous
            // role of a client without one.
            let names = chain
                .and_then(|c| c.first())
                .map(|leaf| names_of(leaf).unwrap_or_default());
            let trust = self.policy.trust.as_ref();
            let resolved = self
                .policy
                .roles
                .resolve(names.as_ref(), || trust?.issuer_of(chain?, UnixTime::now()));
            self.identity = resolved.identity;
            self.role = resolved.role;
        }
        Ok(())
    }

    /// Refuses the handshake with a fatal alert in a plaintext record (the server has sent
    /// nothing yet, RFC 8446 §5.1 / RFC 5246 §6.2.1), in place of rustls' queued flight.
    fn refuse(&mut self, refused: ResumptionRefused) -> SessionError {
        const FATAL: u8 = 2;
        let record = [
            0x15,
            0x03,
            0x03,
            0x00,
            0x02,
            FATAL,
            u8::from(refused.alert()),
        ];
        self.refusal_alert = Some((record, 0));
        self.fail(SessionError::ResumptionRefused(refused))
    }

    /// Moves queued plaintext into rustls; returns whether rustls now has output.
    fn refill(&mut self) -> bool {
        if self.error.is_some() || self.conn.is_handshaking() {
            return false;
        }
        while !self.tx_plaintext.is_empty() {
            let (front, _) = self.tx_plaintext.as_slices();
            let taken = self.conn.writer().write(front).unwrap_or(0);
            if taken == 0 {
                break;
            }
            self.tx_plaintext.drain(..taken);
        }
        // An idle connection keeps no send queue: the capacity a burst grew goes back.
        if self.tx_plaintext.is_empty()
            && self.tx_plaintext.capacity() > TX_PLAINTEXT_IDLE_CAPACITY_MAX
        {
            self.tx_plaintext = VecDeque::new();
        }
        self.queue_close_notify_if_drained();
        self.conn.wants_write()
    }

    fn queue_close_notify_if_drained(&mut self) {
        if self.closing && !self.close_notify_queued && self.tx_plaintext.is_empty() {
            self.close_notify_queued = true;
            self.conn.send_close_notify();
        }
    }
}
