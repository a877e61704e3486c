//! The peer endpoint's mutual TLS (rustls, ring provider only): both sides present a node
//! certificate signed by the cluster CA (`certs.rs`); a client checks the server's DNS name
//! `strata-node-{N}` (the node it meant to reach), the server reads the client's node id from
//! its certificate (`certs::node_id_of`) and compares it with the id each request claims.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::PeerTls;

/// ALPN of the peer protocol: a QUIC client that does not offer it is refused in the handshake.
pub const ALPN: &[u8] = b"strata-peer/1";

/// The TLS server name of node `id` (its certificate's DNS name).
pub fn server_name(id: i32) -> String {
    format!("strata-node-{id}")
}

/// The ring provider, the only one compiled in (PITFALLS: two providers panic on first use
/// unless one is installed; `main` installs this one too).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A node's TLS identity and the cluster CA, read from the three files.
pub struct Identity {
    pub ca: CertificateDer<'static>,
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// The node id the certificate names.
    pub node_id: i32,
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no certificate in it", path.display());
    }
    Ok(certs)
}

impl Identity {
    /// Reads the files and checks they belong together: the certificate chains to the CA and
    /// names exactly one node id.
    pub fn load(tls: &PeerTls) -> anyhow::Result<Identity> {
        let ca = read_certs(&tls.ca)?.remove(0);
        let chain = read_certs(&tls.cert)?;
        let key = PrivateKeyDer::from_pem_file(&tls.key)
            .map_err(|e| anyhow::anyhow!("{}: {e}", tls.key.display()))?;
        if !super::certs::signed_by(&chain[0], &ca) {
            anyhow::bail!(
                "{} is not signed by the CA in {}",
                tls.cert.display(),
                tls.ca.display()
            );
        }
        let node_id = super::certs::node_id_of(&chain[0]).ok_or_else(|| {
            anyhow::anyhow!(
                "{} names no node id (issue it with `strata cluster issue`)",
                tls.cert.display()
            )
        })?;
        Ok(Identity {
            ca,
            chain,
            key,
            node_id,
        })
    }

    fn roots(&self) -> anyhow::Result<Arc<rustls::RootCertStore>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(Arc::new(roots))
    }

    /// The server side: a client certificate signed by the CA is required.
    pub fn server_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots()?, provider())
                .build()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// The client side: the server must be the node named by the connection's server name.
    pub fn client_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}
