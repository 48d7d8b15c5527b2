//! Data placement: which Raft group holds a row, and which storage servers
//! hold a group.
//!
//! A cluster has a fixed number of data shards, chosen when it is created.
//! Shard `k` (of `n`) is Raft group `k + 1` and owns the slice
//! `[k·2⁶⁴/n, (k+1)·2⁶⁴/n)` of the 64-bit hash space; a row belongs to the
//! shard whose slice holds the hash of its shard key ([`key_hash`]). The
//! hash is computed on the key as SQLite stores and compares it (after
//! column affinity, under the column's collation), so two keys SQLite calls
//! equal always land on the same shard.
//!
//! Replicas ([`placement`]) are laid out round-robin over the storage
//! servers ordered by id: shard `k`'s replicas start at server `k mod m`,
//! so no server holds two replicas of a shard and each server is the
//! preferred leader (the first replica) of an equal share of shards.
//!
//! Everything here is a pure function: the meta group records its results
//! (the shard map), and storage servers use it to know which groups to host.

use crate::affinity::Affinity;
use crate::error::{Error, Result};
use crate::ids::{GroupId, NodeId};
use crate::order::Collation;
use crate::value::Value;
use drsdb_proto as pb;

/// Replicas per group (fewer only when the cluster has fewer servers).
pub const REPLICATION_FACTOR: usize = 3;
/// Shards per full replica set of storage servers when the config does
/// not choose.
pub const DEFAULT_SHARDS_PER_REPLICA_SET: usize = 4;
/// Rows of one INSERT that get assigned ids go to one shard in runs of
/// this many: a small INSERT writes one shard (no two-phase commit), a big
/// one spreads.
pub const ASSIGNED_ROWS_PER_SHARD: usize = 1000;
/// Most shards a cluster may have.
pub const MAX_SHARDS: usize = 1024;

/// The default shard count for a cluster of `servers` storage servers:
/// four per full set of three.
pub fn default_shards(servers: usize) -> usize {
    DEFAULT_SHARDS_PER_REPLICA_SET * servers.div_ceil(REPLICATION_FACTOR).max(1)
}

/// One group's replicas, preferred leader first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The group.
    pub group: GroupId,
    /// The servers holding a replica; the first is the preferred leader.
    pub replicas: Vec<NodeId>,
}

/// Where the meta group and `shards` data groups live on `members`
/// (storage server ids, any order). The meta group comes first.
pub fn placement(members: &[NodeId], shards: usize) -> Vec<Placement> {
    std::iter::once(GroupId::META)
        .chain(shard_groups(shards))
        .map(|group| Placement { group, replicas: replicas_of(members, group) })
        .collect()
}

/// The servers among `members` (any order) that hold `group`'s
/// replicas, preferred leader first ([`placement`] of one group).
pub fn replicas_of(members: &[NodeId], group: GroupId) -> Vec<NodeId> {
    let mut servers = members.to_vec();
    servers.sort_unstable();
    servers.dedup();
    // The meta group starts where the first shard does.
    let start = group.0.saturating_sub(GroupId::FIRST_DATA.0) as usize;
    let width = servers.len().min(REPLICATION_FACTOR);
    (0..width).map(|i| servers[(start + i) % servers.len()]).collect()
}

/// [`replicas_of`], with `leader` (when it holds a replica) moved to the
/// front: the order in which to try a group's replicas.
pub fn replicas_leader_first(members: &[NodeId], group: GroupId, leader: Option<NodeId>) -> Vec<NodeId> {
    let mut replicas = replicas_of(members, group);
    if let Some(i) = leader.and_then(|l| replicas.iter().position(|r| *r == l)) {
        replicas[..=i].rotate_right(1);
    }
    replicas
}

/// The group of the `k`-th shard (counting from 0).
pub fn shard_group(k: usize) -> GroupId {
    GroupId(GroupId::FIRST_DATA.0 + k as u64)
}

/// The groups of all `shards` shards, in shard order.
pub fn shard_groups(shards: usize) -> Vec<GroupId> {
    (0..shards).map(shard_group).collect()
}

/// Where a shard key given as values lands, without SQLite: the key's
/// values sit at `positions` of a list of values (a statement's parameters,
/// a row being loaded), one per key column.
///
/// Invariant: `positions` and `columns` have the same length, zero only
/// with one shard (every key lands there); `shards` is between 1 and
/// [`MAX_SHARDS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRoute {
    /// Where each key column's value is among the values.
    pub positions: Vec<usize>,
    /// Each key column's affinity and collation.
    pub columns: Vec<(Affinity, Collation)>,
    /// The cluster's data shards.
    pub shards: usize,
}

