//! # drsdb command line
//!
//! The `drsdb` binary (`src/bin/drsdb`): the shell, `drsdb certs`,
//! `drsdb local` and `drsdb bench`. It links both servers, because
//! `drsdb local` runs them as child processes of itself.
//!
//! The library holds [`local`]: a whole cluster as child processes, which
//! the binary and the test harness (`sql-tests`) share. Programs that only
//! talk to a cluster use the driver, `drsdb-client`, which links neither
//! server.

pub mod local;
