//! Authorization: binding a message's `OrganizationId` to the certificate it arrived with.
//!
//! The check runs against the registry **as it is at request time**, not as it was at the
//! handshake: rustls does not re-run the certificate verifier on a resumed session, and a
//! keep-alive connection outlives any registry change. So a certificate removed from the
//! registry, or one that expired since the handshake, stops working on the next request.

use crate::ids::{Fingerprint, OrgId};
use crate::registry::{Snapshot, Validity};

/// Why a message was refused although the handshake succeeded. Each is a 403 fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthzError {
    #[error("client certificate {0} is no longer registered to any org")]
    NotRegistered(Fingerprint),
    #[error("client certificate {0} has expired")]
    Expired(Fingerprint),
    #[error("client certificate {0} is not valid yet")]
    NotYetValid(Fingerprint),
    #[error(
        "OrganizationId {claimed} does not match the org of client certificate {fingerprint} \
         (registered to {registered}); register the certificate for {claimed} or send from {registered}"
    )]
    OrgMismatch {
        claimed: OrgId,
        fingerprint: Fingerprint,
        registered: String,
    },
}

impl AuthzError {
    pub fn label(&self) -> &'static str {
        match self {
            AuthzError::NotRegistered(_) => "certificate_not_registered",
            AuthzError::Expired(_) => "certificate_expired",
            AuthzError::NotYetValid(_) => "certificate_not_yet_valid",
            AuthzError::OrgMismatch { .. } => "org_mismatch",
        }
    }
}

/// Checks that `certificate` is registered to `claimed` right now. `now` is seconds since the
/// Unix epoch.
pub fn bind(
    registry: &Snapshot,
    certificate: &Fingerprint,
    claimed: &OrgId,
    now: i64,
) -> Result<(), AuthzError> {
    let entry = registry
        .get(certificate)
        .ok_or(AuthzError::NotRegistered(*certificate))?;
    match entry.cert.validity_at(now) {
        Validity::Valid => {}
        Validity::Expired => return Err(AuthzError::Expired(*certificate)),
        Validity::NotYetValid => return Err(AuthzError::NotYetValid(*certificate)),
    }
    if entry.orgs.binary_search(claimed).is_ok() {
        return Ok(());
    }
    Err(AuthzError::OrgMismatch {
        claimed: *claimed,
        fingerprint: *certificate,
        registered: entry
            .orgs
            .iter()
            .map(OrgId::as_str)
            .collect::<Vec<_>>()
            .join(", "),
    })
}
