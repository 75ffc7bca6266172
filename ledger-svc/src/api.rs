//! The JSON API over HTTP (docs/design.md, "HTTP API"; documented for clients in docs/api.md).
//!
//! [`handle`] turns a decoded request into either an immediate response (a malformed request,
//! a wrong method, a missing role) or a [`Command`] for the ledger thread. The ledger thread
//! answers read commands with [`query`] and renders the reply of a mutation with
//! [`render_reply`]. Malformed input is refused here, before it reaches the ledger, so it
//! changes nothing. Business outcomes (`exceeds_credits`, `exists`, ...) are data in a 200
//! response, never HTTP errors.
//!
//! u128 and u64 values travel as decimal strings, because JSON numbers lose precision past
//! 2^53 in most clients (RFC 8259 §6); u32 and u16 values as JSON numbers; flags as arrays of
//! TigerBeetle's flag names. Output is written straight into a `Vec<u8>`, in the field order of
//! TigerBeetle's structs; input is read with serde, refusing unknown fields, so a misspelt
//! field is an error rather than a silently zero value.

use std::cell::Cell;
use std::fmt;
use std::io::Write as _;

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use crate::http::{self, Method, Request, Response};
use crate::model::{
    Account, AccountBalance, AccountFilter, AccountFlags, CreateAccountResult,
    CreateTransferResult, Operation, OperationReply, QueryFilter, Transfer, TransferFlags,
    BATCH_EVENTS_MAX,
};
use crate::state_machine::{QueryPage, StateMachine, TIMESTAMP_MAX};

/// `limit` of the query routes (`GET /v1/accounts?…`, `GET /v1/transfers?…`,
/// `GET /v1/accounts/{id}/transfers`, `GET /v1/accounts/{id}/balances`) when the query names
/// none.
pub const ACCOUNT_TRANSFERS_LIMIT_DEFAULT: u32 = 100;

/// The most objects one query examines on the ledger thread before it answers with what it
/// found and a `Link` to the rest (docs/api.md, "Paging"). TigerBeetle answers every filter
/// from an index per field; the embedded ledger keeps no secondary index (it would cost every
/// transfer five more index inserts on the apply path), so a filter on `user_data_*`,
/// `ledger` or `code` is a walk through the timestamp range, and this bound keeps a query that
/// matches rarely from holding the single writer. At 16,384 a page that spends its whole
/// budget costs about 60 µs walking the transfers in order and 200 µs walking one account's
/// transfers (random reads), median at 1M transfers (docs/ledger.md, "Query cost"); with
/// `READS_PER_TURN_MAX` (64) queries per ledger-thread turn that bounds what reads can add to
/// a turn at about 13 ms.
pub const QUERY_SCAN_ROWS_MAX: usize = 16_384;

/// What a client's certificate allows: the product's one role type, assigned by tls-term's
/// role map.
pub use tls_term::Role;

/// What a decoded request needs: an immediate response, or ledger work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Respond(Response),
    Ledger(Command),
}

/// Work for the ledger thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Apply, append to the WAL, then answer with [`render_reply`].
    Mutate(Operation),
    /// Read-only: answer with [`query`].
    LookupAccount(u128),
    LookupTransfer(u128),
    /// TigerBeetle `get_account_transfers`.
    AccountTransfers(AccountFilter),
    /// TigerBeetle `get_account_balances`.
    AccountBalances(AccountFilter),
    /// TigerBeetle `query_accounts`.
    QueryAccounts(QueryFilter),
    /// TigerBeetle `query_transfers`.
    QueryTransfers(QueryFilter),
}

impl Command {
    pub fn is_mutation(&self) -> bool {
        matches!(self, Command::Mutate(_))
    }
}

/// The reads [`query`] and [`render_reply`] need from the ledger's state. Each query examines
/// at most `scan_rows_max` objects (see `StateMachine::get_account_transfers_page`).
pub trait LedgerView {
    fn lookup_account(&self, id: u128) -> Option<&Account>;
    fn lookup_transfer(&self, id: u128) -> Option<&Transfer>;
    fn account_transfers(&self, filter: &AccountFilter, scan_rows_max: usize) -> QueryPage<Transfer>;
    fn account_balances(&self, filter: &AccountFilter, scan_rows_max: usize) -> QueryPage<AccountBalance>;
    fn query_accounts(&self, filter: &QueryFilter, scan_rows_max: usize) -> QueryPage<Account>;
    fn query_transfers(&self, filter: &QueryFilter, scan_rows_max: usize) -> QueryPage<Transfer>;
}

impl LedgerView for StateMachine {
    fn lookup_account(&self, id: u128) -> Option<&Account> {
        StateMachine::lookup_account(self, id)
    }
    fn lookup_transfer(&self, id: u128) -> Option<&Transfer> {
        StateMachine::lookup_transfer(self, id)
    }
    fn account_transfers(&self, filter: &AccountFilter, scan_rows_max: usize) -> QueryPage<Transfer> {
        self.get_account_transfers_page(filter, scan_rows_max)
    }
    fn account_balances(&self, filter: &AccountFilter, scan_rows_max: usize) -> QueryPage<AccountBalance> {
        self.get_account_balances_page(filter, scan_rows_max)
    }
    fn query_accounts(&self, filter: &QueryFilter, scan_rows_max: usize) -> QueryPage<Account> {
        self.query_accounts_page(filter, scan_rows_max)
    }
    fn query_transfers(&self, filter: &QueryFilter, scan_rows_max: usize) -> QueryPage<Transfer> {
        self.query_transfers_page(filter, scan_rows_max)
    }
}

/// `{"error":{"code":"...","message":"..."}}` with `status`.
pub fn error_response(status: u16, code: &str, message: &str) -> Response {
    http::error_body_response(status, code, message)
}

/// The routes of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// POST: create_accounts; GET: query_accounts.
    Accounts,
    /// POST: create_transfers; GET: query_transfers.
    Transfers,
    Account(u128),
    Transfer(u128),
    AccountTransfers(u128),
    AccountBalances(u128),
}

impl Route {
    /// The methods the route takes, as the `Allow` header lists them.
    fn allow(self) -> &'static str {
        match self {
            Route::Accounts | Route::Transfers => "GET, POST",
            Route::Account(_)
            | Route::Transfer(_)
            | Route::AccountTransfers(_)
            | Route::AccountBalances(_) => "GET",
        }
    }

    fn allows(self, method: Method) -> bool {
        match self {
            Route::Accounts | Route::Transfers => matches!(method, Method::Get | Method::Post),
            _ => method == Method::Get,
        }
    }
}

/// The route of `path` as a bounded label for metrics and logs: the path template, ids
/// replaced by `{id}`; `other` for a path the API does not serve.
pub fn route_label(path: &str) -> &'static str {
    match route(path) {
        Ok(Some(Route::Accounts)) => "/v1/accounts",
        Ok(Some(Route::Transfers)) => "/v1/transfers",
        Ok(Some(Route::Account(_))) => "/v1/accounts/{id}",
        Ok(Some(Route::Transfer(_))) => "/v1/transfers/{id}",
        Ok(Some(Route::AccountTransfers(_))) => "/v1/accounts/{id}/transfers",
        Ok(Some(Route::AccountBalances(_))) => "/v1/accounts/{id}/balances",
        Ok(None) | Err(_) => "other",
    }
}

/// The route of `path`: `Ok(None)` for an unknown path, `Err` for a known path with an invalid id.
fn route(path: &str) -> Result<Option<Route>, Response> {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return Ok(None);
    };
    let mut segments = rest.split('/');
    let route = match (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) {
        (Some("accounts"), None, _, _) => Route::Accounts,
        (Some("transfers"), None, _, _) => Route::Transfers,
        (Some("accounts"), Some(id), None, _) => Route::Account(path_id(id)?),
        (Some("transfers"), Some(id), None, _) => Route::Transfer(path_id(id)?),
        (Some("accounts"), Some(id), Some("transfers"), None) => {
            Route::AccountTransfers(path_id(id)?)
        }
        (Some("accounts"), Some(id), Some("balances"), None) => {
            Route::AccountBalances(path_id(id)?)
        }
        _ => return Ok(None),
    };
    Ok(Some(route))
}

fn path_id(segment: &str) -> Result<u128, Response> {
    parse_decimal_u128(segment).map_err(|reason| {
        error_response(
            400,
            "invalid_id",
            &format!("id in path `{}`: {reason}", truncate(segment, 64)),
        )
    })
}

/// At most `max` bytes of `s` (on a char boundary), so an error message stays bounded.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Routes and validates one request.
///
/// Order of checks: unknown path (404), invalid id in the path (400), wrong method (405),
/// role (403), then the query or body (400, 413). A `Read` client is refused before its body
/// is parsed.
pub fn handle(request: &Request, role: Role) -> Action {
    match handle_inner(request, role) {
        Ok(command) => Action::Ledger(command),
        Err(response) => Action::Respond(response),
    }
}

fn handle_inner(request: &Request, role: Role) -> Result<Command, Response> {
    let path = request.path();
    let route = route(path)?.ok_or_else(|| {
        error_response(
            404,
            "not_found",
            &format!("no such path: {}", truncate(path, 256)),
        )
    })?;
    if !route.allows(request.method) {
        let allow = route.allow();
        let mut response = error_response(
            405,
            "method_not_allowed",
            &format!(
                "{} is not allowed on {}; use {}",
                request.method,
                truncate(path, 256),
                allow.replace(", ", " or ")
            ),
        );
        response.allow = Some(allow);
        return Err(response);
    }
    if request.method == Method::Post && role != Role::Write {
        return Err(error_response(
            403,
            "forbidden",
            "this client certificate may only read",
        ));
    }
    match route {
        Route::Accounts if request.method == Method::Get => {
            query_filter(request.query()).map(Command::QueryAccounts)
        }
        Route::Transfers if request.method == Method::Get => {
            query_filter(request.query()).map(Command::QueryTransfers)
        }
        Route::Accounts => {
            let events = decode_batch::<AccountIn>(&request.body)?;
            Ok(Command::Mutate(Operation::CreateAccounts(
                events.into_iter().map(Account::from).collect(),
            )))
        }
        Route::Transfers => {
            let events = decode_batch::<TransferIn>(&request.body)?;
            Ok(Command::Mutate(Operation::CreateTransfers(
                events.into_iter().map(Transfer::from).collect(),
            )))
        }
        Route::Account(id) => no_query(request).map(|()| Command::LookupAccount(id)),
        Route::Transfer(id) => no_query(request).map(|()| Command::LookupTransfer(id)),
        Route::AccountTransfers(id) => {
            account_filter(id, request.query()).map(Command::AccountTransfers)
        }
        Route::AccountBalances(id) => {
            account_filter(id, request.query()).map(Command::AccountBalances)
        }
    }
}

fn invalid_query(message: &str) -> Response {
    error_response(400, "invalid_query", message)
}

fn no_query(request: &Request) -> Result<(), Response> {
    match request.query() {
        None | Some("") => Ok(()),
        Some(_) => Err(invalid_query("this path takes no query parameters")),
    }
}

