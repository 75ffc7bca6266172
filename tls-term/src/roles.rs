//! Client identity → role, from configuration: the one `Role` type of the product and the one
//! map that assigns it.
//!
//! Identities are typed (docs/tls.md, "Identities and roles"): `dns:NAME` (a subjectAltName
//! dNSName), `email:ADDR` (an rfc822Name), `uri:URI` (a uniformResourceIdentifier, e.g. a
//! SPIFFE id) and `cn:NAME` (the subject commonName). An entry only ever matches a name of its
//! own type: a CA that lets a subscriber choose its CN cannot mint the role of a DNS identity.
//! Lookups are exact and case-sensitive: the map holds what the operator wrote, and
//! certificates are issued by the operator's own CAs, so there is no second spelling to
//! normalise.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use crate::identity::PeerNames;

/// Upper bound on configured identities: the map lives in every worker.
pub const ROLE_ENTRIES_MAX: usize = 65_536;
/// Upper bound on an identity's length without its type prefix (RFC 5280's ub-common-name is
/// 64; a DNS name is at most 253 bytes, RFC 1035 §2.3.4).
pub const IDENTITY_BYTES_MAX: usize = 255;

/// What a client may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

/// Where in a certificate a name comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NameKind {
    /// subjectAltName dNSName (RFC 5280 §4.2.1.6).
    Dns,
    /// subjectAltName rfc822Name.
    Email,
    /// subjectAltName uniformResourceIdentifier (SPIFFE ids are URIs).
    Uri,
    /// Subject commonName (RFC 5280 §4.1.2.6).
    Cn,
}

impl NameKind {
    /// The prefix of the typed spelling, without the colon.
    pub fn prefix(self) -> &'static str {
        match self {
            NameKind::Dns => "dns",
            NameKind::Email => "email",
            NameKind::Uri => "uri",
            NameKind::Cn => "cn",
        }
    }
}

/// A typed name: `dns:payments.bank.example`, `cn:client`, `uri:spiffe://bank.example/payments`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub kind: NameKind,
    pub name: String,
}

impl Identity {
    /// A typed name, if `name` is usable as one: not empty, at most [`IDENTITY_BYTES_MAX`]
    /// bytes, no control character (it ends up in log lines).
    pub fn new(kind: NameKind, name: &str) -> Option<Identity> {
        let usable = !name.is_empty()
            && name.len() <= IDENTITY_BYTES_MAX
            && !name.chars().any(char::is_control);
        usable.then(|| Identity {
            kind,
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.prefix(), self.name)
    }
}

impl FromStr for Identity {
    type Err = RoleError;

    /// Parses the typed spelling; an untyped or unknown prefix is an error telling the
    /// operator what to write (never a guess: `client` could be a CN or a DNS name).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let untyped = || RoleError::Untyped {
            identity: s.to_owned(),
        };
        let (prefix, name) = s.split_once(':').ok_or_else(untyped)?;
        let kind = match prefix {
            "dns" => NameKind::Dns,
            "email" => NameKind::Email,
            "uri" => NameKind::Uri,
            "cn" => NameKind::Cn,
            _ => return Err(untyped()),
        };
        Identity::new(kind, name).ok_or_else(|| RoleError::BadIdentity {
            identity: s.to_owned(),
        })
    }
}

/// SHA-256 of an issuing CA certificate's DER: what `issuer = "sha256:<hex>"` pins.
pub type CaFingerprint = [u8; 32];

/// Parses `sha256:<64 hex digits>` (upper or lower case; `:` separators between bytes, as
/// `openssl x509 -fingerprint -sha256` prints them, are accepted).
pub fn parse_fingerprint(s: &str) -> Option<CaFingerprint> {
    let hex: String = s
        .strip_prefix("sha256:")?
        .chars()
        .filter(|c| *c != ':')
        .collect();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// One configured entry: the role, and optionally the CA that must have issued the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleEntry {
    pub role: Role,
    pub issuer: Option<CaFingerprint>,
}

