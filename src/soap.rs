//! SOAP: parsing Outbound Message envelopes and writing the acknowledgment and faults.
//!
//! This is the only module that knows XML. The parser is a streaming pass over quick-xml events
//! that borrows every value from the request body where it can (a value is copied only when its
//! pieces must be joined, around a reference, CDATA or a comment, or a `\r` normalized). It
//! matches elements by namespace, never by prefix, refuses DTDs and unknown entities, and bounds
//! depth and the count of notifications.

use std::borrow::Cow;
use std::cell::Cell;

use quick_xml::escape::{escape, resolve_predefined_entity};
use quick_xml::events::attributes::Attribute;
use quick_xml::events::{BytesStart, BytesText, Event};
use quick_xml::name::{Namespace, NamespaceResolver, ResolveResult};
use quick_xml::reader::{NsReader, Reader};

use crate::ids::{IdError, OrgId};

pub const SOAP11_ENVELOPE_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub const SOAP12_ENVELOPE_NS: &str = "http://www.w3.org/2003/05/soap-envelope";
pub const OUTBOUND_NS: &str = "http://soap.sforce.com/2005/09/outbound";
pub const SOBJECT_NS: &str = "urn:sobject.enterprise.soap.sforce.com";
pub const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// Salesforce puts at most 100 notifications in one message.
pub const MAX_NOTIFICATIONS: usize = 100;
/// The deepest legitimate element is a field: Envelope/Body/notifications/Notification/sObject/
/// field (6). Headers and unknown elements are skipped, but only down to this depth.
pub const MAX_DEPTH: usize = 32;

/// The canonical acknowledgment. One `Ack` covers every notification of the message.
pub const ACK: &str = concat!(
    r#"<?xml version="1.0" encoding="UTF-8"?>"#,
    r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">"#,
    r#"<soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound">"#,
    r#"<Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"#
);

/// Who a fault blames, as SOAP 1.1 `faultcode` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultCode {
    /// The message was refused: Salesforce should not expect a retry to succeed as is.
    Client,
    /// Our side failed: Salesforce retries.
    Server,
}

/// Writes a SOAP 1.1 fault. `faultstring` is what the Salesforce admin reads as the delivery
/// failure reason.
pub fn fault(code: FaultCode, faultstring: &str) -> String {
    let code = match code {
        FaultCode::Client => "soapenv:Client",
        FaultCode::Server => "soapenv:Server",
    };
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">"#,
            r#"<soapenv:Body><soapenv:Fault><faultcode>{}</faultcode>"#,
            r#"<faultstring>{}</faultstring></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#
        ),
        code,
        escape(faultstring)
    )
}

/// A sample Outbound Message for `org`, shaped like the real captures (for `obm-gate send`).
pub fn sample_message(org: &OrgId, notification_id: &str) -> String {
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">"#,
            r#"<soapenv:Body><notifications xmlns="http://soap.sforce.com/2005/09/outbound">"#,
            r#"<OrganizationId>{org}</OrganizationId><ActionId>04kxx00000000blCAA</ActionId>"#,
            r#"<SessionId xsi:nil="true"/>"#,
            r#"<EnterpriseUrl>https://example.my.salesforce.com/services/Soap/c/60.0/{org15}</EnterpriseUrl>"#,
            r#"<PartnerUrl>https://example.my.salesforce.com/services/Soap/u/60.0/{org15}</PartnerUrl>"#,
            r#"<Notification><Id>{id}</Id>"#,
            r#"<sObject xsi:type="sf:Account" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">"#,
            r#"<sf:Id>001xx000003DGb4AAG</sf:Id><sf:Name>obm-gate send test</sf:Name>"#,
            r#"</sObject></Notification></notifications></soapenv:Body></soapenv:Envelope>"#
        ),
        org = org,
        org15 = &org.as_str()[..15],
        id = notification_id
    )
}

/// What a receiver answered, as a sender reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A `notificationsResponse` with this `Ack` value.
    Ack(bool),
    Fault {
        code: String,
        string: String,
    },
    /// Not a SOAP answer Salesforce would understand.
    Other,
}