/// The query parameters of the query routes, each at most once: `values[i]` is the value of
/// `names[i]`, if given. Any other name is refused.
fn query_parameters<'a, const N: usize>(
    query: Option<&'a str>,
    names: [&str; N],
) -> Result<[Option<&'a str>; N], Response> {
    let mut values = [None; N];
    for pair in query.unwrap_or("").split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(slot) = names.iter().position(|known| *known == name) else {
            return Err(invalid_query(&format!(
                "unknown query parameter `{}`; expected one of {}",
                truncate(name, 64),
                names.join(", ")
            )));
        };
        if values[slot].replace(value).is_some() {
            return Err(invalid_query(&format!("query parameter `{name}` is given twice")));
        }
    }
    Ok(values)
}

/// Parses one parameter's value (if given) into `target`.
fn parameter<T>(
    name: &str,
    value: Option<&str>,
    parse: impl Fn(&str) -> Result<T, String>,
    target: &mut T,
) -> Result<(), Response> {
    if let Some(value) = value {
        *target = parse(value).map_err(|reason| invalid_query(&format!("query parameter `{name}`: {reason}")))?;
    }
    Ok(())
}

/// TigerBeetle's rules for a filter's limit and timestamp range, as 400s (TigerBeetle itself
/// answers an invalid filter with an empty result; over HTTP a clear error helps more).
fn check_range_and_limit(limit: u32, timestamp_min: u64, timestamp_max: u64) -> Result<(), Response> {
    if limit == 0 || limit as usize > BATCH_EVENTS_MAX {
        return Err(invalid_query(&format!(
            "query parameter `limit` must be in 1..={BATCH_EVENTS_MAX}"
        )));
    }
    for (name, value) in [("timestamp_min", timestamp_min), ("timestamp_max", timestamp_max)] {
        if value > TIMESTAMP_MAX {
            return Err(invalid_query(&format!(
                "query parameter `{name}` must be at most {TIMESTAMP_MAX} (2^63 - 1), or 0 for no bound"
            )));
        }
    }
    if timestamp_max != 0 && timestamp_min > timestamp_max {
        return Err(invalid_query(
            "`timestamp_min` is greater than `timestamp_max`",
        ));
    }
    Ok(())
}

/// The filter (TigerBeetle `AccountFilter`) of `GET /v1/accounts/{id}/transfers` and
/// `GET /v1/accounts/{id}/balances`.
fn account_filter(account_id: u128, query: Option<&str>) -> Result<AccountFilter, Response> {
    let mut filter = AccountFilter {
        account_id,
        user_data_128: 0,
        user_data_64: 0,
        user_data_32: 0,
        code: 0,
        timestamp_min: 0,
        timestamp_max: 0,
        limit: ACCOUNT_TRANSFERS_LIMIT_DEFAULT,
        debits: true,
        credits: true,
        reversed: false,
    };
    let names = [
        "limit",
        "reversed",
        "debits",
        "credits",
        "timestamp_min",
        "timestamp_max",
        "user_data_128",
        "user_data_64",
        "user_data_32",
        "code",
    ];
    let [limit, reversed, debits, credits, timestamp_min, timestamp_max, user_data_128, user_data_64, user_data_32, code] =
        query_parameters(query, names)?;
    parameter("limit", limit, parse_number, &mut filter.limit)?;
    parameter("reversed", reversed, parse_bool, &mut filter.reversed)?;
    parameter("debits", debits, parse_bool, &mut filter.debits)?;
    parameter("credits", credits, parse_bool, &mut filter.credits)?;
    parameter("timestamp_min", timestamp_min, parse_number, &mut filter.timestamp_min)?;
    parameter("timestamp_max", timestamp_max, parse_number, &mut filter.timestamp_max)?;
    parameter("user_data_128", user_data_128, parse_number, &mut filter.user_data_128)?;
    parameter("user_data_64", user_data_64, parse_number, &mut filter.user_data_64)?;
    parameter("user_data_32", user_data_32, parse_number, &mut filter.user_data_32)?;
    parameter("code", code, parse_number, &mut filter.code)?;
    check_range_and_limit(filter.limit, filter.timestamp_min, filter.timestamp_max)?;
    if !filter.debits && !filter.credits {
        return Err(invalid_query(
            "at least one of `debits` and `credits` must be true",
        ));
    }
    Ok(filter)
}

/// The filter (TigerBeetle `QueryFilter`) of `GET /v1/accounts?…` and `GET /v1/transfers?…`.
fn query_filter(query: Option<&str>) -> Result<QueryFilter, Response> {
    let mut filter = QueryFilter {
        limit: ACCOUNT_TRANSFERS_LIMIT_DEFAULT,
        ..QueryFilter::default()
    };
    let names = [
        "user_data_128",
        "user_data_64",
        "user_data_32",
        "ledger",
        "code",
        "timestamp_min",
        "timestamp_max",
        "limit",
        "reversed",
    ];
    let [user_data_128, user_data_64, user_data_32, ledger, code, timestamp_min, timestamp_max, limit, reversed] =
        query_parameters(query, names)?;
    parameter("user_data_128", user_data_128, parse_number, &mut filter.user_data_128)?;
    parameter("user_data_64", user_data_64, parse_number, &mut filter.user_data_64)?;
    parameter("user_data_32", user_data_32, parse_number, &mut filter.user_data_32)?;
    parameter("ledger", ledger, parse_number, &mut filter.ledger)?;
    parameter("code", code, parse_number, &mut filter.code)?;
    parameter("timestamp_min", timestamp_min, parse_number, &mut filter.timestamp_min)?;
    parameter("timestamp_max", timestamp_max, parse_number, &mut filter.timestamp_max)?;
    parameter("limit", limit, parse_number, &mut filter.limit)?;
    parameter("reversed", reversed, parse_bool, &mut filter.reversed)?;
    check_range_and_limit(filter.limit, filter.timestamp_min, filter.timestamp_max)?;
    Ok(filter)
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("`{}` is not true or false", truncate(value, 64))),
    }
}

fn parse_number<T: TryFrom<u128>>(value: &str) -> Result<T, String> {
    let wide = parse_decimal_u128(value)
        .map_err(|reason| format!("`{}`: {reason}", truncate(value, 64)))?;
    T::try_from(wide).map_err(|_| format!("`{}` is out of range", truncate(value, 64)))
}

/// A non-negative decimal integer (`0` to `u128::MAX`): digits only, no sign, no blanks.
fn parse_decimal_u128(text: &str) -> Result<u128, &'static str> {
    if text.is_empty() {
        return Err("expected a decimal integer, found an empty string");
    }
    let mut value: u128 = 0;
    for byte in text.bytes() {
        if !byte.is_ascii_digit() {
            return Err(if byte == b'-' {
                "expected a non-negative decimal integer"
            } else {
                "expected a decimal integer of digits 0-9 only"
            });
        }
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u128::from(byte - b'0')))
            .ok_or("out of range for a 128-bit unsigned integer")?;
    }
    Ok(value)
}

// --- Input: JSON events -------------------------------------------------------------------------

/// Flag sets with TigerBeetle's names.
trait Flags: Copy + Default + std::ops::BitOr<Output = Self> + 'static {
    const NAMES: &'static [(Self, &'static str)];
    const WHAT: &'static str;
    fn bits(self) -> u16;
}

impl Flags for AccountFlags {
    const NAMES: &'static [(Self, &'static str)] = AccountFlags::ALL;
    const WHAT: &'static str = "account flag";
    fn bits(self) -> u16 {
        AccountFlags::bits(self)
    }
}

impl Flags for TransferFlags {
    const NAMES: &'static [(Self, &'static str)] = TransferFlags::ALL;
    const WHAT: &'static str = "transfer flag";
    fn bits(self) -> u16 {
        TransferFlags::bits(self)
    }
}

/// One flag name, looked up without allocating (escaped or not).
struct FlagName<F>(F);

impl<'de, F: Flags> Deserialize<'de> for FlagName<F> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor<F>(std::marker::PhantomData<F>);
        impl<F: Flags> Visitor<'_> for NameVisitor<F> {
            type Value = FlagName<F>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{} name", F::WHAT)
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
                match F::NAMES.iter().find(|(_, n)| *n == name) {
                    Some((flag, _)) => Ok(FlagName(*flag)),
                    None => {
                        let names: Vec<&str> = F::NAMES.iter().map(|(_, n)| *n).collect();
                        Err(E::custom(format_args!(
                            "unknown {} `{}`; expected one of {}",
                            F::WHAT,
                            truncate(name, 64),
                            names.join(", ")
                        )))
                    }
                }
            }
        }
        deserializer.deserialize_str(NameVisitor(std::marker::PhantomData))
    }
}

fn de_flags<'de, D: Deserializer<'de>, F: Flags>(deserializer: D) -> Result<F, D::Error> {
    struct FlagsVisitor<F>(std::marker::PhantomData<F>);
    impl<'de, F: Flags> Visitor<'de> for FlagsVisitor<F> {
        type Value = F;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "an array of {} names", F::WHAT)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<F, A::Error> {
            let mut flags = F::default();
            // Bounded by the body size; each name is looked up and dropped at once.
            while let Some(FlagName(flag)) = seq.next_element::<FlagName<F>>()? {
                flags = flags | flag;
            }
            Ok(flags)
        }
    }
    deserializer.deserialize_seq(FlagsVisitor(std::marker::PhantomData))
}

fn de_account_flags<'de, D: Deserializer<'de>>(deserializer: D) -> Result<AccountFlags, D::Error> {
    de_flags(deserializer)
}

fn de_transfer_flags<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<TransferFlags, D::Error> {
    de_flags(deserializer)
}

/// A u128 as a decimal string (a JSON number is refused: it may already have lost precision).
fn de_u128<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u128, D::Error> {
    struct DecimalVisitor;
    impl Visitor<'_> for DecimalVisitor {
        type Value = u128;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a decimal string such as \"42\"")
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<u128, E> {
            parse_decimal_u128(text)
                .map_err(|reason| E::custom(format_args!("`{}`: {reason}", truncate(text, 64))))
        }
    }
    deserializer.deserialize_str(DecimalVisitor)
}

fn de_u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let value = de_u128(deserializer)?;
    u64::try_from(value).map_err(|_| {
        de::Error::custom(format_args!(
            "`{value}` is out of range for a 64-bit unsigned integer"
        ))
    })
}

/// An account as a client sends it. Every field of the output is accepted (so an account read
/// back can be sent again), and any field left out is zero.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an account object")]
struct AccountIn {
    #[serde(default, deserialize_with = "de_u128")]
    id: u128,
    #[serde(default, deserialize_with = "de_u128")]
    debits_pending: u128,
    #[serde(default, deserialize_with = "de_u128")]
    debits_posted: u128,
    #[serde(default, deserialize_with = "de_u128")]
    credits_pending: u128,
    #[serde(default, deserialize_with = "de_u128")]
    credits_posted: u128,
    #[serde(default, deserialize_with = "de_u128")]
    user_data_128: u128,
    #[serde(default, deserialize_with = "de_u64")]
    user_data_64: u64,
    #[serde(default)]
    user_data_32: u32,
    #[serde(default)]
    ledger: u32,
    #[serde(default)]
    code: u16,
    #[serde(default, deserialize_with = "de_account_flags")]
    flags: AccountFlags,
    #[serde(default, deserialize_with = "de_u64")]
    timestamp: u64,
}

