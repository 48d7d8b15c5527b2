//! Server configuration: one TOML file per server, every option with a
//! documented default. `deploy/storage.toml` and `deploy/index.toml` are
//! commented samples whose values are these defaults (a test checks it).
//! Command-line flags override the file (see each binary's `--help`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::NodeId;

/// Default address a storage server listens on.
pub const DEFAULT_STORAGE_LISTEN: &str = "127.0.0.1:7101";
/// Default address an index server listens on.
pub const DEFAULT_INDEX_LISTEN: &str = "127.0.0.1:7001";

/// Longest a direct-streaming ticket may be valid (a day, in ms).
pub const MAX_TICKET_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// Default path of the cluster's ticket key.
pub const DEFAULT_TICKET_KEY: &str = "certs/ticket.key";
/// Default statement timeout of index and storage servers (milliseconds).
pub const DEFAULT_STATEMENT_TIMEOUT_MS: u64 = 120_000;
/// Default memory budget of one statement (MiB), [`IndexConfig::statement_memory_mb`].
pub const DEFAULT_STATEMENT_MEMORY_MB: u64 = 256;
/// Smallest memory budget a statement may have (MiB): enough for a row
/// holding a value of the largest size, with SQLite's copies of it.
pub const MIN_STATEMENT_MEMORY_MB: u64 = 4 * (crate::sql::MAX_VALUE_BYTES as u64 >> 20);

/// Reads a TOML config file; a missing file is an error that names it.
pub fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::invalid(format!("cannot read config {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| Error::invalid(format!("config {} is not valid: {e}", path.display())))
}

/// The command-line flags both server binaries take; each adds its own
/// (`#[command(flatten)]`).
#[cfg(feature = "server-flags")]
#[derive(Debug, Clone, clap::Args)]
pub struct ServerFlags {
    /// TOML config file (see deploy/); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Log filter (e.g. info, debug).
    #[arg(long)]
    pub log: Option<String>,
    /// Directory holding ca.pem, node.pem and node.key.
    #[arg(long)]
    pub certs: Option<PathBuf>,
    /// Plaintext instead of TLS (logs a warning; never in production).
    #[arg(long)]
    pub insecure: bool,
}

#[cfg(feature = "server-flags")]
impl ServerFlags {
    /// The config file named by `--config`, or the defaults.
    pub fn load<T: Default + for<'de> Deserialize<'de>>(&self) -> Result<T> {
        self.config.as_deref().map_or_else(|| Ok(T::default()), load)
    }

    /// Applies `--listen`, `--log`, `--certs` and `--insecure` to a
    /// config's fields (`--certs DIR` also names DIR's ticket key).
    pub fn apply(&self, listen: &mut SocketAddr, log: &mut String, tls: &mut TlsConfig, ticket_key: &mut PathBuf) {
        if let Some(v) = self.listen {
            *listen = v;
        }
        if let Some(v) = &self.log {
            v.clone_into(log);
        }
        if let Some(dir) = &self.certs {
            *ticket_key = dir.join(crate::tls::files::TICKET_KEY);
        }
        tls.apply_flags(self.certs.as_deref(), self.insecure);
    }
}

/// Certificates for mutual TLS, or plaintext when `insecure` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the cluster's certificate authority; peers must present
    /// certificates it signed.
    pub ca: PathBuf,
    /// PEM certificate this process presents (as server and as client).
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// Plaintext gRPC instead of TLS. For experiments only: logs a warning.
    pub insecure: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self { ca: "certs/ca.pem".into(), cert: "certs/node.pem".into(), key: "certs/node.key".into(), insecure: false }
    }
}

impl TlsConfig {
    /// Applies the servers' command-line flags: `--certs DIR` (the node
    /// certificate set in DIR) and `--insecure`.
    pub fn apply_flags(&mut self, certs: Option<&Path>, insecure: bool) {
        if let Some(dir) = certs {
            *self = crate::tls::node_config_in(dir);
        }
        self.insecure |= insecure;
    }
}

/// A storage server of the static bootstrap member list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// The server's node id.
    pub id: u64,
    /// Its address as other servers dial it (`host:port`).
    pub addr: String,
}

/// Raft timing and log compaction, shared by every group on a server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfig {
    /// Leader heartbeat period.
    pub heartbeat_interval_ms: u64,
    /// Lower bound of the randomized election timeout; must exceed the
    /// heartbeat interval several times over.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and compact the log) after this many entries
    /// since the last one.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot, so that a briefly lagging
    /// follower catches up from the log instead of a full snapshot.
    pub keep_entries_after_snapshot: u64,
    /// Serve linearizable reads on the leader's lease, without a round to
    /// the followers, while a majority acknowledged it recently (falls back
    /// to a ReadIndex round otherwise). Safe while clocks' rates differ by
    /// less than 25 % (see `storage-server`'s `group`); off: every read
    /// waits for a ReadIndex round.
    pub lease_reads: bool,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 600,
            election_timeout_max_ms: 1200,
            snapshot_after_entries: 10_000,
            keep_entries_after_snapshot: 1_000,
            lease_reads: true,
        }
    }
}

