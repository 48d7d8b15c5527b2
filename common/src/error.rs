//! drsdb's one error type, grouped by what the caller should do about it,
//! and the one place where it crosses the wire: as a `tonic::Status`
//! (a failed call) or as the `Error` message (a statement's outcome inside
//! a write's result, and the outcome a group records for deduplication).
//!
//! | kind | caller should | gRPC code |
//! | --- | --- | --- |
//! | `InvalidInput` | fix the statement or its arguments | `InvalidArgument` |
//! | `Retryable` | retry the whole statement or transaction | `Aborted` |
//! | `NotLeader` | send again to the named leader | `FailedPrecondition` |
//! | `StaleSchema` | reload the catalog, plan again | `Aborted` |
//! | `Unavailable` | try another server, or later | `Unavailable` |
//! | `Corrupt` | stop and restore from a replica | `DataLoss` |
//! | `Io` | check the disk or network named in the message | `Internal` |
//! | `Internal` | report a bug: drsdb failed an assertion of its own | `Internal` |

use std::fmt;

use crate::ids::{GroupId, NodeId};

/// The result type used across drsdb.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error, classified by the action it asks of the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request cannot succeed as sent: malformed SQL, an unknown table,
    /// a constraint violation, a wrong type. Retrying it unchanged fails again.
    #[error("{0}")]
    InvalidInput(String),
    /// A transient conflict or interruption; the same request may succeed
    /// if sent again (for a transaction: from its BEGIN).
    #[error("{0} (retryable)")]
    Retryable(String),
    /// This replica is not the leader of `group`; `leader` names the one it
    /// believes leads, if any.
    #[error("node is not the leader of group {group}{}", leader.map(|l| format!("; try node {l}")).unwrap_or_default())]
    NotLeader {
        /// The group the request was for.
        group: GroupId,
        /// The leader this replica knows of.
        leader: Option<NodeId>,
    },
    /// The statement was planned with a catalog older (or newer) than the
    /// schema its shard has now: the planner's idea of the tables may be
    /// wrong. Reload the catalog and plan again.
    #[error(
        "the shard's schema changed (it is at version {version}); reload the catalog and plan the statement again"
    )]
    StaleSchema {
        /// The shard's schema version.
        version: i64,
    },
    /// The server or group cannot serve now (no leader, shutting down, not
    /// reachable). Try another server or wait.
    #[error("{0}")]
    Unavailable(String),
    /// Stored data failed a check. The replica must not serve it.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// A disk or network operation failed.
    #[error("I/O error: {0}")]
    Io(String),
    /// drsdb failed a check of its own while serving the request (a bug,
    /// see [`catch_panic`]); the request was abandoned, the server runs on.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Shorthand for [`Error::InvalidInput`].
    pub fn invalid(msg: impl fmt::Display) -> Self {
        Error::InvalidInput(msg.to_string())
    }

    /// Shorthand for [`Error::Unavailable`].
    pub fn unavailable(msg: impl fmt::Display) -> Self {
        Error::Unavailable(msg.to_string())
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(msg: impl fmt::Display) -> Self {
        Error::Io(msg.to_string())
    }

    /// The same error with `note` after its message (errors without a
    /// message of their own are returned as they are).
    pub fn noted(self, note: impl fmt::Display) -> Self {
        match self {
            Error::InvalidInput(m) => Error::InvalidInput(format!("{m}; {note}")),
            Error::Retryable(m) => Error::Retryable(format!("{m}; {note}")),
            Error::Unavailable(m) => Error::Unavailable(format!("{m}; {note}")),
            Error::Corrupt(m) => Error::Corrupt(format!("{m}; {note}")),
            Error::Io(m) => Error::Io(format!("{m}; {note}")),
            Error::Internal(m) => Error::Internal(format!("{m}; {note}")),
            e @ (Error::NotLeader { .. } | Error::StaleSchema { .. }) => e,
        }
    }

    /// True when sending the same request again (possibly elsewhere) may
    /// succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Retryable(_) | Error::NotLeader { .. } | Error::StaleSchema { .. } | Error::Unavailable(_)
        )
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}

