//! The certificate registry: which client certificates belong to which Salesforce orgs.
//!
//! On disk it is `<directory>/<OrgId>/*.pem`. In memory it is an immutable [`Snapshot`] keyed by
//! SHA-256 fingerprint (O(1) look-up), held in an [`ArcSwap`] so that the TLS verifier and the
//! request path read it without ever blocking, and a reload swaps in a whole new snapshot at once.
//! A file that cannot be read is reported and skipped; it never makes the registry accept more.
//!
//! Revocation: `<directory>/revoked.toml` lists revoked fingerprints (`certs revoke` writes it).
//! A revoked certificate is never loaded, whatever org directory holds a copy of it, and is
//! refused by name ("revoked"), at the handshake and on connections already open. A list that
//! cannot be read fails the load, so a broken file never un-revokes anything: at start the
//! receiver does not start, and a reload keeps the registry in force.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::{self, PemObject, SectionKind};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::authz::{OrgPolicy, Policy};
use crate::ids::{Fingerprint, OrgId};

/// The optional per-org policy file, next to the org's certificates.
pub const POLICY_FILE: &str = "policy.toml";

/// The revocation list, at the top of the registry directory.
pub const REVOKED_FILE: &str = "revoked.toml";

/// One revoked certificate, as `revoked.toml` records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// SHA-256 of the certificate, 64 hex digits.
    pub fingerprint: String,
    /// RFC 3339, UTC.
    pub revoked_at: String,
    /// Why, in the operator's words.
    pub reason: String,
    /// The certificate's subject, when it was registered at revocation (for the reader).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subject: String,
}

/// `revoked.toml`: `[[certificate]]` tables.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RevocationList {
    #[serde(default)]
    certificate: Vec<Revocation>,
}

const REVOKED_HEADER: &str = "\
# Certificates revoked with `obm-gate certs revoke`. The receiver refuses each of them (reason
# \"revoked\"), at the handshake and on connections already open, whatever org directory holds
# a copy, and `certs add` will not register one again. `obm-gate certs unrevoke` (or removing
# an entry) lifts its revocation.

";

/// Reads `<directory>/revoked.toml` (missing: nothing is revoked).
fn read_revocations(directory: &Path) -> Result<HashMap<Fingerprint, Revocation>, RegistryError> {
    let path = directory.join(REVOKED_FILE);
    let broken = |detail: String| RegistryError::Revocations {
        path: path.clone(),
        detail,
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(broken(e.to_string())),
    };
    let list: RevocationList = toml::from_str(&text).map_err(|e| broken(e.to_string()))?;
    let mut out = HashMap::with_capacity(list.certificate.len());
    for r in list.certificate {
        let fp = Fingerprint::parse(&r.fingerprint).map_err(|e| broken(e.to_string()))?;
        out.insert(fp, r);
    }
    Ok(out)
}

/// A client certificate as the registry knows it.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub fingerprint: Fingerprint,
    pub subject: String,
    pub issuer: String,
    /// The raw DER of the issuer name, to match it against configured CAs.
    pub issuer_der: Vec<u8>,
    /// Issuer and subject are the same name.
    pub self_signed: bool,
    /// Validity period, seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// `None` without an extended key usage extension; otherwise whether it allows clientAuth.
    pub client_auth: Option<bool>,
    /// `basicConstraints CA:TRUE`.
    pub is_ca: bool,
    pub der: CertificateDer<'static>,
    /// Where the SubjectPublicKeyInfo lies in `der`: the key that checks the handshake
    /// signature, found once here rather than by parsing the certificate in every handshake.
    spki: std::ops::Range<usize>,
}

impl CertInfo {
    /// Parses one DER certificate.
    pub fn from_der(der: CertificateDer<'static>) -> Result<CertInfo, CertFileError> {
        let (_, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| CertFileError::Malformed(e.to_string()))?;
        let tbs = &cert.tbs_certificate;
        // The parser borrows from `der`, so the key's bytes are a slice of it; checked, not
        // assumed, so that no parser change can make `spki` index outside the certificate.
        let raw = tbs.subject_pki.raw;
        let start = (raw.as_ptr() as usize).wrapping_sub(der.as_ref().as_ptr() as usize);
        let spki = start..start.wrapping_add(raw.len());
        if der.as_ref().get(spki.clone()) != Some(raw) {
            return Err(CertFileError::Malformed(
                "its public key could not be read".into(),
            ));
        }
        let info = CertInfo {
            fingerprint: Fingerprint::of_der(der.as_ref()),
            subject: tbs.subject.to_string(),
            issuer: tbs.issuer.to_string(),
            issuer_der: tbs.issuer.as_raw().to_vec(),
            self_signed: tbs.issuer.as_raw() == tbs.subject.as_raw(),
            not_before: tbs.validity.not_before.timestamp(),
            not_after: tbs.validity.not_after.timestamp(),
            client_auth: cert
                .extended_key_usage()
                .ok()
                .flatten()
                .map(|eku| eku.value.client_auth || eku.value.any),
            is_ca: cert.is_ca(),
            der: CertificateDer::from(Vec::new()),
            spki,
        };
        Ok(CertInfo { der, ..info })
    }

