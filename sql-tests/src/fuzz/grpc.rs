//! `fuzz grpc`: mutated protobuf messages, sent as raw gRPC calls to every
//! service of a live cluster (see the binary's documentation).
//!
//! Requests are built with the generated prost types, encoded, mutated as
//! bytes and sent through `tonic::client::Grpc` with a codec that passes
//! bytes through untouched both ways, so that what reaches a server is
//! exactly the mutated message.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use drsdb_common::tls::Dialer;
use drsdb_proto as pb;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::Status;

use super::cluster::{Target, MAX_MESSAGE};
use super::{clock_seed, rate, Findings, Kind, Rng};

/// Options of `fuzz grpc`.
#[derive(clap::Args)]
pub struct Args {
    /// Messages to send.
    #[arg(long, default_value_t = 10_000)]
    messages: u64,
    /// Fuzz the running `drsdb local` cluster in this directory instead of
    /// starting one.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Data shards of the cluster the harness starts.
    #[arg(long)]
    shards: Option<usize>,
    /// Check the servers' health this often (messages).
    #[arg(long, default_value_t = 1_000)]
    check_every: u64,
    /// Seed of the run (default: from the clock, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Keep the cluster directory (with its logs) even without findings.
    #[arg(long)]
    keep: bool,
}

/// A call unanswered after this long is a hang.
const HANG: Duration = Duration::from_secs(30);
/// The only group Raft messages (and most writes) name: no such group
/// exists, so no decodable message can legitimately disturb consensus.
const NO_GROUP: u64 = 999_999;
/// Attempts at a mutation that keeps a message off real groups.
const MUTATION_TRIES: usize = 8;
/// Mutations keep messages under this size.
const MAX_FUZZ_MESSAGE: usize = 8 << 20;
/// Most mutations applied to one message.
const MAX_MUTATIONS: usize = 3;
/// Distinct error messages shown per status code in the summary, how
/// much of each, and how many leading characters make them distinct.
const SAMPLES_PER_CODE: usize = 4;
const SAMPLE_CHARS: usize = 160;
const SAMPLE_KIND_CHARS: usize = 24;
/// Bytes of a message shown in a finding.
const SHOWN_MESSAGE_BYTES: usize = 160;
/// Rows of the table reads and fragments use.
const TABLE_ROWS: usize = 200;
/// The table the messages' SQL reads and writes.
const TABLE: &str = "fz_g";

/// SQL for `Execute` (none opens a transaction: one left open would hold
/// every shard until it times out).
const EXECUTE_SQL: &[&str] = &[
    "SELECT 1",
    "SELECT * FROM fz_g WHERE id < ?1",
    "SELECT count(*), sum(id), max(v) FROM fz_g",
    "SELECT v FROM fz_g WHERE id = 5",
    "SELECT v FROM fz_g WHERE id = ?1",
    "SELECT * FROM fz_g ORDER BY v LIMIT 3",
    "SELECT ?1, ?2, ?3",
    "INSERT INTO fz_g(id, v) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
    "UPDATE fz_g SET v = ?2 WHERE id = ?1",
    "DELETE FROM fz_g WHERE id = ?1 AND id > 100000",
    "SHOW TABLES",
    "SHOW GROUPS",
    "SHOW SHARD OF fz_g KEY 7",
    "EXPLAIN SELECT * FROM fz_g",
    "VALUES (1, 'a')",
    "SELECT nope FROM fz_missing",
    "SELECT length(zeroblob(1000000))",
];

/// SQL for storage reads (read-only) and writes (changing nothing).
const STORAGE_SQL: &[&str] = &[
    "SELECT 1",
    "SELECT ?1",
    "SELECT count(*) FROM fz_g",
    "SELECT * FROM fz_g WHERE id = ?1",
    "SELECT name FROM sqlite_schema",
    "UPDATE fz_g SET v = v WHERE id = -1",
    "INSERT INTO fz_missing VALUES (1)",
];

/// The calls fuzzed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Method {
    Execute,
    IndexServers,
    Write,
    Read,
    ReadFragment,
    ReadRouted,
    Status,
    AppendEntries,
    Vote,
    Snapshot,
}

/// How a call's messages flow.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Unary,
    ServerStreaming,
    ClientStreaming,
}