/// Limits on the connections a server accepts (`connections`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionLimits {
    /// Most connections open at once; further ones wait in the listen
    /// queue until one closes.
    pub max_connections: usize,
    /// A connection that has not finished its TLS handshake after this
    /// long is closed (milliseconds).
    pub handshake_timeout_ms: u64,
    /// A connection with no traffic for this long is closed (clients
    /// reconnect by themselves). Must exceed the statement timeout.
    pub idle_timeout_ms: u64,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self { max_connections: 1024, handshake_timeout_ms: 10_000, idle_timeout_ms: 300_000 }
    }
}

impl ConnectionLimits {
    /// [`ConnectionLimits::handshake_timeout_ms`] as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// Checks the limits against the server's statement timeout.
    fn validate(&self, statement_timeout_ms: u64) -> Result<()> {
        if self.max_connections == 0 || self.handshake_timeout_ms == 0 {
            return Err(Error::invalid("connections: max_connections and handshake_timeout_ms must be positive"));
        }
        if self.idle_timeout_ms <= statement_timeout_ms {
            return Err(Error::invalid(
                "connections.idle_timeout_ms must exceed statement_timeout_ms (a statement may work that long \
                 before its first row)",
            ));
        }
        Ok(())
    }
}

/// A storage server's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// This server's node id; must appear in `members`.
    pub node_id: u64,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory for Raft logs and SQLite databases (created if missing).
    pub data_dir: PathBuf,
    /// The storage servers that form the cluster at bootstrap. Every
    /// server gets the same list; the one with the lowest id initializes
    /// the groups the first time the cluster starts.
    pub members: Vec<Member>,
    /// Number of data shards, fixed when the cluster is first started;
    /// every server must be given the same value. Unset: four per full
    /// set of three storage servers ([`crate::shard::default_shards`]).
    pub shards: Option<usize>,
    /// Log filter (`error`, `warn`, `info`, `debug`, or a tracing
    /// directive such as `drsdb_storage=debug`).
    pub log: String,
    /// Most client writes batched into one Raft entry (group commit).
    pub max_batch: usize,
    /// An explicit transaction idle for this long is rolled back.
    pub txn_idle_timeout_ms: u64,
    /// An explicit transaction open for this long is rolled back, however
    /// busy: it holds its shards, and other writers wait behind it.
    pub txn_max_duration_ms: u64,
    /// A read running on this server longer than this is stopped.
    /// Replicated statements are bounded by their budget of SQLite steps
    /// instead, which every replica counts alike.
    pub statement_timeout_ms: u64,
    /// TLS.
    pub tls: TlsConfig,
    /// The cluster's ticket key (`drsdb certs` makes it), shared with the
    /// index servers: a client's direct read runs only with a ticket
    /// signed by it. Without the file this server refuses direct reads.
    pub ticket_key: PathBuf,
    /// Raft tuning.
    pub raft: RaftConfig,
    /// Limits on the connections this server accepts.
    pub connections: ConnectionLimits,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            listen: DEFAULT_STORAGE_LISTEN.parse().expect("valid default address"),
            data_dir: "data".into(),
            members: vec![Member { id: 1, addr: DEFAULT_STORAGE_LISTEN.into() }],
            shards: None,
            log: "info".into(),
            max_batch: 256,
            txn_idle_timeout_ms: 30_000,
            txn_max_duration_ms: 300_000,
            statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
            tls: TlsConfig::default(),
            ticket_key: DEFAULT_TICKET_KEY.into(),
            raft: RaftConfig::default(),
            connections: ConnectionLimits::default(),
        }
    }
}

impl StorageConfig {
    /// Checks what serde cannot: ids, membership, timing.
    pub fn validate(&self) -> Result<()> {
        if !self.members.iter().any(|m| m.id == self.node_id) {
            return Err(Error::invalid(format!(
                "node_id {} is not in members; add it to the member list",
                self.node_id
            )));
        }
        let mut ids: Vec<u64> = self.members.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.members.len() || ids.contains(&0) {
            return Err(Error::invalid("member ids must be distinct and non-zero"));
        }
        let r = &self.raft;
        if r.election_timeout_min_ms < 3 * r.heartbeat_interval_ms
            || r.election_timeout_max_ms <= r.election_timeout_min_ms
        {
            return Err(Error::invalid("raft timing: need heartbeat*3 <= election_timeout_min < election_timeout_max"));
        }
        if self.max_batch == 0 {
            return Err(Error::invalid("max_batch must be at least 1"));
        }
        if !(1..=crate::shard::MAX_SHARDS).contains(&self.shard_count()) {
            return Err(Error::invalid(format!("shards must be between 1 and {}", crate::shard::MAX_SHARDS)));
        }
        self.connections.validate(self.statement_timeout_ms)
    }

