//! TLS for server-to-server streams (RFC 6120 §5, §13.7; XEP-0178).
//!
//! A peer's certificate never decides whether the TLS handshake succeeds:
//! the handshake only proves that the peer holds the key of the
//! certificate it presented (signatures are checked as usual). Whether
//! that certificate is valid *for the peer's domain*, against the system's
//! CA store plus `[s2s] ca_file`, is asked afterwards by the stream, which
//! then offers or uses SASL EXTERNAL, falls back to Server Dialback where
//! the configuration allows, or refuses the peer.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::config::Config;
use crate::net::tls::{provider, Identity, VERSIONS};

/// The TLS configurations of federation.
pub struct S2sTls {
    /// For incoming streams after STARTTLS: asks for (never requires) the
    /// peer's certificate.
    pub starttls: Arc<rustls::ServerConfig>,
    /// For incoming direct TLS (XEP-0368), ALPN `xmpp-server`.
    pub direct: Arc<rustls::ServerConfig>,
    /// For outgoing streams: presents our certificate, ALPN `xmpp-server`.
    pub client: Arc<rustls::ClientConfig>,
    /// Decides whether a peer's certificate is valid for its domain.
    pub peers: PeerVerifier,
}

/// Whether a certificate chain is valid for a domain (XEP-0178 §3).
pub struct PeerVerifier {
    webpki: Option<Arc<WebPkiServerVerifier>>,
}

impl PeerVerifier {
    fn new(config: &Config, provider: &Arc<CryptoProvider>) -> Result<PeerVerifier, String> {
        let roots = crate::net::tls::ca_roots(config.s2s.ca_file.as_deref(), "s2s.ca_file")?;
        let webpki = if roots.is_empty() {
            tracing::warn!("no CA certificates: no peer certificate can be verified");
            None
        } else {
            Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| format!("s2s: CA store: {e}"))?,
            )
        };
        Ok(PeerVerifier { webpki })
    }

    /// Whether `chain` (leaf first) is valid for `domain` now.
    pub fn valid_for(&self, domain: &str, chain: &[CertificateDer<'static>]) -> bool {
        let (Some(v), Some((leaf, rest))) = (&self.webpki, chain.split_first()) else {
            return false;
        };
        let Ok(name) = ServerName::try_from(domain.to_string()) else {
            return false;
        };
        match v.verify_server_cert(leaf, rest, &name, &[], UnixTime::now()) {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(%domain, error = %e, "peer certificate not valid for its domain");
                false
            }
        }
    }
}

/// Checks handshake signatures, leaves the certificate's validity to the
/// stream (see the module comment).
#[derive(Debug)]
struct Deferred(Arc<CryptoProvider>);

impl Deferred {
    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl ServerCertVerifier for Deferred {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ClientCertVerifier for Deferred {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

pub fn setup(config: &Config, id: &Identity) -> Result<S2sTls, String> {
    let provider = provider();
    let deferred = Arc::new(Deferred(provider.clone()));
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| format!("s2s TLS setup: {e}"))?
        .with_client_cert_verifier(deferred.clone())
        .with_single_cert(id.certs.clone(), id.key.clone_key())
        .map_err(|e| format!("tls: certificate and key do not fit together: {e}"))?;
    server.ignore_client_order = true;
    server.send_tls13_tickets = 0;
    let mut direct = server.clone();
    direct.alpn_protocols = vec![b"xmpp-server".to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| format!("s2s TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(deferred)
        .with_client_auth_cert(id.certs.clone(), id.key.clone_key())
        .map_err(|e| format!("tls: certificate and key do not fit together: {e}"))?;
    client.alpn_protocols = vec![b"xmpp-server".to_vec()];
    Ok(S2sTls {
        starttls: Arc::new(server),
        direct: Arc::new(direct),
        client: Arc::new(client),
        peers: PeerVerifier::new(config, &provider)?,
    })
}