impl From<AccountIn> for Account {
    fn from(a: AccountIn) -> Account {
        Account {
            id: a.id,
            debits_pending: a.debits_pending,
            debits_posted: a.debits_posted,
            credits_pending: a.credits_pending,
            credits_posted: a.credits_posted,
            user_data_128: a.user_data_128,
            user_data_64: a.user_data_64,
            user_data_32: a.user_data_32,
            ledger: a.ledger,
            code: a.code,
            flags: a.flags,
            timestamp: a.timestamp,
        }
    }
}

/// A transfer as a client sends it; fields left out are zero.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a transfer object")]
struct TransferIn {
    #[serde(default, deserialize_with = "de_u128")]
    id: u128,
    #[serde(default, deserialize_with = "de_u128")]
    debit_account_id: u128,
    #[serde(default, deserialize_with = "de_u128")]
    credit_account_id: u128,
    #[serde(default, deserialize_with = "de_u128")]
    amount: u128,
    #[serde(default, deserialize_with = "de_u128")]
    pending_id: u128,
    #[serde(default, deserialize_with = "de_u128")]
    user_data_128: u128,
    #[serde(default, deserialize_with = "de_u64")]
    user_data_64: u64,
    #[serde(default)]
    user_data_32: u32,
    #[serde(default)]
    timeout: u32,
    #[serde(default)]
    ledger: u32,
    #[serde(default)]
    code: u16,
    #[serde(default, deserialize_with = "de_transfer_flags")]
    flags: TransferFlags,
    #[serde(default, deserialize_with = "de_u64")]
    timestamp: u64,
}

impl From<TransferIn> for Transfer {
    fn from(t: TransferIn) -> Transfer {
        Transfer {
            id: t.id,
            debit_account_id: t.debit_account_id,
            credit_account_id: t.credit_account_id,
            amount: t.amount,
            pending_id: t.pending_id,
            user_data_128: t.user_data_128,
            user_data_64: t.user_data_64,
            user_data_32: t.user_data_32,
            timeout: t.timeout,
            ledger: t.ledger,
            code: t.code,
            flags: t.flags,
            timestamp: t.timestamp,
        }
    }
}

/// An event that must be a JSON object. serde's derived structs also accept an array of field
/// values in declaration order; a positional event is too easy to get wrong, so it is refused.
struct ObjectOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event as a JSON object")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(ObjectVisitor(std::marker::PhantomData))
            .map(ObjectOnly)
    }
}

/// Reads a JSON array of at most `BATCH_EVENTS_MAX` events, refusing the next one as soon as
/// it starts, so a body of millions of tiny events never becomes millions of allocations.
/// Records which event was being read, for the error message.
struct BatchSeed<'a, T> {
    index: &'a Cell<Option<usize>>,
    too_many: &'a Cell<bool>,
    marker: std::marker::PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for BatchSeed<'_, T> {
    type Value = Vec<T>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<T>, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for BatchSeed<'_, T> {
    type Value = Vec<T>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a JSON array of 1 to {BATCH_EVENTS_MAX} events")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut events = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(BATCH_EVENTS_MAX));
        loop {
            self.index.set(Some(events.len()));
            if events.len() == BATCH_EVENTS_MAX {
                // Peek at the next element without building it.
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    self.too_many.set(true);
                    return Err(de::Error::custom(format_args!(
                        "more than {BATCH_EVENTS_MAX} events"
                    )));
                }
                break;
            }
            match seq.next_element::<ObjectOnly<T>>()? {
                Some(ObjectOnly(event)) => events.push(event),
                None => break,
            }
        }
        self.index.set(None);
        Ok(events)
    }
}

fn decode_batch<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<Vec<T>, Response> {
    let index = Cell::new(None);
    let too_many = Cell::new(false);
    let seed = BatchSeed {
        index: &index,
        too_many: &too_many,
        marker: std::marker::PhantomData,
    };
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let result = seed
        .deserialize(&mut deserializer)
        .and_then(|events| deserializer.end().map(|()| events));
    match result {
        Ok(events) if events.is_empty() => Err(error_response(
            400,
            "invalid_batch",
            "a batch needs at least one event; got an empty array",
        )),
        Ok(events) => Ok(events),
        Err(_) if too_many.get() => Err(error_response(
            413,
            "batch_too_large",
            &format!("a batch holds at most {BATCH_EVENTS_MAX} events (batch_events_max)"),
        )),
        Err(error) => {
            let code = match (error.classify(), index.get()) {
                (serde_json::error::Category::Data, Some(_)) => "invalid_event",
                (serde_json::error::Category::Data, None) => "invalid_batch",
                _ => "invalid_json",
            };
            let message = match index.get() {
                Some(index) => format!("event {index}: {error}"),
                None => error.to_string(),
            };
            Err(error_response(400, code, &message))
        }
    }
}

// --- Output: JSON ----------------------------------------------------------------------------

fn write_flags<F: Flags>(out: &mut Vec<u8>, flags: F) {
    out.push(b'[');
    let mut first = true;
    for (flag, name) in F::NAMES {
        if flags.bits() & flag.bits() == flag.bits() {
            if !first {
                out.push(b',');
            }
            first = false;
            out.push(b'"');
            out.extend_from_slice(name.as_bytes());
            out.push(b'"');
        }
    }
    out.push(b']');
}

/// Writes `account` as JSON, fields in TigerBeetle's order (docs/design.md's example).
pub fn write_account(out: &mut Vec<u8>, a: &Account) {
    // Writing into a Vec<u8> cannot fail.
    let _ = write!(
        out,
        "{{\"id\":\"{}\",\"debits_pending\":\"{}\",\"debits_posted\":\"{}\",\"credits_pending\":\"{}\",\
         \"credits_posted\":\"{}\",\"user_data_128\":\"{}\",\"user_data_64\":\"{}\",\"user_data_32\":{},\
         \"ledger\":{},\"code\":{},\"flags\":",
        a.id,
        a.debits_pending,
        a.debits_posted,
        a.credits_pending,
        a.credits_posted,
        a.user_data_128,
        a.user_data_64,
        a.user_data_32,
        a.ledger,
        a.code
    );
    write_flags(out, a.flags);
    let _ = write!(out, ",\"timestamp\":\"{}\"}}", a.timestamp);
}

/// Writes `transfer` as JSON, fields in TigerBeetle's order.
pub fn write_transfer(out: &mut Vec<u8>, t: &Transfer) {
    let _ = write!(
        out,
        "{{\"id\":\"{}\",\"debit_account_id\":\"{}\",\"credit_account_id\":\"{}\",\"amount\":\"{}\",\
         \"pending_id\":\"{}\",\"user_data_128\":\"{}\",\"user_data_64\":\"{}\",\"user_data_32\":{},\
         \"timeout\":{},\"ledger\":{},\"code\":{},\"flags\":",
        t.id,
        t.debit_account_id,
        t.credit_account_id,
        t.amount,
        t.pending_id,
        t.user_data_128,
        t.user_data_64,
        t.user_data_32,
        t.timeout,
        t.ledger,
        t.code
    );
    write_flags(out, t.flags);
    let _ = write!(out, ",\"timestamp\":\"{}\"}}", t.timestamp);
}

// --- Replies: typed on the ledger thread, rendered where the connection lives -----------------

/// Bytes of the JSON of the widest transfer (every u128 at 39 digits, every flag set); the
/// test `widest_transfer_json_fits_its_bound` checks it.
pub const TRANSFER_JSON_BYTES_MAX: usize = 720;
/// Bytes of the JSON of the widest account.
pub const ACCOUNT_JSON_BYTES_MAX: usize = 640;
/// Bytes of one event's result in a create reply, separator included
/// (`{"index":8188,"status":"exists_with_different_user_data_128","timestamp":"..."}`).
pub const EVENT_RESULT_JSON_BYTES_MAX: usize = 112;
/// The byte cap on any one query reply. A longer result is cut into pages: the reply holds
/// as many rows as fit and a `Link: <...>; rel="next"` header names the next page
/// (docs/api.md, "Paging"). It bounds what one cheap GET can make the ledger thread copy and a
/// worker render and hold.
pub const QUERY_REPLY_BYTES_MAX: usize = 128 * 1024;
/// Bytes of the JSON of the widest account balance (272; the test
/// `widest_balance_json_fits_its_bound_and_golden_balance` checks it).
pub const BALANCE_JSON_BYTES_MAX: usize = 280;
/// Transfers in one page of `GET /v1/accounts/{id}/transfers` or `GET /v1/transfers?…`: as many
/// of the widest as fit in [`QUERY_REPLY_BYTES_MAX`].
pub const ACCOUNT_TRANSFERS_PAGE_ROWS_MAX: usize = (QUERY_REPLY_BYTES_MAX - 2) / (TRANSFER_JSON_BYTES_MAX + 1);
/// Accounts in one page of `GET /v1/accounts?…`.
pub const ACCOUNTS_PAGE_ROWS_MAX: usize = (QUERY_REPLY_BYTES_MAX - 2) / (ACCOUNT_JSON_BYTES_MAX + 1);
/// Balances in one page of `GET /v1/accounts/{id}/balances`.
pub const BALANCES_PAGE_ROWS_MAX: usize = (QUERY_REPLY_BYTES_MAX - 2) / (BALANCE_JSON_BYTES_MAX + 1);

/// What the ledger thread sends back: typed data, rendered to JSON by [`render`] on the
/// connection's own thread, off the single writer (TigerBeetle's state machine returns result
/// codes; its clients render them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// One result per event of a create batch, in order.
    Created(Vec<EventResult>),
    Account { id: u128, account: Option<Account> },
    Transfer { id: u128, transfer: Option<Transfer> },
    /// One page of an account's transfers; `next` is the filter of the following page when
    /// there may be one.
    AccountTransfers { transfers: Vec<Transfer>, next: Option<AccountFilter> },
    /// One page of an account's balances (`get_account_balances`).
    AccountBalances { balances: Vec<AccountBalance>, next: Option<AccountFilter> },
    /// One page of `query_accounts`.
    Accounts { accounts: Vec<Account>, next: Option<QueryFilter> },
    /// One page of `query_transfers`.
    Transfers { transfers: Vec<Transfer>, next: Option<QueryFilter> },
    /// A caller bug caught on the ledger thread: answered 500 rather than a panic there.
    Internal(&'static str),
    /// The ledger did not answer within its deadline (a TigerBeetle cluster that is slow,
    /// partitioned or down): 503 `ledger_unavailable` with `Retry-After`. Whether the request
    /// was applied is unknown; the client retries with the same ids and gets `exists` for
    /// what was.
    Unavailable { retry_after_s: u32 },
    /// The ledger refused the whole request without applying any of it, for a reason of the
    /// backend rather than a result of TigerBeetle's (the TigerBeetle backend refuses an
    /// imported post or void that would stop a TigerBeetle 0.16.78 cluster): 422 with `code`.
    Refused { code: &'static str, message: String },
}

/// The result of one event: TigerBeetle's result name and, for a created object, its timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventResult {
    pub status: &'static str,
    pub timestamp: Option<u64>,
}