/// Reads a receiver's answer: an acknowledgment, a fault, or something else.
pub fn parse_reply(body: &[u8]) -> Reply {
    let Ok(text) = std::str::from_utf8(body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body)) else {
        return Reply::Other;
    };
    let mut reader = NsReader::from_str(text);
    let mut current: Option<(Ns, String)> = None;
    let (mut ack, mut code, mut string) = (None, None, None);
    loop {
        match reader.read_resolved_event() {
            Ok((r, Event::Start(e))) => {
                current = Some((classify(&r), e.local_name().as_ref().to_owned()))
            }
            Ok((_, Event::Text(t))) => {
                let value = t.xml10_content().trim().to_owned();
                match current.as_ref().map(|(ns, n)| (*ns, n.as_str())) {
                    Some((Ns::Outbound, "Ack")) => ack = Some(value == "true"),
                    Some((_, "faultcode")) => code = Some(value),
                    Some((_, "faultstring")) => {
                        string = Some(
                            quick_xml::escape::unescape(&value)
                                .map(|v| v.into_owned())
                                .unwrap_or(value),
                        )
                    }
                    _ => {}
                }
            }
            Ok((_, Event::GeneralRef(r))) => {
                if let (Some((_, n)), Some(c)) = (current.as_ref(), resolve_predefined_entity(&r))
                    && n == "faultstring"
                {
                    string.get_or_insert_with(String::new).push_str(c);
                }
            }
            Ok((_, Event::End(_))) => current = None,
            Ok((_, Event::Eof)) | Err(_) => break,
            _ => {}
        }
    }
    match (ack, string) {
        (Some(a), _) => Reply::Ack(a),
        (None, Some(s)) => Reply::Fault {
            code: code.unwrap_or_default(),
            string: s,
        },
        _ => Reply::Other,
    }
}

/// One Outbound Message, borrowing from the request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub organization_id: OrgId,
    pub action_id: Cow<'a, str>,
    /// Present only for orgs that still send one; never logged or stored.
    pub session_id: Option<Cow<'a, str>>,
    pub enterprise_url: Option<Cow<'a, str>>,
    pub partner_url: Option<Cow<'a, str>>,
    pub notifications: Vec<Notification<'a>>,
}

/// One `Notification`: the record that changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification<'a> {
    pub id: Cow<'a, str>,
    /// The sObject type without its prefix, e.g. `Account`.
    pub object_type: Cow<'a, str>,
    /// Field name and value, in document order. A null field is omitted by Salesforce; a field
    /// with `xsi:nil="true"` is treated the same way.
    pub fields: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

/// Why a body is not an acceptable Outbound Message. Each message is a `faultstring`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SoapError {
    #[error("the body is empty; expected a SOAP 1.1 envelope")]
    Empty,
    #[error("the body is not valid UTF-8 (first bad byte at offset {offset})")]
    InvalidUtf8 { offset: usize },
    #[error("malformed XML at byte {offset}: {detail}")]
    Xml { offset: u64, detail: String },
    #[error("a DTD (<!DOCTYPE>) is not allowed in a SOAP message")]
    Dtd,
    #[error(
        "entity '&{0};' is not allowed: only the five predefined XML entities and character references are"
    )]
    Entity(String),
    #[error("elements are nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("the body ended before </{0}>: the message is truncated")]
    Truncated(String),
    #[error(
        "a SOAP 1.2 envelope is not supported; Outbound Messages use SOAP 1.1 ({SOAP11_ENVELOPE_NS})"
    )]
    Soap12,
    #[error("expected {expected}, found {found}")]
    Unexpected {
        expected: &'static str,
        found: String,
    },
    #[error("text is not allowed {0}")]
    StrayText(&'static str),
    #[error("<{0}> must contain text only, but has a child element")]
    NotText(String),
    #[error("<{0}> appears more than once in <notifications>")]
    Repeated(&'static str),
    #[error("<notifications> has no <{0}>")]
    Missing(&'static str),
    #[error("<notifications> has no <Notification>; a message carries 1 to {MAX_NOTIFICATIONS}")]
    NoNotifications,
    #[error("the message carries more than {MAX_NOTIFICATIONS} notifications")]
    TooManyNotifications,
    #[error("OrganizationId: {0}")]
    OrganizationId(IdError),
    #[error("Notification #{index}: {problem}")]
    Notification { index: usize, problem: String },
}

impl SoapError {
    /// A short, fixed label for metrics (bounded cardinality).
    pub fn label(&self) -> &'static str {
        match self {
            SoapError::Empty => "empty_body",
            SoapError::InvalidUtf8 { .. } => "invalid_utf8",
            SoapError::Xml { .. } => "malformed_xml",
            SoapError::Dtd => "dtd",
            SoapError::Entity(_) => "entity",
            SoapError::TooDeep => "too_deep",
            SoapError::Truncated(_) => "truncated",
            SoapError::Soap12 => "soap12",
            SoapError::Unexpected { .. } | SoapError::StrayText(_) | SoapError::NotText(_) => {
                "unexpected_element"
            }
            SoapError::Repeated(_) => "repeated_element",
            SoapError::Missing(_) | SoapError::NoNotifications => "missing_element",
            SoapError::TooManyNotifications => "too_many_notifications",
            SoapError::OrganizationId(_) => "bad_organization_id",
            SoapError::Notification { .. } => "bad_notification",
        }
    }
}

/// Parses one Outbound Message. The body may start with a UTF-8 byte order mark.
pub fn parse(body: &[u8]) -> Result<Message<'_>, SoapError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let text = std::str::from_utf8(body).map_err(|e| SoapError::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    if text.trim().is_empty() {
        return Err(SoapError::Empty);
    }
    let mut parser = Parser::new(text, RESOLVER.take().unwrap_or_default());
    let message = parser.message();
    if parser.widest_declaration <= KEEP_RESOLVER_UP_TO {
        // Back to the two predefined bindings (`xml`, `xmlns`), whatever the message declared
        // or wherever it failed, before the next message on this thread gets the resolver.
        parser.ns.set_level(0);
        RESOLVER.set(Some(parser.ns));
    }
    message
}

