//! What more than one tier of drsdb shares: the error type and its gRPC
//! mapping, the typed contract between the SQL and storage tiers
//! (`command`, and the `tier` trait the SQL tier calls it through), result
//! streams and their merge (`stream`), ids, SQL values, configuration, TLS and tickets, the limits
//! on servers' connections, and lexical SQL helpers.
//!
//! Nothing here does I/O beyond reading config and certificate files.

pub mod affinity;
pub mod command;
pub mod config;
pub mod connections;
pub mod error;
pub mod ids;
pub mod logging;
pub mod order;
pub mod shard;
pub mod sql;
pub mod stream;
pub mod ticket;
pub mod tier;
pub mod tls;
pub mod value;

pub use error::{Error, Result};
pub use ids::{GroupId, NodeId, TxnId};
pub use value::Value;
