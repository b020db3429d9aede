//! TLS: certificate loading, a self-signed certificate generated once into
//! the data directory when none is configured, and the rustls server
//! configurations (STARTTLS and direct TLS with ALPN `xmpp-client`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use sha2::{Digest, Sha256};

use crate::config::Config;

pub struct TlsSetup {
    /// For STARTTLS on the plain port.
    pub starttls: Arc<ServerConfig>,
    /// For direct TLS (XEP-0368), offering ALPN `xmpp-client`.
    pub direct: Arc<ServerConfig>,
    /// RFC 5929 tls-server-end-point data: SHA-256 of the leaf certificate.
    pub server_end_point: Vec<u8>,
    /// Where the certificate came from (for the log).
    pub cert_path: PathBuf,
    /// The certificate and key (for the server-to-server configurations).
    pub identity: Identity,
}

/// ring, with AES-128-GCM preferred: as strong as needed for XMPP and
/// cheaper per handshake (SHA-256 key schedule, hardware-accelerated)
/// and per byte than AES-256 with SHA-384. Everything ring offers stays
/// available to clients that want it.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::CipherSuite as C;
    let mut p = rustls::crypto::ring::default_provider();
    let rank = |s: &rustls::SupportedCipherSuite| match s.suite() {
        C::TLS13_AES_128_GCM_SHA256 => 0,
        C::TLS13_CHACHA20_POLY1305_SHA256 => 1,
        C::TLS13_AES_256_GCM_SHA384 => 2,
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 3,
        _ => 4,
    };
    p.cipher_suites.sort_by_key(rank);
    Arc::new(p)
}

/// Paths of the generated certificate for `domain` in `data_dir`.
pub fn generated_paths(data_dir: &Path, domain: &str) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("tls");
    (
        dir.join(format!("{domain}.crt")),
        dir.join(format!("{domain}.key")),
    )
}

fn generate(domain: &str, cert_path: &Path, key_path: &Path) -> Result<(), String> {
    let mut names = vec![domain.to_string()];
    if domain != "localhost" {
        names.push(format!("*.{domain}"));
    }
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("cannot generate a certificate: {e}"))?;
    if let Some(dir) = cert_path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    write_private(key_path, ck.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(cert_path, ck.cert.pem())
        .map_err(|e| format!("cannot write {}: {e}", cert_path.display()))?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed certificate");
    Ok(())
}

/// Write a file only its owner may read.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(data)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The server's certificate chain and key, as configured or generated.
pub struct Identity {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub cert_path: PathBuf,
}

impl Identity {
    pub fn load(config: &Config) -> Result<Identity, String> {
        let (cert_path, key_path) = match &config.tls {
            Some(t) => (t.cert.clone(), t.key.clone()),
            None => {
                let (c, k) = generated_paths(&config.data_dir, &config.domain);
                if !c.exists() || !k.exists() {
                    generate(&config.domain, &c, &k)?;
                }
                (c, k)
            }
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
            .map_err(|e| format!("tls.cert: cannot read {}: {e}", cert_path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("tls.cert: bad PEM in {}: {e}", cert_path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "tls.cert: no certificate in {}",
                cert_path.display()
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
            format!(
                "tls.key: cannot read a private key from {}: {e}",
                key_path.display()
            )
        })?;
        Ok(Identity {
            certs,
            key,
            cert_path,
        })
    }
}

/// The versions every TLS configuration of the server allows.
pub const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

pub fn setup(config: &Config) -> Result<TlsSetup, String> {
    let Identity {
        certs,
        key,
        cert_path,
    } = Identity::load(config)?;
    let Some(leaf) = certs.first() else {
        return Err(format!(
            "tls.cert: no certificate in {}",
            cert_path.display()
        ));
    };
    let server_end_point = Sha256::digest(leaf.as_ref()).to_vec();

    let base = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(|e| format!("tls: certificate and key do not fit together: {e}"))?;
    let mut base = base;
    base.ignore_client_order = true;
    // XMPP clients resume sessions with XEP-0198 (and SASL2/FAST), not TLS
    // session tickets: issuing two per connection (rustls' default) is work
    // and bytes for nothing.
    base.send_tls13_tickets = 0;
    let mut direct = base.clone();
    direct.alpn_protocols = vec![b"xmpp-client".to_vec()];
    Ok(TlsSetup {
        starttls: Arc::new(base),
        direct: Arc::new(direct),
        server_end_point,
        identity: Identity {
            certs,
            key,
            cert_path: cert_path.clone(),
        },
        cert_path,
    })
}

/// Where Debian, Alpine, Fedora and friends keep the system's CA bundle.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The system's CA certificates, plus those of the PEM file `extra` (the
/// config key `key` names it in errors).
pub fn ca_roots(
    extra: Option<&std::path::Path>,
    key: &str,
) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(bundle) = SYSTEM_BUNDLES
        .iter()
        .find(|p| std::path::Path::new(p).is_file())
    {
        add_pem(&mut roots, std::path::Path::new(bundle), key, false)?;
    }
    if let Some(ca) = extra {
        add_pem(&mut roots, ca, key, true)?;
    }
    Ok(roots)
}

fn add_pem(
    roots: &mut rustls::RootCertStore,
    path: &std::path::Path,
    key: &str,
    strict: bool,
) -> Result<(), String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))?;
    let mut n = 0;
    for c in certs {
        match c {
            Ok(c) => {
                if roots.add(c).is_ok() {
                    n += 1;
                }
            }
            Err(e) if strict => return Err(format!("{key}: bad PEM in {}: {e}", path.display())),
            Err(_) => {}
        }
    }
    if strict && n == 0 {
        return Err(format!("{key}: no CA certificate in {}", path.display()));
    }
    Ok(())
}