/// Configuration errors of the role map.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error("identity {identity:?} has unknown role {role:?} (expected \"read\" or \"write\")")]
    UnknownRole { identity: String, role: String },
    #[error(
        "identity {identity:?} has no type: write \"cn:{identity}\" for a subject common name, \
         \"dns:{identity}\" for a subjectAltName DNS name (or \"email:\", \"uri:\")"
    )]
    Untyped { identity: String },
    #[error("identity {identity:?} is listed more than once")]
    Duplicate { identity: String },
    #[error("identity {identity:?} is empty, longer than 255 bytes or holds a control character")]
    BadIdentity { identity: String },
    #[error(
        "identity {identity:?}: issuer {issuer:?} is not \"sha256:\" and 64 hex digits \
         (the SHA-256 of the issuing CA certificate's DER)"
    )]
    BadIssuer { identity: String, issuer: String },
    #[error("more than {ROLE_ENTRIES_MAX} role entries")]
    TooMany,
}

/// Typed identity → role (optionally pinned to an issuing CA), and the role of a client without
/// a certificate. Built from configuration at start and on every reload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleMap {
    entries: HashMap<Identity, RoleEntry>,
    anonymous: Option<Role>,
}

/// What [`RoleMap::resolve`] found for one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The typed name that gave the role, or, with no role, the certificate's first name in
    /// precedence order (dns, email, uri, cn) for the logs. `None`: no certificate, or one
    /// with no usable name.
    pub identity: Option<String>,
    pub role: Option<Role>,
}

