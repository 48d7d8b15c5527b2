//! TLS for every hop: making a cluster's certificates (`drsdb certs`), and
//! turning a [`TlsConfig`] into tonic's server and client settings.
//!
//! One CA signs every certificate. Servers require a client certificate
//! signed by it (mutual TLS), so a client without one is refused during
//! the handshake. Node certificates carry both the server and the client
//! usage, since a storage server also dials its peers; client certificates
//! carry the client usage only, which is how a storage server tells a
//! client (allowed to read ticketed fragments, nothing else) from a server
//! ([`is_server_certificate`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::config::TlsConfig;
use crate::error::{Error, Result};

/// Time allowed to open a connection before the peer counts as down.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Every open connection is probed this often (HTTP/2 PING), busy or idle.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// A peer that does not answer a probe within this long counts as gone:
/// the connection is closed and the calls on it fail at once, so a frozen
/// or cut-off server (SIGSTOP, a partition) holds no caller for longer
/// than about `KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT`. A merely slow
/// server still answers probes (they are handled apart from requests).
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(1);

/// File names inside a certificate directory made by [`generate`].
pub mod files {
    /// The CA certificate.
    pub const CA: &str = "ca.pem";
    /// The CA key (keep it safe: it can mint certificates).
    pub const CA_KEY: &str = "ca.key";
    /// Certificate and key for servers.
    pub const NODE: &str = "node.pem";
    /// Key of [`NODE`].
    pub const NODE_KEY: &str = "node.key";
    /// Certificate and key for clients (the shell, drivers).
    pub const CLIENT: &str = "client.pem";
    /// Key of [`CLIENT`].
    pub const CLIENT_KEY: &str = "client.key";
    /// The key servers sign and check direct-streaming tickets with
    /// (`crate::ticket`); servers only, never clients.
    pub const TICKET_KEY: &str = "ticket.key";
}

fn cert_err(e: rcgen::Error) -> Error {
    Error::invalid(format!("certificate generation failed: {e}"))
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "drsdb cluster CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p
}

fn leaf(
    common_name: &str,
    hosts: &[String],
    usages: Vec<ExtendedKeyUsagePurpose>,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<(String, String)> {
    let mut p = CertificateParams::new(hosts.to_vec()).map_err(cert_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    p.extended_key_usages = usages;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    let key = KeyPair::generate().map_err(cert_err)?;
    let cert = p.signed_by(&key, issuer).map_err(cert_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Creates, in `dir`: a CA, a node certificate valid for `hosts` (DNS
/// names or IP addresses; `localhost` and `127.0.0.1` are always
/// included) and a client certificate, as PEM files, and the ticket key. Existing files are kept,
/// so running it twice is harmless; a missing CA is an error if node or
/// client files exist.
pub fn generate(dir: &Path, hosts: &[String]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("cannot create {}: {e}", dir.display())))?;
    let path = |name: &str| dir.join(name);
    let write = |name: &str, text: &str| -> Result<()> {
        std::fs::write(path(name), text).map_err(|e| Error::io(format!("cannot write {}: {e}", path(name).display())))
    };
    let ca_key = if path(files::CA_KEY).exists() {
        let pem = std::fs::read_to_string(path(files::CA_KEY))?;
        KeyPair::from_pem(&pem).map_err(cert_err)?
    } else {
        let key = KeyPair::generate().map_err(cert_err)?;
        let cert = ca_params().self_signed(&key).map_err(cert_err)?;
        write(files::CA, &cert.pem())?;
        write(files::CA_KEY, &key.serialize_pem())?;
        restrict(&path(files::CA_KEY))?;
        key
    };
    let issuer = Issuer::new(ca_params(), ca_key);
    let mut all_hosts: Vec<String> = vec!["localhost".into(), "127.0.0.1".into()];
    for h in hosts {
        if !all_hosts.contains(h) {
            all_hosts.push(h.clone());
        }
    }
    if !path(files::NODE).exists() {
        let usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let (cert, key) = leaf("drsdb node", &all_hosts, usages, &issuer)?;
        write(files::NODE, &cert)?;
        write(files::NODE_KEY, &key)?;
        restrict(&path(files::NODE_KEY))?;
    }
    // A client certificate made by an older version carries the server
    // usage too, which would let its holders act as servers: replace it.
    if !path(files::CLIENT).exists() || pem_is_server_certificate(&path(files::CLIENT)) {
        let usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let (cert, key) = leaf("drsdb client", &["drsdb-client".to_string()], usages, &issuer)?;
        write(files::CLIENT, &cert)?;
        write(files::CLIENT_KEY, &key)?;
        restrict(&path(files::CLIENT_KEY))?;
    }
    crate::ticket::generate(&path(files::TICKET_KEY))
}

/// Makes `path` readable by its owner only.
pub(crate) fn restrict(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(format!("cannot restrict {}: {e}", path.display())))
}

/// The TLS settings of a client that uses the certificates in `dir`.
pub fn client_config_in(dir: &Path) -> TlsConfig {
    TlsConfig {
        ca: dir.join(files::CA),
        cert: dir.join(files::CLIENT),
        key: dir.join(files::CLIENT_KEY),
        insecure: false,
    }
}

/// The TLS settings of a server that uses the certificates in `dir`.
pub fn node_config_in(dir: &Path) -> TlsConfig {
    TlsConfig { ca: dir.join(files::CA), cert: dir.join(files::NODE), key: dir.join(files::NODE_KEY), insecure: false }
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::invalid(format!("cannot read {what} {}: {e}; create certificates with `drsdb certs`", path.display()))
    })
}

