//! Authorization: binding a message's `OrganizationId` to the certificate it arrived with.
//!
//! The check runs against the registry **as it is at request time**, not as it was at the
//! handshake: rustls does not re-run the certificate verifier on a resumed session, and a
//! keep-alive connection outlives any registry change. So a certificate removed from the
//! registry, revoked, or expired since the handshake, stops working on the next request.

use std::net::IpAddr;

use crate::ids::{Fingerprint, OrgId};
use crate::registry::{Revocation, Snapshot, Validity};

/// An org's optional policy, from `<registry>/<OrgId>/policy.toml`. A missing key means no
/// restriction; an empty list allows nothing.
///
/// ```toml
/// allowed_action_ids = ["04kxx00000000blCAA"]
/// allowed_enterprise_url_suffixes = [".my.salesforce.com"]
/// allowed_source_cidrs = ["13.108.0.0/14", "2a01:111::/32"]
/// ```
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub allowed_action_ids: Option<Vec<String>>,
    pub allowed_enterprise_url_suffixes: Option<Vec<String>>,
    pub allowed_source_cidrs: Option<Vec<ipnet::IpNet>>,
}

/// A policy as loaded: a broken policy file refuses the org's messages rather than lifting
/// the policy.
#[derive(Debug, Clone, PartialEq)]
pub enum OrgPolicy {
    Rules(Policy),
    Broken(String),
}

impl Policy {
    pub fn parse(text: &str) -> Result<Policy, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

/// What a message claims, and where it came from.
#[derive(Debug, Clone, Copy)]
pub struct Claims<'a> {
    pub org: &'a OrgId,
    pub action_id: &'a str,
    pub enterprise_url: Option<&'a str>,
    pub source: IpAddr,
}

/// Why a message was refused although the handshake succeeded. Each is a 403 fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthzError {
    #[error("client certificate {0} is no longer registered to any org")]
    NotRegistered(Fingerprint),
    #[error(
        "client certificate {} was revoked on {}: {}",
        .0.fingerprint, .0.revoked_at, .0.reason
    )]
    Revoked(Revocation),
    #[error("client certificate {0} has expired")]
    Expired(Fingerprint),
    #[error("client certificate {0} is not valid yet")]
    NotYetValid(Fingerprint),
    #[error("policy of org {org}: {rule}")]
    Policy { org: OrgId, rule: String },
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
            AuthzError::Revoked(_) => "certificate_revoked",
            AuthzError::Expired(_) => "certificate_expired",
            AuthzError::NotYetValid(_) => "certificate_not_yet_valid",
            AuthzError::OrgMismatch { .. } => "org_mismatch",
            AuthzError::Policy { .. } => "policy",
        }
    }
}

/// Checks that `certificate` is registered to the claimed org right now, and that the org's
/// policy, if any, allows the message. `now` is seconds since the Unix epoch.
pub fn bind(
    registry: &Snapshot,
    certificate: &Fingerprint,
    claims: &Claims<'_>,
    now: i64,
) -> Result<(), AuthzError> {
    bind_org(registry, certificate, claims.org, now)?;
    match registry.policy(claims.org) {
        None => Ok(()),
        Some(OrgPolicy::Broken(why)) => Err(AuthzError::Policy {
            org: *claims.org,
            rule: format!(
                "the policy file is invalid ({why}); messages are refused until it is fixed"
            ),
        }),
        Some(OrgPolicy::Rules(policy)) => {
            check_policy(policy, claims).map_err(|rule| AuthzError::Policy {
                org: *claims.org,
                rule,
            })
        }
    }
}

fn check_policy(policy: &Policy, claims: &Claims<'_>) -> Result<(), String> {
    if let Some(allowed) = &policy.allowed_action_ids
        && !allowed.iter().any(|a| a == claims.action_id)
    {
        return Err(format!(
            "ActionId {} is not in allowed_action_ids",
            claims.action_id.chars().take(40).collect::<String>()
        ));
    }
    if let Some(suffixes) = &policy.allowed_enterprise_url_suffixes {
        let host = claims
            .enterprise_url
            .and_then(|u| u.parse::<hyper::Uri>().ok())
            .and_then(|u| u.host().map(str::to_ascii_lowercase));
        let Some(host) = host else {
            return Err("EnterpriseUrl is missing or not a URL, so allowed_enterprise_url_suffixes cannot match".into());
        };
        let matches = |suffix: &String| {
            let suffix = suffix.to_ascii_lowercase();
            host.ends_with(&suffix) || host == suffix.trim_start_matches('.')
        };
        if !suffixes.iter().any(matches) {
            return Err(format!(
                "EnterpriseUrl host {host} matches no allowed_enterprise_url_suffixes"
            ));
        }
    }
    if let Some(cidrs) = &policy.allowed_source_cidrs
        && !cidrs.iter().any(|net| net.contains(&claims.source))
    {
        return Err(format!(
            "source address {} is not in allowed_source_cidrs",
            claims.source
        ));
    }
    Ok(())
}

fn bind_org(
    registry: &Snapshot,
    certificate: &Fingerprint,
    claimed: &OrgId,
    now: i64,
) -> Result<(), AuthzError> {
    let Some(entry) = registry.get(certificate) else {
        return Err(match registry.revoked(certificate) {
            Some(r) => AuthzError::Revoked(r.clone()),
            None => AuthzError::NotRegistered(*certificate),
        });
    };
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