impl Method {
    const ALL: [Method; 10] = [
        Method::Execute,
        Method::IndexServers,
        Method::Write,
        Method::Read,
        Method::ReadFragment,
        Method::ReadRouted,
        Method::Status,
        Method::AppendEntries,
        Method::Vote,
        Method::Snapshot,
    ];
    /// How often each is chosen, in the order of [`Method::ALL`].
    const WEIGHTS: [u64; 10] = [25, 4, 14, 14, 10, 8, 4, 12, 12, 5];

    fn path(self) -> &'static str {
        match self {
            Method::Execute => "/drsdb.v1.Sql/Execute",
            Method::IndexServers => "/drsdb.v1.Sql/IndexServers",
            Method::Write => "/drsdb.v1.Storage/Write",
            Method::Read => "/drsdb.v1.Storage/Read",
            Method::ReadFragment => "/drsdb.v1.Storage/ReadFragment",
            Method::ReadRouted => "/drsdb.v1.Storage/ReadRouted",
            Method::Status => "/drsdb.v1.Storage/Status",
            Method::AppendEntries => "/drsdb.v1.Raft/AppendEntries",
            Method::Vote => "/drsdb.v1.Raft/Vote",
            Method::Snapshot => "/drsdb.v1.Raft/Snapshot",
        }
    }

    fn shape(self) -> Shape {
        match self {
            Method::Execute | Method::Read | Method::ReadFragment | Method::ReadRouted => Shape::ServerStreaming,
            Method::Snapshot => Shape::ClientStreaming,
            _ => Shape::Unary,
        }
    }

    /// Sent to index servers (else to storage servers).
    fn to_index(self) -> bool {
        matches!(self, Method::Execute | Method::IndexServers)
    }

    /// Sent with the client certificate (else the node's).
    fn client_certificate(self) -> bool {
        matches!(self, Method::Execute | Method::IndexServers | Method::ReadFragment | Method::ReadRouted)
    }
}

// ------------------------------------------------------------- raw codec

/// A codec that sends bytes as they are and returns the answer's bytes.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Sends `messages` (one, or several for a client stream) as a raw call
/// and reads the whole answer; the answer's bytes.
async fn call(channel: Channel, method: Method, messages: Vec<Bytes>) -> Result<usize, Status> {
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_MESSAGE);
    grpc.ready().await.map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
    let path = PathAndQuery::from_static(method.path());
    let first = messages.first().cloned().unwrap_or_default();
    match method.shape() {
        Shape::Unary => Ok(grpc.unary(tonic::Request::new(first), path, RawCodec).await?.into_inner().len()),
        Shape::ClientStreaming => {
            let stream = tonic::codegen::tokio_stream::iter(messages);
            Ok(grpc.client_streaming(tonic::Request::new(stream), path, RawCodec).await?.into_inner().len())
        }
        Shape::ServerStreaming => {
            let mut parts = grpc.server_streaming(tonic::Request::new(first), path, RawCodec).await?.into_inner();
            let mut bytes = 0;
            while let Some(part) = parts.message().await? {
                bytes += part.len();
            }
            Ok(bytes)
        }
    }
}

// ------------------------------------------------------ protobuf mutation

/// Wire types of the protobuf encoding.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LENGTH_DELIMITED: u8 = 2;
const FIXED32: u8 = 5;

/// A top-level field of an encoded message: its bytes, key and payload.
struct Field {
    range: std::ops::Range<usize>,
    wire: u8,
    payload: std::ops::Range<usize>,
}

/// Message `b` with the contents of its length-delimited field `f`
/// replaced by `content` (the field's key kept, its length rewritten).
fn with_payload(b: &[u8], f: &Field, content: &[u8]) -> Vec<u8> {
    let mut rebuilt = b[..f.range.start].to_vec();
    let mut pos = f.range.start;
    write_varint(&mut rebuilt, read_varint(b, &mut pos).unwrap_or(0));
    write_varint(&mut rebuilt, content.len() as u64);
    rebuilt.extend_from_slice(content);
    rebuilt.extend_from_slice(&b[f.range.end..]);
    rebuilt
}