impl KeyRoute {
    /// The shard (counting from 0) of the key in `values`, when every key
    /// value is one its column stores unchanged and not NULL; `None` when
    /// only SQLite can tell (or a value is missing).
    pub fn shard(&self, values: &[Value]) -> Option<usize> {
        let mut key = Vec::with_capacity(self.positions.len());
        for (at, (affinity, collation)) in self.positions.iter().zip(&self.columns) {
            let v = values.get(*at)?;
            if *v == Value::Null || !affinity.stores_unchanged(v) {
                return None;
            }
            key.push((v.clone(), *collation));
        }
        Some(shard_of(key_hash(&key), self.shards))
    }
}

impl From<&KeyRoute> for pb::KeyRoute {
    fn from(r: &KeyRoute) -> Self {
        use pb::key_column::Affinity as A;
        let columns = r.columns.iter().map(|(affinity, collation)| {
            let affinity = match affinity {
                Affinity::Blob => A::Blob,
                Affinity::Text => A::Text,
                Affinity::Numeric => A::Numeric,
                Affinity::Integer => A::Integer,
                Affinity::Real => A::Real,
            };
            pb::KeyColumn { affinity: affinity as i32, collation: collation.to_pb() as i32 }
        });
        pb::KeyRoute {
            params: r.positions.iter().map(|p| *p as u32).collect(),
            columns: columns.collect(),
            shards: r.shards as u32,
        }
    }
}

impl TryFrom<&pb::KeyRoute> for KeyRoute {
    type Error = Error;

    /// Refuses a route this version cannot follow exactly (an unknown
    /// affinity or collation, mismatched lengths, a bad shard count).
    fn try_from(r: &pb::KeyRoute) -> Result<KeyRoute> {
        use pb::key_column::Affinity as A;
        let malformed = |why: &str| Error::invalid(format!("malformed key route: {why}"));
        let mut columns = Vec::with_capacity(r.columns.len());
        for c in &r.columns {
            let affinity = match A::try_from(c.affinity) {
                Ok(A::Blob) => Affinity::Blob,
                Ok(A::Text) => Affinity::Text,
                Ok(A::Numeric) => Affinity::Numeric,
                Ok(A::Integer) => Affinity::Integer,
                Ok(A::Real) => Affinity::Real,
                Err(_) => return Err(malformed("unknown affinity")),
            };
            let collation = Collation::from_pb(c.collation).ok_or_else(|| malformed("unknown collation"))?;
            columns.push((affinity, collation));
        }
        if columns.len() != r.params.len() {
            return Err(malformed("it needs one parameter per key column"));
        }
        let shards = r.shards as usize;
        if !(1..=MAX_SHARDS).contains(&shards) || (columns.is_empty() && shards > 1) {
            return Err(malformed("bad shard count"));
        }
        Ok(KeyRoute { positions: r.params.iter().map(|p| *p as usize).collect(), columns, shards })
    }
}

/// The first hash of shard `k`'s slice; its slice ends where shard `k+1`'s
/// begins (the last one at 2⁶⁴).
pub fn slice_start(k: usize, shards: usize) -> u64 {
    ((k as u128) << 64).div_ceil(shards as u128) as u64
}

/// The shard (counting from 0) whose slice holds `hash`.
pub fn shard_of(hash: u64, shards: usize) -> usize {
    ((u128::from(hash) * shards as u128) >> 64) as usize
}

