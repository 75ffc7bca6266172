//! The ledger's data model: accounts, transfers, their flags, the per-event result codes and the
//! operations the write-ahead log records.
//!
//! Field names, flag names and result names follow TigerBeetle 0.16 (`src/tigerbeetle.zig`), so
//! that a client written against TigerBeetle's documentation reads our JSON without surprises.
//! The result enums are declared in TigerBeetle's order of precedence: when several checks fail
//! for one event, the one declared first is reported.

/// The most events one `create_accounts` or `create_transfers` batch may carry (TigerBeetle's
/// `batch_max` for a 1 MiB message of 128-byte events, minus the header).
pub const BATCH_EVENTS_MAX: usize = 8189;

/// `amount` of a post_pending_transfer meaning "post the full pending amount" (TigerBeetle's
/// `AMOUNT_MAX`), and the largest value of every u128 balance.
pub const AMOUNT_MAX: u128 = u128::MAX;

macro_rules! flags_newtype {
    (
        $(#[$meta:meta])*
        $name:ident { $( $(#[$fmeta:meta])* $flag:ident = $bit:expr, $text:literal; )* }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
        pub struct $name(u16);

        impl $name {
            $( $(#[$fmeta])* pub const $flag: $name = $name(1 << $bit); )*

            /// Every defined flag with its TigerBeetle name, in bit order (for JSON).
            pub const ALL: &'static [($name, &'static str)] = &[ $( ($name::$flag, $text), )* ];

            /// The union of every defined flag; any other bit is reserved.
            pub const DEFINED: $name = $name(0 $( | (1 << $bit) )*);

            /// No flag set.
            pub const fn empty() -> Self {
                $name(0)
            }

            /// Keeps every bit, defined or not (so reserved bits reach the `reserved_flag` check).
            pub const fn from_bits_retain(bits: u16) -> Self {
                $name(bits)
            }

            pub const fn bits(self) -> u16 {
                self.0
            }

            /// True when every bit of `other` is set in `self`.
            pub const fn contains(self, other: Self) -> bool {
                self.0 & other.0 == other.0
            }

            /// True when any bit of `other` is set in `self`.
            pub const fn intersects(self, other: Self) -> bool {
                self.0 & other.0 != 0
            }

            pub const fn union(self, other: Self) -> Self {
                $name(self.0 | other.0)
            }

            pub const fn difference(self, other: Self) -> Self {
                $name(self.0 & !other.0)
            }

            pub fn insert(&mut self, other: Self) {
                self.0 |= other.0;
            }

            pub fn remove(&mut self, other: Self) {
                self.0 &= !other.0;
            }

            pub const fn is_empty(self) -> bool {
                self.0 == 0
            }

            /// True when a bit outside the defined flags is set.
            pub const fn has_reserved(self) -> bool {
                self.0 & !Self::DEFINED.0 != 0
            }

            /// The flag called `name` (TigerBeetle's spelling), if any.
            pub fn from_name(name: &str) -> Option<Self> {
                Self::ALL.iter().find(|(_, n)| *n == name).map(|(f, _)| *f)
            }
        }

        impl core::ops::BitOr for $name {
            type Output = $name;
            fn bitor(self, rhs: Self) -> Self {
                $name(self.0 | rhs.0)
            }
        }

        impl core::ops::BitOrAssign for $name {
            fn bitor_assign(&mut self, rhs: Self) {
                self.0 |= rhs.0;
            }
        }
    };
}

flags_newtype! {
    /// `Account.flags` (TigerBeetle `AccountFlags`, same bit positions).
    AccountFlags {
        /// The event is linked with the next one: they succeed or fail together.
        LINKED = 0, "linked";
        /// `debits_pending + debits_posted` may not exceed `credits_posted`.
        DEBITS_MUST_NOT_EXCEED_CREDITS = 1, "debits_must_not_exceed_credits";
        /// `credits_pending + credits_posted` may not exceed `debits_posted`.
        CREDITS_MUST_NOT_EXCEED_DEBITS = 2, "credits_must_not_exceed_debits";
        /// Keep a balance snapshot per transfer for `get_account_balances`.
        HISTORY = 3, "history";
        /// The client supplies the timestamp (a migration from another ledger); see
        /// `CreateAccountResult::ImportedEventExpected` and the rules after it.
        IMPORTED = 4, "imported";
        /// The account rejects new transfers (except voids of its pending transfers).
        CLOSED = 5, "closed";
    }
}

flags_newtype! {
    /// `Transfer.flags` (TigerBeetle `TransferFlags`, same bit positions).
    TransferFlags {
        LINKED = 0, "linked";
        PENDING = 1, "pending";
        POST_PENDING_TRANSFER = 2, "post_pending_transfer";
        VOID_PENDING_TRANSFER = 3, "void_pending_transfer";
        BALANCING_DEBIT = 4, "balancing_debit";
        BALANCING_CREDIT = 5, "balancing_credit";
        CLOSING_DEBIT = 6, "closing_debit";
        CLOSING_CREDIT = 7, "closing_credit";
        /// The client supplies the timestamp (a migration from another ledger).
        IMPORTED = 8, "imported";
    }
}

/// An account (TigerBeetle `Account`, without the reserved field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct Account {
    pub id: u128,
    pub debits_pending: u128,
    pub debits_posted: u128,
    pub credits_pending: u128,
    pub credits_posted: u128,
    pub user_data_128: u128,
    pub user_data_64: u64,
    pub user_data_32: u32,
    pub ledger: u32,
    pub code: u16,
    pub flags: AccountFlags,
    /// Assigned by the ledger when the account is created; must be zero on input unless the
    /// account is `imported`, when it is the client's (past, unique) timestamp.
    pub timestamp: u64,
}

/// A transfer (TigerBeetle `Transfer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct Transfer {
    pub id: u128,
    pub debit_account_id: u128,
    pub credit_account_id: u128,
    pub amount: u128,
    /// For post/void: the id of the pending transfer being resolved.
    pub pending_id: u128,
    pub user_data_128: u128,
    pub user_data_64: u64,
    pub user_data_32: u32,
    /// Seconds after which a pending transfer expires (0: never).
    pub timeout: u32,
    pub ledger: u32,
    pub code: u16,
    pub flags: TransferFlags,
    /// Assigned by the ledger when the transfer is created; must be zero on input unless the
    /// transfer is `imported`.
    pub timestamp: u64,
}

/// The state of a pending transfer (TigerBeetle `TransferPendingStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PendingStatus {
    /// Not a pending transfer.
    None = 0,
    Pending = 1,
    Posted = 2,
    Voided = 3,
    Expired = 4,
}

impl PendingStatus {
    pub fn name(self) -> &'static str {
        match self {
            PendingStatus::None => "none",
            PendingStatus::Pending => "pending",
            PendingStatus::Posted => "posted",
            PendingStatus::Voided => "voided",
            PendingStatus::Expired => "expired",
        }
    }
}

