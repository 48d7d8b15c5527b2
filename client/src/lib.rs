//! # drsdb client
//!
//! The Rust driver for drsdb. It connects to a list of index servers over
//! mutual TLS, checks each statement's syntax locally (a malformed
//! statement never leaves the process), sends it with typed parameters,
//! and streams typed rows back: from the index server, or, for results
//! that are the concatenation or merge of per-shard results, straight
//! from the storage servers with the tickets the index server handed out
//! (`direct`). A read pinned to one shard by its parameters (`WHERE id =
//! ?`) comes with a route the session keeps by statement text: the next
//! reads of that text go to their shard's leader directly, skipping the
//! index server (`client`).
//!
//! ```no_run
//! use drsdb_client::{params, Client};
//! use drsdb_common::tls;
//!
//! # async fn demo() -> drsdb_common::Result<()> {
//! let tls = tls::client_config_in("drsdb-data/certs".as_ref());
//! let mut db = Client::connect(&["127.0.0.1:7001".into()], &tls).await?;
//! db.execute("CREATE TABLE kv(k TEXT PRIMARY KEY, v INTEGER)", &[]).await?;
//! db.execute("INSERT INTO kv VALUES (?1, ?2)", params!["a", 1]).await?;
//! let mut rows = db.query("SELECT k, v FROM kv", &[]).await?;
//! while let Some(row) = rows.next().await? {
//!     let (k, v): (String, i64) = (row.get(0)?, row.get(1)?);
//!     println!("{k} = {v}");
//! }
//! # Ok(()) }
//! ```
//!
//! Many rows go in fastest through [`Client::loader`] (rows grouped by
//! shard, batches in parallel) or, one batch at a time,
//! [`Client::execute_many`].
//!
//! This crate is the driver alone: it links neither server nor Raft. The
//! `drsdb` binary (shell, certificates, `drsdb local`, `drsdb bench`) is
//! the `drsdb-cli` package.

mod client;
mod direct;
mod load;
mod rows;
mod syntax;

pub use client::{Client, TxnOutcome};
pub use drsdb_common::{Error, Result, Value};
pub use load::{LoadOptions, Loader, OnConflict, DEFAULT_BATCH, DEFAULT_PARALLEL};
pub use rows::{Column, FromValue, ResultSet, Row, RowStream, Summary};
pub use syntax::check as check_syntax;