thread_local! {
    /// The namespace resolver, kept between the messages a thread parses. A new one starts with
    /// no room and grows its buffers again for the envelope's declarations: about 2,500
    /// instructions of a 1-notification message's 52,000 (callgrind).
    static RESOLVER: Cell<Option<NamespaceResolver>> = const { Cell::new(None) };
}

/// The resolver keeps the room its buffers grew to. It is kept for the next message only if no
/// start tag declared more than this many bytes of namespaces (names and URIs; Salesforce's
/// envelope declares 145): what a thread then holds on to is bounded by [`MAX_DEPTH`] such tags,
/// 16 KiB of declarations (32 KiB of room at most), and quick-xml's limit of 128 bindings in
/// scope. A message that declared more leaves its resolver to be dropped.
const KEEP_RESOLVER_UP_TO: usize = 512;

/// The namespaces the parser cares about; everything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ns {
    Soap11,
    Soap12,
    Outbound,
    SObject,
    Other,
    None,
    /// Not looked up: the element is matched by local name only.
    Unresolved,
}

fn classify(r: &ResolveResult<'_>) -> Ns {
    match r {
        ResolveResult::Bound(ns) => match ns.as_ref() {
            n if n == SOAP11_ENVELOPE_NS => Ns::Soap11,
            n if n == SOAP12_ENVELOPE_NS => Ns::Soap12,
            n if n == OUTBOUND_NS => Ns::Outbound,
            n if n == SOBJECT_NS => Ns::SObject,
            _ => Ns::Other,
        },
        ResolveResult::Unbound => Ns::None,
        ResolveResult::Unknown(_) => Ns::Other,
    }
}

/// A start tag, resolved.
struct Open<'a> {
    ns: Ns,
    /// Local name, borrowed from the body.
    local: Cow<'a, str>,
    /// `<x/>`: there is no content and no end event.
    empty: bool,
    nil: bool,
    /// The local part of `xsi:type` (`sf:Account` → `Account`).
    xsi_type: Option<Cow<'a, str>>,
    /// It opened a namespace scope, which its end tag closes.
    scoped: bool,
    /// It is on the element stack (see [`Mode`]).
    pushed: bool,
}

impl Open<'_> {
    fn describe(&self) -> String {
        let ns = match self.ns {
            Ns::Soap11 => SOAP11_ENVELOPE_NS,
            Ns::Soap12 => SOAP12_ENVELOPE_NS,
            Ns::Outbound => OUTBOUND_NS,
            Ns::SObject => SOBJECT_NS,
            Ns::Other => "another namespace",
            Ns::None => "no namespace",
            Ns::Unresolved => "any namespace",
        };
        format!("<{}> in {}", self.local, ns)
    }
}

/// How a start tag is taken.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A child of an element the parser knows: its namespace is resolved, and it goes on the
    /// element stack, since its content may be elements.
    Child,
    /// Inside an element being skipped: on the stack (that is how `skip` finds the end), not
    /// resolved.
    Skipped,
    /// An sObject field: taken by local name whatever its namespace, so not resolved; and its
    /// content is always read by `text`, which refuses a child element, so it needs no stack
    /// entry either: quick-xml matches its end tag (`check_end_names`), and `text` ends it.
    /// Most elements of a message are fields.
    Field,
}

