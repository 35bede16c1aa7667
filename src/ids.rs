//! Identifier types that can only hold valid values: [`OrgId`] (always the 18-character form) and
//! [`Fingerprint`] (the SHA-256 of a certificate's DER encoding).
//!
//! These are the only places where raw text becomes an identifier, so every other module can
//! compare them byte for byte.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// Alphabet of the Salesforce ID checksum suffix.
const SUFFIX_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";

/// Why a string is not a Salesforce ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("'{0}' is not a Salesforce ID: expected 15 or 18 letters and digits")]
    Malformed(String),
    #[error(
        "'{given}' is not a valid 18-character Salesforce ID: its checksum suffix should be '{expected}'"
    )]
    BadChecksum { given: String, expected: String },
}

/// Computes the three-character case-checksum suffix of a 15-character Salesforce ID.
fn checksum_suffix(id15: &[u8; 15]) -> [u8; 3] {
    let mut out = [0u8; 3];
    for (chunk_index, chunk) in id15.chunks(5).enumerate() {
        let bits = chunk
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_ascii_uppercase())
            .fold(0usize, |acc, (i, _)| acc | (1 << i));
        out[chunk_index] = SUFFIX_ALPHABET[bits];
    }
    out
}

/// Validates a 15- or 18-character Salesforce ID and returns its 18-character form.
fn to_18(s: &str) -> Result<[u8; 18], IdError> {
    let b = s.as_bytes();
    if !(b.len() == 15 || b.len() == 18) || !b.iter().all(u8::is_ascii_alphanumeric) {
        return Err(IdError::Malformed(truncate_for_message(s)));
    }
    let mut id15 = [0u8; 15];
    id15.copy_from_slice(&b[..15]);
    let suffix = checksum_suffix(&id15);
    if b.len() == 18 && !b[15..].eq_ignore_ascii_case(&suffix) {
        return Err(IdError::BadChecksum {
            given: s.to_owned(),
            expected: String::from_utf8_lossy(&suffix).into_owned(),
        });
    }
    let mut out = [0u8; 18];
    out[..15].copy_from_slice(&id15);
    out[15..].copy_from_slice(&suffix);
    Ok(out)
}

/// Keeps error messages bounded when a peer sends a huge "ID".
fn truncate_for_message(s: &str) -> String {
    const MAX: usize = 40;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// A Salesforce organization ID, always held in its 18-character form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrgId([u8; 18]);

impl OrgId {
    /// Parses a 15- or 18-character org ID. A 15-character ID is extended with its checksum
    /// suffix; an 18-character ID must carry the right suffix.
    pub fn parse(s: &str) -> Result<OrgId, IdError> {
        to_18(s).map(OrgId)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII alphanumerics ever get in (see `to_18`).
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl FromStr for OrgId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OrgId::parse(s)
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OrgId({})", self.as_str())
    }
}

/// The SHA-256 fingerprint of a certificate's DER encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of_der(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }

    /// Parses 64 hex digits, with or without `:` separators (as `openssl x509 -fingerprint`
    /// prints them).
    pub fn parse(s: &str) -> Result<Fingerprint, FingerprintError> {
        let cleaned: String = s.chars().filter(|c| *c != ':').collect();
        let mut out = [0u8; 32];
        hex::decode_to_slice(&cleaned, &mut out).map_err(|_| FingerprintError(s.to_owned()))?;
        Ok(Fingerprint(out))
    }

    /// The 64 lowercase hex digits, without an allocation. The store writer binds them for
    /// every message it commits: `hex::encode` builds its `String` a char at a time, which was
    /// 2.7% of the writer thread's samples at c=128 (BENCHMARKS.md, seventeenth session).
    pub fn hex(&self) -> FingerprintHex {
        let mut digits = [0u8; 64];
        // 32 bytes always take exactly 64 digits: the only error is a length mismatch.
        let _ = hex::encode_to_slice(self.0, &mut digits);
        FingerprintHex(digits)
    }

    pub fn to_hex(&self) -> String {
        self.hex().as_str().to_owned()
    }
}

/// A [`Fingerprint`]'s hex digits, on the stack.
#[derive(Clone, Copy)]
pub struct FingerprintHex([u8; 64]);

impl FingerprintHex {
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written (see `Fingerprint::hex`).
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("'{0}' is not a SHA-256 fingerprint: expected 64 hex digits")]
pub struct FingerprintError(String);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex().as_str())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.hex().as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<&str, ()>) {
        let got = OrgId::parse(input);
        match expected {
            Ok(want) => assert_eq!(got.expect(input).as_str(), want, "input {input}"),
            Err(()) => assert!(got.is_err(), "{input} should be rejected, got {got:?}"),
        }
    }

    #[test]
    fn org_ids() {
        // From the captures: the 15-character prefix of an 18-character ID gets the same suffix.
        check("00Dxx0000001gPF", Ok("00Dxx0000001gPFEAY"));
        check("00Dxx0000001gPFEAY", Ok("00Dxx0000001gPFEAY"));
        check("00Dxx0000001gPFeay", Ok("00Dxx0000001gPFEAY"));
        check("00D1I000003qqqE", Ok("00D1I000003qqqEUAQ"));
        check("012345678901234", Ok("012345678901234AAA"));
        check("00Dxx0000001gPFAAA", Err(()));
        check("00Dxx0000001gP", Err(()));
        check("00Dxx0000001gPF!", Err(()));
        check("", Err(()));
        check("00Dxx0000001gPFEAYX", Err(()));
    }

    #[test]
    fn fingerprints_round_trip() {
        let fp = Fingerprint::of_der(b"abc");
        let sha256_of_abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(fp.hex().as_str(), sha256_of_abc);
        assert_eq!(fp.to_string(), sha256_of_abc);
        assert_eq!(Fingerprint::parse(&fp.to_hex()).unwrap(), fp);
        let colons = fp
            .to_hex()
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(Fingerprint::parse(&colons).unwrap(), fp);
        assert!(Fingerprint::parse("abc").is_err());
    }
}
