//! openraft's types as the protobuf messages of `proto/raft.proto`, on
//! the wire between replicas and in the files a replica keeps: log
//! entries, the vote, the applied state, snapshot metadata.
//!
//! The records of a group's log store (entries, vote, committed and
//! purged ids), its applied state and its snapshot record carry
//! [`FORMAT_VERSION`]; one in another format is refused, never misread.
//! The outcomes a group records for deduplication are bare `Outcome`
//! messages: like everything in a data directory, they are covered by its
//! format marker, which a storage server checks at start (`server`).
//! Decoding fails with [`Malformed`], which callers turn into a corrupt-
//! data error (disk) or an invalid-argument answer (network).

use std::collections::{BTreeMap, BTreeSet};

use drsdb_common::command::Command;
use drsdb_proto as pb;
use openraft::impls::leader_id_adv::LeaderId;
use openraft::{BasicNode, EntryPayload, Membership};
use prost::Message;

use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};

use crate::types::{Entry, LogId, SnapshotMeta, StoredMembership, TypeConfig, Vote};

/// The format of everything a replica writes to disk. Format 1 (drsdb
/// before the typed contract) stored JSON; format 2 kept a Raft log per
/// group (`raft.db` in the group's directory), format 3 one per server
/// (`log_store`).
pub const FORMAT_VERSION: u32 = 3;

/// A message or record that cannot be read: why.
#[derive(Debug)]
pub struct Malformed(pub String);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Malformed> for std::io::Error {
    fn from(m: Malformed) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, m.0)
    }
}

impl From<Malformed> for tonic::Status {
    fn from(m: Malformed) -> Self {
        tonic::Status::invalid_argument(format!("malformed raft message: {}", m.0))
    }
}

type Decoded<T> = Result<T, Malformed>;

fn missing(what: &str) -> Malformed {
    Malformed(format!("{what} is missing"))
}

/// Refuses a record of another format.
pub fn check_format(found: u32, what: &str) -> Decoded<()> {
    if found == FORMAT_VERSION {
        return Ok(());
    }
    Err(Malformed(format!(
        "{what} is in format {found}, and this drsdb reads format {FORMAT_VERSION} only: run the drsdb version that \
         wrote it (to keep the data, read it out with that version and load it into a new cluster), or, if only this \
         replica is old, rebuild it from the others (stop it, remove its data directory, start it again)"
    )))
}

/// Decodes a protobuf message.
pub fn decode<M: Message + Default>(bytes: &[u8], what: &str) -> Decoded<M> {
    M::decode(bytes).map_err(|e| Malformed(format!("{what} does not decode: {e}")))
}

pub fn log_id_to_pb(l: &LogId) -> pb::LogId {
    pb::LogId { term: l.leader_id.term, node: l.leader_id.node_id, index: l.index }
}

pub fn log_id_from_pb(l: pb::LogId) -> LogId {
    LogId::new(LeaderId { term: l.term, node_id: l.node }, l.index)
}

pub fn opt_log_id_to_pb(l: &Option<LogId>) -> Option<pb::LogId> {
    l.as_ref().map(log_id_to_pb)
}

pub fn opt_log_id_from_pb(l: Option<pb::LogId>) -> Option<LogId> {
    l.map(log_id_from_pb)
}

pub fn vote_to_pb(v: &Vote) -> pb::Vote {
    pb::Vote { term: v.leader_id.term, node: v.leader_id.node_id, committed: v.committed }
}

pub fn vote_from_pb(v: Option<pb::Vote>) -> Decoded<Vote> {
    let v = v.ok_or_else(|| missing("the vote"))?;
    Ok(Vote { leader_id: LeaderId { term: v.term, node_id: v.node }, committed: v.committed })
}

pub fn membership_to_pb(m: &Membership<u64, BasicNode>) -> pb::Membership {
    pb::Membership {
        configs: m.get_joint_config().iter().map(|c| pb::VoterSet { ids: c.iter().copied().collect() }).collect(),
        nodes: m.nodes().map(|(id, n)| pb::NodeAddr { id: *id, addr: n.addr.clone() }).collect(),
    }
}

pub fn membership_from_pb(m: Option<pb::Membership>) -> Decoded<Membership<u64, BasicNode>> {
    let m = m.ok_or_else(|| missing("the membership"))?;
    let configs: Vec<BTreeSet<u64>> = m.configs.into_iter().map(|c| c.ids.into_iter().collect()).collect();
    let nodes: BTreeMap<u64, BasicNode> = m.nodes.into_iter().map(|n| (n.id, BasicNode { addr: n.addr })).collect();
    Membership::new(configs, nodes).map_err(|e| Malformed(format!("invalid membership: {e}")))
}

