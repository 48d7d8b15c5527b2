//! Generated code for drsdb's contracts between tiers (`proto/*.proto`):
//! the `Sql` service (client → index server, `drsdb.proto`), the `Storage`
//! service with the statements and write commands it carries
//! (index server → storage server, `storage.proto`), and the `Raft` service
//! with the on-disk formats of a group's log and snapshots (storage server
//! ↔ storage server, `raft.proto`). `results.proto` holds what they share:
//! SQL values and result streams. Neither tier owns these messages; each
//! converts them to its own types at its edge.
#![allow(clippy::all, missing_docs)]

tonic::include_proto!("drsdb.v1");