/// The most bytes [`render`] can produce for the reply to `command`: what a connection sets
/// aside for a reply it awaits, so its backpressure counts replies before they arrive.
pub fn reply_bytes_max(command: &Command) -> usize {
    match command {
        Command::Mutate(op) => 2 + op.len() * EVENT_RESULT_JSON_BYTES_MAX,
        Command::LookupAccount(_) => ACCOUNT_JSON_BYTES_MAX,
        Command::LookupTransfer(_) => TRANSFER_JSON_BYTES_MAX,
        Command::AccountTransfers(filter) => page_bytes_max(filter.limit, ACCOUNT_TRANSFERS_PAGE_ROWS_MAX, TRANSFER_JSON_BYTES_MAX),
        Command::AccountBalances(filter) => page_bytes_max(filter.limit, BALANCES_PAGE_ROWS_MAX, BALANCE_JSON_BYTES_MAX),
        Command::QueryAccounts(filter) => page_bytes_max(filter.limit, ACCOUNTS_PAGE_ROWS_MAX, ACCOUNT_JSON_BYTES_MAX),
        Command::QueryTransfers(filter) => page_bytes_max(filter.limit, ACCOUNT_TRANSFERS_PAGE_ROWS_MAX, TRANSFER_JSON_BYTES_MAX),
    }
}

/// The rows of one page: the filter's limit, cut by the page's byte cap.
fn page_rows(limit: u32, rows_max: usize) -> usize {
    (limit as usize).min(rows_max)
}

fn page_bytes_max(limit: u32, rows_max: usize, row_bytes_max: usize) -> usize {
    2 + page_rows(limit, rows_max) * (row_bytes_max + 1)
}

/// Answers a read-only command from `state` (on the ledger thread: copies, no JSON). A
/// `Mutate` command is a caller bug: `Reply::Internal`.
pub fn answer<L: LedgerView + ?Sized>(state: &L, command: &Command) -> Reply {
    match command {
        Command::LookupAccount(id) => Reply::Account { id: *id, account: state.lookup_account(*id).copied() },
        Command::LookupTransfer(id) => Reply::Transfer { id: *id, transfer: state.lookup_transfer(*id).copied() },
        // Each page holds at most its byte cap's rows and examines at most
        // QUERY_SCAN_ROWS_MAX objects; `next` keeps the client's limit. An unknown account has
        // no transfers and no balances, as in TigerBeetle.
        Command::AccountTransfers(filter) => {
            let page = AccountFilter { limit: page_rows(filter.limit, ACCOUNT_TRANSFERS_PAGE_ROWS_MAX) as u32, ..*filter };
            let page = state.account_transfers(&page, QUERY_SCAN_ROWS_MAX);
            let next = page.resume_after.map(|after| next_account_page(filter, after));
            Reply::AccountTransfers { transfers: page.rows, next }
        }
        Command::AccountBalances(filter) => {
            let page = AccountFilter { limit: page_rows(filter.limit, BALANCES_PAGE_ROWS_MAX) as u32, ..*filter };
            let page = state.account_balances(&page, QUERY_SCAN_ROWS_MAX);
            let next = page.resume_after.map(|after| next_account_page(filter, after));
            Reply::AccountBalances { balances: page.rows, next }
        }
        Command::QueryAccounts(filter) => {
            let page = QueryFilter { limit: page_rows(filter.limit, ACCOUNTS_PAGE_ROWS_MAX) as u32, ..*filter };
            let page = state.query_accounts(&page, QUERY_SCAN_ROWS_MAX);
            let next = page.resume_after.map(|after| next_query_page(filter, after));
            Reply::Accounts { accounts: page.rows, next }
        }
        Command::QueryTransfers(filter) => {
            let page = QueryFilter { limit: page_rows(filter.limit, ACCOUNT_TRANSFERS_PAGE_ROWS_MAX) as u32, ..*filter };
            let page = state.query_transfers(&page, QUERY_SCAN_ROWS_MAX);
            let next = page.resume_after.map(|after| next_query_page(filter, after));
            Reply::Transfers { transfers: page.rows, next }
        }
        Command::Mutate(_) => {
            debug_assert!(false, "answer() called with a Mutate command");
            Reply::Internal("a mutation was routed as a query")
        }
    }
}

/// Moves a filter's timestamp range past `after`, the timestamp the page stopped at
/// (`QueryPage::resume_after`). Timestamps are unique, so every object is on exactly one
/// page. A page stops at `after` only when objects remain beyond it, so the bound never
/// becomes 0 (which would mean "no bound").
fn resume(timestamp_min: &mut u64, timestamp_max: &mut u64, reversed: bool, after: u64) {
    if reversed {
        debug_assert!(after > 1);
        *timestamp_max = after.saturating_sub(1).max(1);
    } else {
        debug_assert!(after < TIMESTAMP_MAX);
        *timestamp_min = after + 1;
    }
}

fn next_account_page(filter: &AccountFilter, after: u64) -> AccountFilter {
    let mut next = *filter;
    resume(&mut next.timestamp_min, &mut next.timestamp_max, filter.reversed, after);
    next
}

fn next_query_page(filter: &QueryFilter, after: u64) -> QueryFilter {
    let mut next = *filter;
    resume(&mut next.timestamp_min, &mut next.timestamp_max, filter.reversed, after);
    next
}

/// The typed reply of a `Mutate` command: one result per event, in order, with the timestamp
/// of each created object, read back from `state` after the batch was applied (a created
/// object never changes its timestamp).
pub fn reply_of<L: LedgerView + ?Sized>(reply: &OperationReply, state: &L, operation: &Operation) -> Reply {
    match (reply, operation) {
        (OperationReply::CreateAccounts(results), Operation::CreateAccounts(events)) => {
            debug_assert_eq!(results.len(), events.len());
            let results = results.iter().zip(events).map(|(result, event)| EventResult {
                status: result.name(),
                timestamp: match result {
                    CreateAccountResult::Ok => state.lookup_account(event.id).map(|a| a.timestamp),
                    _ => None,
                },
            });
            Reply::Created(results.collect())
        }
        (OperationReply::CreateTransfers(results), Operation::CreateTransfers(events)) => {
            debug_assert_eq!(results.len(), events.len());
            let results = results.iter().zip(events).map(|(result, event)| EventResult {
                status: result.name(),
                timestamp: match result {
                    CreateTransferResult::Ok => state.lookup_transfer(event.id).map(|t| t.timestamp),
                    _ => None,
                },
            });
            Reply::Created(results.collect())
        }
        _ => {
            debug_assert!(false, "reply does not match its operation");
            Reply::Internal("the ledger's reply does not match the request")
        }
    }
}

/// Rows a backend without a scan budget found for a query command (TigerBeetle's query
/// operations): see [`page_probe_limit`] and [`page_reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageRows {
    Transfers(Vec<Transfer>),
    Balances(Vec<AccountBalance>),
    Accounts(Vec<Account>),
}

/// The `limit` a backend that cannot report "more rows remain" (TigerBeetle) asks for to
/// answer one page of a query command: one row more than the page shows, so that
/// [`page_reply`] knows whether a next page exists. `None` for a command that is not a paged
/// query.
pub fn page_probe_limit(command: &Command) -> Option<u32> {
    let rows = match command {
        Command::AccountTransfers(filter) => page_rows(filter.limit, ACCOUNT_TRANSFERS_PAGE_ROWS_MAX),
        Command::AccountBalances(filter) => page_rows(filter.limit, BALANCES_PAGE_ROWS_MAX),
        Command::QueryAccounts(filter) => page_rows(filter.limit, ACCOUNTS_PAGE_ROWS_MAX),
        Command::QueryTransfers(filter) => page_rows(filter.limit, ACCOUNT_TRANSFERS_PAGE_ROWS_MAX),
        _ => return None,
    };
    Some(rows as u32 + 1)
}

/// The reply to a paged query command from the rows a backend found when asked for
/// [`page_probe_limit`] rows: the page holds as many as the embedded ledger's page would, and
/// when more were found `next` resumes after the last row shown, the same `next` (and so the
/// same `Link`) [`answer`] builds. A mismatched command and rows is a caller bug:
/// `Reply::Internal`.
pub fn page_reply(command: &Command, rows: PageRows) -> Reply {
    fn cut<T>(mut rows: Vec<T>, page: usize, timestamp: impl Fn(&T) -> u64) -> (Vec<T>, Option<u64>) {
        if rows.len() > page {
            rows.truncate(page);
            let after = rows.last().map(&timestamp);
            (rows, after)
        } else {
            (rows, None)
        }
    }
    match (command, rows) {
        (Command::AccountTransfers(filter), PageRows::Transfers(rows)) => {
            let (transfers, after) = cut(rows, page_rows(filter.limit, ACCOUNT_TRANSFERS_PAGE_ROWS_MAX), |t| t.timestamp);
            Reply::AccountTransfers { transfers, next: after.map(|after| next_account_page(filter, after)) }
        }
        (Command::AccountBalances(filter), PageRows::Balances(rows)) => {
            let (balances, after) = cut(rows, page_rows(filter.limit, BALANCES_PAGE_ROWS_MAX), |b| b.timestamp);
            Reply::AccountBalances { balances, next: after.map(|after| next_account_page(filter, after)) }
        }
        (Command::QueryAccounts(filter), PageRows::Accounts(rows)) => {
            let (accounts, after) = cut(rows, page_rows(filter.limit, ACCOUNTS_PAGE_ROWS_MAX), |a| a.timestamp);
            Reply::Accounts { accounts, next: after.map(|after| next_query_page(filter, after)) }
        }
        (Command::QueryTransfers(filter), PageRows::Transfers(rows)) => {
            let (transfers, after) = cut(rows, page_rows(filter.limit, ACCOUNT_TRANSFERS_PAGE_ROWS_MAX), |t| t.timestamp);
            Reply::Transfers { transfers, next: after.map(|after| next_query_page(filter, after)) }
        }
        _ => {
            debug_assert!(false, "page_reply: rows of another kind than the command's");
            Reply::Internal("the ledger's rows do not match the query")
        }
    }
}