    /// The number of data shards (the configured value or the default for
    /// this many members).
    pub fn shard_count(&self) -> usize {
        self.shards.unwrap_or_else(|| crate::shard::default_shards(self.members.len()))
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        NodeId(self.node_id)
    }

    /// The idle timeout of explicit transactions.
    pub fn txn_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.txn_idle_timeout_ms)
    }

    /// [`StorageConfig::txn_max_duration_ms`] as a duration.
    pub fn txn_max_duration(&self) -> Duration {
        Duration::from_millis(self.txn_max_duration_ms)
    }

    /// [`StorageConfig::statement_timeout_ms`] as a duration.
    pub fn statement_timeout(&self) -> Duration {
        Duration::from_millis(self.statement_timeout_ms)
    }
}

/// An index server's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Address clients use to reach this server, published to the meta
    /// group; defaults to `listen`.
    pub advertise: Option<String>,
    /// Storage servers to ask first; the rest are learned from the meta group.
    pub storage_seeds: Vec<String>,
    /// How often this server announces itself in the meta group.
    pub announce_interval_ms: u64,
    /// Most rows in one streamed batch to the client.
    pub rows_per_batch: usize,
    /// A statement still at work here after this long is stopped with an
    /// error, and its reads on the storage servers with it. (A write
    /// stopped this way may still be applied: the error says so.) A read
    /// whose client goes away is stopped at once.
    pub statement_timeout_ms: u64,
    /// Most memory one statement may take (MiB), counted in SQLite's large
    /// heap blocks (values, sort and JSON buffers, rows being built), on
    /// this server's scratch databases and on the storage servers it sends
    /// the statement to, writes and reads alike. A statement over it fails
    /// with an error that names this setting. At least
    /// [`MIN_STATEMENT_MEMORY_MB`].
    pub statement_memory_mb: u64,
    /// Log filter, as for storage servers.
    pub log: String,
    /// Direct streaming: a query whose answer is the concatenation or
    /// ordered merge of per-shard results hands the client one signed
    /// ticket per shard, and the client reads the rows from the storage
    /// servers itself. Off: this server relays every row (clients may
    /// also ask for that, per request).
    pub direct_streaming: bool,
    /// How long a ticket stays valid (milliseconds); allow for clock
    /// differences between index and storage servers.
    pub ticket_ttl_ms: u64,
    /// The cluster's ticket key, the same file as the storage servers'.
    /// Needed only with `direct_streaming`.
    pub ticket_key: PathBuf,
    /// TLS.
    pub tls: TlsConfig,
    /// Limits on the connections this server accepts.
    pub connections: ConnectionLimits,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_INDEX_LISTEN.parse().expect("valid default address"),
            advertise: None,
            storage_seeds: vec![DEFAULT_STORAGE_LISTEN.into()],
            announce_interval_ms: 2_000,
            rows_per_batch: 256,
            statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
            statement_memory_mb: DEFAULT_STATEMENT_MEMORY_MB,
            log: "info".into(),
            direct_streaming: true,
            ticket_ttl_ms: 30_000,
            ticket_key: DEFAULT_TICKET_KEY.into(),
            tls: TlsConfig::default(),
            connections: ConnectionLimits::default(),
        }
    }
}

impl IndexConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<()> {
        if self.storage_seeds.is_empty() {
            return Err(Error::invalid("storage_seeds is empty; name at least one storage server"));
        }
        if self.rows_per_batch == 0 || self.announce_interval_ms == 0 || self.statement_timeout_ms == 0 {
            return Err(Error::invalid(
                "rows_per_batch, announce_interval_ms and statement_timeout_ms must be positive",
            ));
        }
        if self.statement_memory_mb < MIN_STATEMENT_MEMORY_MB {
            return Err(Error::invalid(format!(
                "statement_memory_mb must be at least {MIN_STATEMENT_MEMORY_MB} (a row may hold a value of {} MiB)",
                crate::sql::MAX_VALUE_BYTES >> 20
            )));
        }
        if !(1..=MAX_TICKET_TTL_MS).contains(&self.ticket_ttl_ms) {
            return Err(Error::invalid(format!("ticket_ttl_ms must be between 1 and {MAX_TICKET_TTL_MS}")));
        }
        self.connections.validate(self.statement_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(name)
    }

    #[test]
    fn storage_sample_matches_defaults() {
        let c: StorageConfig = load(&sample("storage.toml")).unwrap();
        assert_eq!(c, StorageConfig::default());
        c.validate().unwrap();
    }

    #[test]
    fn index_sample_matches_defaults() {
        let c: IndexConfig = load(&sample("index.toml")).unwrap();
        assert_eq!(c, IndexConfig::default());
        c.validate().unwrap();
    }

    #[test]
    fn unknown_option_is_refused() {
        let e = toml::from_str::<StorageConfig>("nodeid = 3").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}