macro_rules! result_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $( $variant:ident = $code:expr, $text:literal; )* }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum $name {
            $( $variant = $code, )*
        }

        impl $name {
            /// Every result in order of precedence (declaration order).
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )* ];

            /// TigerBeetle's snake_case name ("ok" for `Ok`; the HTTP layer says "created").
            pub fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )*
                }
            }

            /// TigerBeetle's numeric code.
            pub fn code(self) -> u32 {
                self as u32
            }

            /// The result with this numeric code, if any.
            pub fn from_code(code: u32) -> Option<Self> {
                match code {
                    $( $code => Some($name::$variant), )*
                    _ => None,
                }
            }
        }
    };
}

result_enum! {
    /// The result of one `create_accounts` event (TigerBeetle 0.16 `CreateAccountResult`),
    /// declared in order of precedence. Numeric codes are TigerBeetle's.
    CreateAccountResult {
        Ok = 0, "ok";
        LinkedEventFailed = 1, "linked_event_failed";
        LinkedEventChainOpen = 2, "linked_event_chain_open";
        ImportedEventExpected = 22, "imported_event_expected";
        ImportedEventNotExpected = 23, "imported_event_not_expected";
        TimestampMustBeZero = 3, "timestamp_must_be_zero";
        ImportedEventTimestampOutOfRange = 24, "imported_event_timestamp_out_of_range";
        ImportedEventTimestampMustNotAdvance = 25, "imported_event_timestamp_must_not_advance";
        ReservedFlag = 5, "reserved_flag";
        IdMustNotBeZero = 6, "id_must_not_be_zero";
        IdMustNotBeIntMax = 7, "id_must_not_be_int_max";
        ExistsWithDifferentFlags = 15, "exists_with_different_flags";
        ExistsWithDifferentUserData128 = 16, "exists_with_different_user_data_128";
        ExistsWithDifferentUserData64 = 17, "exists_with_different_user_data_64";
        ExistsWithDifferentUserData32 = 18, "exists_with_different_user_data_32";
        ExistsWithDifferentLedger = 19, "exists_with_different_ledger";
        ExistsWithDifferentCode = 20, "exists_with_different_code";
        Exists = 21, "exists";
        FlagsAreMutuallyExclusive = 8, "flags_are_mutually_exclusive";
        DebitsPendingMustBeZero = 9, "debits_pending_must_be_zero";
        DebitsPostedMustBeZero = 10, "debits_posted_must_be_zero";
        CreditsPendingMustBeZero = 11, "credits_pending_must_be_zero";
        CreditsPostedMustBeZero = 12, "credits_posted_must_be_zero";
        LedgerMustNotBeZero = 13, "ledger_must_not_be_zero";
        CodeMustNotBeZero = 14, "code_must_not_be_zero";
        ImportedEventTimestampMustNotRegress = 26, "imported_event_timestamp_must_not_regress";
    }
}

