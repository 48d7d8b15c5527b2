//! The openraft type configuration shared by every group on a server.

use drsdb_common::command::{Command, CommandResult};

openraft::declare_raft_types!(
    /// Raft types of drsdb: commands are [`Command`]s, node ids are `u64`,
    /// nodes carry their gRPC address.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = openraft::BasicNode,
);

/// A group's Raft instance.
pub type Raft = openraft::Raft<TypeConfig, crate::state_machine::StateMachine>;
/// A log id.
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
/// A vote.
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
/// A log entry.
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
/// Membership as stored with the applied state.
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
/// An entry's payload.
pub type Payload = openraft::EntryPayload<Command, u64, openraft::BasicNode>;