fn read_varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The top-level fields of `b`; `None` when it is not a well-formed message.
fn fields(b: &[u8]) -> Option<Vec<Field>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let start = pos;
        let key = read_varint(b, &mut pos)?;
        let wire = (key & 7) as u8;
        let payload_start;
        match wire {
            VARINT => {
                payload_start = pos;
                read_varint(b, &mut pos)?;
            }
            FIXED64 => {
                payload_start = pos;
                pos += 8;
            }
            FIXED32 => {
                payload_start = pos;
                pos += 4;
            }
            LENGTH_DELIMITED => {
                let len = read_varint(b, &mut pos)?;
                payload_start = pos;
                pos = pos.checked_add(usize::try_from(len).ok()?)?;
            }
            _ => return None,
        }
        if pos > b.len() {
            return None;
        }
        out.push(Field { range: start..pos, wire, payload: payload_start..pos });
    }
    Some(out)
}

/// A field key: field number and wire type.
fn key(number: u64, wire: u8) -> u64 {
    (number << 3) | u64::from(wire)
}

/// One mutation of an encoded message.
fn mutate_once(rng: &mut Rng, b: &[u8]) -> Vec<u8> {
    let mut out = b.to_vec();
    let parsed = fields(b).unwrap_or_default();
    let delimited: Vec<&Field> = parsed.iter().filter(|f| f.wire == LENGTH_DELIMITED).collect();
    // Structure-aware mutations weigh more: a message that no longer
    // decodes only tests the decoder.
    const WEIGHTS: &[u64] = &[8, 4, 4, 2, 4, 10, 8, 8, 5, 14, 5, 4, 1, 14, 14];
    match rng.weighted(WEIGHTS) {
        // Flip bits.
        0 if !out.is_empty() => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
        }
        // Truncate.
        1 if !out.is_empty() => out.truncate(rng.below(out.len())),
        // Extend.
        2 => {
            let n = 1 + rng.below(64);
            out.extend(rng.bytes(n));
        }
        // Replace with random bytes.
        3 => {
            let n = rng.below(128);
            out = rng.bytes(n);
        }
        // An interesting byte somewhere.
        4 if !out.is_empty() => {
            let i = rng.below(out.len());
            out[i] = *rng.pick(&[0x00, 0xff, 0x7f, 0x80, 0x01, 0x08, 0x0a, 0x12]);
        }
        // Corrupt a length.
        5 if !delimited.is_empty() => {
            let f = *rng.pick(&delimited);
            let len = (f.payload.end - f.payload.start) as u64;
            let mut rebuilt = out[..f.range.start].to_vec();
            let mut pos = f.range.start;
            let k = read_varint(b, &mut pos).unwrap_or(0);
            write_varint(&mut rebuilt, k);
            match rng.below(6) {
                0 => write_varint(&mut rebuilt, len + 1 + rng.below(16) as u64),
                1 => write_varint(&mut rebuilt, len.saturating_sub(1)),
                2 => write_varint(&mut rebuilt, u64::from(u32::MAX)),
                3 => write_varint(&mut rebuilt, u64::MAX),
                4 => rebuilt.extend([0xff; 11]),
                // The same length, encoded in ten bytes.
                _ => {
                    for i in 0..9 {
                        rebuilt.push(((len >> (7 * i)) as u8 & 0x7f) | 0x80);
                    }
                    rebuilt.push(0);
                }
            }
            rebuilt.extend_from_slice(&b[f.payload.clone()]);
            rebuilt.extend_from_slice(&b[f.range.end..]);
            out = rebuilt;
        }
        // Repeat a field.
        6 if !parsed.is_empty() => {
            let f = rng.pick(&parsed);
            let copy = b[f.range.clone()].to_vec();
            let most = (MAX_FUZZ_MESSAGE / copy.len().max(1)).max(1);
            let times = (*rng.pick(&[1, 2, 10, 1_000, 20_000])).min(most);
            for _ in 0..times {
                out.extend_from_slice(&copy);
            }
        }
        // An unknown field.
        7 => {
            let number = *rng.pick(&[15, 16, 99, 2047, 19_000, (1 << 29) - 1]);
            let wire = *rng.pick(&[VARINT, FIXED64, LENGTH_DELIMITED, FIXED32, 3, 4, 6, 7]);
            let at = if parsed.is_empty() { 0 } else { rng.pick(&parsed).range.start };
            let mut field = Vec::new();
            write_varint(&mut field, key(number, wire));
            match wire {
                VARINT => write_varint(&mut field, rng.next_u64()),
                FIXED64 => field.extend(rng.bytes(8)),
                FIXED32 => field.extend(rng.bytes(4)),
                LENGTH_DELIMITED => {
                    let n = rng.below(32);
                    write_varint(&mut field, n as u64);
                    field.extend(rng.bytes(n));
                }
                _ => {}
            }
            out.splice(at..at, field);
        }
        // Another field number or wire type for a field.
        8 if !parsed.is_empty() => {
            let f = rng.pick(&parsed);
            let mut pos = f.range.start;
            let k = read_varint(b, &mut pos).unwrap_or(0);
            let new_key = match rng.below(3) {
                0 => key(k >> 3, rng.below(8) as u8),
                1 => key(rng.below(8) as u64, (k & 7) as u8),
                _ => key(0, (k & 7) as u8),
            };
            let mut rebuilt = out[..f.range.start].to_vec();
            write_varint(&mut rebuilt, new_key);
            rebuilt.extend_from_slice(&b[pos..]);
            out = rebuilt;
        }
        // Mutate inside a nested message or string.
        9 if !delimited.is_empty() => {
            let f = *rng.pick(&delimited);
            let inner = mutate_once(rng, &b[f.payload.clone()]);
            out = with_payload(b, f, &inner);
        }
        // Drop a field.
        10 if !parsed.is_empty() => {
            let f = rng.pick(&parsed);
            out.drain(f.range.clone());
        }
        // Swap two fields.
        11 if parsed.len() > 1 => {
            let i = rng.below(parsed.len() - 1);
            let (a, c) = (&parsed[i], &parsed[i + 1]);
            let mut rebuilt = out[..a.range.start].to_vec();
            rebuilt.extend_from_slice(&b[c.range.clone()]);
            rebuilt.extend_from_slice(&b[a.range.clone()]);
            rebuilt.extend_from_slice(&b[c.range.end..]);
            out = rebuilt;
        }
        // A huge string or bytes field.
        12 if out.len() < MAX_FUZZ_MESSAGE / 2 => {
            let n = *rng.pick(&[1 << 20, 5 << 20]).min(&(MAX_FUZZ_MESSAGE / 2));
            write_varint(&mut out, key(1 + rng.below(5) as u64, LENGTH_DELIMITED));
            write_varint(&mut out, n as u64);
            out.extend(std::iter::repeat_n(b'a', n));
        }
        // An extreme number in a varint field.
        13 if parsed.iter().any(|f| f.wire == VARINT) => {
            let varints: Vec<&Field> = parsed.iter().filter(|f| f.wire == VARINT).collect();
            let f = *rng.pick(&varints);
            let mut rebuilt = out[..f.payload.start].to_vec();
            write_varint(
                &mut rebuilt,
                *rng.pick(&[0, 1, 2, 0x7f, 0x80, u64::from(u32::MAX), i64::MAX as u64, u64::MAX]),
            );
            rebuilt.extend_from_slice(&b[f.range.end..]);
            out = rebuilt;
        }
        // Other contents for a string or bytes field.
        14 if !delimited.is_empty() => {
            let f = *rng.pick(&delimited);
            let content: Vec<u8> = match rng.below(6) {
                0 => Vec::new(),
                1 => rng.pick(EXECUTE_SQL).as_bytes().to_vec(),
                2 => vec![0xff, 0xfe, b'S', 0xc0, 0x80],
                3 => "é\u{0}\u{feff}\u{10ffff}".as_bytes().to_vec(),
                4 => "SELECT ".repeat(1 + rng.below(10_000)).into_bytes(),
                _ => rng.some_bytes(64),
            };
            out = with_payload(b, f, &content);
        }
        _ => {
            let n = 1 + rng.below(8);
            out.extend(rng.bytes(n));
        }
    }
    out
}

