//! TLS termination (rustls, sans-IO), mTLS identities and roles, dev certificates
#![forbid(unsafe_code)]