/// The reply to a create command from the dense results of its events, with the timestamp
/// of each created object as `timestamp_of` finds it (a backend that reads them back after
/// the operation was applied, as [`reply_of`] does from the state).
pub fn created_reply(results: &OperationReply, operation: &Operation, timestamp_of: impl Fn(u128) -> Option<u64>) -> Reply {
    match (results, operation) {
        (OperationReply::CreateAccounts(results), Operation::CreateAccounts(events)) if results.len() == events.len() => Reply::Created(
            results
                .iter()
                .zip(events)
                .map(|(r, e)| EventResult { status: r.name(), timestamp: if *r == CreateAccountResult::Ok { timestamp_of(e.id) } else { None } })
                .collect(),
        ),
        (OperationReply::CreateTransfers(results), Operation::CreateTransfers(events)) if results.len() == events.len() => Reply::Created(
            results
                .iter()
                .zip(events)
                .map(|(r, e)| EventResult { status: r.name(), timestamp: if *r == CreateTransferResult::Ok { timestamp_of(e.id) } else { None } })
                .collect(),
        ),
        _ => Reply::Internal("the ledger's reply does not match the request"),
    }
}

/// Renders a typed reply as the HTTP response the client gets.
pub fn render(reply: &Reply) -> Response {
    render_into(reply, Vec::new())
}

/// As [`render`], writing the body into `body` (cleared first): a connection passes the
/// buffer of an earlier response back in, so a reply costs no allocation once it has grown
/// to size. An error reply (404, 500) renders into a buffer of its own.
pub fn render_into(reply: &Reply, body: Vec<u8>) -> Response {
    let mut spare = body;
    spare.clear();
    // The buffer, with room for about `bytes` more (a hint: it grows if a row is longer).
    let mut buffer = |bytes: usize| {
        let mut body = std::mem::take(&mut spare);
        body.reserve(bytes);
        body
    };
    match reply {
        Reply::Created(results) => {
            let mut body = buffer(2 + results.len() * 64);
            body.push(b'[');
            for (index, result) in results.iter().enumerate() {
                write_result(&mut body, index, result.status, result.timestamp);
            }
            body.push(b']');
            Response::json(200, body)
        }
        Reply::Account { account: Some(account), .. } => {
            let mut body = buffer(512);
            write_account(&mut body, account);
            Response::json(200, body)
        }
        Reply::Account { id, account: None } => error_response(404, "account_not_found", &format!("no account with id {id}")),
        Reply::Transfer { transfer: Some(transfer), .. } => {
            let mut body = buffer(512);
            write_transfer(&mut body, transfer);
            Response::json(200, body)
        }
        Reply::Transfer { id, transfer: None } => error_response(404, "transfer_not_found", &format!("no transfer with id {id}")),
        Reply::AccountTransfers { transfers, next } => {
            let mut body = buffer(2 + transfers.len() * 400);
            body.push(b'[');
            for (i, transfer) in transfers.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                write_transfer(&mut body, transfer);
            }
            body.push(b']');
            let mut response = Response::json(200, body);
            response.next_page = next.as_ref().map(|f| account_filter_target("transfers", f));
            response
        }
        Reply::AccountBalances { balances, next } => {
            let mut response = Response::json(200, json_array(buffer(2 + balances.len() * 200), balances, write_balance));
            response.next_page = next.as_ref().map(|f| account_filter_target("balances", f));
            response
        }
        Reply::Accounts { accounts, next } => {
            let mut response = Response::json(200, json_array(buffer(2 + accounts.len() * 400), accounts, write_account));
            response.next_page = next.as_ref().map(|f| query_filter_target("accounts", f));
            response
        }
        Reply::Transfers { transfers, next } => {
            let mut response = Response::json(200, json_array(buffer(2 + transfers.len() * 400), transfers, write_transfer));
            response.next_page = next.as_ref().map(|f| query_filter_target("transfers", f));
            response
        }
        Reply::Internal(message) => error_response(500, "internal_error", message),
        Reply::Refused { code, message } => error_response(422, code, message),
        Reply::Unavailable { retry_after_s } => {
            let mut response = error_response(
                503,
                "ledger_unavailable",
                "the ledger did not answer in time; the request may or may not have been applied: retry it with the same ids after the indicated delay",
            );
            response.retry_after_s = Some(*retry_after_s);
            response
        }
    }
}

fn json_array<T>(mut body: Vec<u8>, rows: &[T], write: fn(&mut Vec<u8>, &T)) -> Vec<u8> {
    body.push(b'[');
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        write(&mut body, row);
    }
    body.push(b']');
    body
}

/// Writes an account balance as JSON, fields in TigerBeetle's `AccountBalance` order.
pub fn write_balance(out: &mut Vec<u8>, b: &AccountBalance) {
    let _ = write!(
        out,
        "{{\"debits_pending\":\"{}\",\"debits_posted\":\"{}\",\"credits_pending\":\"{}\",\
         \"credits_posted\":\"{}\",\"timestamp\":\"{}\"}}",
        b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted, b.timestamp
    );
}

/// The request target of `/v1/accounts/{id}/{what}` (transfers or balances) that asks for
/// `filter`, every parameter spelt out.
pub fn account_filter_target(what: &str, filter: &AccountFilter) -> String {
    format!(
        "/v1/accounts/{}/{what}?limit={}&reversed={}&debits={}&credits={}&timestamp_min={}&timestamp_max={}\
         &user_data_128={}&user_data_64={}&user_data_32={}&code={}",
        filter.account_id,
        filter.limit,
        filter.reversed,
        filter.debits,
        filter.credits,
        filter.timestamp_min,
        filter.timestamp_max,
        filter.user_data_128,
        filter.user_data_64,
        filter.user_data_32,
        filter.code
    )
}

/// The request target of `GET /v1/{what}` (accounts or transfers) that asks for `filter`,
/// every parameter spelt out.
pub fn query_filter_target(what: &str, filter: &QueryFilter) -> String {
    format!(
        "/v1/{what}?user_data_128={}&user_data_64={}&user_data_32={}&ledger={}&code={}\
         &timestamp_min={}&timestamp_max={}&limit={}&reversed={}",
        filter.user_data_128,
        filter.user_data_64,
        filter.user_data_32,
        filter.ledger,
        filter.code,
        filter.timestamp_min,
        filter.timestamp_max,
        filter.limit,
        filter.reversed
    )
}

/// Answers a read-only command and renders it: [`answer`] then [`render`] in one step.
pub fn query<L: LedgerView + ?Sized>(state: &L, command: &Command) -> Response {
    render(&answer(state, command))
}

/// Renders the reply of a `Mutate` command: [`reply_of`] then [`render`] in one step.
pub fn render_reply<L: LedgerView + ?Sized>(reply: &OperationReply, state: &L, operation: &Operation) -> Response {
    render(&reply_of(reply, state, operation))
}