result_enum! {
    /// The result of one `create_transfers` event (TigerBeetle 0.16 `CreateTransferResult`),
    /// declared in order of precedence. Numeric codes are TigerBeetle's.
    CreateTransferResult {
        Ok = 0, "ok";
        LinkedEventFailed = 1, "linked_event_failed";
        LinkedEventChainOpen = 2, "linked_event_chain_open";
        ImportedEventExpected = 56, "imported_event_expected";
        ImportedEventNotExpected = 57, "imported_event_not_expected";
        TimestampMustBeZero = 3, "timestamp_must_be_zero";
        ImportedEventTimestampOutOfRange = 58, "imported_event_timestamp_out_of_range";
        ImportedEventTimestampMustNotAdvance = 59, "imported_event_timestamp_must_not_advance";
        ReservedFlag = 4, "reserved_flag";
        IdMustNotBeZero = 5, "id_must_not_be_zero";
        IdMustNotBeIntMax = 6, "id_must_not_be_int_max";
        ExistsWithDifferentFlags = 36, "exists_with_different_flags";
        ExistsWithDifferentPendingId = 40, "exists_with_different_pending_id";
        ExistsWithDifferentTimeout = 44, "exists_with_different_timeout";
        ExistsWithDifferentDebitAccountId = 37, "exists_with_different_debit_account_id";
        ExistsWithDifferentCreditAccountId = 38, "exists_with_different_credit_account_id";
        ExistsWithDifferentAmount = 39, "exists_with_different_amount";
        ExistsWithDifferentUserData128 = 41, "exists_with_different_user_data_128";
        ExistsWithDifferentUserData64 = 42, "exists_with_different_user_data_64";
        ExistsWithDifferentUserData32 = 43, "exists_with_different_user_data_32";
        ExistsWithDifferentLedger = 67, "exists_with_different_ledger";
        ExistsWithDifferentCode = 45, "exists_with_different_code";
        Exists = 46, "exists";
        IdAlreadyFailed = 68, "id_already_failed";
        FlagsAreMutuallyExclusive = 7, "flags_are_mutually_exclusive";
        DebitAccountIdMustNotBeZero = 8, "debit_account_id_must_not_be_zero";
        DebitAccountIdMustNotBeIntMax = 9, "debit_account_id_must_not_be_int_max";
        CreditAccountIdMustNotBeZero = 10, "credit_account_id_must_not_be_zero";
        CreditAccountIdMustNotBeIntMax = 11, "credit_account_id_must_not_be_int_max";
        AccountsMustBeDifferent = 12, "accounts_must_be_different";
        PendingIdMustBeZero = 13, "pending_id_must_be_zero";
        PendingIdMustNotBeZero = 14, "pending_id_must_not_be_zero";
        PendingIdMustNotBeIntMax = 15, "pending_id_must_not_be_int_max";
        PendingIdMustBeDifferent = 16, "pending_id_must_be_different";
        TimeoutReservedForPendingTransfer = 17, "timeout_reserved_for_pending_transfer";
        ClosingTransferMustBePending = 64, "closing_transfer_must_be_pending";
        LedgerMustNotBeZero = 19, "ledger_must_not_be_zero";
        CodeMustNotBeZero = 20, "code_must_not_be_zero";
        DebitAccountNotFound = 21, "debit_account_not_found";
        CreditAccountNotFound = 22, "credit_account_not_found";
        AccountsMustHaveTheSameLedger = 23, "accounts_must_have_the_same_ledger";
        TransferMustHaveTheSameLedgerAsAccounts = 24, "transfer_must_have_the_same_ledger_as_accounts";
        PendingTransferNotFound = 25, "pending_transfer_not_found";
        PendingTransferNotPending = 26, "pending_transfer_not_pending";
        PendingTransferHasDifferentDebitAccountId = 27, "pending_transfer_has_different_debit_account_id";
        PendingTransferHasDifferentCreditAccountId = 28, "pending_transfer_has_different_credit_account_id";
        PendingTransferHasDifferentLedger = 29, "pending_transfer_has_different_ledger";
        PendingTransferHasDifferentCode = 30, "pending_transfer_has_different_code";
        ExceedsPendingTransferAmount = 31, "exceeds_pending_transfer_amount";
        PendingTransferHasDifferentAmount = 32, "pending_transfer_has_different_amount";
        PendingTransferAlreadyPosted = 33, "pending_transfer_already_posted";
        PendingTransferAlreadyVoided = 34, "pending_transfer_already_voided";
        PendingTransferExpired = 35, "pending_transfer_expired";
        ImportedEventTimestampMustNotRegress = 60, "imported_event_timestamp_must_not_regress";
        ImportedEventTimestampMustPostdateDebitAccount = 61, "imported_event_timestamp_must_postdate_debit_account";
        ImportedEventTimestampMustPostdateCreditAccount = 62, "imported_event_timestamp_must_postdate_credit_account";
        ImportedEventTimeoutMustBeZero = 63, "imported_event_timeout_must_be_zero";
        DebitAccountAlreadyClosed = 65, "debit_account_already_closed";
        CreditAccountAlreadyClosed = 66, "credit_account_already_closed";
        OverflowsDebitsPending = 47, "overflows_debits_pending";
        OverflowsCreditsPending = 48, "overflows_credits_pending";
        OverflowsDebitsPosted = 49, "overflows_debits_posted";
        OverflowsCreditsPosted = 50, "overflows_credits_posted";
        OverflowsDebits = 51, "overflows_debits";
        OverflowsCredits = 52, "overflows_credits";
        OverflowsTimeout = 53, "overflows_timeout";
        ExceedsCredits = 54, "exceeds_credits";
        ExceedsDebits = 55, "exceeds_debits";
    }
}

