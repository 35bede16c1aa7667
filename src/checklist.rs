//! `certs check`: the admin's checklist for one certificate, answered the way the receiver
//! would judge it right now.

use std::fmt::Write;
use std::path::PathBuf;

use rustls_pki_types::CertificateDer;

use crate::ids::OrgId;
use crate::registry::{CertInfo, Revocation, Snapshot, Validity, format_time};
use crate::tls::{self, ChainCheck, TlsError};

pub struct Checklist {
    pub cert: CertInfo,
    pub registered_orgs: Vec<OrgId>,
    /// Revoked certificates are never registered.
    pub revoked: Option<Revocation>,
    pub expected_org: Option<OrgId>,
    pub validity: Validity,
    pub days_left: i64,
    pub warn_days: u64,
    pub chain: ChainCheck,
}

impl Checklist {
    pub fn new(
        cert: CertInfo,
        intermediates: &[CertificateDer<'static>],
        registry: &Snapshot,
        expected_org: Option<OrgId>,
        ca_files: &[PathBuf],
        warn_days: u64,
        now: i64,
    ) -> Result<Checklist, TlsError> {
        let chain = tls::check_chain(&cert, intermediates, ca_files)?;
        Ok(Checklist {
            registered_orgs: registry
                .get(&cert.fingerprint)
                .map(|r| r.orgs.clone())
                .unwrap_or_default(),
            revoked: registry.revoked(&cert.fingerprint).cloned(),
            validity: cert.validity_at(now),
            days_left: cert.days_left(now),
            cert,
            expected_org,
            warn_days,
            chain,
        })
    }

    /// Why the receiver would refuse this certificate now (empty: it would accept it).
    pub fn refusals(&self) -> Vec<String> {
        let mut r = Vec::new();
        if let Some(revoked) = &self.revoked {
            r.push(format!(
                "it was revoked on {} ({}); the handshake fails",
                revoked.revoked_at, revoked.reason
            ));
        } else if self.registered_orgs.is_empty() {
            r.push("it is not registered to any org (the handshake fails)".to_owned());
        }
        if let Some(org) = self.expected_org
            && !self.registered_orgs.is_empty()
            && !self.registered_orgs.contains(&org)
        {
            r.push(format!(
                "it is not registered for {org} (messages from {org} get a 403 fault)"
            ));
        }
        match self.validity {
            Validity::Valid => {}
            Validity::Expired => r.push(format!(
                "it expired on {}",
                format_time(self.cert.not_after)
            )),
            Validity::NotYetValid => r.push(format!(
                "it is not valid before {}",
                format_time(self.cert.not_before)
            )),
        }
        if let ChainCheck::Failed(why) = &self.chain {
            r.push(format!(
                "its chain to the configured CA does not verify: {why}"
            ));
        }
        r
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let c = &self.cert;
        let _ = writeln!(out, "certificate  {}", c.fingerprint);
        let _ = writeln!(out, "subject      {}", c.subject);
        let _ = writeln!(out, "issuer       {}", c.issuer);
        let orgs: Vec<&str> = self.registered_orgs.iter().map(OrgId::as_str).collect();
        let _ = match (&self.revoked, orgs.is_empty()) {
            (Some(r), _) => writeln!(
                out,
                "[FAIL] revoked: on {} ({}); it cannot be registered again",
                r.revoked_at, r.reason
            ),
            (None, true) => writeln!(
                out,
                "[FAIL] registered: no; add it with `obm-gate certs add --org <OrgId> FILE`"
            ),
            (None, false) => writeln!(out, "[ ok ] registered: yes, for {}", orgs.join(", ")),
        };
        if let Some(org) = self.expected_org {
            let _ = match self.registered_orgs.contains(&org) {
                true => writeln!(out, "[ ok ] org: registered for {org}"),
                false => writeln!(out, "[FAIL] org: not registered for {org}"),
            };
        }
        let until = format_time(c.not_after);
        let _ = match self.validity {
            Validity::Expired => writeln!(out, "[FAIL] validity: expired on {until}"),
            Validity::NotYetValid => writeln!(
                out,
                "[FAIL] validity: not valid before {}",
                format_time(c.not_before)
            ),
            Validity::Valid if self.days_left < self.warn_days as i64 => writeln!(
                out,
                "[WARN] validity: expires soon, on {until} ({} days left); rotate it now",
                self.days_left
            ),
            Validity::Valid => writeln!(
                out,
                "[ ok ] validity: until {until} ({} days left)",
                self.days_left
            ),
        };
        let _ = match &self.chain {
            ChainCheck::SelfSigned => {
                writeln!(out, "[ ok ] chain: self-signed, pinned by its fingerprint")
            }
            ChainCheck::IssuerNotConfigured => writeln!(
                out,
                "[ ok ] chain: its issuer is not a configured CA; pinned by its fingerprint"
            ),
            ChainCheck::Verified => writeln!(out, "[ ok ] chain: verifies to a configured CA"),
            ChainCheck::Failed(why) => writeln!(
                out,
                "[FAIL] chain: does not verify to the configured CA: {why}"
            ),
        };
        let _ = match c.client_auth {
            None => writeln!(
                out,
                "[ ok ] usage: no extended key usage, so client authentication is allowed"
            ),
            Some(true) => writeln!(out, "[ ok ] usage: extended key usage allows clientAuth"),
            Some(false) => writeln!(
                out,
                "[WARN] usage: extended key usage lacks clientAuth; TLS clients may refuse to present it"
            ),
        };
        let refusals = self.refusals();
        let _ = if refusals.is_empty() {
            writeln!(
                out,
                "verdict: the receiver would ACCEPT this certificate now"
            )
        } else {
            writeln!(
                out,
                "verdict: the receiver would REFUSE this certificate now: {}",
                refusals.join("; ")
            )
        };
        out
    }
}
