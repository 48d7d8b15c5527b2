//! Generated gRPC code for drsdb's three services (see `proto/drsdb.proto`):
//! `Sql` (client → index server), `Storage` (index server → storage server)
//! and `Raft` (storage server ↔ storage server).
#![allow(clippy::all, missing_docs)]

tonic::include_proto!("drsdb.v1");