fn write_result(out: &mut Vec<u8>, index: usize, name: &str, timestamp: Option<u64>) {
    if index > 0 {
        out.push(b',');
    }
    // TigerBeetle calls success "ok"; for a client, "created" says what happened.
    let status = if name == "ok" { "created" } else { name };
    let _ = write!(out, "{{\"index\":{index},\"status\":\"{status}\"");
    if let Some(timestamp) = timestamp {
        let _ = write!(out, ",\"timestamp\":\"{timestamp}\"");
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_is_a_503_with_retry_after() {
        let response = render(&Reply::Unavailable { retry_after_s: 4 });
        assert_eq!((response.status, response.retry_after_s), (503, Some(4)));
        let body = String::from_utf8(response.body).expect("utf-8");
        assert!(body.contains("\"ledger_unavailable\""), "{body}");
    }

    #[test]
    fn refused_is_a_422_with_its_code() {
        let response = render(&Reply::Refused { code: "tigerbeetle_0_16_78_limitation", message: "event 0 ...".to_owned() });
        assert_eq!((response.status, response.retry_after_s), (422, None));
        let body = String::from_utf8(response.body).expect("utf-8");
        assert_eq!(body, r#"{"error":{"code":"tigerbeetle_0_16_78_limitation","message":"event 0 ..."}}"#);
    }

    #[test]
    fn a_page_from_one_row_more_has_the_embedded_ledgers_page_and_next() {
        let filter = AccountFilter { account_id: 1, limit: 2, debits: true, credits: true, ..AccountFilter::default() };
        let command = Command::AccountTransfers(filter);
        assert_eq!(page_probe_limit(&command), Some(3));
        // Past the byte cap the page is the cap's rows, and one more is asked.
        let wide = Command::QueryAccounts(QueryFilter { limit: 8189, ..QueryFilter::default() });
        assert_eq!(page_probe_limit(&wide), Some(ACCOUNTS_PAGE_ROWS_MAX as u32 + 1));
        assert_eq!(page_probe_limit(&Command::LookupAccount(1)), None);
        let rows = |n: u64| (1..=n).map(|t| Transfer { id: u128::from(t), timestamp: t * 10, ..Transfer::default() }).collect::<Vec<_>>();
        match page_reply(&command, PageRows::Transfers(rows(3))) {
            Reply::AccountTransfers { transfers, next: Some(next) } => {
                assert_eq!(transfers.len(), 2);
                assert_eq!(next, next_account_page(&filter, 20), "resumes after the last row shown");
            }
            other => panic!("{other:?}"),
        }
        match page_reply(&command, PageRows::Transfers(rows(2))) {
            Reply::AccountTransfers { transfers, next: None } => assert_eq!(transfers.len(), 2),
            other => panic!("{other:?}"),
        }
    }
    use crate::http::Version;
    use proptest::prelude::*;

    fn request(method: Method, target: &str, body: &str) -> Request {
        Request {
            method,
            target: target.into(),
            version: Version::Http11,
            keep_alive: true,
            body: body.as_bytes().to_vec(),
        }
    }

    fn post(target: &str, body: &str) -> Action {
        handle(&request(Method::Post, target, body), Role::Write)
    }

    fn get(target: &str) -> Action {
        handle(&request(Method::Get, target, ""), Role::Read)
    }

    /// The status, error code and message of an immediate error response.
    fn refused(action: Action) -> (u16, String, String) {
        let Action::Respond(response) = action else {
            panic!("expected a response, got {action:?}");
        };
        let json: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        let error = &json["error"];
        (
            response.status,
            error["code"].as_str().unwrap().to_owned(),
            error["message"].as_str().unwrap().to_owned(),
        )
    }

    fn transfers_of(action: Action) -> Vec<Transfer> {
        match action {
            Action::Ledger(Command::Mutate(Operation::CreateTransfers(events))) => events,
            other => panic!("expected transfers, got {other:?}"),
        }
    }

    fn accounts_of(action: Action) -> Vec<Account> {
        match action {
            Action::Ledger(Command::Mutate(Operation::CreateAccounts(events))) => events,
            other => panic!("expected accounts, got {other:?}"),
        }
    }

    /// A state machine with accounts 1 and 2 (timestamps 1, 2) and, when `transfers` > 0,
    /// that many transfers of 1 from account 1 to account 2 (ids 1001.., timestamps 3..).
    fn state_with_transfers(transfers: u64) -> StateMachine {
        let mut state = StateMachine::with_id_hash_key(crate::IdHashKey::new([1, 2, 3, 4]));
        let accounts = [1, 2].map(|id| Account { id, ledger: 1, code: 1, ..Account::default() });
        assert!(state.create_accounts(2, &accounts).iter().all(|r| *r == CreateAccountResult::Ok));
        if transfers > 0 {
            let events: Vec<Transfer> = (1..=transfers)
                .map(|i| Transfer { id: 1000 + i as u128, debit_account_id: 1, credit_account_id: 2, amount: 1, ledger: 1, code: 1, ..Transfer::default() })
                .collect();
            for chunk in events.chunks(BATCH_EVENTS_MAX) {
                let results = state.create_transfers(0, chunk);
                assert!(results.iter().all(|r| *r == CreateTransferResult::Ok));
            }
        }
        state
    }

    #[test]
    fn design_examples_decode() {
        let accounts = accounts_of(post(
            "/v1/accounts",
            r#"[{"id":"1","ledger":1,"code":10,"flags":["debits_must_not_exceed_credits"]}]"#,
        ));
        assert_eq!(
            accounts,
            vec![Account {
                id: 1,
                ledger: 1,
                code: 10,
                flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
                ..Account::default()
            }]
        );
        let transfers = transfers_of(post(
            "/v1/transfers",
            r#"[{"id":"7","debit_account_id":"1","credit_account_id":"2","amount":"100","ledger":1,"code":1}]"#,
        ));
        assert_eq!(
            transfers,
            vec![Transfer {
                id: 7,
                debit_account_id: 1,
                credit_account_id: 2,
                amount: 100,
                ledger: 1,
                code: 1,
                ..Transfer::default()
            }]
        );
    }

    #[test]
    fn golden_account_out() {
        let account = Account {
            id: 1,
            debits_posted: 100,
            ledger: 1,
            code: 10,
            timestamp: 1732420000000000001,
            ..Account::default()
        };
        let mut out = Vec::new();
        write_account(&mut out, &account);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"id":"1","debits_pending":"0","debits_posted":"100","credits_pending":"0","credits_posted":"0","user_data_128":"0","user_data_64":"0","user_data_32":0,"ledger":1,"code":10,"flags":[],"timestamp":"1732420000000000001"}"#
        );
    }

    #[test]
    fn golden_transfer_out() {
        let transfer = Transfer {
            id: 7,
            debit_account_id: 1,
            credit_account_id: 2,
            amount: 100,
            ledger: 1,
            code: 1,
            flags: TransferFlags::LINKED | TransferFlags::PENDING,
            timeout: 60,
            timestamp: 5,
            ..Transfer::default()
        };
        let mut out = Vec::new();
        write_transfer(&mut out, &transfer);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"id":"7","debit_account_id":"1","credit_account_id":"2","amount":"100","pending_id":"0","user_data_128":"0","user_data_64":"0","user_data_32":0,"timeout":60,"ledger":1,"code":1,"flags":["linked","pending"],"timestamp":"5"}"#
        );
    }

    fn widest_account() -> Account {
        Account {
            id: u128::MAX,
            debits_pending: u128::MAX - 1,
            debits_posted: 1 << 100,
            credits_pending: 3,
            credits_posted: 4,
            user_data_128: u128::MAX,
            user_data_64: u64::MAX,
            user_data_32: u32::MAX,
            ledger: u32::MAX,
            code: u16::MAX,
            flags: AccountFlags::DEFINED,
            timestamp: u64::MAX,
        }
    }

    fn widest_transfer() -> Transfer {
        Transfer {
            id: u128::MAX,
            debit_account_id: u128::MAX,
            credit_account_id: u128::MAX,
            amount: u128::MAX,
            pending_id: u128::MAX,
            user_data_128: u128::MAX,
            user_data_64: u64::MAX,
            user_data_32: u32::MAX,
            timeout: u32::MAX,
            ledger: u32::MAX,
            code: u16::MAX,
            flags: TransferFlags::DEFINED,
            timestamp: u64::MAX,
        }
    }

    #[test]
    fn round_trip_account_and_transfer() {
        for account in [
            Account::default(),
            widest_account(),
            Account {
                id: 12,
                flags: AccountFlags::HISTORY,
                ..Account::default()
            },
        ] {
            let mut body = b"[".to_vec();
            write_account(&mut body, &account);
            body.push(b']');
            assert_eq!(
                accounts_of(post("/v1/accounts", std::str::from_utf8(&body).unwrap())),
                vec![account]
            );
        }
        for transfer in [Transfer::default(), widest_transfer()] {
            let mut body = b"[".to_vec();
            write_transfer(&mut body, &transfer);
            body.push(b']');
            assert_eq!(
                transfers_of(post("/v1/transfers", std::str::from_utf8(&body).unwrap())),
                vec![transfer]
            );
        }
    }

    #[test]
    fn body_limit_fits_a_full_batch_of_widest_transfers() {
        let mut body = b"[".to_vec();
        for i in 0..BATCH_EVENTS_MAX {
            if i > 0 {
                body.push(b',');
            }
            write_transfer(&mut body, &widest_transfer());
        }
        body.push(b']');
        println!("a full batch of widest transfers: {} bytes", body.len());
        assert!(
            body.len() <= http::Limits::default().body_bytes_max,
            "{} bytes do not fit body_bytes_max",
            body.len()
        );
        assert_eq!(
            transfers_of(post("/v1/transfers", std::str::from_utf8(&body).unwrap())).len(),
            BATCH_EVENTS_MAX
        );
    }

    #[test]
    fn malformed_json_is_refused_with_a_clear_error() {
        let cases: &[(&str, u16, &str, &str)] = &[
            ("", 400, "invalid_json", "EOF"),
            ("[{\"id\":\"1\"", 400, "invalid_json", "EOF"),
            ("nope", 400, "invalid_json", "expected"),
            ("[{}] x", 400, "invalid_json", "trailing"),
            (
                r#"{"id":"1"}"#,
                400,
                "invalid_batch",
                "expected a JSON array",
            ),
            ("[]", 400, "invalid_batch", "at least one event"),
            ("\"[]\"", 400, "invalid_batch", "expected a JSON array"),
            (
                r#"[{"id":"1"},{"id":"x1"}]"#,
                400,
                "invalid_event",
                "event 1: `x1`",
            ),
            (r#"[{"id":"-1"}]"#, 400, "invalid_event", "non-negative"),
            (r#"[{"id":""}]"#, 400, "invalid_event", "empty string"),
            (r#"[{"id":" 1"}]"#, 400, "invalid_event", "digits"),
            (r#"[{"id":"+1"}]"#, 400, "invalid_event", "digits"),
            (
                r#"[{"debits_posted":"340282366920938463463374607431768211456"}]"#,
                400,
                "invalid_event",
                "out of range",
            ),
            (
                r#"[{"user_data_64":"18446744073709551616"}]"#,
                400,
                "invalid_event",
                "out of range",
            ),
            (r#"[{"ledger":4294967296}]"#, 400, "invalid_event", "u32"),
            (r#"[{"code":65536}]"#, 400, "invalid_event", "u16"),
            (r#"[{"ledger":-1}]"#, 400, "invalid_event", "u32"),
            (r#"[{"ledger":1.5}]"#, 400, "invalid_event", "u32"),
            (r#"[{"ledger":"1"}]"#, 400, "invalid_event", "u32"),
            (r#"[{"id":1}]"#, 400, "invalid_event", "decimal string"),
            (r#"[{"id":null}]"#, 400, "invalid_event", "decimal string"),
            (
                r#"[{"amount":"1"}]"#,
                400,
                "invalid_event",
                "unknown field `amount`",
            ),
            (
                r#"[{"id":"1","idd":"2"}]"#,
                400,
                "invalid_event",
                "unknown field `idd`",
            ),
            (
                r#"[{"id":"1","id":"2"}]"#,
                400,
                "invalid_event",
                "duplicate field `id`",
            ),
            (
                r#"[{"flags":["pending"]}]"#,
                400,
                "invalid_event",
                "unknown account flag `pending`",
            ),
            (
                r#"[{"flags":"linked"}]"#,
                400,
                "invalid_event",
                "array of account flag names",
            ),
            (
                r#"[{"flags":[1]}]"#,
                400,
                "invalid_event",
                "account flag name",
            ),
            (
                "[1]",
                400,
                "invalid_event",
                "event 0: invalid type: integer `1`, expected an event as a JSON object",
            ),
            (
                "[[]]",
                400,
                "invalid_event",
                "event 0: invalid type: sequence",
            ),
            (
                r#"[["1",1]]"#,
                400,
                "invalid_event",
                "event 0: invalid type: sequence",
            ),
        ];
        for (body, status, code, needle) in cases {
            let (got_status, got_code, message) = refused(post("/v1/accounts", body));
            assert_eq!(
                (got_status, got_code.as_str()),
                (*status, *code),
                "body {body}: {message}"
            );
            assert!(
                message.contains(needle),
                "body {body}: message {message:?} lacks {needle:?}"
            );
        }
        let (status, code, message) =
            refused(post("/v1/transfers", r#"[{"flags":["linked","nope"]}]"#));
        assert_eq!((status, code.as_str()), (400, "invalid_event"));
        assert!(
            message.contains("unknown transfer flag `nope`"),
            "{message}"
        );
    }

    #[test]
    fn batch_over_the_limit_is_413_and_events_at_the_limit_pass() {
        let at_limit = format!("[{}]", vec!["{}"; BATCH_EVENTS_MAX].join(","));
        assert_eq!(
            accounts_of(post("/v1/accounts", &at_limit)).len(),
            BATCH_EVENTS_MAX
        );
        let over = format!("[{}]", vec!["{}"; BATCH_EVENTS_MAX + 1].join(","));
        let (status, code, _) = refused(post("/v1/accounts", &over));
        assert_eq!((status, code.as_str()), (413, "batch_too_large"));
        // Even when the events after the limit are malformed or the array never ends.
        let over = format!("[{},{{\"nope\":1}}", vec!["{}"; BATCH_EVENTS_MAX].join(","));
        assert_eq!(refused(post("/v1/accounts", &over)).0, 413);
    }

    #[test]
    fn routes_methods_and_roles() {
        assert_eq!(refused(get("/v2/accounts")).0, 404);
        assert_eq!(refused(get("/v1/accounts/1/history")).0, 404);
        assert_eq!(refused(get("/v1/accounts/1/balances/2")).0, 404);
        assert_eq!(refused(get("/v1/accounts/")).1, "invalid_id");
        assert_eq!(refused(get("/v1/accounts/abc")).1, "invalid_id");
        assert_eq!(
            refused(get("/v1/transfers/340282366920938463463374607431768211456")).1,
            "invalid_id"
        );
        // GET on the collections is query_accounts / query_transfers.
        let Action::Respond(response) =
            handle(&request(Method::Put, "/v1/accounts", ""), Role::Write)
        else {
            panic!()
        };
        assert_eq!((response.status, response.allow), (405, Some("GET, POST")));
        let Action::Respond(response) = post("/v1/accounts/1", "") else {
            panic!()
        };
        assert_eq!((response.status, response.allow), (405, Some("GET")));
        assert_eq!(
            refused(handle(
                &request(Method::Delete, "/v1/transfers/1", ""),
                Role::Write
            ))
            .0,
            405
        );

        // Read may GET but not POST, and is refused before its body is looked at.
        for (target, body) in [("/v1/accounts", "[{}]"), ("/v1/transfers", "garbage")] {
            let (status, code, _) =
                refused(handle(&request(Method::Post, target, body), Role::Read));
            assert_eq!((status, code.as_str()), (403, "forbidden"));
        }
        assert_eq!(
            get("/v1/accounts/1"),
            Action::Ledger(Command::LookupAccount(1))
        );
        assert_eq!(
            get("/v1/transfers/340282366920938463463374607431768211455"),
            Action::Ledger(Command::LookupTransfer(u128::MAX))
        );
        assert_eq!(
            handle(&request(Method::Get, "/v1/accounts/5", ""), Role::Write),
            Action::Ledger(Command::LookupAccount(5))
        );
        assert_eq!(refused(get("/v1/accounts/1?x=1")).1, "invalid_query");
    }

    #[test]
    fn account_transfers_query() {
        let Action::Ledger(Command::AccountTransfers(filter)) = get("/v1/accounts/9/transfers")
        else {
            panic!()
        };
        assert_eq!(
            filter,
            AccountFilter {
                account_id: 9,
                timestamp_min: 0,
                timestamp_max: 0,
                limit: 100,
                debits: true,
                credits: true,
                reversed: false,
                ..AccountFilter::default()
            }
        );
        let Action::Ledger(Command::AccountTransfers(filter)) =
            get("/v1/accounts/9/transfers?limit=8189&reversed=true&debits=false&timestamp_min=5&timestamp_max=6")
        else {
            panic!()
        };
        assert_eq!(
            filter,
            AccountFilter {
                account_id: 9,
                timestamp_min: 5,
                timestamp_max: 6,
                limit: 8189,
                debits: false,
                credits: true,
                reversed: true,
                ..AccountFilter::default()
            }
        );
        for bad in [
            "limit=0",
            "limit=8190",
            "limit=-1",
            "limit=",
            "limit=1&limit=2",
            "reversed=yes",
            "debits=false&credits=false",
            "timestamp_min=7&timestamp_max=6",
            "timestamp_max=18446744073709551616",
            "offset=3",
        ] {
            let (status, code, message) = refused(get(&format!("/v1/accounts/9/transfers?{bad}")));
            assert_eq!(
                (status, code.as_str()),
                (400, "invalid_query"),
                "{bad}: {message}"
            );
        }
    }

    #[test]
    fn queries_answer_from_the_state() {
        let state = state_with_transfers(2);
        let response = query(&state, &Command::LookupAccount(1));
        assert_eq!(response.status, 200);
        assert!(response.body.starts_with(br#"{"id":"1","#));
        let response = query(&state, &Command::LookupAccount(3));
        assert_eq!(response.status, 404);
        assert_eq!(
            response.body,
            br#"{"error":{"code":"account_not_found","message":"no account with id 3"}}"#
        );
        assert_eq!(query(&state, &Command::LookupTransfer(9)).status, 404);
        let Action::Ledger(command) = get("/v1/accounts/1/transfers?reversed=true&limit=1") else {
            panic!()
        };
        let response = query(&state, &command);
        let json: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(json.as_array().unwrap().len(), 1);
        assert_eq!(json[0]["id"], "1002");
        let Action::Ledger(command) = get("/v1/accounts/3/transfers") else {
            panic!()
        };
        assert_eq!(query(&state, &command).body, b"[]");
    }

    #[test]
    fn golden_reply() {
        let mut state = state_with_transfers(0);
        let created = Transfer { id: 7, debit_account_id: 1, credit_account_id: 2, ledger: 1, code: 1, ..Transfer::default() };
        assert_eq!(state.create_transfers(1732420000000000001, &[created]), [CreateTransferResult::Ok]);
        let operation = Operation::CreateTransfers(vec![
            Transfer {
                id: 7,
                ..Transfer::default()
            },
            Transfer {
                id: 8,
                ..Transfer::default()
            },
            Transfer {
                id: 7,
                ..Transfer::default()
            },
        ]);
        let reply = OperationReply::CreateTransfers(vec![
            CreateTransferResult::Ok,
            CreateTransferResult::ExceedsCredits,
            CreateTransferResult::Exists,
        ]);
        let response = render_reply(&reply, &state, &operation);
        assert_eq!(response.status, 200);
        assert_eq!(
            String::from_utf8(response.body).unwrap(),
            r#"[{"index":0,"status":"created","timestamp":"1732420000000000001"},{"index":1,"status":"exceeds_credits"},{"index":2,"status":"exists"}]"#
        );
    }

    fn any_account() -> impl Strategy<Value = Account> {
        (
            (
                any::<u128>(),
                any::<u128>(),
                any::<u128>(),
                any::<u128>(),
                any::<u128>(),
                any::<u128>(),
            ),
            (
                any::<u64>(),
                any::<u32>(),
                any::<u32>(),
                any::<u16>(),
                any::<u16>(),
                any::<u64>(),
            ),
        )
            .prop_map(
                |(
                    (id, dpe, dpo, cpe, cpo, u128_),
                    (u64_, u32_, ledger, code, flags, timestamp),
                )| Account {
                    id,
                    debits_pending: dpe,
                    debits_posted: dpo,
                    credits_pending: cpe,
                    credits_posted: cpo,
                    user_data_128: u128_,
                    user_data_64: u64_,
                    user_data_32: u32_,
                    ledger,
                    code,
                    flags: AccountFlags::from_bits_retain(flags & AccountFlags::DEFINED.bits()),
                    timestamp,
                },
            )
    }

    fn any_transfer() -> impl Strategy<Value = Transfer> {
        (
            (
                any::<u128>(),
                any::<u128>(),
                any::<u128>(),
                any::<u128>(),
                any::<u128>(),
                any::<u128>(),
            ),
            (
                any::<u64>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u16>(),
                any::<u16>(),
                any::<u64>(),
            ),
        )
            .prop_map(
                |(
                    (id, debit, credit, amount, pending, u128_),
                    (u64_, u32_, timeout, ledger, code, flags, timestamp),
                )| {
                    Transfer {
                        id,
                        debit_account_id: debit,
                        credit_account_id: credit,
                        amount,
                        pending_id: pending,
                        user_data_128: u128_,
                        user_data_64: u64_,
                        user_data_32: u32_,
                        timeout,
                        ledger,
                        code,
                        flags: TransferFlags::from_bits_retain(
                            flags & TransferFlags::DEFINED.bits(),
                        ),
                        timestamp,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn json_round_trips(accounts in proptest::collection::vec(any_account(), 1..8),
                            transfers in proptest::collection::vec(any_transfer(), 1..8)) {
            let mut body = b"[".to_vec();
            for (i, account) in accounts.iter().enumerate() {
                if i > 0 { body.push(b','); }
                write_account(&mut body, account);
            }
            body.push(b']');
            prop_assert_eq!(accounts_of(post("/v1/accounts", std::str::from_utf8(&body).unwrap())), accounts);
            let mut body = b"[".to_vec();
            for (i, transfer) in transfers.iter().enumerate() {
                if i > 0 { body.push(b','); }
                write_transfer(&mut body, transfer);
            }
            body.push(b']');
            prop_assert_eq!(transfers_of(post("/v1/transfers", std::str::from_utf8(&body).unwrap())), transfers);
        }

        /// Any body and any target: an answer, never a panic.
        #[test]
        fn handle_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300),
                               json in "[\\[\\]{}\",:0-9a-z_ -]{0,200}",
                               target in "/v1/(accounts|transfers)(/[0-9a-z]{0,40}(/transfers)?)?(\\?[a-z_=&0-9]{0,40})?") {
            for role in [Role::Read, Role::Write] {
                for method in [Method::Get, Method::Post] {
                    for bytes in [&body[..], json.as_bytes()] {
                        let request = Request { method, target: target.clone(), version: Version::Http11, keep_alive: true, body: bytes.to_vec() };
                        if let Action::Respond(response) = handle(&request, role) {
                            prop_assert!(response.status >= 400);
                            prop_assert!(serde_json::from_slice::<serde_json::Value>(&response.body).is_ok());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn error_response_escapes() {
        let response = error_response(400, "invalid_event", "unknown field `\"x\"`");
        assert_eq!(
            response.body,
            br#"{"error":{"code":"invalid_event","message":"unknown field `\"x\"`"}}"#
        );
        assert!(!response.close);
    }

    #[test]
    fn widest_objects_fit_their_json_bounds() {
        let transfer = Transfer { flags: TransferFlags::DEFINED, timestamp: u64::MAX, ..widest_transfer() };
        let mut body = Vec::new();
        write_transfer(&mut body, &transfer);
        assert!(body.len() <= TRANSFER_JSON_BYTES_MAX, "{} bytes", body.len());
        let account = Account {
            debits_pending: u128::MAX,
            debits_posted: u128::MAX,
            credits_pending: u128::MAX,
            credits_posted: u128::MAX,
            ..widest_account()
        };
        body.clear();
        write_account(&mut body, &account);
        assert!(body.len() <= ACCOUNT_JSON_BYTES_MAX, "{} bytes", body.len());
        let longest = "exists_with_different_credit_account_id";
        let results = vec![EventResult { status: longest, timestamp: Some(u64::MAX) }; 10_000];
        let response = render(&Reply::Created(results));
        assert!(response.body.len() <= 2 + 10_000 * EVENT_RESULT_JSON_BYTES_MAX, "{} bytes", response.body.len());
    }

    #[test]
    fn a_maximal_query_is_cut_at_the_byte_cap_and_paging_returns_every_transfer_once() {
        let total = 1000u64;
        let state = state_with_transfers(total);
        for reversed in [false, true] {
            let Action::Ledger(command) = get(&format!("/v1/accounts/1/transfers?limit=8189&reversed={reversed}")) else {
                panic!("a valid query")
            };
            let mut command = command;
            let mut seen = Vec::new();
            let mut pages = 0;
            loop {
                pages += 1;
                assert!(pages <= total, "paging does not end");
                assert!(reply_bytes_max(&command) <= QUERY_REPLY_BYTES_MAX);
                let response = query(&state, &command);
                assert_eq!(response.status, 200);
                assert!(response.body.len() <= QUERY_REPLY_BYTES_MAX, "{} bytes", response.body.len());
                let page: Vec<serde_json::Value> = serde_json::from_slice(&response.body).unwrap();
                assert!(page.len() <= ACCOUNT_TRANSFERS_PAGE_ROWS_MAX);
                seen.extend(page.iter().map(|t| t["timestamp"].as_str().unwrap().parse::<u64>().unwrap()));
                let Some(next) = response.next_page else { break };
                // The next page is an ordinary request a client can send as it is.
                let Action::Ledger(c) = get(&next) else { panic!("{next} is not a valid query") };
                command = c;
            }
            assert!(pages > 1, "1000 transfers do not fit one page of {ACCOUNT_TRANSFERS_PAGE_ROWS_MAX}");
            // Transfers have timestamps 3..: after the two accounts.
            let mut want: Vec<u64> = (3..3 + total).collect();
            if reversed {
                want.reverse();
            }
            assert_eq!(seen, want, "every transfer exactly once, in order (reversed: {reversed})");
        }
    }

    #[test]
    fn a_short_result_has_no_next_page_and_a_limit_is_honoured() {
        let state = state_with_transfers(10);
        let Action::Ledger(all) = get("/v1/accounts/1/transfers?limit=10") else { panic!() };
        assert_eq!(query(&state, &all).next_page, None);
        let Action::Ledger(first) = get("/v1/accounts/1/transfers?limit=4") else { panic!() };
        let response = query(&state, &first);
        let page: Vec<serde_json::Value> = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(page.len(), 4);
        let next = "/v1/accounts/1/transfers?limit=4&reversed=false&debits=true&credits=true&timestamp_min=7&timestamp_max=0&user_data_128=0&user_data_64=0&user_data_32=0&code=0";
        assert_eq!(response.next_page.as_deref(), Some(next));
        let mut wire = Vec::new();
        http::encode_response(&response, &mut wire);
        let wire = String::from_utf8(wire).unwrap();
        assert!(wire.contains(&format!("\r\nLink: <{next}>; rel=\"next\"\r\n")), "{wire}");
    }

    #[test]
    fn query_routes_parse_their_filters() {
        assert_eq!(
            get("/v1/accounts"),
            Action::Ledger(Command::QueryAccounts(QueryFilter { limit: 100, ..QueryFilter::default() }))
        );
        let max = "340282366920938463463374607431768211455";
        let Action::Ledger(Command::QueryTransfers(filter)) = get(&format!(
            "/v1/transfers?user_data_128={max}&user_data_64=18446744073709551615&user_data_32=4294967295&ledger=2&code=65535&timestamp_min=1&timestamp_max=9223372036854775807&limit=8189&reversed=true"
        )) else {
            panic!("a valid query_transfers")
        };
        assert_eq!(
            filter,
            QueryFilter {
                user_data_128: u128::MAX,
                user_data_64: u64::MAX,
                user_data_32: u32::MAX,
                ledger: 2,
                code: u16::MAX,
                timestamp_min: 1,
                timestamp_max: TIMESTAMP_MAX,
                limit: 8189,
                reversed: true,
            }
        );
        let Action::Ledger(Command::AccountBalances(filter)) =
            get("/v1/accounts/4/balances?code=2&user_data_32=7&debits=false")
        else {
            panic!("a valid get_account_balances")
        };
        assert_eq!(
            filter,
            AccountFilter {
                account_id: 4,
                code: 2,
                user_data_32: 7,
                limit: 100,
                debits: false,
                credits: true,
                ..AccountFilter::default()
            }
        );
        let Action::Ledger(Command::AccountTransfers(filter)) =
            get("/v1/accounts/4/transfers?user_data_128=5&user_data_64=6")
        else {
            panic!("a valid get_account_transfers")
        };
        assert_eq!((filter.user_data_128, filter.user_data_64, filter.code), (5, 6, 0));
        // A reader may query; a writer may too.
        assert!(matches!(
            handle(&request(Method::Get, "/v1/transfers?ledger=1", ""), Role::Write),
            Action::Ledger(Command::QueryTransfers(_))
        ));
        for bad in [
            "/v1/accounts?ledger=4294967296",
            "/v1/accounts?code=65536",
            "/v1/accounts?user_data_64=-1",
            "/v1/accounts?user_data_128=340282366920938463463374607431768211456",
            "/v1/accounts?timestamp_max=9223372036854775808",
            "/v1/accounts?timestamp_min=5&timestamp_max=4",
            "/v1/accounts?limit=0",
            "/v1/accounts?limit=8190",
            "/v1/accounts?ledger=1&ledger=2",
            "/v1/transfers?debits=true",
            "/v1/transfers?reversed=1",
            "/v1/accounts/1/balances?ledger=1",
            "/v1/accounts/1/balances?debits=false&credits=false",
            "/v1/accounts/1/transfers?code=x",
            "/v1/accounts/1/transfers?timestamp_min=9223372036854775808",
        ] {
            let (status, code, message) = refused(get(bad));
            assert_eq!((status, code.as_str()), (400, "invalid_query"), "{bad}: {message}");
        }
    }

    #[test]
    fn widest_balance_json_fits_its_bound_and_golden_balance() {
        let widest = AccountBalance {
            debits_pending: u128::MAX,
            debits_posted: u128::MAX,
            credits_pending: u128::MAX,
            credits_posted: u128::MAX,
            timestamp: u64::MAX,
        };
        let mut body = Vec::new();
        write_balance(&mut body, &widest);
        assert!(body.len() <= BALANCE_JSON_BYTES_MAX, "{} bytes", body.len());
        body.clear();
        write_balance(&mut body, &AccountBalance { debits_posted: 10, credits_posted: 11, timestamp: 7, ..AccountBalance::default() });
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"debits_pending":"0","debits_posted":"10","credits_pending":"0","credits_posted":"11","timestamp":"7"}"#
        );
        for (command, rows_max) in [
            (Command::AccountBalances(AccountFilter { limit: 8189, ..AccountFilter::default() }), BALANCES_PAGE_ROWS_MAX),
            (Command::QueryAccounts(QueryFilter { limit: 8189, ..QueryFilter::default() }), ACCOUNTS_PAGE_ROWS_MAX),
            (Command::QueryTransfers(QueryFilter { limit: 8189, ..QueryFilter::default() }), ACCOUNT_TRANSFERS_PAGE_ROWS_MAX),
        ] {
            assert!(reply_bytes_max(&command) <= QUERY_REPLY_BYTES_MAX, "{command:?}");
            assert!(rows_max > 100, "{command:?}");
        }
    }

    /// Follows the `Link` of every page from `first`; returns the `timestamp` of every row.
    fn follow_links(state: &StateMachine, first: &str) -> (Vec<u64>, usize) {
        let Action::Ledger(mut command) = get(first) else { panic!("{first} is not a valid query") };
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            pages += 1;
            assert!(pages <= 10_000, "paging does not end");
            assert!(reply_bytes_max(&command) <= QUERY_REPLY_BYTES_MAX);
            let response = query(state, &command);
            assert_eq!(response.status, 200);
            assert!(response.body.len() <= reply_bytes_max(&command), "{} bytes", response.body.len());
            let page: Vec<serde_json::Value> = serde_json::from_slice(&response.body).unwrap();
            seen.extend(page.iter().map(|row| row["timestamp"].as_str().unwrap().parse::<u64>().unwrap()));
            let Some(next) = response.next_page else { return (seen, pages) };
            let Action::Ledger(c) = get(&next) else { panic!("{next} is not a valid query") };
            command = c;
        }
    }

    #[test]
    fn every_query_route_pages_through_its_whole_result() {
        let total = 1000u64;
        let mut state = state_with_transfers(total);
        let history = Account { id: 3, ledger: 1, code: 1, flags: AccountFlags::HISTORY, ..Account::default() };
        assert_eq!(state.create_accounts(0, &[history]), [CreateAccountResult::Ok]);
        let to_history: Vec<Transfer> = (1..=400u128)
            .map(|i| Transfer { id: 5000 + i, debit_account_id: 1, credit_account_id: 3, amount: 1, ledger: 1, code: 1 + (i % 2) as u16, ..Transfer::default() })
            .collect();
        assert!(state.create_transfers(0, &to_history).iter().all(|r| *r == CreateTransferResult::Ok));
        let all_transfers: Vec<u64> = state.transfers().iter().map(|t| t.timestamp).collect();
        let code_2: Vec<u64> = state.transfers().iter().filter(|t| t.code == 2).map(|t| t.timestamp).collect();
        for reversed in [false, true] {
            let order = |mut v: Vec<u64>| {
                if reversed {
                    v.reverse();
                }
                v
            };
            let (seen, pages) = follow_links(&state, &format!("/v1/transfers?limit=8189&reversed={reversed}"));
            assert_eq!(seen, order(all_transfers.clone()));
            assert!(pages > 1);
            let (seen, _) = follow_links(&state, &format!("/v1/transfers?code=2&reversed={reversed}"));
            assert_eq!(seen, order(code_2.clone()));
            let (seen, _) = follow_links(&state, &format!("/v1/accounts/3/balances?limit=8189&code=2&reversed={reversed}"));
            assert_eq!(seen, order(code_2.clone()));
            let (seen, _) = follow_links(&state, &format!("/v1/accounts/3/transfers?limit=8189&code=2&reversed={reversed}"));
            assert_eq!(seen, order(code_2.clone()));
            let (seen, _) = follow_links(&state, &format!("/v1/accounts?limit=1&reversed={reversed}"));
            assert_eq!(seen, order(state.accounts().map(|a| a.timestamp).collect()));
        }
    }

    /// A filter that matches one transfer in 20,000 is answered in pages that each examine at
    /// most QUERY_SCAN_ROWS_MAX transfers: the first page is empty but links to the rest.
    #[test]
    fn a_rare_match_is_found_through_bounded_pages() {
        let total = QUERY_SCAN_ROWS_MAX as u64 + 3_616;
        let mut state = state_with_transfers(total);
        let rare = Transfer { id: 1, debit_account_id: 2, credit_account_id: 1, amount: 1, ledger: 1, code: 9, ..Transfer::default() };
        assert_eq!(state.create_transfers(0, &[rare]), [CreateTransferResult::Ok]);
        let rare_timestamp = state.lookup_transfer(1).unwrap().timestamp;
        let Action::Ledger(command) = get("/v1/transfers?code=9") else { panic!() };
        let response = query(&state, &command);
        assert_eq!(response.body, b"[]");
        assert!(response.next_page.is_some(), "the scan stopped at its budget and says so");
        let (seen, pages) = follow_links(&state, "/v1/transfers?code=9");
        assert_eq!((seen, pages), (vec![rare_timestamp], 2));
        // Reversed, the rare one is on the first page, which then spends its budget on the
        // rest: one more page, empty, follows.
        let Action::Ledger(command) = get("/v1/accounts/1/transfers?code=9&reversed=true") else { panic!() };
        let first: Vec<serde_json::Value> = serde_json::from_slice(&query(&state, &command).body).unwrap();
        assert_eq!(first.len(), 1);
        let (seen, pages) = follow_links(&state, "/v1/accounts/1/transfers?code=9&reversed=true");
        assert_eq!((seen, pages), (vec![rare_timestamp], 2));
        let (seen, pages) = follow_links(&state, "/v1/accounts/1/transfers?code=9");
        assert_eq!((seen, pages), (vec![rare_timestamp], 2));
    }
}
