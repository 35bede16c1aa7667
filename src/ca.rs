//! Certificates we create: for now the development server certificate made on first start.

use std::io::Write;
use std::path::Path;

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, PKCS_ECDSA_P256_SHA256};

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot create a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "only one of the server certificate ({}) and key ({}) exists; provide both or neither",
        cert.display(), key.display()
    )]
    HalfPresent {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
    },
}

/// Creates a self-signed ECDSA P-256 server certificate for `localhost` if neither file exists.
/// Returns whether it created one. Salesforce will not trust it: it is for development only.
pub fn ensure_dev_server_certificate(cert: &Path, key: &Path) -> Result<bool, CaError> {
    match (cert.exists(), key.exists()) {
        (true, true) => return Ok(false),
        (false, false) => {}
        _ => {
            return Err(CaError::HalfPresent {
                cert: cert.to_owned(),
                key: key.to_owned(),
            });
        }
    }
    let key_pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])?;
    params.distinguished_name.push(
        DnType::CommonName,
        "obm-gate development server (localhost)",
    );
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(365);
    let certificate = params.self_signed(&key_pair)?;
    write_file(key, key_pair.serialize_pem().as_bytes(), true)?;
    write_file(cert, certificate.pem().as_bytes(), false)?;
    Ok(true)
}

/// Writes a file, creating its directory; a secret is created with mode 0600.
pub fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), CaError> {
    let err = |source| CaError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)
}