/// `b` mutated one to a few times.
fn mutate(rng: &mut Rng, b: &[u8]) -> Vec<u8> {
    let mut out = b.to_vec();
    for _ in 0..1 + rng.below(MAX_MUTATIONS) {
        out = mutate_once(rng, &out);
        out.truncate(MAX_FUZZ_MESSAGE);
    }
    out
}

// ------------------------------------------------------- valid requests

/// A random SQL value.
fn value(rng: &mut Rng) -> pb::Value {
    use pb::value::Kind as V;
    let kind = match rng.below(6) {
        0 => None,
        1 => Some(V::Integer(*rng.pick(&[0, 1, 7, -1, i64::MAX, i64::MIN, 100_001]))),
        2 => Some(V::Real(*rng.pick(&[0.5, -0.0, f64::INFINITY, f64::NAN, 1e300]))),
        3 => Some(V::Text(rng.pick(&["", "a", "é", "it's", "\u{0}"]).to_string())),
        4 => Some(V::Blob(rng.some_bytes(16))),
        _ => Some(V::Integer(rng.range(1, TABLE_ROWS as i64))),
    };
    pb::Value { kind }
}

/// A statement as the storage tier takes it.
fn statement(rng: &mut Rng, sql: &[&str]) -> pb::Statement {
    pb::Statement {
        sql: rng.pick(sql).to_string(),
        params: (0..rng.below(3)).map(|_| value(rng)).collect(),
        seed: rng.next_u64(),
        now_ms: rng.range(0, 1 << 45),
        request_id: rng.chance(50).then(|| format!("fz-{}", rng.next_u64())),
        schema_version: rng.chance(30).then(|| rng.next_u64() as i64),
        memory_limit: rng.chance(30).then(|| rng.next_u64() >> rng.below(64)),
    }
}

