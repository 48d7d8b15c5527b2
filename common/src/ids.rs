//! Identifiers. Each is a newtype so that a node id is never passed where a
//! group id is expected.

use std::fmt;

/// A storage server's id in the cluster: unique, stable, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub u64);

/// A Raft group's id. Group [`GroupId::META`] holds the catalog and cluster
/// membership; the others hold table data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GroupId(pub u64);

impl GroupId {
    /// The meta group: catalog, nodes, groups, index servers.
    pub const META: GroupId = GroupId(0);
    /// The first (and, until sharding lands, only) data group.
    pub const FIRST_DATA: GroupId = GroupId(1);
}

/// An explicit transaction's id, chosen by the index server at BEGIN
/// (a ULID, so ids sort by start time and never repeat).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxnId(pub String);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
