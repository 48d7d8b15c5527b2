//! Tickets: reads an index server signs so that a client may run them on a
//! storage server itself (direct streaming).
//!
//! An index server that splits a query into per-shard reads whose answers
//! the client can combine (concatenation, ordered merge) sends the client
//! one ticket per shard instead of the rows. A ticket is a serialized
//! [`pb::TicketBody`] (the read and an expiry) and its HMAC-SHA256 under a
//! key every index and storage server of the cluster shares (a file made
//! by `drsdb certs`, beside the certificates). Clients never hold the key:
//! they cannot forge or alter a ticket, only present it before it expires.
//!
//! Invariant: a storage server runs a client's read only when
//! [`TicketKey::open`] accepted its ticket; the read then carries the
//! schema version it was planned with, so a ticket planned on an older
//! schema is refused as stale like any other read.

use std::path::Path;

use aws_lc_rs::hmac;
use prost::Message;

use crate::error::{Error, Result};
use crate::shard::KeyRoute;
use drsdb_proto as pb;

/// Bytes of a ticket key.
pub const KEY_BYTES: usize = 32;

/// The cluster's ticket key.
#[derive(Clone)]
pub struct TicketKey(hmac::Key);

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKey(..)")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// Writes a new random key to `path` (readable by its owner only) unless
/// the file exists.
pub fn generate(path: &Path) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    let mut key = [0u8; KEY_BYTES];
    aws_lc_rs::rand::fill(&mut key).map_err(|_| Error::io("no randomness for a ticket key"))?;
    std::fs::write(path, format!("{}\n", hex(&key)))
        .map_err(|e| Error::io(format!("cannot write {}: {e}", path.display())))?;
    crate::tls::restrict(path)
}