/// A storage command.
fn command(rng: &mut Rng) -> pb::Command {
    use pb::command::Kind;
    const TXN: &str = "01FUZZ00000000000000000000";
    // Never a Begin: a transaction would hold the group until it timed out.
    let step = |rng: &mut Rng| {
        use pb::txn_step::Kind;
        let kind = match rng.below(8) {
            0 => Kind::Commit(pb::CommitStep {
                participants: Some(pb::Participants {
                    groups: (0..rng.below(3)).map(|_| rng.below(10) as u64).collect(),
                }),
                request_id: rng.chance(50).then(|| format!("fz-{}", rng.next_u64())),
                outcome: rng.chance(50).then(pb::StatementResult::default),
            }),
            1 => Kind::Rollback(pb::Unit {}),
            2 => Kind::Abort(pb::Unit {}),
            3 => Kind::Resolve(pb::Unit {}),
            4 => Kind::Prepare(rng.below(10) as u64),
            5 => Kind::Claim(format!("fz-{}", rng.below(100))),
            _ => Kind::Run(statement(rng, STORAGE_SQL)),
        };
        pb::TxnStep { kind: rng.chance(95).then_some(kind) }
    };
    let kind = match rng.below(2) {
        0 => Kind::Txn(pb::TxnCommand {
            txn: TXN.into(),
            now_ms: rng.range(0, 1 << 45),
            steps: (0..rng.below(4)).map(|_| step(rng)).collect(),
            statement: rng.chance(50),
            no_wait: rng.chance(50),
        }),
        _ => Kind::Batch(pb::Batch { statements: vec![statement(rng, STORAGE_SQL)] }),
    };
    pb::Command { kind: Some(kind) }
}

/// A Raft vote from a leader of a far term.
fn vote(rng: &mut Rng) -> Option<pb::Vote> {
    rng.chance(80).then(|| pb::Vote {
        term: rng.range(0, 1_000_000) as u64,
        node: rng.below(10) as u64,
        committed: rng.chance(50),
    })
}

/// A log id.
fn log_id(rng: &mut Rng) -> Option<pb::LogId> {
    rng.chance(50).then(|| pb::LogId {
        term: rng.below(100) as u64,
        node: rng.below(10) as u64,
        index: rng.below(1000) as u64,
    })
}

/// What valid messages are built from, learned from the cluster.
struct Material {
    /// Data group ids.
    data_groups: Vec<u64>,
    /// Tickets of real direct reads.
    tickets: Vec<pb::Ticket>,
    /// Tickets of real routes.
    routes: Vec<pb::Ticket>,
    /// This run's messages so far (for request ids).
    sent: u64,
}

