//! cairnd's library: the node API over mutual TLS (issue 14), its roles,
//! PKI and client. The binaries `cairnd` and `cairnctl` and the `cairn gen`
//! commands are thin layers over it.

pub mod client;
pub mod client_config;
pub mod gen;
pub mod pki;
pub mod role;
pub mod routes;
pub mod server;