/// What comes next inside an element.
enum Item<'a> {
    Open(Open<'a>),
    /// Non-whitespace text (or a reference) where only elements are expected.
    Text,
    Close,
}

struct Parser<'a> {
    /// The whole document; names are borrowed from it.
    text: &'a str,
    /// quick-xml's plain reader, with the namespace scopes kept beside it in `ns`: only a start
    /// tag with attributes can declare a namespace, so only such a tag opens a scope. Every
    /// field of a record has none, and skips the scope work `NsReader` does for each element.
    reader: Reader<&'a [u8]>,
    ns: NamespaceResolver,
    /// The most bytes of namespace declarations one start tag made (see `KEEP_RESOLVER_UP_TO`).
    widest_declaration: usize,
    /// The open elements, innermost last (its length is the depth): local name (for truncation
    /// messages), and whether it opened a namespace scope that its end tag closes.
    stack: Vec<(Cow<'a, str>, bool)>,
}

impl<'a> Parser<'a> {
    /// A parser of `text`; `ns` holds no binding beyond the predefined ones.
    fn new(text: &'a str, ns: NamespaceResolver) -> Self {
        let mut reader = Reader::from_str(text);
        let cfg = reader.config_mut();
        cfg.check_end_names = true;
        cfg.expand_empty_elements = false;
        Parser {
            text,
            reader,
            ns,
            widest_declaration: 0,
            stack: Vec::with_capacity(8),
        }
    }

    fn xml_error(&self, e: quick_xml::Error) -> SoapError {
        SoapError::Xml {
            offset: self.reader.error_position(),
            detail: e.to_string(),
        }
    }

