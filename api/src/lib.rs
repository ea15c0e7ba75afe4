//! cairnd's library: the node API over mutual TLS (issue 14), its roles,
//! PKI and client. The binaries `cairnd` and `cairnctl` and the `cairn gen`
//! commands are thin layers over it. Without the `net` feature only the
//! roles, PKI and client config are built (what `cairn gen` needs).

pub mod client_config;
pub mod gen;
pub mod pki;
pub mod role;
pub mod routes;

#[cfg(feature = "net")]
pub mod client;
#[cfg(feature = "net")]
pub mod control;
#[cfg(feature = "net")]
pub mod node;
#[cfg(feature = "net")]
pub mod server;