impl Material {
    /// A valid request for `method`.
    fn request(&mut self, rng: &mut Rng, method: Method) -> Vec<u8> {
        self.sent += 1;
        let group =
            |rng: &mut Rng, data: &[u64]| if rng.chance(50) || data.is_empty() { NO_GROUP } else { *rng.pick(data) };
        match method {
            Method::Execute => pb::ExecuteRequest {
                sql: rng.pick(EXECUTE_SQL).to_string(),
                params: (0..rng.below(4)).map(|_| value(rng)).collect(),
                txn_id: match rng.below(10) {
                    0 => "01FUZZ00000000000000000000".into(),
                    1 => "not a transaction".into(),
                    _ => String::new(),
                },
                request_id: if rng.chance(70) {
                    format!("fuzz-{}-{}", rng.next_u64(), self.sent)
                } else {
                    String::new()
                },
                accept_fragments: rng.chance(50),
                txn_groups: (0..rng.below(3)).map(|_| rng.below(10) as u64).collect(),
                batch_rows: if rng.chance(20) { rng.below(5) as u32 } else { 0 },
                want_route: rng.chance(50),
            }
            .encode_to_vec(),
            Method::IndexServers => pb::IndexServersRequest {}.encode_to_vec(),
            Method::Write => {
                pb::WriteRequest { group: group(rng, &self.data_groups), command: Some(command(rng)) }.encode_to_vec()
            }
            Method::Read => pb::ReadRequest {
                group: if rng.chance(70) { group(rng, &self.data_groups) } else { 0 },
                statement: Some(statement(rng, &STORAGE_SQL[..5])),
                alone: rng.chance(50),
            }
            .encode_to_vec(),
            Method::ReadFragment => match self.tickets.is_empty() || rng.chance(20) {
                true => pb::Ticket { body: rng.some_bytes(200), signature: rng.bytes(32) }.encode_to_vec(),
                false => rng.pick(&self.tickets).encode_to_vec(),
            },
            Method::ReadRouted => pb::RoutedRead {
                ticket: Some(match self.routes.is_empty() || rng.chance(20) {
                    true => pb::Ticket { body: rng.some_bytes(200), signature: rng.bytes(32) },
                    false => rng.pick(&self.routes).clone(),
                }),
                params: (0..rng.below(4)).map(|_| value(rng)).collect(),
            }
            .encode_to_vec(),
            Method::Status => pb::StatusRequest {}.encode_to_vec(),
            Method::AppendEntries => pb::AppendEntriesRequest {
                group: NO_GROUP,
                vote: vote(rng),
                prev_log_id: log_id(rng),
                entries: Vec::new(),
                leader_commit: log_id(rng),
            }
            .encode_to_vec(),
            Method::Vote => pb::VoteRequest {
                group: NO_GROUP,
                vote: vote(rng),
                last_log_id: log_id(rng),
                leadership_transfer: rng.chance(10),
            }
            .encode_to_vec(),
            Method::Snapshot => pb::SnapshotChunk {
                group: NO_GROUP,
                header: Some(pb::SnapshotHeader { vote: vote(rng), meta: None }),
                data: rng.some_bytes(256),
            }
            .encode_to_vec(),
        }
    }

    /// True when `bytes`, as the server would decode them, stay off every
    /// real group for calls where that matters: Raft messages must name
    /// [`NO_GROUP`]; writes [`NO_GROUP`] or a data group (never the meta
    /// group). Messages that do not decode are refused by the server.
    fn safe(&self, method: Method, bytes: &[u8]) -> bool {
        let group = match method {
            Method::AppendEntries => pb::AppendEntriesRequest::decode(bytes).map(|m| m.group),
            Method::Vote => pb::VoteRequest::decode(bytes).map(|m| m.group),
            Method::Snapshot => pb::SnapshotChunk::decode(bytes).map(|m| m.group),
            Method::Write => pb::WriteRequest::decode(bytes).map(|m| m.group),
            _ => return true,
        };
        match group {
            Err(_) => true,
            Ok(NO_GROUP) => true,
            Ok(g) => method == Method::Write && self.data_groups.contains(&g),
        }
    }
}

/// Hex of the first bytes of `b`, for a finding.
fn hex(b: &[u8]) -> String {
    let shown: String = b.iter().take(SHOWN_MESSAGE_BYTES).map(|x| format!("{x:02x}")).collect();
    if b.len() > SHOWN_MESSAGE_BYTES {
        format!("{shown}… ({} bytes)", b.len())
    } else {
        format!("{shown} ({} bytes)", b.len())
    }
}