    /// The next event. Namespace scopes are opened in `open` and closed in `close`; only start
    /// tags are resolved, because nothing else needs a namespace.
    fn event(&mut self) -> Result<Event<'a>, SoapError> {
        match self.reader.read_event() {
            Ok(Event::DocType(_)) => Err(SoapError::Dtd),
            Ok(ev) => Ok(ev),
            Err(e) => Err(self.xml_error(e)),
        }
    }

    fn open(
        &mut self,
        start: BytesStart<'a>,
        empty: bool,
        mode: Mode,
    ) -> Result<Open<'a>, SoapError> {
        let name = start.name().into_inner();
        // An `xmlns` declaration is an attribute: a tag without attributes keeps the scope.
        let scoped = start.len() != name.len();
        let (nil, xsi_type) = if scoped {
            self.scope(&start)?
        } else {
            (false, None)
        };
        let ns = if mode == Mode::Child {
            classify(&self.ns.resolve_element(start.name()).0)
        } else {
            Ns::Unresolved
        };
        // The name after its prefix, found bytewise: `QName::local_name` goes through
        // `str::find`'s char searcher, which costs more than the whole search on names this
        // short (callgrind).
        let local = match name.bytes().position(|b| b == b':') {
            Some(colon) => &name[colon + 1..],
            None => name,
        };
        let local = reborrow(self.text, local);
        let mut pushed = false;
        if empty {
            // `<x/>` has no end tag: its scope closes here.
            if scoped {
                self.ns.pop();
            }
        } else {
            if self.stack.len() == MAX_DEPTH {
                return Err(SoapError::TooDeep);
            }
            if mode != Mode::Field {
                self.stack.push((local.clone(), scoped));
                pushed = true;
            }
        }
        Ok(Open {
            ns,
            local,
            empty,
            nil,
            xsi_type,
            scoped,
            pushed,
        })
    }

    /// The end tag of `el`, whose content was read.
    fn end(&mut self, el: &Open<'a>) -> Result<(), SoapError> {
        if el.pushed {
            self.close()
        } else {
            if el.scoped {
                self.ns.pop();
            }
            Ok(())
        }
    }

    /// Opens the namespace scope of a start tag with attributes, and reads its `xsi:nil` and
    /// the local part of its `xsi:type`: one pass over the attributes, each checked for
    /// well-formedness and duplicates. A declaration holds for the whole tag that makes it,
    /// whatever the attributes' order, so the prefixed attributes are looked at after the pass.
    /// (`NamespaceResolver::push` and then a pass of our own read every attribute twice: about
    /// 4% of a 100-notification message's parse, callgrind.)
    fn scope(&mut self, start: &BytesStart<'a>) -> Result<(bool, Option<Cow<'a, str>>), SoapError> {
        self.ns.set_level(self.ns.level().saturating_add(1));
        // Room for the prefixed attributes of any tag Salesforce writes (`xsi:type`, `xsi:nil`);
        // a tag with more is read a second time.
        let mut prefixed: [Option<Attribute<'_>>; 4] = Default::default();
        let mut count = 0;
        let mut declared_bytes = 0;
        for attr in start.attributes() {
            let attr = attr.map_err(|e| self.xml_error(e.into()))?;
            if let Some(declared) = attr.key.as_namespace_binding() {
                declared_bytes += attr.key.as_ref().len() + attr.value.len();
                self.widest_declaration = self.widest_declaration.max(declared_bytes);
                self.ns
                    .add(declared, Namespace(&attr.value))
                    .map_err(|e| self.xml_error(e.into()))?;
            } else if attr.key.prefix().is_some() {
                // An unprefixed attribute is in no namespace: not xsi:nil, not xsi:type.
                if let Some(slot) = prefixed.get_mut(count) {
                    *slot = Some(attr);
                }
                count += 1;
            }
        }
        let mut xsi = (false, None);
        if count <= prefixed.len() {
            for attr in prefixed.iter().flatten() {
                self.xsi(attr, &mut xsi)?;
            }
        } else {
            for attr in start.attributes() {
                let attr = attr.map_err(|e| self.xml_error(e.into()))?;
                if attr.key.as_namespace_binding().is_none() && attr.key.prefix().is_some() {
                    self.xsi(&attr, &mut xsi)?;
                }
            }
        }
        Ok(xsi)
    }

    /// Notes `attr` in `xsi` if it is `xsi:nil` or `xsi:type`, once its tag's scope is open.
    fn xsi(
        &self,
        attr: &Attribute<'_>,
        xsi: &mut (bool, Option<Cow<'a, str>>),
    ) -> Result<(), SoapError> {
        let (r, local) = self.ns.resolve_attribute(attr.key);
        if !matches!(&r, ResolveResult::Bound(n) if n.as_ref() == XSI_NS) {
            return Ok(());
        }
        let value = attr
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|e| self.xml_error(e))?;
        let v = value.trim();
        match local.as_ref() {
            "nil" => xsi.0 = v == "true" || v == "1",
            "type" => xsi.1 = Some(reborrow(self.text, v.rsplit(':').next().unwrap_or(v))),
            _ => {}
        }
        Ok(())
    }

    /// The next child element of the current element, skipping whitespace, comments and
    /// processing instructions; `Close` at the current element's end tag.
    fn next_item(&mut self) -> Result<Item<'a>, SoapError> {
        self.next(Mode::Child)
    }

    /// Like `next_item`, for the fields of an sObject (see [`Mode::Field`]): the element
    /// returned must be read with `text`.
    fn next_field(&mut self) -> Result<Item<'a>, SoapError> {
        self.next(Mode::Field)
    }

    fn next(&mut self, mode: Mode) -> Result<Item<'a>, SoapError> {
        loop {
            match self.event()? {
                Event::Start(s) => return Ok(Item::Open(self.open(s, false, mode)?)),
                Event::Empty(s) => return Ok(Item::Open(self.open(s, true, mode)?)),
                Event::End(_) => {
                    self.close()?;
                    return Ok(Item::Close);
                }
                Event::Text(t) if t.trim_ascii().is_empty() => continue,
                Event::Text(_) | Event::CData(_) | Event::GeneralRef(_) => return Ok(Item::Text),
                Event::Comment(_) | Event::PI(_) | Event::Decl(_) => continue,
                Event::DocType(_) => return Err(SoapError::Dtd),
                Event::Eof => return Err(self.truncated()),
            }
        }
    }

    fn close(&mut self) -> Result<(), SoapError> {
        match self.stack.pop() {
            None => Err(SoapError::StrayText("outside the SOAP envelope")),
            Some((_, scoped)) => {
                if scoped {
                    self.ns.pop();
                }
                Ok(())
            }
        }
    }

    fn truncated(&self) -> SoapError {
        let open = self.stack.last().map(|(s, _)| s.to_string());
        SoapError::Truncated(open.unwrap_or_else(|| "Envelope".to_owned()))
    }

    /// Reads the text content of a leaf element whose start tag was just read, and its end.
    fn text(&mut self, el: &Open<'a>) -> Result<Cow<'a, str>, SoapError> {
        if el.empty {
            return Ok(Cow::Borrowed(""));
        }
        // The usual value, one text and the end tag, is returned as it comes; anything else
        // (references, CDATA, comments) is joined piece by piece below.
        let (mut value, mut event) = match self.event()? {
            Event::Text(t) => {
                let piece = content(t);
                match self.event()? {
                    Event::End(_) => {
                        self.end(el)?;
                        return Ok(piece);
                    }
                    next => (Some(piece), next),
                }
            }
            next => (None, next),
        };
        let push = |value: &mut Option<Cow<'a, str>>, piece: Cow<'a, str>| match value {
            None => *value = Some(piece),
            Some(v) => {
                if let Cow::Borrowed(first) = v {
                    // A reference splits the value: room for the rest at once, not regrown twice.
                    let mut owned = String::with_capacity(first.len() + piece.len() + 32);
                    owned.push_str(first);
                    *v = Cow::Owned(owned);
                }
                v.to_mut().push_str(&piece)
            }
        };
        loop {
            match event {
                Event::Text(t) => push(&mut value, content(t)),
                Event::CData(c) => push(&mut value, c.into_inner()),
                Event::GeneralRef(r) => {
                    let resolved: Cow<'a, str> = if r.is_char_ref() {
                        match r.resolve_char_ref() {
                            Ok(Some(c)) => Cow::Owned(c.to_string()),
                            _ => return Err(SoapError::Entity(r.to_string())),
                        }
                    } else {
                        match resolve_predefined_entity(&r) {
                            Some(s) => Cow::Borrowed(s),
                            None => return Err(SoapError::Entity(r.to_string())),
                        }
                    };
                    push(&mut value, resolved);
                }
                Event::End(_) => {
                    self.end(el)?;
                    return Ok(value.unwrap_or(Cow::Borrowed("")));
                }
                Event::Start(_) | Event::Empty(_) => {
                    return Err(SoapError::NotText(el.local.to_string()));
                }
                Event::Comment(_) | Event::PI(_) | Event::Decl(_) => {}
                Event::DocType(_) => return Err(SoapError::Dtd),
                // `el` is the innermost open element, on the stack or not.
                Event::Eof => return Err(SoapError::Truncated(el.local.to_string())),
            }
            event = self.event()?;
        }
    }

    /// Skips the content of an element whose start tag was just read (headers, unknown
    /// elements), still bounded by `MAX_DEPTH` and still refusing unknown entities.
    fn skip(&mut self, el: &Open<'a>) -> Result<(), SoapError> {
        if el.empty {
            return Ok(());
        }
        let target = self.stack.len() - 1;
        while self.stack.len() > target {
            match self.event()? {
                Event::Start(s) => {
                    self.open(s, false, Mode::Skipped)?;
                }
                Event::End(_) => self.close()?,
                Event::GeneralRef(r)
                    if !r.is_char_ref() && resolve_predefined_entity(&r).is_none() =>
                {
                    return Err(SoapError::Entity(r.to_string()));
                }
                Event::Eof => return Err(self.truncated()),
                _ => {}
            }
        }
        Ok(())
    }

    fn message(&mut self) -> Result<Message<'a>, SoapError> {
        // Prolog: declaration, comments, PIs, whitespace; then the root element.
        let envelope = match self.next_item() {
            Ok(Item::Open(o)) => o,
            Ok(Item::Text | Item::Close) => {
                return Err(SoapError::StrayText("before the SOAP envelope"));
            }
            Err(SoapError::Truncated(_)) => return Err(SoapError::Empty),
            Err(e) => return Err(e),
        };
        match (envelope.ns, envelope.local.as_ref()) {
            (Ns::Soap11, "Envelope") => {}
            (Ns::Soap12, _) => return Err(SoapError::Soap12),
            _ => {
                return Err(SoapError::Unexpected {
                    expected: "a SOAP 1.1 <Envelope>",
                    found: envelope.describe(),
                });
            }
        }
        if envelope.empty {
            return Err(SoapError::Unexpected {
                expected: "a SOAP <Body>",
                found: "an empty <Envelope/>".into(),
            });
        }
        let mut message = None;
        loop {
            match self.next_item()? {
                Item::Open(o) if o.ns == Ns::Soap11 && o.local == "Header" => self.skip(&o)?,
                Item::Open(o) if o.ns == Ns::Soap11 && o.local == "Body" && message.is_none() => {
                    message = Some(self.body(&o)?);
                }
                Item::Open(o) => {
                    return Err(SoapError::Unexpected {
                        expected: "<Header> or <Body> in the SOAP envelope",
                        found: o.describe(),
                    });
                }
                Item::Text => return Err(SoapError::StrayText("in the SOAP envelope")),
                Item::Close => break,
            }
        }
        let message = message.ok_or(SoapError::Unexpected {
            expected: "a SOAP <Body>",
            found: "none".into(),
        })?;
        // Epilog: only whitespace, comments and PIs may follow.
        loop {
            match self.event()? {
                Event::Eof => return Ok(message),
                Event::Text(t) if t.trim_ascii().is_empty() => {}
                Event::Comment(_) | Event::PI(_) => {}
                _ => return Err(SoapError::StrayText("after the SOAP envelope")),
            }
        }
    }

    fn body(&mut self, body: &Open<'a>) -> Result<Message<'a>, SoapError> {
        let missing = || SoapError::Unexpected {
            expected: "<notifications> in http://soap.sforce.com/2005/09/outbound",
            found: "an empty SOAP Body".into(),
        };
        if body.empty {
            return Err(missing());
        }
        let mut message = None;
        loop {
            match self.next_item()? {
                Item::Open(o)
                    if o.ns == Ns::Outbound && o.local == "notifications" && message.is_none() =>
                {
                    message = Some(self.notifications(&o)?);
                }
                Item::Open(o) => {
                    return Err(SoapError::Unexpected {
                        expected: "<notifications> in http://soap.sforce.com/2005/09/outbound",
                        found: o.describe(),
                    });
                }
                Item::Text => return Err(SoapError::StrayText("in the SOAP Body")),
                Item::Close => return message.ok_or_else(missing),
            }
        }
    }

    fn notifications(&mut self, el: &Open<'a>) -> Result<Message<'a>, SoapError> {
        if el.empty {
            return Err(SoapError::Missing("OrganizationId"));
        }
        let mut org = None;
        let mut action = None;
        let mut session = None;
        let mut enterprise = None;
        let mut partner = None;
        let mut notifications = Vec::new();
        loop {
            let o = match self.next_item()? {
                Item::Open(o) => o,
                Item::Text => return Err(SoapError::StrayText("in <notifications>")),
                Item::Close => break,
            };
            if o.ns != Ns::Outbound {
                // Unknown extension elements are skipped, not guessed at.
                self.skip(&o)?;
                continue;
            }
            let slot = match o.local.as_ref() {
                "OrganizationId" => &mut org,
                "ActionId" => &mut action,
                "SessionId" => &mut session,
                "EnterpriseUrl" => &mut enterprise,
                "PartnerUrl" => &mut partner,
                "Notification" => {
                    if notifications.len() == MAX_NOTIFICATIONS {
                        return Err(SoapError::TooManyNotifications);
                    }
                    let index = notifications.len() + 1;
                    notifications.push(self.notification(&o, index)?);
                    continue;
                }
                _ => {
                    self.skip(&o)?;
                    continue;
                }
            };
            if slot.is_some() {
                return Err(SoapError::Repeated(static_name(&o.local)));
            }
            let value = self.text(&o)?;
            *slot = Some(if o.nil { None } else { Some(value) });
        }
        let org = org.flatten().ok_or(SoapError::Missing("OrganizationId"))?;
        let organization_id = OrgId::parse(org.trim()).map_err(SoapError::OrganizationId)?;
        let action_id = action.flatten().ok_or(SoapError::Missing("ActionId"))?;
        if notifications.is_empty() {
            return Err(SoapError::NoNotifications);
        }
        Ok(Message {
            organization_id,
            action_id,
            session_id: session.flatten().filter(|s| !s.is_empty()),
            enterprise_url: enterprise.flatten(),
            partner_url: partner.flatten(),
            notifications,
        })
    }

    fn notification(&mut self, el: &Open<'a>, index: usize) -> Result<Notification<'a>, SoapError> {
        let bad = |problem: String| SoapError::Notification { index, problem };
        if el.empty {
            return Err(bad("it is empty; expected <Id> and <sObject>".into()));
        }
        let mut id = None;
        let mut object = None;
        loop {
            let o = match self.next_item()? {
                Item::Open(o) => o,
                Item::Text => return Err(bad("text is not allowed in <Notification>".into())),
                Item::Close => break,
            };
            match (o.ns, o.local.as_ref()) {
                (Ns::Outbound, "Id") if id.is_none() => id = Some(self.text(&o)?),
                (Ns::Outbound, "sObject") if object.is_none() => {
                    object = Some(self.sobject(&o).map_err(|e| match e {
                        SoapError::Notification { .. } => e,
                        other if is_structural(&other) => other,
                        other => bad(other.to_string()),
                    })?);
                }
                (Ns::Outbound, "Id" | "sObject") => {
                    return Err(bad(format!("<{}> appears more than once", o.local)));
                }
                _ => self.skip(&o)?,
            }
        }
        let id = id.ok_or_else(|| bad("it has no <Id>".into()))?;
        let id_ok = matches!(id.len(), 15 | 18) && id.bytes().all(|b| b.is_ascii_alphanumeric());
        if !id_ok {
            return Err(bad(format!(
                "<Id> '{}' is not a Salesforce ID",
                id.chars().take(40).collect::<String>()
            )));
        }
        let (object_type, fields) = object.ok_or_else(|| bad("it has no <sObject>".into()))?;
        Ok(Notification {
            id,
            object_type,
            fields,
        })
    }

    fn sobject(&mut self, el: &Open<'a>) -> Result<(Cow<'a, str>, Fields<'a>), SoapError> {
        let object_type: Cow<'a, str> = match &el.xsi_type {
            Some(t) => t.clone(),
            None => {
                return Err(SoapError::Unexpected {
                    expected: "an xsi:type attribute on <sObject>",
                    found: "none".into(),
                });
            }
        };
        if object_type.is_empty() {
            return Err(SoapError::Unexpected {
                expected: "an object type in <sObject xsi:type>",
                found: "an empty value".into(),
            });
        }
        if el.empty {
            return Ok((object_type, Vec::new()));
        }
        // Room for a usual record's fields up front, rather than growing from 0 to 4 to 8 to 16
        // (that growth was 8% of the parse time of a 100-notification message).
        let mut fields = Vec::with_capacity(16);
        loop {
            let o = match self.next_field()? {
                Item::Open(o) => o,
                Item::Text => return Err(SoapError::StrayText("in <sObject>")),
                Item::Close => break,
            };
            let value = self.text(&o)?;
            if !o.nil {
                fields.push((o.local, value));
            }
        }
        Ok((object_type, fields))
    }
}

type Fields<'a> = Vec<(Cow<'a, str>, Cow<'a, str>)>;

/// A text's content with its line ends normalized as XML 1.0 says. Values almost never hold a
/// `\r`: std's word-at-a-time search finds that out for less than the `memchr` call inside
/// `xml10_content` costs on values this short (about 20 bytes), and quick-xml still does the
/// normalizing when there is one.
fn content(t: BytesText<'_>) -> Cow<'_, str> {
    if t.as_bytes().contains(&b'\r') {
        t.xml10_content()
    } else {
        t.into_inner()
    }
}

/// Errors that concern the document as a whole rather than one notification's content.
fn is_structural(e: &SoapError) -> bool {
    matches!(
        e,
        SoapError::Xml { .. }
            | SoapError::Dtd
            | SoapError::Entity(_)
            | SoapError::TooDeep
            | SoapError::Truncated(_)
    )
}

fn static_name(local: &str) -> &'static str {
    match local {
        "OrganizationId" => "OrganizationId",
        "ActionId" => "ActionId",
        "SessionId" => "SessionId",
        "EnterpriseUrl" => "EnterpriseUrl",
        _ => "PartnerUrl",
    }
}

/// Returns `part` borrowed from `whole` when it is a slice of it (the slice reader hands out
/// such slices), so names need no allocation; otherwise a copy.
fn reborrow<'a>(whole: &'a str, part: &str) -> Cow<'a, str> {
    let start = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    match whole.get(start..start.wrapping_add(part.len())) {
        Some(slice) if slice.as_ptr() == part.as_ptr() => Cow::Borrowed(slice),
        _ => Cow::Owned(part.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The thread keeps its resolver after a usual message, and drops it after one whose start
    /// tag declared more than `KEEP_RESOLVER_UP_TO` bytes: what a thread holds between messages
    /// stays bounded whatever a sender declares.
    #[test]
    fn a_resolver_grown_by_a_wide_declaration_is_not_kept() {
        let org = OrgId::parse("00Dxx0000001gPF").unwrap();
        let usual = sample_message(&org, "04lxx000000CaShAAK");
        let wide = usual.replacen(
            "<soapenv:Envelope ",
            &format!(r#"<soapenv:Envelope xmlns:pad="urn:{}" "#, "x".repeat(600)),
            1,
        );
        assert!(parse(usual.as_bytes()).is_ok());
        let kept = RESOLVER.take();
        assert!(kept.is_some(), "a usual message's resolver is kept");
        RESOLVER.set(kept);

        assert!(parse(wide.as_bytes()).is_ok());
        assert!(
            RESOLVER.take().is_none(),
            "a wide declaration's resolver is dropped"
        );

        assert!(parse(usual.as_bytes()).is_ok());
        assert!(RESOLVER.take().is_some());
    }
}