    /// The certificate's SubjectPublicKeyInfo, DER.
    pub fn spki(&self) -> &[u8] {
        &self.der.as_ref()[self.spki.clone()]
    }

    /// Whole days from `now` to the end of the validity period (negative once expired).
    pub fn days_left(&self, now: i64) -> i64 {
        (self.not_after - now).div_euclid(86_400)
    }

    /// The certificate as PEM.
    pub fn to_pem(&self) -> String {
        ::pem::encode(&::pem::Pem::new("CERTIFICATE", self.der.to_vec()))
    }

    /// Where `now` (seconds since the epoch) stands against the validity period.
    pub fn validity_at(&self, now: i64) -> Validity {
        if now < self.not_before {
            Validity::NotYetValid
        } else if now > self.not_after {
            Validity::Expired
        } else {
            Validity::Valid
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    Valid,
    Expired,
    NotYetValid,
}

/// Why a certificate file was not taken.
#[derive(Debug, thiserror::Error)]
pub enum CertFileError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "this file holds a private key; register only the certificate, and keep the key secret"
    )]
    PrivateKey,
    #[error("no PEM certificate (-----BEGIN CERTIFICATE-----) found")]
    NoCertificate,
    #[error("not a valid PEM file: {0}")]
    Pem(String),
    #[error("not a valid X.509 certificate: {0}")]
    Malformed(String),
}

/// Reads the first certificate of a PEM file. A file that contains a private key is refused
/// as a whole, so a key never ends up in the registry directory unnoticed.
pub fn read_pem_certificate(bytes: &[u8]) -> Result<CertInfo, CertFileError> {
    let mut first = None;
    for item in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(bytes) {
        let (kind, der) = item.map_err(|e| match e {
            pem::Error::NoItemsFound => CertFileError::NoCertificate,
            other => CertFileError::Pem(other.to_string()),
        })?;
        match kind {
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey => {
                return Err(CertFileError::PrivateKey);
            }
            SectionKind::Certificate if first.is_none() => first = Some(der),
            _ => {}
        }
    }
    let der = first.ok_or(CertFileError::NoCertificate)?;
    CertInfo::from_der(CertificateDer::from(der))
}

/// A registered certificate and the orgs it belongs to.
#[derive(Debug, Clone)]
pub struct Registered {
    pub cert: CertInfo,
    /// Sorted, without duplicates. Usually one.
    pub orgs: Vec<OrgId>,
    pub files: Vec<PathBuf>,
}

/// A file or directory that was skipped, and why.
#[derive(Debug, Clone)]
pub struct Problem {
    pub path: PathBuf,
    pub reason: String,
}

/// One immutable view of the registry.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Never holds a revoked certificate.
    by_fingerprint: HashMap<Fingerprint, Registered>,
    revoked: HashMap<Fingerprint, Revocation>,
    policies: HashMap<OrgId, OrgPolicy>,
    pub problems: Vec<Problem>,
}

impl Snapshot {
    /// The certificate's revocation, if it is revoked (then [`Snapshot::get`] has no entry).
    pub fn revoked(&self, fp: &Fingerprint) -> Option<&Revocation> {
        self.revoked.get(fp)
    }

    /// Every revocation, oldest first.
    pub fn revocations(&self) -> Vec<&Revocation> {
        let mut list: Vec<_> = self.revoked.values().collect();
        list.sort_by(|a, b| (&a.revoked_at, &a.fingerprint).cmp(&(&b.revoked_at, &b.fingerprint)));
        list
    }

    pub fn get(&self, fp: &Fingerprint) -> Option<&Registered> {
        self.by_fingerprint.get(fp)
    }

