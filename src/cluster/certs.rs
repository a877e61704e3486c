//! The cluster's certificate authority and node certificates, for mutual TLS on the peer
//! endpoint (DESIGN.md, "Replication").
//!
//! Files (PEM):
//! - `strata cluster init-ca --out DIR` writes `DIR/ca.pem` (a self-signed CA certificate,
//!   CN "strata cluster CA", ten years) and `DIR/ca.key` (its ECDSA P-256 key, mode 0600).
//! - `strata cluster issue --ca DIR --node-id N --out NODEDIR` writes `NODEDIR/ca.pem` (the CA
//!   certificate), `NODEDIR/node.pem` (the node certificate, signed by the CA, five years) and
//!   `NODEDIR/node.key` (its key, mode 0600). `strata serve --peer-tls-dir NODEDIR` reads the
//!   three.
//!
//! A node certificate names its node id twice: the URI subject alternative name
//! `strata://node/{N}` (what peers check) and the common name `strata-node-{N}`; the DNS name
//! `strata-node-{N}` is its TLS server name. It is usable as a server and as a client
//! certificate (the peer endpoint is both). Existing files are never overwritten.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const NODE_CERT: &str = "node.pem";
pub const NODE_KEY: &str = "node.key";

const URI_PREFIX: &str = "strata://node/";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{0} already exists: not overwriting it")]
    Exists(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("node id {0} is not valid: it must be 0 or more")]
    NodeId(i32),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `body` to a new file (`private`: readable by the owner only).
fn write_new(path: &Path, body: &str, private: bool) -> Result<(), CertError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    if private {
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            CertError::Exists(path.display().to_string())
        } else {
            io(path)(e)
        }
    })?;
    file.write_all(body.as_bytes()).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

fn refuse_existing(paths: &[&Path]) -> Result<(), CertError> {
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(CertError::Exists(p.display().to_string())),
        None => Ok(()),
    }
}

fn years(n: i64) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (
        now - time::Duration::days(1),
        now + time::Duration::days(365 * n),
    )
}

/// `strata cluster init-ca`: a new cluster CA in `dir`.
pub fn init_ca(dir: &Path) -> Result<(), CertError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    refuse_existing(&[&cert_path, &key_path])?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "strata cluster CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (params.not_before, params.not_after) = years(10);
    let cert = params.self_signed(&key)?;
    write_new(&key_path, &key.serialize_pem(), true)?;
    write_new(&cert_path, &cert.pem(), false)
}

/// `strata cluster issue`: a certificate for node `node_id`, signed by the CA in `ca_dir`,
/// written with the CA certificate to `out`.
pub fn issue(ca_dir: &Path, node_id: i32, out: &Path) -> Result<(), CertError> {
    if node_id < 0 {
        return Err(CertError::NodeId(node_id));
    }
    let read = |name: &str| {
        let path = ca_dir.join(name);
        std::fs::read_to_string(&path).map_err(io(&path))
    };
    let (ca_pem, ca_key) = (read(CA_CERT)?, read(CA_KEY)?);
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(&ca_key)?)?;
    std::fs::create_dir_all(out).map_err(io(out))?;
    let paths = [out.join(CA_CERT), out.join(NODE_CERT), out.join(NODE_KEY)];
    refuse_existing(&[&paths[0], &paths[1], &paths[2]])?;
    let key = KeyPair::generate()?;
    let server_name = format!("strata-node-{node_id}");
    let mut params = CertificateParams::new(vec![server_name.clone()])?;
    params
        .subject_alt_names
        .push(SanType::URI(format!("{URI_PREFIX}{node_id}").try_into()?));
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, server_name);
    params.distinguished_name = name;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    (params.not_before, params.not_after) = years(5);
    let cert = params.signed_by(&key, &issuer)?;
    write_new(&paths[2], &key.serialize_pem(), true)?;
    write_new(&paths[1], &cert.pem(), false)?;
    write_new(&paths[0], &ca_pem, false)
}

/// The node id a certificate (DER) names in its `strata://node/{N}` URI, if exactly one.
pub fn node_id_of(cert_der: &[u8]) -> Option<i32> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let san = cert.subject_alternative_name().ok().flatten()?;
    let mut ids = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(uri) => {
            uri.strip_prefix(URI_PREFIX)?.parse().ok()
        }
        _ => None,
    });
    let id = ids.next()?;
    ids.next().is_none().then_some(id)
}

/// Whether `cert_der` is signed by the CA certificate `ca_der`.
pub fn signed_by(cert_der: &[u8], ca_der: &[u8]) -> bool {
    let (Ok((_, cert)), Ok((_, ca))) = (
        x509_parser::parse_x509_certificate(cert_der),
        x509_parser::parse_x509_certificate(ca_der),
    ) else {
        return false;
    };
    cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(path: &Path) -> Vec<u8> {
        let text = std::fs::read_to_string(path).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(text.as_bytes()).unwrap();
        pem.contents
    }

    #[test]
    fn a_node_certificate_names_its_id_and_chains_to_its_ca_only() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, other_ca) = (dir.path().join("ca"), dir.path().join("other"));
        init_ca(&ca).unwrap();
        init_ca(&other_ca).unwrap();
        assert!(matches!(init_ca(&ca), Err(CertError::Exists(_))));
        let node = dir.path().join("node-2");
        issue(&ca, 2, &node).unwrap();
        assert!(matches!(issue(&ca, 2, &node), Err(CertError::Exists(_))));
        let cert = der(&node.join(NODE_CERT));
        assert_eq!(node_id_of(&cert), Some(2));
        assert!(signed_by(&cert, &der(&ca.join(CA_CERT))));
        assert!(!signed_by(&cert, &der(&other_ca.join(CA_CERT))));
        assert_eq!(
            std::fs::read(node.join(CA_CERT)).unwrap(),
            std::fs::read(ca.join(CA_CERT)).unwrap()
        );
        use std::os::unix::fs::PermissionsExt;
        for key in [ca.join(CA_KEY), node.join(NODE_KEY)] {
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} is readable by others", key.display());
        }
        // The CA names no node.
        assert_eq!(node_id_of(&der(&ca.join(CA_CERT))), None);
        assert!(matches!(
            issue(&ca, -1, &dir.path().join("x")),
            Err(CertError::NodeId(-1))
        ));
    }
}