pub fn stored_membership_to_pb(m: &StoredMembership) -> pb::StoredMembership {
    pb::StoredMembership { log_id: opt_log_id_to_pb(m.log_id()), membership: Some(membership_to_pb(m.membership())) }
}

pub fn stored_membership_from_pb(m: Option<pb::StoredMembership>) -> Decoded<StoredMembership> {
    let m = m.ok_or_else(|| missing("the stored membership"))?;
    Ok(StoredMembership::new(opt_log_id_from_pb(m.log_id), membership_from_pb(m.membership)?))
}

pub fn snapshot_meta_to_pb(m: &SnapshotMeta) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        last_log_id: opt_log_id_to_pb(&m.last_log_id),
        last_membership: Some(stored_membership_to_pb(&m.last_membership)),
    }
}

pub fn snapshot_meta_from_pb(m: Option<pb::SnapshotMeta>) -> Decoded<SnapshotMeta> {
    let m = m.ok_or_else(|| missing("the snapshot metadata"))?;
    Ok(SnapshotMeta {
        last_log_id: opt_log_id_from_pb(m.last_log_id),
        last_membership: stored_membership_from_pb(m.last_membership)?,
    })
}

/// A log entry as its message (consumed: entries can be large).
pub fn entry_to_pb(e: Entry) -> pb::LogEntry {
    use pb::log_entry::Payload;
    let payload = match e.payload {
        EntryPayload::Blank => Payload::Blank(pb::Blank {}),
        EntryPayload::Membership(m) => Payload::Membership(membership_to_pb(&m)),
        EntryPayload::Normal(c) => Payload::Command(c.into()),
    };
    pb::LogEntry { format: FORMAT_VERSION, log_id: Some(log_id_to_pb(&e.log_id)), payload: Some(payload) }
}

pub fn entry_from_pb(e: pb::LogEntry) -> Decoded<Entry> {
    use pb::log_entry::Payload;
    check_format(e.format, "a log entry")?;
    let log_id = log_id_from_pb(e.log_id.ok_or_else(|| missing("a log entry's id"))?);
    let payload = match e.payload.ok_or_else(|| missing("a log entry's payload"))? {
        Payload::Blank(_) => EntryPayload::Blank,
        Payload::Membership(m) => EntryPayload::Membership(membership_from_pb(Some(m))?),
        Payload::Command(c) => EntryPayload::Normal(Command::try_from(c).map_err(|e| Malformed(e.to_string()))?),
    };
    Ok(Entry { log_id, payload })
}

/// An AppendEntries request as its message.
pub fn append_request_to_pb(group: u64, rpc: AppendEntriesRequest<TypeConfig>) -> pb::AppendEntriesRequest {
    pb::AppendEntriesRequest {
        group,
        vote: Some(vote_to_pb(&rpc.vote)),
        prev_log_id: opt_log_id_to_pb(&rpc.prev_log_id),
        entries: rpc.entries.into_iter().map(entry_to_pb).collect(),
        leader_commit: opt_log_id_to_pb(&rpc.leader_commit),
    }
}

pub fn append_request_from_pb(m: pb::AppendEntriesRequest) -> Decoded<AppendEntriesRequest<TypeConfig>> {
    Ok(AppendEntriesRequest {
        vote: vote_from_pb(m.vote)?,
        prev_log_id: opt_log_id_from_pb(m.prev_log_id),
        entries: m.entries.into_iter().map(entry_from_pb).collect::<Decoded<_>>()?,
        leader_commit: opt_log_id_from_pb(m.leader_commit),
    })
}

/// The receiver's answer (its Raft's error becomes `refused`).
pub fn append_response_to_pb(
    r: Result<AppendEntriesResponse<TypeConfig>, impl std::fmt::Display>,
) -> pb::AppendEntriesResponse {
    use pb::append_entries_response::Result as R;
    let result = match r {
        Ok(AppendEntriesResponse::Success) => R::Success(pb::Blank {}),
        Ok(AppendEntriesResponse::PartialSuccess(last)) => {
            R::PartialSuccess(pb::PartialSuccess { last_log_id: opt_log_id_to_pb(&last) })
        }
        Ok(AppendEntriesResponse::Conflict) => R::Conflict(pb::Blank {}),
        Ok(AppendEntriesResponse::HigherVote(v)) => R::HigherVote(vote_to_pb(&v)),
        Err(e) => R::Refused(e.to_string()),
    };
    pb::AppendEntriesResponse { result: Some(result) }
}

