//! The JSON document of one notification, as downstream consumers receive it: the body of a
//! JetStream message and of a webhook request. One shape for both, so a consumer can move
//! from one to the other.
//!
//! ```json
//! {"org_id":"00D…","action_id":"04k…","notification_id":"04l…","object_type":"Account",
//!  "record_id":"001…","fields":{"Id":"001…","Name":"…"},
//!  "received_at":"2026-11-23T10:00:00.000Z","certificate_sha256":"ab12…"}
//! ```

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

/// One notification's document, from what the store keeps of it. `to_bytes` derives the rest
/// (the `record_id`, the embedded fields), so both senders build it the same way.
#[derive(Debug)]
pub struct Document<'a> {
    pub org_id: &'a str,
    pub action_id: &'a str,
    pub notification_id: &'a str,
    pub object_type: &'a str,
    /// The fields as stored: a JSON object in document order.
    pub fields_json: &'a str,
    /// When this receiver committed (or, without a store, received) the notification.
    pub received_at: &'a str,
    /// SHA-256 of the client certificate the message arrived with.
    pub certificate_sha256: &'a str,
}

/// The wire shape, in this field order.
#[derive(Serialize)]
struct Wire<'a> {
    org_id: &'a str,
    action_id: &'a str,
    notification_id: &'a str,
    object_type: &'a str,
    /// The sObject's `Id` field, when the message carries it.
    record_id: Option<String>,
    /// The fields in document order, as sent.
    fields: &'a RawValue,
    received_at: &'a str,
    certificate_sha256: &'a str,
}

impl Document<'_> {
    pub fn to_bytes(&self) -> Bytes {
        let wire = Wire {
            org_id: self.org_id,
            action_id: self.action_id,
            notification_id: self.notification_id,
            object_type: self.object_type,
            record_id: record_id(self.fields_json),
            fields: raw_fields(self.fields_json),
            received_at: self.received_at,
            certificate_sha256: self.certificate_sha256,
        };
        // Serializing strings and a valid raw value into a Vec cannot fail.
        Bytes::from(serde_json::to_vec(&wire).unwrap_or_default())
    }
}

/// The stored fields JSON as a raw value (stored by us, so valid; `{}` otherwise).
fn raw_fields(fields_json: &str) -> &RawValue {
    serde_json::from_str(fields_json).unwrap_or_else(|_| empty_object())
}

fn empty_object() -> &'static RawValue {
    static EMPTY: std::sync::OnceLock<Box<RawValue>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| RawValue::from_string("{}".to_owned()).expect("valid JSON"))
}

/// The `Id` field of a stored fields object.
fn record_id(fields_json: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct WithId {
        #[serde(rename = "Id")]
        id: Option<String>,
    }
    serde_json::from_str::<WithId>(fields_json).ok()?.id
}

/// The idempotency key of a notification downstream: JetStream's `Nats-Msg-Id` and the
/// webhook's `X-Obm-Gate-Id`. The same notification always gets the same key.
pub fn message_id(org_id: &str, notification_id: &str) -> String {
    format!("{org_id}/{notification_id}")
}

/// Now, as the documents write times: RFC 3339, UTC, milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_embeds_the_fields_as_json() {
        let fields = r#"{"Id":"001000000000001AAA","Name":"A \"quoted\" name"}"#;
        let doc = Document {
            org_id: "00D000000000001AAA",
            action_id: "04k000000000001AAA",
            notification_id: "04l000000000001AAA",
            object_type: "Account",
            fields_json: fields,
            received_at: "2026-11-23T10:00:00.000Z",
            certificate_sha256: "ab",
        };
        let v: serde_json::Value = serde_json::from_slice(&doc.to_bytes()).unwrap();
        assert_eq!(v["record_id"], "001000000000001AAA");
        assert_eq!(v["fields"]["Name"], "A \"quoted\" name");
        assert_eq!(record_id("{}"), None);
        assert_eq!(raw_fields("not json").get(), "{}");
    }
}