impl RoleMap {
    /// Builds the map from configuration entries `typed identity -> (role, optional issuer)`.
    /// A duplicated identity is an error rather than "last wins": the operator meant one of
    /// them and we cannot tell which.
    pub fn from_entries<I, K, V>(entries: I) -> Result<Self, RoleError>
    where
        I: IntoIterator<Item = (K, V, Option<String>)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut map = HashMap::new();
        for (identity, role, issuer) in entries {
            let key = identity.as_ref();
            let parsed: Identity = key.parse()?;
            let role: Role = role.as_ref().parse().map_err(|_| RoleError::UnknownRole {
                identity: key.to_owned(),
                role: role.as_ref().to_owned(),
            })?;
            let issuer = match issuer {
                None => None,
                Some(text) => Some(parse_fingerprint(&text).ok_or(RoleError::BadIssuer {
                    identity: key.to_owned(),
                    issuer: text,
                })?),
            };
            if map.len() == ROLE_ENTRIES_MAX {
                return Err(RoleError::TooMany);
            }
            if map.insert(parsed, RoleEntry { role, issuer }).is_some() {
                return Err(RoleError::Duplicate {
                    identity: key.to_owned(),
                });
            }
        }
        Ok(RoleMap {
            entries: map,
            anonymous: None,
        })
    }

    /// Plain `identity -> role` entries, without issuer pins.
    pub fn from_roles<I, K, V>(entries: I) -> Result<Self, RoleError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        RoleMap::from_entries(entries.into_iter().map(|(k, v)| (k, v, None)))
    }

    /// The role of a client that presented no certificate (only possible without mTLS).
    pub fn with_anonymous(mut self, role: Option<Role>) -> Self {
        self.anonymous = role;
        self
    }

    /// The roles of the dev certificates [`crate::certs::init`] issues:
    /// `cn:client` may write, `cn:reader` may only read.
    pub fn lab() -> Self {
        RoleMap::from_roles([("cn:client", "write"), ("cn:reader", "read")])
            .expect("static entries are valid")
    }

    /// The entry of one typed identity.
    pub fn entry(&self, identity: &Identity) -> Option<RoleEntry> {
        self.entries.get(identity).copied()
    }

    /// Whether any entry is pinned to an issuer (then the issuer of each chain is worked out).
    pub fn has_pins(&self) -> bool {
        self.entries.values().any(|e| e.issuer.is_some())
    }

    /// The role of a client: `names` of its certificate (`None`: it presented none), `issuer`
    /// the CA its chain ends at (asked only when a matching entry is pinned).
    ///
    /// Every name of the certificate is looked up under its own type. An entry pinned to an
    /// issuer matches only chains that CA issued. When several entries match with different
    /// roles, the least privilege wins (`read`): a certificate that names two identities
    /// with different roles is an issuance or configuration mistake, and reading is the
    /// harm-free half of it. The identity reported is the one that gave that role (the first
    /// in precedence order dns, email, uri, cn, then certificate order).
    pub fn resolve(
        &self,
        names: Option<&PeerNames>,
        issuer: impl FnOnce() -> Option<CaFingerprint>,
    ) -> Resolved {
        let Some(names) = names else {
            return Resolved {
                identity: None,
                role: self.anonymous,
            };
        };
        let mut issuer = Some(issuer);
        let mut issuer_value: Option<Option<CaFingerprint>> = None;
        let mut best: Option<(&Identity, Role)> = None;
        for name in names.in_precedence_order() {
            let Some(entry) = self.entries.get(name) else {
                continue;
            };
            if let Some(pin) = entry.issuer {
                let actual = *issuer_value.get_or_insert_with(|| issuer.take().and_then(|f| f()));
                if actual != Some(pin) {
                    continue;
                }
            }
            match best {
                Some((_, role)) if role <= entry.role => {}
                _ => best = Some((name, entry.role)),
            }
        }
        match best {
            Some((identity, role)) => Resolved {
                identity: Some(identity.to_string()),
                role: Some(role),
            },
            None => Resolved {
                identity: names.in_precedence_order().next().map(ToString::to_string),
                role: None,
            },
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> PeerNames {
        PeerNames::from_identities(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    fn resolve(map: &RoleMap, list: &[&str]) -> (Option<String>, Option<Role>) {
        let r = map.resolve(Some(&names(list)), || None);
        (r.identity, r.role)
    }

    #[test]
    fn typed_lookups() {
        let map = RoleMap::from_roles([("cn:client", "write"), ("cn:reader", "read")]).unwrap();
        assert_eq!(
            resolve(&map, &["cn:client"]),
            (Some("cn:client".into()), Some(Role::Write))
        );
        assert_eq!(
            resolve(&map, &["cn:reader"]),
            (Some("cn:reader".into()), Some(Role::Read))
        );
        // Case-sensitive, and the type is part of the name.
        assert_eq!(resolve(&map, &["cn:Client"]).1, None);
        assert_eq!(
            resolve(&map, &["dns:client"]),
            (Some("dns:client".into()), None)
        );
        assert!(Role::Write.may_write());
        assert!(!Role::Read.may_write());
        assert_eq!(map, RoleMap::lab());
        assert_eq!(map.len(), 2);
        // No certificate: the anonymous role.
        let anon = RoleMap::default().with_anonymous(Some(Role::Read));
        assert_eq!(anon.resolve(None, || None).role, Some(Role::Read));
        assert_eq!(RoleMap::default().resolve(None, || None).role, None);
    }

    #[test]
    fn a_cn_never_gets_the_role_of_a_dns_name() {
        let map = RoleMap::from_roles([("dns:payments-gw", "write")]).unwrap();
        assert_eq!(resolve(&map, &["cn:payments-gw"]).1, None);
        assert_eq!(
            resolve(&map, &["dns:payments-gw", "cn:other"]),
            (Some("dns:payments-gw".into()), Some(Role::Write))
        );
        let uri = RoleMap::from_roles([("uri:spiffe://bank.example/payments", "write")]).unwrap();
        assert_eq!(
            resolve(&uri, &["uri:spiffe://bank.example/payments"]).1,
            Some(Role::Write)
        );
        assert_eq!(
            resolve(&uri, &["dns:spiffe://bank.example/payments"]).1,
            None
        );
    }

    #[test]
    fn several_matches_take_the_least_privilege() {
        let map = RoleMap::from_roles([
            ("dns:a.example", "write"),
            ("email:ops@bank.example", "read"),
            ("cn:gw", "write"),
        ])
        .unwrap();
        assert_eq!(
            resolve(&map, &["dns:a.example", "email:ops@bank.example", "cn:gw"]),
            (Some("email:ops@bank.example".into()), Some(Role::Read))
        );
        // Equal roles: the first in precedence order is reported.
        assert_eq!(
            resolve(&map, &["cn:gw", "dns:a.example"]),
            (Some("dns:a.example".into()), Some(Role::Write))
        );
        // Nothing matches: the first name in precedence order, for the logs.
        assert_eq!(
            resolve(&map, &["cn:x", "email:x@y", "dns:z"]),
            (Some("dns:z".into()), None)
        );
    }

    #[test]
    fn a_pinned_entry_needs_its_issuer() {
        let pin = [7u8; 32];
        let hex: String = pin.iter().map(|b| format!("{b:02x}")).collect();
        let map = RoleMap::from_entries([
            ("dns:pay.example", "write", Some(format!("sha256:{hex}"))),
            ("cn:reader", "read", None),
        ])
        .unwrap();
        assert!(map.has_pins());
        let n = names(&["dns:pay.example"]);
        assert_eq!(map.resolve(Some(&n), || Some(pin)).role, Some(Role::Write));
        assert_eq!(map.resolve(Some(&n), || Some([8u8; 32])).role, None);
        assert_eq!(map.resolve(Some(&n), || None).role, None);
        // The issuer is only worked out when a pinned entry is in play.
        let r = map.resolve(Some(&names(&["cn:reader"])), || panic!("not needed"));
        assert_eq!(r.role, Some(Role::Read));
    }

    #[test]
    fn fingerprints_parse() {
        let hex = "AB".repeat(32);
        assert_eq!(
            parse_fingerprint(&format!("sha256:{hex}")),
            Some([0xab; 32])
        );
        let colons = vec!["ab"; 32].join(":");
        assert_eq!(
            parse_fingerprint(&format!("sha256:{colons}")),
            Some([0xab; 32])
        );
        assert_eq!(parse_fingerprint(&hex), None, "the algorithm is required");
        assert_eq!(parse_fingerprint("sha256:abcd"), None);
        assert_eq!(
            parse_fingerprint(&format!("sha256:{}", "zz".repeat(32))),
            None
        );
        assert_eq!(
            parse_fingerprint(&format!("sha256:{}é", "a".repeat(62))),
            None
        );
    }

    #[test]
    fn bad_entries_are_refused() {
        assert_eq!(
            RoleMap::from_roles([("cn:client", "admin")]),
            Err(RoleError::UnknownRole {
                identity: "cn:client".into(),
                role: "admin".into()
            })
        );
        assert_eq!(
            RoleMap::from_roles([("cn:client", "write"), ("cn:client", "read")]),
            Err(RoleError::Duplicate {
                identity: "cn:client".into()
            })
        );
        // Untyped: a clear error that says what to write.
        let untyped = RoleMap::from_roles([("client", "write")]).unwrap_err();
        assert_eq!(
            untyped,
            RoleError::Untyped {
                identity: "client".into()
            }
        );
        assert!(untyped.to_string().contains("\"cn:client\""), "{untyped}");
        assert!(untyped.to_string().contains("\"dns:client\""), "{untyped}");
        assert!(matches!(
            RoleMap::from_roles([("spiffe://bank.example/x", "write")]),
            Err(RoleError::Untyped { .. })
        ));
        assert!(matches!(
            RoleMap::from_roles([("cn:", "read")]),
            Err(RoleError::BadIdentity { .. })
        ));
        let long = format!("cn:{}", "x".repeat(IDENTITY_BYTES_MAX + 1));
        assert!(matches!(
            RoleMap::from_roles([(long.as_str(), "read")]),
            Err(RoleError::BadIdentity { .. })
        ));
        assert!(matches!(
            RoleMap::from_entries([("cn:a", "read", Some("md5:00".to_owned()))]),
            Err(RoleError::BadIssuer { .. })
        ));
        assert!(RoleMap::from_roles(Vec::<(String, String)>::new())
            .unwrap()
            .is_empty());
    }
}