impl TicketKey {
    /// Reads a key file made by [`generate`].
    pub fn load(path: &Path) -> Result<TicketKey> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid(format!(
                "cannot read ticket key {}: {e}; create it with `drsdb certs` (every index and storage server \
                 needs the same file)",
                path.display()
            ))
        })?;
        match unhex(&text) {
            Some(bytes) if bytes.len() == KEY_BYTES => Ok(TicketKey(hmac::Key::new(hmac::HMAC_SHA256, &bytes))),
            _ => Err(Error::invalid(format!(
                "{} is not a ticket key ({KEY_BYTES} bytes in hex); make a new one with `drsdb certs`",
                path.display()
            ))),
        }
    }

    /// Signs `read`, valid until `expires_ms` (ms since the Unix epoch).
    pub fn sign(&self, read: pb::ReadRequest, expires_ms: i64) -> pb::Ticket {
        self.sign_body(pb::TicketBody { read: Some(read), expires_ms, route: None })
    }

    /// Signs a route: `statement` run on the shard its parameters pick
    /// under `route` (`Storage.ReadRouted`), valid until `expires_ms`.
    pub fn sign_route(&self, statement: pb::Statement, route: &KeyRoute, expires_ms: i64) -> pb::Ticket {
        let read = pb::ReadRequest { group: 0, statement: Some(statement), alone: true };
        self.sign_body(pb::TicketBody { read: Some(read), expires_ms, route: Some(route.into()) })
    }

    fn sign_body(&self, body: pb::TicketBody) -> pb::Ticket {
        let body = body.encode_to_vec();
        let signature = hmac::sign(&self.0, &body).as_ref().to_vec();
        pb::Ticket { body, signature }
    }

    /// The read a fragment's `ticket` carries, if its signature is ours
    /// and it has not expired at `now_ms`.
    pub fn open(&self, ticket: &pb::Ticket, now_ms: i64) -> Result<pb::ReadRequest> {
        let body = self.open_body(ticket, now_ms)?;
        if body.route.is_some() {
            return Err(Error::invalid("this ticket is a route: send it with parameters (ReadRouted)"));
        }
        body.read.ok_or_else(|| Error::invalid("malformed ticket: it carries no read"))
    }

    /// The statement and route a route's `ticket` carries, if its
    /// signature is ours and it has not expired at `now_ms`.
    pub fn open_route(&self, ticket: &pb::Ticket, now_ms: i64) -> Result<(pb::Statement, KeyRoute)> {
        let body = self.open_body(ticket, now_ms)?;
        let route = body.route.as_ref().ok_or_else(|| Error::invalid("this ticket is not a route"))?;
        let statement = body.read.and_then(|r| r.statement);
        let statement = statement.ok_or_else(|| Error::invalid("malformed ticket: it carries no statement"))?;
        Ok((statement, KeyRoute::try_from(route)?))
    }

    fn open_body(&self, ticket: &pb::Ticket, now_ms: i64) -> Result<pb::TicketBody> {
        hmac::verify(&self.0, &ticket.body, &ticket.signature).map_err(|_| {
            Error::invalid(
                "the ticket is not valid (not signed with this cluster's ticket key); ask an index server to run \
                 the query",
            )
        })?;
        let body = pb::TicketBody::decode(ticket.body.as_slice())
            .map_err(|e| Error::invalid(format!("malformed ticket: {e}")))?;
        if now_ms > body.expires_ms {
            return Err(Error::invalid(format!(
                "the ticket expired {} ms ago; run the query again",
                now_ms - body.expires_ms
            )));
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TicketKey {
        TicketKey(hmac::Key::new(hmac::HMAC_SHA256, &[7; KEY_BYTES]))
    }

    fn read() -> pb::ReadRequest {
        pb::ReadRequest {
            group: 3,
            statement: Some(crate::command::Statement::new("SELECT * FROM t").into()),
            alone: false,
        }
    }

    #[test]
    fn a_signed_ticket_opens_until_it_expires() {
        let t = key().sign(read(), 1_000);
        assert_eq!(key().open(&t, 1_000).unwrap(), read());
        let e = key().open(&t, 1_001).unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
    }

    #[test]
    fn an_altered_or_foreign_ticket_is_refused() {
        let mut t = key().sign(read(), 1_000);
        let other = TicketKey(hmac::Key::new(hmac::HMAC_SHA256, &[8; KEY_BYTES]));
        assert!(other.open(&t, 0).is_err());
        let mut forged = read();
        forged.statement.as_mut().unwrap().sql = "SELECT * FROM secrets".into();
        t.body = pb::TicketBody { read: Some(forged), expires_ms: 1_000, route: None }.encode_to_vec();
        let e = key().open(&t, 0).unwrap_err();
        assert!(e.to_string().contains("not valid"), "{e}");
    }

    #[test]
    fn a_route_opens_only_as_a_route_and_a_fragment_only_as_a_fragment() {
        let route = KeyRoute {
            positions: vec![1],
            columns: vec![(crate::affinity::Affinity::Integer, crate::order::Collation::Binary)],
            shards: 4,
        };
        let statement: pb::Statement = crate::command::Statement::new("SELECT v FROM t WHERE id = ?2").into();
        let t = key().sign_route(statement.clone(), &route, 1_000);
        assert_eq!(key().open_route(&t, 1_000).unwrap(), (statement, route));
        assert!(key().open(&t, 0).unwrap_err().to_string().contains("is a route"));
        let fragment = key().sign(read(), 1_000);
        assert!(key().open_route(&fragment, 0).unwrap_err().to_string().contains("not a route"));
        assert!(key().open_route(&t, 1_001).unwrap_err().to_string().contains("expired"));
    }

    #[test]
    fn key_files_round_trip_and_bad_ones_are_explained() {
        let dir = std::env::temp_dir().join(format!("drsdb-ticket-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ticket.key");
        let _ = std::fs::remove_file(&path);
        generate(&path).unwrap();
        let first = std::fs::read(&path).unwrap();
        generate(&path).unwrap();
        assert_eq!(first, std::fs::read(&path).unwrap(), "an existing key is kept");
        let k = TicketKey::load(&path).unwrap();
        k.open(&k.sign(read(), 5), 5).unwrap();
        std::fs::write(&path, "abc").unwrap();
        assert!(TicketKey::load(&path).unwrap_err().to_string().contains("not a ticket key"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