/// Tickets of real direct reads of the fuzz table (fragments, then
/// routes), from an index server.
async fn direct_tickets(target: &Target) -> (Vec<pb::Ticket>, Vec<pb::Ticket>) {
    let Ok(dialer) = Dialer::new(&target.client_tls) else { return Default::default() };
    let (mut fragments, mut routes) = (Vec::new(), Vec::new());
    let reads = [
        ("SELECT * FROM fz_g", vec![]),
        ("SELECT * FROM fz_g ORDER BY v LIMIT 50", vec![]),
        ("SELECT v FROM fz_g WHERE id = ?", vec![pb::Value::from(drsdb_common::Value::Integer(5))]),
    ];
    for (sql, params) in reads {
        let Some(addr) = target.index_servers().first() else { break };
        let Ok(channel) = dialer.lazy(addr) else { break };
        let mut client = pb::sql_client::SqlClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
        let request = pb::ExecuteRequest {
            sql: sql.into(),
            params,
            accept_fragments: true,
            want_route: true,
            ..Default::default()
        };
        let Ok(Ok(response)) = tokio::time::timeout(HANG, client.execute(request)).await else { continue };
        let mut parts = response.into_inner();
        while let Ok(Ok(Some(part))) = tokio::time::timeout(HANG, parts.message()).await {
            match part.part {
                Some(pb::result_part::Part::Fragments(f)) => {
                    fragments.extend(f.fragments.into_iter().filter_map(|f| f.ticket))
                }
                Some(pb::result_part::Part::Route(r)) => routes.extend(r.ticket),
                _ => {}
            }
        }
    }
    (fragments, routes)
}

