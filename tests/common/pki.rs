//! A throwaway PKI for the TLS tests: a CA, a server certificate for `localhost` and a client
//! certificate, as PEM.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A CA, and a server (`CN=localhost`) and a client certificate signed by it; each leaf is
/// `(certificate PEM, key PEM)`.
pub struct Pki {
    /// The CA certificate.
    pub ca: String,
    /// The server's certificate (for `localhost`) and key.
    pub server: (String, String),
    /// The client's certificate and key.
    pub client: (String, String),
}

impl Pki {
    /// A fresh PKI whose client certificate is `CN=<client_name>,O=Acme`.
    pub fn new(client_name: &str) -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "stream-export test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf = |names: Vec<String>, common_name: &str| {
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, common_name);
            params.distinguished_name.push(DnType::OrganizationName, "Acme");
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &ca).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        Pki { server: leaf(vec!["localhost".into()], "localhost"), client: leaf(vec![], client_name), ca: ca.pem() }
    }
}