/// True when a failed call certainly never reached the server: the
/// connection could not be opened, or the server's name did not resolve.
/// (A connection that broke after the request went out does not count:
/// the server may have acted on it.)
pub fn never_arrived(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable && {
        let m = status.message().to_ascii_lowercase();
        ["tcp connect error", "error trying to connect", "connection refused", "dns error"]
            .iter()
            .any(|s| m.contains(s))
    }
}

/// True when `status` is an answer from a drsdb server (it carries an
/// error kind), not a failure of the transport on the way.
pub fn is_answer(status: &tonic::Status) -> bool {
    status.metadata().contains_key(KIND_KEY)
}

/// Runs the work of one request, turning a panic in it (a bug) into an
/// error answer to that request: the process, its other requests and its
/// connections carry on.
pub async fn catch_panic<T>(work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(work).catch_unwind().await {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("a panic");
            tracing::error!("request abandoned after a panic: {what}");
            Err(Error::Internal(format!(
                "the server hit a bug while serving this request ({what}) and abandoned it; the server runs on; \
                 please report this with the statement"
            )))
        }
    }
}

/// Metadata keys that carry the error kind and leader hint across gRPC.
const KIND_KEY: &str = "drsdb-error";
const GROUP_KEY: &str = "drsdb-group";
const LEADER_KEY: &str = "drsdb-leader";
const VERSION_KEY: &str = "drsdb-schema-version";

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use tonic::Code;
        let (code, kind) = match &e {
            Error::InvalidInput(_) => (Code::InvalidArgument, "invalid"),
            Error::Retryable(_) => (Code::Aborted, "retryable"),
            Error::NotLeader { .. } => (Code::FailedPrecondition, "not-leader"),
            Error::StaleSchema { .. } => (Code::Aborted, "stale-schema"),
            Error::Unavailable(_) => (Code::Unavailable, "unavailable"),
            Error::Corrupt(_) => (Code::DataLoss, "corrupt"),
            Error::Io(_) => (Code::Internal, "io"),
            Error::Internal(_) => (Code::Internal, "internal"),
        };
        let message = match &e {
            Error::InvalidInput(m)
            | Error::Retryable(m)
            | Error::Unavailable(m)
            | Error::Corrupt(m)
            | Error::Io(m)
            | Error::Internal(m) => m.clone(),
            Error::NotLeader { .. } | Error::StaleSchema { .. } => e.to_string(),
        };
        let mut status = tonic::Status::new(code, message);
        let md = status.metadata_mut();
        md.insert(KIND_KEY, tonic::metadata::MetadataValue::from_static(kind));
        match &e {
            Error::NotLeader { group, leader } => {
                md.insert(GROUP_KEY, group.0.into());
                if let Some(l) = leader {
                    md.insert(LEADER_KEY, l.0.into());
                }
            }
            Error::StaleSchema { version } => {
                md.insert(VERSION_KEY, version.to_string().parse().expect("digits are valid metadata"));
            }
            _ => {}
        }
        status
    }
}

impl From<Error> for drsdb_proto::Error {
    fn from(e: Error) -> Self {
        use drsdb_proto::error::Kind;
        let mut m = drsdb_proto::Error { message: e.to_string(), ..Default::default() };
        let kind = match e {
            Error::InvalidInput(msg) => (Kind::InvalidInput, msg),
            Error::Retryable(msg) => (Kind::Retryable, msg),
            Error::NotLeader { group, leader } => {
                m.group = group.0;
                m.leader = leader.map(|l| l.0);
                (Kind::NotLeader, std::mem::take(&mut m.message))
            }
            Error::StaleSchema { version } => {
                m.schema_version = version;
                (Kind::StaleSchema, std::mem::take(&mut m.message))
            }
            Error::Unavailable(msg) => (Kind::Unavailable, msg),
            Error::Corrupt(msg) => (Kind::Corrupt, msg),
            Error::Io(msg) => (Kind::Io, msg),
            Error::Internal(msg) => (Kind::Internal, msg),
        };
        m.set_kind(kind.0);
        m.message = kind.1;
        m
    }
}