/// Runs `fuzz grpc`.
pub fn run(args: Args) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: Args) -> anyhow::Result<bool> {
    let seed = args.seed.unwrap_or_else(clock_seed);
    println!("fuzz grpc: seed {seed}, {} messages", args.messages);
    let mut target = Target::open(args.data.as_deref(), args.shards).await?;
    let shards = target.shards().await?;
    println!("fuzz grpc: cluster in {} ({shards} shards)", target.dir.display());
    // A table for the messages' SQL, with rows enough for direct reads.
    let mut client = target.client().await.map_err(|e| anyhow::anyhow!("cannot connect to the cluster: {e}"))?;
    let rows: Vec<String> = (1..=TABLE_ROWS).map(|i| format!("({i}, 'v{}')", i % 17)).collect();
    for sql in [
        format!("DROP TABLE IF EXISTS {TABLE}"),
        format!("CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, v TEXT)"),
        format!("INSERT INTO {TABLE} VALUES {}", rows.join(", ")),
    ] {
        client.execute(&sql, &[]).await.map_err(|e| anyhow::anyhow!("cannot set up {TABLE}: {e}"))?;
    }
    drop(client);
    let (tickets, routes) = direct_tickets(&target).await;
    let mut material = Material { data_groups: (1..=shards as u64).collect(), tickets, routes, sent: 0 };
    println!(
        "fuzz grpc: {} tickets of real direct reads and {} routes to mutate",
        material.tickets.len(),
        material.routes.len()
    );
    let client_dialer = Dialer::new(&target.client_tls)?;
    let node_dialer = Dialer::new(&target.node_tls)?;
    let index: Vec<Channel> = target.index_servers().iter().map(|a| client_dialer.lazy(a)).collect::<Result<_, _>>()?;
    let storage_node: Vec<Channel> =
        target.storage_servers().iter().map(|a| node_dialer.lazy(a)).collect::<Result<_, _>>()?;
    let storage_client: Vec<Channel> =
        target.storage_servers().iter().map(|a| client_dialer.lazy(a)).collect::<Result<_, _>>()?;

    let mut findings = Findings::default();
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    // A few distinct error messages of each code, for the summary.
    let mut samples: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut per_method: BTreeMap<Method, u64> = BTreeMap::new();
    let mut skipped = 0u64;
    // Mutations not sent because they named a real group.
    let mut redirected = 0u64;
    let mut stop = false;
    let started = Instant::now();
    let mut sent = 0u64;
    for i in 0..args.messages {
        let mut rng = Rng::for_case(seed, i);
        let method = Method::ALL[rng.weighted(&Method::WEIGHTS)];
        let valid = material.request(&mut rng, method);
        let mutated = rng.chance(90);
        let body = match mutated {
            false => Some(valid.clone()),
            true => (0..MUTATION_TRIES).map(|_| mutate(&mut rng, &valid)).find(|b| {
                let safe = material.safe(method, b);
                redirected += u64::from(!safe);
                safe
            }),
        };
        let Some(body) = body else {
            skipped += 1;
            continue;
        };
        let mut messages = vec![Bytes::from(body.clone())];
        if method == Method::Snapshot {
            for _ in 0..rng.below(3) {
                let chunk = pb::SnapshotChunk { group: NO_GROUP, header: None, data: rng.some_bytes(1024) };
                messages.push(Bytes::from(chunk.encode_to_vec()));
            }
        }
        // Now and then a storage-only call with the client certificate.
        let wrong_certificate = !method.client_certificate() && !method.to_index() && rng.chance(3);
        let channels = match (method.to_index(), method.client_certificate() || wrong_certificate) {
            (true, _) => &index,
            (false, true) => &storage_client,
            (false, false) => &storage_node,
        };
        let server = rng.below(channels.len());
        let answer = tokio::time::timeout(HANG, call(channels[server].clone(), method, messages)).await;
        sent += 1;
        *per_method.entry(method).or_default() += 1;
        let what = || {
            format!(
                "message {i} ({method:?} to server {server}, {}): {}",
                if mutated { "mutated" } else { "valid" },
                hex(&body)
            )
        };
        let code = match answer {
            Err(_) => {
                findings.report(Kind::Hang, &format!("no answer in {HANG:?} to {}", what()));
                "hang".to_string()
            }
            Ok(Ok(_)) => "Ok".to_string(),
            Ok(Err(status)) => {
                if status.message().contains("hit a bug") {
                    findings.report(Kind::Crash, &format!("{} was answered: {}", what(), status.message()));
                }
                let code = format!("{:?}", status.code());
                let message: String = status.message().chars().take(SAMPLE_CHARS).collect();
                let seen = samples.entry(code.clone()).or_default();
                let kind: String = message.chars().take(SAMPLE_KIND_CHARS).collect();
                if seen.len() < SAMPLES_PER_CODE && !seen.iter().any(|m| m.starts_with(&kind)) {
                    seen.push(message);
                }
                code
            }
        };
        let transport_failure = matches!(code.as_str(), "Unavailable" | "Unknown" | "Cancelled" | "hang");
        *codes.entry(code).or_default() += 1;
        if transport_failure || (i + 1) % args.check_every == 0 {
            for (problem, hang) in target.health().await {
                stop |= problem.contains("died");
                findings.report(if hang { Kind::Hang } else { Kind::Crash }, &format!("after {}: {problem}", what()));
            }
            if stop {
                break;
            }
        }
        if (i + 1) % args.check_every == 0 {
            (material.tickets, material.routes) = direct_tickets(&target).await;
            println!(
                "fuzz grpc: {}/{} messages, {:.0} messages/s, {} findings",
                i + 1,
                args.messages,
                rate(sent, started.elapsed()),
                findings.total()
            );
        }
    }
    if !stop {
        for (problem, hang) in target.health().await {
            findings.report(if hang { Kind::Hang } else { Kind::Crash }, &format!("at the end: {problem}"));
        }
    }
    let elapsed = started.elapsed();
    let replicas = target.finish(args.keep, &mut findings)?;
    let codes: Vec<String> = codes.iter().map(|(c, n)| format!("{c} {n}")).collect();
    let methods: Vec<String> = per_method.iter().map(|(m, n)| format!("{m:?} {n}")).collect();
    println!("fuzz grpc: answers: {}", codes.join(", "));
    for (code, messages) in &samples {
        for m in messages {
            println!("  {code}: {m}");
        }
    }
    println!(
        "fuzz grpc: calls: {}; {redirected} mutations named a real group and were not sent ({skipped} messages \
         skipped for it)",
        methods.join(", ")
    );
    println!("fuzz grpc: {sent} messages in {elapsed:.1?}, {:.0} messages/s", rate(sent, elapsed));
    println!(
        "fuzz grpc: {sent} messages, {} crashes, {} hangs, {} divergences, {replicas}",
        findings.crashes, findings.hangs, findings.divergences
    );
    Ok(findings.total() == 0)
}