/// Server-side TLS requiring client certificates signed by the CA, and a
/// handshake finished within `handshake_timeout`; `None` in insecure mode.
pub fn server_config(tls: &TlsConfig, handshake_timeout: Duration) -> Result<Option<ServerTlsConfig>> {
    if tls.insecure {
        tracing::warn!("TLS is off (insecure = true): traffic is plaintext and peers are not authenticated");
        return Ok(None);
    }
    let identity = Identity::from_pem(read(&tls.cert, "certificate")?, read(&tls.key, "key")?);
    let ca = Certificate::from_pem(read(&tls.ca, "CA certificate")?);
    Ok(Some(ServerTlsConfig::new().identity(identity).client_ca_root(ca).timeout(handshake_timeout)))
}

/// True when the PEM file at `path` holds a certificate for servers.
fn pem_is_server_certificate(path: &Path) -> bool {
    let Ok(pem) = std::fs::read(path) else { return false };
    x509_parser::pem::parse_x509_pem(&pem).is_ok_and(|(_, p)| is_server_certificate(&p.contents))
}

/// True when `der` is a certificate for servers (it carries the TLS
/// server usage), as opposed to one for clients only.
pub fn is_server_certificate(der: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { return false };
    matches!(cert.extended_key_usage(), Ok(Some(eku)) if eku.value.server_auth || eku.value.any)
}

/// Refuses a request unless its peer presented a server certificate
/// (one signed by the CA, checked during the handshake, that carries the
/// server usage). `tls` says whether this server runs TLS at all; without
/// it (insecure mode) no peer is authenticated and every request passes.
pub fn require_server_peer<T>(request: &tonic::Request<T>, tls: bool) -> std::result::Result<(), tonic::Status> {
    if !tls {
        return Ok(());
    }
    let certs = request.peer_certs();
    match certs.as_deref().and_then(|c| c.first()) {
        Some(cert) if is_server_certificate(cert) => Ok(()),
        _ => Err(tonic::Status::permission_denied(
            "this call is for drsdb servers only: present a server certificate; clients send SQL to an index \
             server",
        )),
    }
}

/// How a process dials others: TLS material loaded once.
#[derive(Clone, Debug)]
pub struct Dialer {
    tls: Option<ClientTlsConfig>,
}

impl Dialer {
    /// Loads the CA and this process's certificate; plaintext when `insecure`.
    pub fn new(tls: &TlsConfig) -> Result<Dialer> {
        if tls.insecure {
            return Ok(Dialer { tls: None });
        }
        let identity = Identity::from_pem(read(&tls.cert, "certificate")?, read(&tls.key, "key")?);
        let ca = Certificate::from_pem(read(&tls.ca, "CA certificate")?);
        // The handshake is bounded too: a frozen server accepts TCP
        // connections (its kernel does) but never answers the handshake.
        let tls = ClientTlsConfig::new().ca_certificate(ca).identity(identity).timeout(CONNECT_TIMEOUT);
        Ok(Dialer { tls: Some(tls) })
    }

    /// An endpoint for `addr` (`host:port`), TLS unless insecure.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| Error::invalid(format!("bad address {addr}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            ep = ep.tls_config(tls.clone()).map_err(|e| Error::invalid(format!("TLS setup for {addr}: {e}")))?;
        }
        Ok(ep)
    }

    /// A channel that connects on first use and reconnects after failures.
    pub fn lazy(&self, addr: &str) -> Result<Channel> {
        Ok(self.endpoint(addr)?.connect_lazy())
    }
}

/// One lazily connected channel per address, shared by every call to it.
#[derive(Clone, Debug)]
pub struct Channels {
    dialer: Dialer,
    open: std::sync::Arc<std::sync::RwLock<std::collections::HashMap<String, Channel>>>,
}

impl Channels {
    /// Channels dialed with `dialer`.
    pub fn new(dialer: Dialer) -> Channels {
        Channels { dialer, open: Default::default() }
    }

    /// The channel to `addr`, made on first use.
    pub fn get(&self, addr: &str) -> Result<Channel> {
        if let Some(c) = self.open.read().expect("channels lock").get(addr) {
            return Ok(c.clone());
        }
        let c = self.dialer.lazy(addr)?;
        self.open.write().expect("channels lock").insert(addr.to_string(), c.clone());
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_a_usable_set_and_is_idempotent() {
        let dir = tempfile_dir();
        generate(&dir, &["db1.example".into()]).unwrap();
        let first = std::fs::read(dir.join(files::NODE)).unwrap();
        generate(&dir, &[]).unwrap();
        assert_eq!(first, std::fs::read(dir.join(files::NODE)).unwrap());
        server_config(&node_config_in(&dir), Duration::from_secs(1)).unwrap().unwrap();
        Dialer::new(&client_config_in(&dir)).unwrap();
        let der =
            |name: &str| x509_parser::pem::parse_x509_pem(&std::fs::read(dir.join(name)).unwrap()).unwrap().1.contents;
        assert!(is_server_certificate(&der(files::NODE)));
        assert!(!is_server_certificate(&der(files::CLIENT)));
        // An older client certificate, with the server usage, is replaced.
        std::fs::copy(dir.join(files::NODE), dir.join(files::CLIENT)).unwrap();
        generate(&dir, &[]).unwrap();
        assert!(!is_server_certificate(&der(files::CLIENT)));
        crate::ticket::TicketKey::load(&dir.join(files::TICKET_KEY)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("drsdb-tls-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }
}