impl CreateAccountResult {
    /// True for `Ok` and `Exists` (the event's effect is in the ledger).
    pub fn is_ok_or_exists(self) -> bool {
        matches!(self, CreateAccountResult::Ok | CreateAccountResult::Exists)
    }
}

impl CreateTransferResult {
    /// True for `Ok` and `Exists` (the event's effect is in the ledger).
    pub fn is_ok_or_exists(self) -> bool {
        matches!(
            self,
            CreateTransferResult::Ok | CreateTransferResult::Exists
        )
    }
}

/// The query of `get_account_transfers` and `get_account_balances` (TigerBeetle 0.16
/// `AccountFilter`). Every condition given must hold (AND); a zero `user_data_*` or `code`
/// means no condition on that field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct AccountFilter {
    pub account_id: u128,
    /// Only transfers with this `user_data_128` (0: any).
    pub user_data_128: u128,
    /// Only transfers with this `user_data_64` (0: any).
    pub user_data_64: u64,
    /// Only transfers with this `user_data_32` (0: any).
    pub user_data_32: u32,
    /// Only transfers with this `code` (0: any).
    pub code: u16,
    /// Inclusive lower bound; 0 means no bound.
    pub timestamp_min: u64,
    /// Inclusive upper bound; 0 means no bound.
    pub timestamp_max: u64,
    /// At most this many results (capped at `BATCH_EVENTS_MAX`); 0 returns nothing.
    pub limit: u32,
    /// Include transfers where the account is the debit side.
    pub debits: bool,
    /// Include transfers where the account is the credit side.
    pub credits: bool,
    /// Newest first.
    pub reversed: bool,
}