impl From<drsdb_proto::Error> for Error {
    fn from(m: drsdb_proto::Error) -> Self {
        use drsdb_proto::error::Kind;
        match m.kind() {
            Kind::InvalidInput => Error::InvalidInput(m.message),
            Kind::Retryable => Error::Retryable(m.message),
            Kind::NotLeader => Error::NotLeader { group: GroupId(m.group), leader: m.leader.map(NodeId) },
            Kind::StaleSchema => Error::StaleSchema { version: m.schema_version },
            Kind::Unavailable => Error::Unavailable(m.message),
            Kind::Corrupt => Error::Corrupt(m.message),
            Kind::Io => Error::Io(m.message),
            Kind::Internal => Error::Internal(m.message),
            Kind::Unspecified => {
                Error::Internal(format!("an error of a kind this version does not know: {}", m.message))
            }
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code;
        let md = s.metadata();
        let number = |key: &str| -> Option<u64> { md.get(key)?.to_str().ok()?.parse().ok() };
        let kind = md.get(KIND_KEY).and_then(|v| v.to_str().ok());
        let msg = s.message().to_string();
        match kind {
            Some("invalid") => Error::InvalidInput(msg),
            Some("retryable") => Error::Retryable(msg),
            Some("not-leader") => Error::NotLeader {
                group: GroupId(number(GROUP_KEY).unwrap_or_default()),
                leader: number(LEADER_KEY).map(NodeId),
            },
            Some("stale-schema") => Error::StaleSchema {
                version: md.get(VERSION_KEY).and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or_default(),
            },
            Some("unavailable") => Error::Unavailable(msg),
            Some("corrupt") => Error::Corrupt(msg),
            Some("io") => Error::Io(msg),
            Some("internal") => Error::Internal(msg),
            // A status that did not come from drsdb: transport failures,
            // TLS refusals, timeouts.
            _ => match s.code() {
                Code::InvalidArgument | Code::NotFound | Code::AlreadyExists => Error::InvalidInput(msg),
                Code::Aborted => Error::Retryable(msg),
                // Without drsdb's metadata, Unknown is the transport's
                // (a connection that broke mid-request).
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                    Error::Unavailable(if msg.is_empty() { "server unavailable".into() } else { msg })
                }
                Code::Unauthenticated | Code::PermissionDenied => {
                    Error::InvalidInput(format!("refused: {msg}; check the client certificate and CA"))
                }
                Code::ResourceExhausted | Code::OutOfRange => {
                    Error::InvalidInput(format!("{msg}; send a smaller statement or fewer rows at once"))
                }
                Code::DataLoss => Error::Corrupt(msg),
                _ => Error::Io(format!("{}: {msg}", s.code())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_status_and_message() {
        let errors = [
            Error::InvalidInput("no such table: t".into()),
            Error::Retryable("conflict".into()),
            Error::NotLeader { group: GroupId(3), leader: Some(NodeId(2)) },
            Error::NotLeader { group: GroupId(1), leader: None },
            Error::StaleSchema { version: 17 },
            Error::Unavailable("no leader".into()),
            Error::Corrupt("bad checksum".into()),
            Error::Io("disk full".into()),
            Error::Internal("assertion failed".into()),
        ];
        for e in errors {
            let status: tonic::Status = e.clone().into();
            assert_eq!(Error::from(status), e);
            assert_eq!(Error::from(drsdb_proto::Error::from(e.clone())), e);
        }
    }

    #[tokio::test]
    async fn a_panic_in_a_request_becomes_an_error_answer() {
        let answer: Result<()> = catch_panic(async { panic!("boom") }).await;
        assert!(matches!(&answer, Err(Error::Internal(m)) if m.contains("boom")), "{answer:?}");
    }

    #[test]
    fn only_calls_that_could_not_connect_never_arrived() {
        for m in ["tcp connect error: Connection refused (os error 111)", "dns error", "error trying to connect"] {
            assert!(never_arrived(&tonic::Status::unavailable(m)), "{m}");
        }
        assert!(!never_arrived(&tonic::Status::unavailable("connection reset by peer")));
        assert!(!never_arrived(&tonic::Status::internal("dns error")), "another code: the call may have run");
    }

    #[test]
    fn foreign_status_maps_by_code() {
        let e = Error::from(tonic::Status::unavailable("connection refused"));
        assert!(e.is_transient(), "{e:?}");
    }
}
