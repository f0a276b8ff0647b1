//! Certificates for TLS redis-servers: a throwaway CA and server certificates for
//! `127.0.0.1`, generated with rcgen. One CA can sign the certificates of many servers (the six
//! nodes of a TLS cluster trust each other through it).

use std::{io, path::Path, sync::Arc};

use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair};

fn err(e: rcgen::Error) -> io::Error {
    io::Error::other(e.to_string())
}

/// A certificate authority that signs server certificates.
#[derive(Clone)]
pub(crate) struct Authority(Arc<(Certificate, KeyPair)>);

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authority(..)")
    }
}

impl Authority {
    /// A new self-signed CA.
    pub(crate) fn generate() -> io::Result<Self> {
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct names for the CA and the servers: OpenSSL (redis-cli, the nodes' cluster bus)
        // takes a certificate whose issuer equals its subject for a self-signed one.
        params
            .distinguished_name
            .push(DnType::CommonName, "layercache-testkit CA");
        let cert = params.self_signed(&key).map_err(err)?;
        Ok(Self(Arc::new((cert, key))))
    }

    /// The CA's certificate, PEM.
    pub(crate) fn pem(&self) -> String {
        self.0 .0.pem()
    }

    /// Writes `ca.crt`, `server.crt` and `server.key` (a certificate for `127.0.0.1` and
    /// `localhost`, signed by this CA, usable as a server and as a client) into `dir`. Returns
    /// the `tls-*` options a redis-server needs to use them.
    pub(crate) fn write_server_files(&self, dir: &Path) -> io::Result<Vec<(&'static str, String)>> {
        let (ca, ca_key) = &*self.0;
        let key = KeyPair::generate().map_err(err)?;
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .map_err(err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "layercache-testkit server");
        // A cluster node is also the client of its peers' bus and of its primary.
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, ca, ca_key).map_err(err)?;
        std::fs::write(dir.join("ca.crt"), ca.pem())?;
        std::fs::write(dir.join("server.crt"), cert.pem())?;
        std::fs::write(dir.join("server.key"), key.serialize_pem())?;
        let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
        Ok(vec![
            ("tls-cert-file", file("server.crt")),
            ("tls-key-file", file("server.key")),
            ("tls-ca-cert-file", file("ca.crt")),
            ("tls-auth-clients", "no".to_owned()),
        ])
    }
}