/// The hash of a shard key: its values as SQLite stores them, each under
/// its column's collation. Integers and reals that SQLite calls equal
/// (`1` and `1.0`) hash alike.
pub fn key_hash(key: &[(Value, Collation)]) -> u64 {
    let mut bytes = Vec::with_capacity(16 * key.len());
    for (value, collation) in key {
        match value {
            Value::Null => bytes.push(0),
            Value::Integer(i) => push_integer(&mut bytes, *i),
            Value::Real(r) => {
                // A real with an exact integer value compares equal to that integer.
                let truncated = *r as i64;
                if truncated as f64 == *r && r.fract() == 0.0 {
                    push_integer(&mut bytes, truncated);
                } else {
                    bytes.push(2);
                    bytes.extend_from_slice(&r.to_bits().to_le_bytes());
                }
            }
            Value::Text(_) | Value::RawText(_) => {
                let folded = collation.fold(value.text_bytes().expect("a text value"));
                bytes.push(3);
                bytes.extend_from_slice(&(folded.len() as u64).to_le_bytes());
                bytes.extend_from_slice(&folded);
            }
            Value::Blob(b) => {
                bytes.push(4);
                bytes.extend_from_slice(&(b.len() as u64).to_le_bytes());
                bytes.extend_from_slice(b);
            }
        }
    }
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

fn push_integer(bytes: &mut Vec<u8>, i: i64) {
    bytes.push(1);
    bytes.extend_from_slice(&i.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(ids: &[u64]) -> Vec<NodeId> {
        ids.iter().map(|i| NodeId(*i)).collect()
    }

    #[test]
    fn replicas_are_distinct_and_leaders_balanced() {
        let p = placement(&nodes(&[3, 1, 2, 4, 5]), 10);
        assert_eq!(p[0], Placement { group: GroupId::META, replicas: nodes(&[1, 2, 3]) });
        let mut leaders = std::collections::BTreeMap::new();
        for g in &p[1..] {
            let mut r = g.replicas.clone();
            r.sort_unstable();
            r.dedup();
            assert_eq!(r.len(), 3, "{g:?}");
            *leaders.entry(g.replicas[0]).or_insert(0) += 1;
        }
        assert!(leaders.values().all(|&n| n == 2), "{leaders:?}");
        assert_eq!(placement(&nodes(&[7]), 2)[2].replicas, nodes(&[7]));
    }

    #[test]
    fn a_key_route_places_keys_as_their_columns_store_them_and_crosses_the_wire_intact() {
        let route = KeyRoute {
            positions: vec![2, 0],
            columns: vec![(Affinity::Text, Collation::NoCase), (Affinity::Integer, Collation::Binary)],
            shards: 8,
        };
        let params = |name: &str, id: Value| vec![id, Value::Integer(99), Value::Text(name.into())];
        let key = |name: &str, id: i64| {
            shard_of(
                key_hash(&[(Value::Text(name.into()), Collation::NoCase), (Value::Integer(id), Collation::Binary)]),
                8,
            )
        };
        assert_eq!(route.shard(&params("Ann", Value::Integer(5))), Some(key("ann", 5)));
        // Only SQLite knows what these become (or they match nothing).
        assert_eq!(route.shard(&params("ann", Value::Text("5".into()))), None);
        assert_eq!(route.shard(&params("ann", Value::Null)), None);
        assert_eq!(route.shard(&[Value::Integer(5)]), None, "a parameter is missing");
        assert_eq!(KeyRoute::try_from(&pb::KeyRoute::from(&route)).unwrap(), route);
        let one_shard = KeyRoute { positions: vec![], columns: vec![], shards: 1 };
        assert_eq!(one_shard.shard(&[]), Some(0));
        assert_eq!(KeyRoute::try_from(&pb::KeyRoute::from(&one_shard)).unwrap(), one_shard);

        let mut bad = pb::KeyRoute::from(&route);
        bad.columns[0].collation = 9;
        assert!(KeyRoute::try_from(&bad).is_err(), "an unknown collation would hash wrongly");
        let mut bad = pb::KeyRoute::from(&route);
        bad.params.pop();
        assert!(KeyRoute::try_from(&bad).is_err());
        let bad = pb::KeyRoute { params: vec![], columns: vec![], shards: 4 };
        assert!(KeyRoute::try_from(&bad).is_err(), "no key, several shards");
    }

    #[test]
    fn the_leader_is_tried_first_and_the_rest_keep_their_order() {
        let members = nodes(&[1, 2, 3, 4]);
        let group = GroupId(2);
        assert_eq!(replicas_of(&members, group), nodes(&[2, 3, 4]));
        assert_eq!(replicas_leader_first(&members, group, Some(NodeId(4))), nodes(&[4, 2, 3]));
        assert_eq!(replicas_leader_first(&members, group, Some(NodeId(1))), nodes(&[2, 3, 4]), "not a replica");
        assert_eq!(replicas_leader_first(&members, group, None), nodes(&[2, 3, 4]));
    }

    #[test]
    fn slices_cover_the_hash_space() {
        for shards in [1, 3, 8, 1000] {
            assert_eq!(slice_start(0, shards), 0);
            for k in 0..shards {
                assert_eq!(shard_of(slice_start(k, shards), shards), k, "{k}/{shards}");
                if k > 0 {
                    assert_eq!(shard_of(slice_start(k, shards) - 1, shards), k - 1);
                }
            }
            assert_eq!(shard_of(u64::MAX, shards), shards - 1);
        }
    }

    #[test]
    fn keys_sqlite_calls_equal_hash_alike() {
        let h = |v: Value, c: Collation| key_hash(&[(v, c)]);
        assert_eq!(h(Value::Integer(5), Collation::Binary), h(Value::Real(5.0), Collation::Binary));
        assert_ne!(h(Value::Integer(5), Collation::Binary), h(Value::Real(5.5), Collation::Binary));
        assert_ne!(h(Value::Integer(5), Collation::Binary), h(Value::Text("5".into()), Collation::Binary));
        assert_eq!(h(Value::Text("Ab".into()), Collation::NoCase), h(Value::Text("aB".into()), Collation::NoCase));
        assert_ne!(h(Value::Text("Ab".into()), Collation::Binary), h(Value::Text("aB".into()), Collation::Binary));
        assert_eq!(h(Value::Text("a  ".into()), Collation::RTrim), h(Value::Text("a".into()), Collation::RTrim));
    }

    #[test]
    fn sequential_keys_spread_evenly() {
        let shards = 8;
        let mut counts = vec![0usize; shards];
        for i in 0..80_000 {
            counts[shard_of(key_hash(&[(Value::Integer(i), Collation::Binary)]), shards)] += 1;
        }
        assert!(counts.iter().all(|&c| (9_000..11_000).contains(&c)), "{counts:?}");
    }
}
