//! Certificates we create: the operator's signing CA (`ca init`), client certificates signed
//! from Salesforce CSRs (`ca sign`), and the development server certificate.
//!
//! A signed client certificate records its org as a subjectAltName URI
//! `urn:obm-gate:org:<OrgId18>` ([`ORG_URI_PREFIX`]). Everything that decides what the certificate
//! may do — not a CA, clientAuth only, serial, validity, extensions — is set here; the CSR only
//! contributes its subject name and public key, and its signature is verified first.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    SanType, SerialNumber, SubjectPublicKeyInfo,
};
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::{FromDer, X509CertificationRequest, X509Name};

use crate::ids::OrgId;
use crate::registry::{CertFileError, CertInfo};

/// Where a signed certificate records its org: a subjectAltName URI with this prefix.
pub const ORG_URI_PREFIX: &str = "urn:obm-gate:org:";
/// Lifetime of the CA created by `ca init`.
const CA_DAYS: i64 = 3650;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot create a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("a CA already exists at {} (refusing to overwrite it)", .0.display())]
    Exists(PathBuf),
    #[error("no CA at {}: run `obm-gate ca init` first ({source})", path.display())]
    NoCa {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the CA files are unusable: {0}")]
    BadCa(String),
    #[error("cannot read the CSR: {0}")]
    CsrRead(String),
    #[error("the CSR's signature does not verify: it was altered or is not signed by its key")]
    CsrSignature,
    #[error("--days must be between 1 and {max} (the configured [ca] max_days); got {requested}")]
    Days { requested: u64, max: u64 },
    #[error("the issued certificate cannot be read back: {0}")]
    Issued(#[from] CertFileError),
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

/// The CA's certificate and key files in a directory.
#[derive(Debug, Clone)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CaFiles {
    pub fn in_dir(dir: &Path) -> CaFiles {
        CaFiles {
            cert: dir.join("ca.pem"),
            key: dir.join("ca.key"),
        }
    }
}

/// Creates the operator's signing CA in `dir`: an ECDSA P-256 key (mode 0600) and a self-signed
/// CA certificate valid for ten years that can only issue end-entity certificates.
pub fn init(dir: &Path, name: &str) -> Result<CertInfo, CaError> {
    let files = CaFiles::in_dir(dir);
    for path in [&files.cert, &files.key] {
        if path.exists() {
            return Err(CaError::Exists(path.clone()));
        }
    }
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "obm-gate");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(CA_DAYS);
    let cert = params.self_signed(&key)?;
    write_file(&files.key, key.serialize_pem().as_bytes(), true)?;
    write_file(&files.cert, cert.pem().as_bytes(), false)?;
    Ok(CertInfo::from_der(cert.der().clone())?)
}

/// A client certificate issued from a CSR.
#[derive(Debug)]
pub struct Signed {
    /// The leaf followed by the CA: what Salesforce's "Upload Signed Certificate" takes.
    pub chain_pem: String,
    /// The leaf alone: what the registry holds.
    pub leaf_pem: String,
    pub info: CertInfo,
}

/// Signs a Salesforce CSR (PEM) for `org`, valid for `days`.
pub fn sign(
    ca: &CaFiles,
    csr_pem: &[u8],
    org: OrgId,
    days: u64,
    max_days: u64,
) -> Result<Signed, CaError> {
    if days == 0 || days > max_days {
        return Err(CaError::Days {
            requested: days,
            max: max_days,
        });
    }
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| CaError::NoCa {
            path: path.to_owned(),
            source,
        })
    };
    let ca_pem = read(&ca.cert)?;
    let ca_key = KeyPair::from_pem(&read(&ca.key)?).map_err(|e| CaError::BadCa(e.to_string()))?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| CaError::BadCa(e.to_string()))?;

    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem)
        .map_err(|e| CaError::CsrRead(format!("no PEM certificate request found ({e})")))?;
    let (_, csr) = X509CertificationRequest::from_der(der.as_ref())
        .map_err(|e| CaError::CsrRead(e.to_string()))?;
    csr.verify_signature().map_err(|_| CaError::CsrSignature)?;
    let info = &csr.certification_request_info;
    let public_key = SubjectPublicKeyInfo::from_der(info.subject_pki.raw)
        .map_err(|e| CaError::CsrRead(format!("unsupported public key: {e}")))?;

    // Only the subject comes from the CSR; requested extensions are ignored on purpose.
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = subject_of(&info.subject);
    params.is_ca = IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.subject_alt_names = vec![SanType::URI(
        format!("{ORG_URI_PREFIX}{org}")
            .try_into()
            .map_err(|e: rcgen::Error| CaError::Generate(e))?,
    )];
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(days as i64);
    let cert = params.signed_by(&public_key, &issuer)?;
    let leaf_pem = cert.pem();
    Ok(Signed {
        chain_pem: format!("{leaf_pem}{}\n", ca_pem.trim_end()),
        leaf_pem,
        info: CertInfo::from_der(cert.der().clone())?,
    })
}

/// Copies a subject name attribute by attribute, keeping each value's string type.
fn subject_of(name: &X509Name<'_>) -> DistinguishedName {
    use x509_parser::oid_registry as oids;
    let mut dn = DistinguishedName::new();
    for attr in name.iter_attributes() {
        let Ok(value) = attr.as_str() else { continue };
        let oid = attr.attr_type();
        let ty = if *oid == oids::OID_X509_COMMON_NAME {
            DnType::CommonName
        } else if *oid == oids::OID_X509_ORGANIZATION_NAME {
            DnType::OrganizationName
        } else if *oid == oids::OID_X509_ORGANIZATIONAL_UNIT {
            DnType::OrganizationalUnitName
        } else if *oid == oids::OID_X509_LOCALITY_NAME {
            DnType::LocalityName
        } else if *oid == oids::OID_X509_STATE_OR_PROVINCE_NAME {
            DnType::StateOrProvinceName
        } else if *oid == oids::OID_X509_COUNTRY_NAME {
            DnType::CountryName
        } else {
            match oid.iter() {
                Some(arcs) => DnType::CustomDnType(arcs.collect()),
                None => continue,
            }
        };
        let printable =
            attr.attr_value().tag() == x509_parser::der_parser::asn1_rs::Tag::PrintableString;
        let value = match value.to_owned().try_into() {
            Ok(p) if printable => DnValue::PrintableString(p),
            _ => DnValue::Utf8String(value.to_owned()),
        };
        dn.push(ty, value);
    }
    dn
}

/// 16 random bytes, positive as DER integers must be.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // aws-lc's random source; a failure here would mean the system RNG is broken.
    let _ = rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// The CA files whose issued certificates must chain: `[registry] ca_certificates`, plus the
/// operator's own CA when `ca init` has created it.
pub fn chain_verified_cas(config: &crate::Config) -> Vec<PathBuf> {
    let mut cas = config.registry.ca_certificates.clone();
    let own = CaFiles::in_dir(&config.ca.directory).cert;
    if own.exists() && !cas.contains(&own) {
        cas.push(own);
    }
    cas
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