/// The query of `query_accounts` and `query_transfers` (TigerBeetle 0.16 `QueryFilter`): every
/// non-zero field must match (AND); zero means no condition on that field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct QueryFilter {
    pub user_data_128: u128,
    pub user_data_64: u64,
    pub user_data_32: u32,
    pub ledger: u32,
    pub code: u16,
    /// Inclusive lower bound; 0 means no bound.
    pub timestamp_min: u64,
    /// Inclusive upper bound; 0 means no bound.
    pub timestamp_max: u64,
    /// At most this many results (capped at `BATCH_EVENTS_MAX`); 0 returns nothing.
    pub limit: u32,
    /// Newest first.
    pub reversed: bool,
}

/// An account's balances right after one of its transfers (TigerBeetle `AccountBalance`),
/// kept only for accounts with the `history` flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct AccountBalance {
    pub debits_pending: u128,
    pub debits_posted: u128,
    pub credits_pending: u128,
    pub credits_posted: u128,
    /// The timestamp of the transfer that produced these balances.
    pub timestamp: u64,
}

/// An operation that changes state: what the write-ahead log records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    CreateAccounts(Vec<Account>),
    CreateTransfers(Vec<Transfer>),
}

/// The reply to one `Operation`: one result per event, in order (dense, unlike TigerBeetle's
/// sparse list of failures).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperationReply {
    CreateAccounts(Vec<CreateAccountResult>),
    CreateTransfers(Vec<CreateTransferResult>),
}

impl Operation {
    /// The number of events in the operation.
    pub fn len(&self) -> usize {
        match self {
            Operation::CreateAccounts(events) => events.len(),
            Operation::CreateTransfers(events) => events.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_names_round_trip() {
        for (flag, name) in AccountFlags::ALL {
            assert_eq!(AccountFlags::from_name(name), Some(*flag));
            assert!(!flag.has_reserved());
        }
        for (flag, name) in TransferFlags::ALL {
            assert_eq!(TransferFlags::from_name(name), Some(*flag));
        }
        assert_eq!(TransferFlags::DEFINED.bits(), 0x1ff);
        assert_eq!(AccountFlags::DEFINED.bits(), 0b11_1111);
        assert_eq!(AccountFlags::from_name("imported"), Some(AccountFlags::IMPORTED));
        assert_eq!(AccountFlags::IMPORTED.bits(), 1 << 4);
        assert_eq!(TransferFlags::IMPORTED.bits(), 1 << 8);
        assert!(AccountFlags::from_bits_retain(1 << 6).has_reserved());
        assert!(TransferFlags::from_bits_retain(1 << 9).has_reserved());
    }

    #[test]
    fn result_codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in CreateTransferResult::ALL {
            assert!(seen.insert(r.code()));
            assert_eq!(CreateTransferResult::from_code(r.code()), Some(*r));
        }
        let mut seen = std::collections::HashSet::new();
        for r in CreateAccountResult::ALL {
            assert!(seen.insert(r.code()));
            assert_eq!(CreateAccountResult::from_code(r.code()), Some(*r));
        }
        assert_eq!(CreateAccountResult::Ok.name(), "ok");
        assert_eq!(
            CreateTransferResult::ExceedsCredits.name(),
            "exceeds_credits"
        );
    }
}