    pub fn len(&self) -> usize {
        self.by_fingerprint.len()
    }

    /// The org's policy, if it has a policy file.
    pub fn policy(&self, org: &OrgId) -> Option<&OrgPolicy> {
        self.policies.get(org)
    }

    pub fn is_empty(&self) -> bool {
        self.by_fingerprint.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Registered> {
        self.by_fingerprint.values()
    }

    /// Reads `<dir>/<OrgId>/*.pem`. Only an unreadable top directory is an error; everything
    /// below it that is wrong becomes a [`Problem`] and is skipped.
    pub fn read_dir(dir: &Path) -> Result<Snapshot, RegistryError> {
        let top = open_dir(dir)?;
        let mut snapshot = Snapshot {
            revoked: read_revocations(dir)?,
            ..Snapshot::default()
        };
        let mut org_dirs: Vec<_> = top.filter_map(Result::ok).map(|e| e.path()).collect();
        org_dirs.sort();
        for org_dir in org_dirs {
            let Some(name) = org_dir.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.starts_with('.') || !org_dir.is_dir() {
                continue;
            }
            let org = match OrgId::parse(name) {
                Ok(org) => org,
                Err(e) => {
                    snapshot.problems.push(Problem {
                        path: org_dir.clone(),
                        reason: format!("directory name is not an org ID: {e}"),
                    });
                    continue;
                }
            };
            snapshot.read_org_dir(org, &org_dir);
        }
        Ok(snapshot)
    }

    fn read_org_dir(&mut self, org: OrgId, dir: &Path) {
        let policy_path = dir.join(POLICY_FILE);
        match std::fs::read_to_string(&policy_path) {
            Ok(text) => {
                let policy = match Policy::parse(&text) {
                    Ok(p) => OrgPolicy::Rules(p),
                    Err(e) => {
                        self.problems.push(Problem {
                            path: policy_path.clone(),
                            reason: format!("invalid policy, the org's messages are refused: {e}"),
                        });
                        OrgPolicy::Broken(e)
                    }
                };
                self.policies.insert(org, policy);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                self.problems.push(Problem {
                    path: policy_path.clone(),
                    reason: format!("unreadable policy, the org's messages are refused: {e}"),
                });
                self.policies.insert(org, OrgPolicy::Broken(e.to_string()));
            }
        }
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                self.problems.push(Problem {
                    path: dir.to_owned(),
                    reason: format!("cannot read: {e}"),
                });
                return;
            }
        };
        let mut files: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "pem"))
            .collect();
        files.sort();
        for file in files {
            match std::fs::read(&file)
                .map_err(CertFileError::from)
                .and_then(|b| read_pem_certificate(&b))
            {
                Ok(cert) => self.insert(org, cert, file),
                Err(e) => self.problems.push(Problem {
                    path: file,
                    reason: e.to_string(),
                }),
            }
        }
    }

    fn insert(&mut self, org: OrgId, cert: CertInfo, file: PathBuf) {
        if let Some(r) = self.revoked.get(&cert.fingerprint) {
            self.problems.push(Problem {
                path: file,
                reason: format!(
                    "certificate {} was revoked on {} ({}): not loaded; delete this file",
                    cert.fingerprint, r.revoked_at, r.reason
                ),
            });
            return;
        }
        let entry = self
            .by_fingerprint
            .entry(cert.fingerprint)
            .or_insert_with(|| Registered {
                cert,
                orgs: Vec::with_capacity(1),
                files: Vec::with_capacity(1),
            });
        if let Err(at) = entry.orgs.binary_search(&org) {
            entry.orgs.insert(at, org);
        }
        entry.files.push(file);
    }
}

/// The registry directory, opened for reading, or why it cannot be.
fn open_dir(dir: &Path) -> Result<std::fs::ReadDir, RegistryError> {
    std::fs::read_dir(dir).map_err(|e| RegistryError::Directory {
        path: dir.to_owned(),
        source: e,
    })
}

/// Fails as [`Snapshot::read_dir`] would on a directory it cannot read, without reading the
/// certificates: the receiver checks this before it starts watching the directory.
pub fn check_directory(dir: &Path) -> Result<(), RegistryError> {
    open_dir(dir).map(drop)
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read the registry directory {}: {source}", path.display())]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the revocation list {} cannot be read, so no certificate can be trusted not to be \
         revoked: {detail}; fix or restore the file",
        path.display()
    )]
    Revocations { path: PathBuf, detail: String },
}

