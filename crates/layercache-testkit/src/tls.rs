//! Certificates for a TLS redis-server: a throwaway CA and a server certificate for
//! `127.0.0.1`, generated per server with rcgen.

use std::{io, path::Path};

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

/// PEM files written for one server.
#[derive(Debug, Clone)]
pub(crate) struct Certs {
    pub(crate) ca_pem: String,
}

fn err(e: rcgen::Error) -> io::Error {
    io::Error::other(e.to_string())
}

/// Writes `ca.crt`, `server.crt` and `server.key` into `dir`.
pub(crate) fn write_certs(dir: &Path) -> io::Result<Certs> {
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).map_err(err)?;
    let server_key = KeyPair::generate().map_err(err)?;
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .map_err(err)?
        .signed_by(&server_key, &ca, &ca_key)
        .map_err(err)?;
    std::fs::write(dir.join("ca.crt"), ca.pem())?;
    std::fs::write(dir.join("server.crt"), server.pem())?;
    std::fs::write(dir.join("server.key"), server_key.serialize_pem())?;
    Ok(Certs { ca_pem: ca.pem() })
}
