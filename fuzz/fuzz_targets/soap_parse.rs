//! The SOAP parser on arbitrary bytes: it must return, never panic, and anything it accepts
//! must respect the documented bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = obm_gate::soap::parse(data) {
        assert!((1..=obm_gate::soap::MAX_NOTIFICATIONS).contains(&message.notifications.len()));
        assert_eq!(message.organization_id.as_str().len(), 18);
    }
    let _ = obm_gate::soap::parse_reply(data);
});
