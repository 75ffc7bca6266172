//! Client identity → role, from configuration.
//!
//! The identity is the string [`crate::Session::identity`] returns. Lookups are exact and
//! case-sensitive: the map holds what the operator wrote, and certificates are issued by the
//! operator's own CA, so there is no second spelling to normalise.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// Upper bound on configured identities: the map lives in every worker.
pub const ROLE_ENTRIES_MAX: usize = 65_536;
/// Upper bound on an identity's length (RFC 5280's ub-common-name is 64; a DNS name is at most
/// 253 bytes, RFC 1035 §2.3.4).
pub const IDENTITY_BYTES_MAX: usize = 255;

/// What a client may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// GET only.
    Read,
    /// GET and POST (create accounts and transfers).
    Write,
}

impl Role {
    /// Whether the role may change the ledger.
    pub fn may_write(self) -> bool {
        matches!(self, Role::Write)
    }

    /// The configuration spelling: "read" or "write".
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = RoleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            _ => Err(RoleError::UnknownRole {
                identity: String::new(),
                role: s.to_owned(),
            }),
        }
    }
}

/// Configuration errors of the role map.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error("identity {identity:?} has unknown role {role:?} (expected \"read\" or \"write\")")]
    UnknownRole { identity: String, role: String },
    #[error("identity {identity:?} is listed more than once")]
    Duplicate { identity: String },
    #[error("identity {identity:?} is empty or longer than 255 bytes")]
    BadIdentity { identity: String },
    #[error("more than {ROLE_ENTRIES_MAX} role entries")]
    TooMany,
}

/// Identity → role, built once at startup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleMap {
    roles: HashMap<String, Role>,
}

impl RoleMap {
    /// Builds the map from configuration entries `identity -> "write" | "read"`.
    /// A duplicated identity is an error rather than "last wins": the operator meant one of
    /// them and we cannot tell which.
    pub fn from_entries<I, K, V>(entries: I) -> Result<Self, RoleError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut roles = HashMap::new();
        for (identity, role) in entries {
            let identity = identity.as_ref();
            let role = role.as_ref();
            if identity.is_empty() || identity.len() > IDENTITY_BYTES_MAX {
                return Err(RoleError::BadIdentity {
                    identity: identity.to_owned(),
                });
            }
            let role: Role = role.parse().map_err(|_| RoleError::UnknownRole {
                identity: identity.to_owned(),
                role: role.to_owned(),
            })?;
            if roles.len() == ROLE_ENTRIES_MAX {
                return Err(RoleError::TooMany);
            }
            if roles.insert(identity.to_owned(), role).is_some() {
                return Err(RoleError::Duplicate {
                    identity: identity.to_owned(),
                });
            }
        }
        Ok(RoleMap { roles })
    }

    /// The roles of the dev certificates [`crate::certs::init`] issues:
    /// `client` may write, `reader` may only read.
    pub fn lab() -> Self {
        RoleMap::from_entries([("client", "write"), ("reader", "read")])
            .expect("static entries are valid")
    }

    /// The role of `identity`; `None` for an identity the configuration does not list.
    pub fn role_of(&self, identity: &str) -> Option<Role> {
        self.roles.get(identity).copied()
    }

    pub fn len(&self) -> usize {
        self.roles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.roles.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        let map = RoleMap::from_entries([("client", "write"), ("reader", "read")]).unwrap();
        assert_eq!(map.role_of("client"), Some(Role::Write));
        assert_eq!(map.role_of("reader"), Some(Role::Read));
        assert_eq!(map.role_of("Client"), None, "lookups are case-sensitive");
        assert_eq!(map.role_of("mallory"), None);
        assert_eq!(map.role_of(""), None);
        assert!(Role::Write.may_write());
        assert!(!Role::Read.may_write());
        assert_eq!(map, RoleMap::lab());
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn bad_entries_are_refused() {
        assert_eq!(
            RoleMap::from_entries([("client", "admin")]),
            Err(RoleError::UnknownRole {
                identity: "client".into(),
                role: "admin".into()
            })
        );
        assert_eq!(
            RoleMap::from_entries([("client", "write"), ("client", "read")]),
            Err(RoleError::Duplicate {
                identity: "client".into()
            })
        );
        assert_eq!(
            RoleMap::from_entries([("", "read")]),
            Err(RoleError::BadIdentity {
                identity: String::new()
            })
        );
        let long = "x".repeat(IDENTITY_BYTES_MAX + 1);
        assert!(matches!(
            RoleMap::from_entries([(long.as_str(), "read")]),
            Err(RoleError::BadIdentity { .. })
        ));
        assert!(RoleMap::from_entries(Vec::<(String, String)>::new())
            .unwrap()
            .is_empty());
    }
}