/// Why `add` or `remove` refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error(
        "the certificate expired on {0}; Salesforce cannot use it and the receiver would refuse it"
    )]
    Expired(String),
    #[error("the certificate is already registered for {org} ({})", path.display())]
    AlreadyRegistered { org: OrgId, path: PathBuf },
    #[error("no registered certificate has fingerprint {0}")]
    NotRegistered(Fingerprint),
    #[error("certificate {0} is not revoked (`certs list --revoked` lists the revocations)")]
    NotRevoked(Fingerprint),
    #[error("certificate {fingerprint} is already revoked, since {revoked_at}")]
    AlreadyRevoked {
        fingerprint: Fingerprint,
        revoked_at: String,
    },
    #[error(
        "certificate {} was revoked on {} ({}); it cannot be registered again (`certs unrevoke` \
         lifts the revocation)",
        .0.fingerprint, .0.revoked_at, .0.reason
    )]
    Revoked(Revocation),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Formats seconds since the epoch as an RFC 3339 date and time (UTC).
pub fn format_time(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Registers `cert` for `org`: writes `<directory>/<OrgId18>/<fingerprint prefix>.pem`
/// atomically (a temporary file, then a rename), so a running receiver never reads half a file.
pub fn add(
    directory: &Path,
    org: OrgId,
    cert: &CertInfo,
    now: i64,
) -> Result<PathBuf, ChangeError> {
    if cert.validity_at(now) == Validity::Expired {
        return Err(ChangeError::Expired(format_time(cert.not_after)));
    }
    let org_dir = directory.join(org.as_str());
    let path = org_dir.join(format!("{}.pem", &cert.fingerprint.to_hex()[..16]));
    let existing = Snapshot::read_dir(directory)?;
    if let Some(r) = existing.revoked(&cert.fingerprint) {
        return Err(ChangeError::Revoked(r.clone()));
    }
    if let Some(entry) = existing.get(&cert.fingerprint)
        && entry.orgs.contains(&org)
    {
        let path = entry.files.first().cloned().unwrap_or(path);
        return Err(ChangeError::AlreadyRegistered { org, path });
    }
    let write_err = |path: &Path, source| ChangeError::Write {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(&org_dir).map_err(|e| write_err(&org_dir, e))?;
    let tmp = org_dir.join(format!(".{}.tmp", &cert.fingerprint.to_hex()[..16]));
    std::fs::write(&tmp, cert.to_pem()).map_err(|e| write_err(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| write_err(&path, e))?;
    Ok(path)
}

/// Removes every file that holds the certificate with this fingerprint, in every org.
pub fn remove(directory: &Path, fingerprint: &Fingerprint) -> Result<Vec<PathBuf>, ChangeError> {
    let snapshot = Snapshot::read_dir(directory)?;
    let entry = snapshot
        .get(fingerprint)
        .ok_or(ChangeError::NotRegistered(*fingerprint))?;
    for file in &entry.files {
        std::fs::remove_file(file).map_err(|e| ChangeError::Write {
            path: file.clone(),
            source: e,
        })?;
    }
    Ok(entry.files.clone())
}

/// What [`revoke`] did.
#[derive(Debug)]
pub struct Revoked {
    pub revocation: Revocation,
    /// The orgs it was registered to, and the files of it that were removed.
    pub orgs: Vec<OrgId>,
    pub removed: Vec<PathBuf>,
}

/// Revokes the certificate with this fingerprint, registered or not: adds it to `revoked.toml`
/// (atomically, first, so a receiver that reloads in between already refuses it), then removes
/// every file of it from the org directories.
pub fn revoke(
    directory: &Path,
    fingerprint: &Fingerprint,
    reason: &str,
    now: i64,
) -> Result<Revoked, ChangeError> {
    let snapshot = Snapshot::read_dir(directory)?;
    if let Some(r) = snapshot.revoked(fingerprint) {
        return Err(ChangeError::AlreadyRevoked {
            fingerprint: *fingerprint,
            revoked_at: r.revoked_at.clone(),
        });
    }
    let entry = snapshot.get(fingerprint);
    let revocation = Revocation {
        fingerprint: fingerprint.to_hex(),
        revoked_at: format_time(now),
        reason: reason.to_owned(),
        subject: entry.map(|e| e.cert.subject.clone()).unwrap_or_default(),
    };
    let mut list: Vec<Revocation> = snapshot.revocations().into_iter().cloned().collect();
    list.push(revocation.clone());
    write_revocations(directory, list)?;
    let (orgs, files) = match entry {
        Some(e) => (e.orgs.clone(), e.files.clone()),
        None => (Vec::new(), Vec::new()),
    };
    for file in &files {
        std::fs::remove_file(file).map_err(|e| ChangeError::Write {
            path: file.clone(),
            source: e,
        })?;
    }
    Ok(Revoked {
        revocation,
        orgs,
        removed: files,
    })
}

/// Lifts the revocation of the certificate with this fingerprint: removes its entry from
/// `revoked.toml` (atomically) and returns it. The certificate is not registered again; `certs
/// add` can do that now.
pub fn unrevoke(directory: &Path, fingerprint: &Fingerprint) -> Result<Revocation, ChangeError> {
    let snapshot = Snapshot::read_dir(directory)?;
    let lifted = snapshot
        .revoked(fingerprint)
        .cloned()
        .ok_or(ChangeError::NotRevoked(*fingerprint))?;
    let list = snapshot
        .revocations()
        .into_iter()
        .filter(|r| r.fingerprint != lifted.fingerprint)
        .cloned()
        .collect();
    write_revocations(directory, list)?;
    Ok(lifted)
}

/// Replaces `revoked.toml` with `list`: a temporary file, then a rename, so a receiver that
/// reloads meanwhile reads the old list or the new one, never half of one.
fn write_revocations(directory: &Path, list: Vec<Revocation>) -> Result<(), ChangeError> {
    let path = directory.join(REVOKED_FILE);
    let text =
        toml::to_string(&RevocationList { certificate: list }).map_err(|e| ChangeError::Write {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    let tmp = directory.join(format!(".{REVOKED_FILE}.tmp"));
    let write_err = |path: &Path, source| ChangeError::Write {
        path: path.to_owned(),
        source,
    };
    std::fs::write(&tmp, format!("{REVOKED_HEADER}{text}")).map_err(|e| write_err(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| write_err(&path, e))
}

/// The live registry: a directory and the snapshot last read from it.
#[derive(Debug)]
pub struct Registry {
    directory: PathBuf,
    current: ArcSwap<Snapshot>,
}

impl Registry {
    /// Reads the directory once. Problems with single files are logged, not fatal.
    pub fn open(directory: &Path) -> Result<Registry, RegistryError> {
        let snapshot = Snapshot::read_dir(directory)?;
        log_problems(&snapshot);
        Ok(Registry {
            directory: directory.to_owned(),
            current: ArcSwap::from_pointee(snapshot),
        })
    }

    /// A registry over a snapshot built in memory (tests, benchmarks).
    pub fn from_snapshot(directory: PathBuf, snapshot: Snapshot) -> Registry {
        Registry {
            directory,
            current: ArcSwap::from_pointee(snapshot),
        }
    }

    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// The registry as it is now. Cheap; never blocks.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Re-reads the directory and swaps the new snapshot in. If the directory itself cannot
    /// be read, the current snapshot stays in force.
    pub fn reload(&self) -> Result<Arc<Snapshot>, RegistryError> {
        let snapshot = Arc::new(Snapshot::read_dir(&self.directory)?);
        log_problems(&snapshot);
        self.current.store(snapshot.clone());
        Ok(snapshot)
    }
}

fn log_problems(snapshot: &Snapshot) {
    for p in &snapshot.problems {
        tracing::warn!(path = %p.path.display(), reason = %p.reason, "registry: skipped");
    }
    tracing::info!(
        certificates = snapshot.len(),
        skipped = snapshot.problems.len(),
        "registry loaded"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519,
        PKCS_RSA_SHA256, PublicKeyData, RsaKeySize,
    };

    /// The key the handshake signature is checked with is the certificate's own, for every key
    /// type a client may present.
    #[test]
    fn spki_is_the_certificates_public_key() {
        let keys = [
            KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048).unwrap(),
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap(),
            KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap(),
            KeyPair::generate_for(&PKCS_ED25519).unwrap(),
        ];
        for key in keys {
            let params = CertificateParams::new(vec!["client.example".into()]).unwrap();
            let cert = params.self_signed(&key).unwrap();
            let info = CertInfo::from_der(cert.der().clone()).unwrap();
            assert_eq!(
                info.spki(),
                key.subject_public_key_info(),
                "{:?}",
                key.algorithm()
            );
        }
    }
}