/// The answer a peer sent; `Err` carries why its Raft refused.
pub fn append_response_from_pb(
    m: pb::AppendEntriesResponse,
) -> Decoded<Result<AppendEntriesResponse<TypeConfig>, String>> {
    use pb::append_entries_response::Result as R;
    Ok(Ok(match m.result.ok_or_else(|| missing("the append result"))? {
        R::Success(_) => AppendEntriesResponse::Success,
        R::PartialSuccess(p) => AppendEntriesResponse::PartialSuccess(opt_log_id_from_pb(p.last_log_id)),
        R::Conflict(_) => AppendEntriesResponse::Conflict,
        R::HigherVote(v) => AppendEntriesResponse::HigherVote(vote_from_pb(Some(v))?),
        R::Refused(why) => return Ok(Err(why)),
    }))
}

pub fn vote_request_to_pb(group: u64, rpc: &VoteRequest<TypeConfig>) -> pb::VoteRequest {
    pb::VoteRequest {
        group,
        vote: Some(vote_to_pb(&rpc.vote)),
        last_log_id: opt_log_id_to_pb(&rpc.last_log_id),
        leadership_transfer: rpc.leadership_transfer,
    }
}

pub fn vote_request_from_pb(m: pb::VoteRequest) -> Decoded<VoteRequest<TypeConfig>> {
    Ok(VoteRequest {
        vote: vote_from_pb(m.vote)?,
        last_log_id: opt_log_id_from_pb(m.last_log_id),
        leadership_transfer: m.leadership_transfer,
    })
}

pub fn vote_response_to_pb(r: Result<VoteResponse<TypeConfig>, impl std::fmt::Display>) -> pb::VoteResponse {
    match r {
        Ok(v) => pb::VoteResponse {
            vote: Some(vote_to_pb(&v.vote)),
            vote_granted: v.vote_granted,
            last_log_id: opt_log_id_to_pb(&v.last_log_id),
            refused: String::new(),
        },
        Err(e) => pb::VoteResponse { refused: e.to_string(), ..Default::default() },
    }
}

pub fn vote_response_from_pb(m: pb::VoteResponse) -> Decoded<Result<VoteResponse<TypeConfig>, String>> {
    if !m.refused.is_empty() {
        return Ok(Err(m.refused));
    }
    Ok(Ok(VoteResponse {
        vote: vote_from_pb(m.vote)?,
        vote_granted: m.vote_granted,
        last_log_id: opt_log_id_from_pb(m.last_log_id),
    }))
}

pub fn snapshot_response_to_pb(
    r: Result<SnapshotResponse<TypeConfig>, impl std::fmt::Display>,
) -> pb::SnapshotResponse {
    match r {
        Ok(r) => pb::SnapshotResponse { vote: Some(vote_to_pb(&r.vote)), refused: String::new() },
        Err(e) => pb::SnapshotResponse { vote: None, refused: e.to_string() },
    }
}

pub fn snapshot_response_from_pb(m: pb::SnapshotResponse) -> Decoded<Result<SnapshotResponse<TypeConfig>, String>> {
    if !m.refused.is_empty() {
        return Ok(Err(m.refused));
    }
    Ok(Ok(SnapshotResponse { vote: vote_from_pb(m.vote)? }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use drsdb_common::command::{Statement, Step, TxnCommand};
    use drsdb_common::TxnId;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(LeaderId { term, node_id: 2 }, index)
    }

    #[test]
    fn entries_round_trip() {
        let members = Membership::new(
            vec![BTreeSet::from([1, 2, 3])],
            BTreeMap::from([1, 2, 3].map(|i| (i, BasicNode { addr: format!("h{i}:7000") }))),
        )
        .unwrap();
        for payload in [
            EntryPayload::Blank,
            EntryPayload::Membership(members),
            EntryPayload::Normal(Command::Txn(TxnCommand {
                txn: TxnId("t".into()),
                now_ms: 5,
                steps: vec![Step::Begin, Step::Run(Statement::new("SELECT 1"))],
                statement: true,
                no_wait: false,
            })),
        ] {
            let e = Entry { log_id: log_id(3, 9), payload };
            let bytes = entry_to_pb(e.clone()).encode_to_vec();
            assert_eq!(entry_from_pb(decode(&bytes, "entry").unwrap()).unwrap(), e);
        }
    }

    #[test]
    fn a_record_of_another_format_is_refused() {
        let mut e = entry_to_pb(Entry { log_id: log_id(1, 1), payload: EntryPayload::Blank });
        e.format = 1;
        let err = entry_from_pb(e).unwrap_err();
        assert!(err.0.contains("format 1") && err.0.contains(&format!("format {FORMAT_VERSION}")), "{err}");
        // JSON as format 1 wrote it does not decode as an entry either.
        let json = br#"{"log_id":{"leader_id":{"term":1,"node_id":1},"index":1},"payload":"Blank"}"#;
        assert!(decode::<pb::LogEntry>(json, "entry").and_then(entry_from_pb).is_err());
    }
}
