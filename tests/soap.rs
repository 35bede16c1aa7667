//! Data-driven tests of the SOAP parser: one helper, many inputs, including the real captures.

use obm_gate::soap::{self, Message};

/// Renders a parse result compactly, so each case states exactly what it must yield.
fn render(result: Result<Message<'_>, soap::SoapError>) -> String {
    let m = match result {
        Ok(m) => m,
        Err(e) => return format!("error[{}]: {e}", e.label()),
    };
    let mut out = format!(
        "org={} action={} session={} enterprise={} partner={}\n",
        m.organization_id,
        m.action_id,
        m.session_id.as_deref().map(|_| "present").unwrap_or("-"),
        m.enterprise_url.as_deref().unwrap_or("-"),
        m.partner_url.as_deref().unwrap_or("-"),
    );
    for n in &m.notifications {
        out.push_str(&format!("{} {}", n.id, n.object_type));
        for (k, v) in &n.fields {
            out.push_str(&format!(" {k}={v:?}"));
        }
        out.push('\n');
    }
    out
}

fn check(input: &[u8], expected: &str) {
    let got = render(soap::parse(input));
    assert_eq!(
        got.trim_end(),
        expected.trim_end(),
        "\n--- input ---\n{}",
        String::from_utf8_lossy(input)
            .chars()
            .take(600)
            .collect::<String>()
    );
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/obm/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// An envelope around `notifications` content, with the usual prefixes.
fn envelope(inner: &str) -> Vec<u8> {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">{inner}</notifications>
 </soapenv:Body>
</soapenv:Envelope>"#
    )
    .into_bytes()
}

const HEAD: &str = r#"<OrganizationId>00Dxx0000001gPFEAY</OrganizationId><ActionId>04kxx00000000blCAA</ActionId><SessionId xsi:nil="true"/><EnterpriseUrl>https://e.example/c</EnterpriseUrl><PartnerUrl>https://e.example/u</PartnerUrl>"#;

fn notification(id: &str, fields: &str) -> String {
    format!(
        r#"<Notification><Id>{id}</Id><sObject xsi:type="sf:Account" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">{fields}</sObject></Notification>"#
    )
}

fn one(fields: &str) -> Vec<u8> {
    envelope(&format!(
        "{HEAD}{}",
        notification("04lxx000000CaShAAK", fields)
    ))
}

const ONE_HEAD: &str = "org=00Dxx0000001gPFEAY action=04kxx00000000blCAA session=- enterprise=https://e.example/c partner=https://e.example/u";

#[test]
fn real_captures() {
    check(
        &fixture("amplabs_account_null_field_omitted.xml"),
        r#"org=00Dxx0000001gPFEAY action=04kxx00000000blCAA session=- enterprise=https://yourInstance.salesforce.com/services/Soap/c/60.0/00Dxx0000001gPF partner=https://yourInstance.salesforce.com/services/Soap/u/60.0/00Dxx0000001gPF
04lxx000000CaShAAK Account Id="001xx000003DGb4AAG" CreatedDate="2026-09-09T19:01:52.000Z" LastModifiedDate="2026-09-09T19:01:52.000Z""#,
    );
    check(
        &fixture("amplabs_batch_update_contacts_nil_sessionid.xml"),
        r#"org=00Dxx0000001gPFEAY action=04kxx00000000blBAA session=- enterprise=https://yourInstance.salesforce.com/services/Soap/c/60.0/00Dxx0000001gPF partner=https://yourInstance.salesforce.com/services/Soap/u/60.0/00Dxx0000001gPF
04lxx000000CaSeAAK Contact Id="003xx000004TmiQAAS" CreatedDate="2026-08-26T23:25:15.000Z" LastModifiedDate="2026-09-09T00:41:57.000Z"
04lxx000000CaSfAAK Contact Id="003xx000004TmiRAAS" CreatedDate="2026-08-26T23:28:35.000Z" LastModifiedDate="2026-09-09T00:41:57.000Z"
04lxx000000CaSgAAK Contact Id="003xx000004TmiSAAS" CreatedDate="2026-08-10T21:55:22.000Z" LastModifiedDate="2026-09-09T00:41:57.000Z""#,
    );
    // A 15-character org ID is extended to 18 characters; the session ID is kept but never shown.
    check(
        &fixture("aspnet_two_contacts_with_sessionid.xml"),
        r#"org=012345678901234AAA action=04k1I000000bmsHQAQ session=present enterprise=https://na73.salesforce.com/services/Soap/c/41.0/00D1I000003qqqE partner=https://na73.salesforce.com/services/Soap/u/41.0/00D1I000003qqqE
04l1I000000fztEQAQ Contact Id="0031I0000081tbPQAQ" CreatedDate="2017-12-11T21:49:24.000Z" FirstName="Jeraldine" LastName="Black" Title="White"
04l1I000000fzt9QAA Contact Id="0031I0000081tb0QAA" CreatedDate="2017-12-11T21:44:55.000Z" Email="drb24@cornell.edu" FirstName="Doug" LastName="Bunting" Title="Supreme Being""#,
    );
}

#[test]
fn every_capture_in_the_fixture_directory_parses() {
    let dir = format!("{}/tests/fixtures/obm", env!("CARGO_MANIFEST_DIR"));
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "xml") {
            let body = std::fs::read(&path).unwrap();
            soap::parse(&body).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            count += 1;
        }
    }
    assert!(count >= 3, "expected the captures in {dir}");
}

#[test]
fn byte_order_mark_and_foreign_prefixes() {
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend(one("<sf:Name>Acme</sf:Name>"));
    check(
        &bom,
        &format!("{ONE_HEAD}\n04lxx000000CaShAAK Account Name=\"Acme\""),
    );

    // Other prefixes, attribute order swapped, default namespace moved: matched by namespace.
    let body = r#"<S:Envelope xmlns:x="http://www.w3.org/2001/XMLSchema-instance" xmlns:S="http://schemas.xmlsoap.org/soap/envelope/"><S:Header><Foo xmlns="urn:x">bar</Foo></S:Header><S:Body><o:notifications xmlns:o="http://soap.sforce.com/2005/09/outbound"><o:OrganizationId>00Dxx0000001gPF</o:OrganizationId><o:ActionId>04kxx00000000blCAA</o:ActionId><o:Notification><o:Id>04lxx000000CaShAAK</o:Id><o:sObject xmlns:q="urn:sobject.enterprise.soap.sforce.com" x:type="q:Lead"><q:Company>A &amp; B &lt;C&gt; &#233;&#x4E2D;</q:Company><q:Note><![CDATA[<raw> & text]]></q:Note><q:Empty></q:Empty></o:sObject></o:Notification></o:notifications></S:Body></S:Envelope>"#;
    check(
        body.as_bytes(),
        "org=00Dxx0000001gPFEAY action=04kxx00000000blCAA session=- enterprise=- partner=-\n04lxx000000CaShAAK Lead Company=\"A & B <C> é中\" Note=\"<raw> & text\" Empty=\"\"",
    );

    // A field is taken by its local name, whatever its namespace: the parser does not resolve
    // a field's prefix at all (Salesforce always uses the sObject namespace).
    check(
        &one(r#"<Name>Default</Name><x:Site xmlns:x="urn:other">Elsewhere</x:Site>"#),
        &format!("{ONE_HEAD}\n04lxx000000CaShAAK Account Name=\"Default\" Site=\"Elsewhere\""),
    );
}

/// A namespace declared on an element holds until that element's end tag (or, for `<x/>`, only
/// on that tag), and no further: a sibling after it is back in the enclosing namespace.
#[test]
fn namespace_scopes_end_with_their_element() {
    let other =
        |tag: &str| format!(r#"<{tag} xmlns="urn:other"><Id>04lxx000000CaSAAAK</Id></{tag}>"#);
    let cases = [
        // A default namespace redeclared on a sibling, then on an empty sibling, then an
        // element with an attribute that declares nothing: the next <Notification> is still in
        // the outbound namespace.
        format!(
            r#"{HEAD}{}<Extra xmlns="urn:other"/><Plain kind="x">y</Plain>{}"#,
            other("Notification"),
            notification("04lxx000000CaShAAK", "<sf:Name>Acme</sf:Name>")
        ),
        // The outbound namespace under a prefix declared on the <Notification> tag itself: a
        // declaration applies to the tag that makes it.
        format!(
            r#"{HEAD}<o:Notification xmlns:o="http://soap.sforce.com/2005/09/outbound"><o:Id>04lxx000000CaShAAK</o:Id><o:sObject xsi:type="sf:Account" xmlns:sf="urn:sobject.enterprise.soap.sforce.com"><sf:Name>Acme</sf:Name></o:sObject></o:Notification>{}"#,
            other("Notification")
        ),
    ];
    for inner in &cases {
        check(
            &envelope(inner),
            &format!("{ONE_HEAD}\n04lxx000000CaShAAK Account Name=\"Acme\""),
        );
    }
    // A field that declares the xsi prefix afresh: its xsi:nil is still recognized.
    check(
        &one(
            r#"<sf:Phone xmlns:i="http://www.w3.org/2001/XMLSchema-instance" i:nil="true"/><sf:Name>Acme</sf:Name>"#,
        ),
        &format!("{ONE_HEAD}\n04lxx000000CaShAAK Account Name=\"Acme\""),
    );
    // The declaration may come after the attribute it binds, and xsi:nil may come after more
    // prefixed attributes than the parser keeps aside in its one pass over a tag.
    check(
        &one(
            r#"<sf:Phone i:nil="true" xmlns:i="http://www.w3.org/2001/XMLSchema-instance"/><sf:Fax a:p="1" a:q="2" a:r="3" a:s="4" a:t="5" xsi:nil="true" xmlns:a="urn:a"/><sf:Name a:p="1" a:q="2" a:r="3" a:s="4" a:t="5" xmlns:a="urn:a">Acme</sf:Name>"#,
        ),
        &format!("{ONE_HEAD}\n04lxx000000CaShAAK Account Name=\"Acme\""),
    );
    // A field with content that declares the xsi prefix: the declaration ends with that field's
    // end tag, so `i:nil` on the next field is in no known namespace, and its value is kept.
    check(
        &one(
            r#"<sf:Phone xmlns:i="http://www.w3.org/2001/XMLSchema-instance">555</sf:Phone><sf:Name i:nil="true">Acme</sf:Name>"#,
        ),
        &format!("{ONE_HEAD}\n04lxx000000CaShAAK Account Phone=\"555\" Name=\"Acme\""),
    );
    // An attribute written twice is malformed, whether or not the parser looks at it.
    let got = render(soap::parse(&one(
        r#"<sf:Name a:p="1" a:p="2" xmlns:a="urn:a">Acme</sf:Name>"#,
    )));
    assert!(got.starts_with("error[malformed_xml]"), "{got}");
    // The prefix declared on that field is gone at the next one: `i:nil` there is in no known
    // namespace, so it is not xsi:nil, and the value is kept.
    check(
        &one(
            r#"<sf:Phone xmlns:i="http://www.w3.org/2001/XMLSchema-instance" i:nil="true"/><sf:Name i:nil="true">Acme</sf:Name>"#,
        ),
        &format!("{ONE_HEAD}\n04lxx000000CaShAAK Account Name=\"Acme\""),
    );
}

#[test]
fn nil_and_omitted_fields_and_deleted_records() {
    check(
        &one(r#"<sf:Id>001xx000003DGb4AAG</sf:Id><sf:Phone xsi:nil="true"/><sf:Name>X</sf:Name>"#),
        &format!("{ONE_HEAD}\n04lxx000000CaShAAK Account Id=\"001xx000003DGb4AAG\" Name=\"X\""),
    );
    // A deleted record's notification may carry an sObject with no fields.
    let deleted = envelope(&format!(
        r#"{HEAD}<Notification><Id>04lxx000000CaShAAK</Id><sObject xsi:type="sf:Account" xmlns:sf="urn:sobject.enterprise.soap.sforce.com"/></Notification>"#
    ));
    check(&deleted, &format!("{ONE_HEAD}\n04lxx000000CaShAAK Account"));
    // Whitespace inside a value is kept as sent.
    check(
        &one("<sf:Description>  two\n lines </sf:Description>"),
        &format!("{ONE_HEAD}\n04lxx000000CaShAAK Account Description=\"  two\\n lines \""),
    );
}

/// What a field's value is, however its content is split up, and how a field that breaks off
/// is refused.
#[test]
fn field_content() {
    let cases = [
        // Comments and processing instructions inside a value are dropped; the text around
        // them is joined.
        ("<sf:Name>Ac<!-- note -->me</sf:Name>", r#"Name="Acme""#),
        ("<sf:Name>a<?pi x?>b</sf:Name>", r#"Name="ab""#),
        (
            "<sf:Name><![CDATA[<a>]]>&amp;b</sf:Name>",
            r#"Name="<a>&b""#,
        ),
        ("<sf:Name>&#65;&#x42;</sf:Name>", r#"Name="AB""#),
        // Line ends are normalized as XML 1.0 says.
        (
            "<sf:Description>one\r\ntwo\rthree</sf:Description>",
            r#"Description="one\ntwo\nthree""#,
        ),
        // An empty field is kept, whichever way it is written.
        ("<sf:Name/><sf:Site></sf:Site>", r#"Name="" Site="""#),
        // An attribute that is not xsi:nil changes nothing.
        (r#"<sf:Name lang="en">X</sf:Name>"#, r#"Name="X""#),
        (r#"<sf:Name lang="en"/>"#, r#"Name="""#),
        // A field without a prefix, and whitespace and comments between fields.
        (
            "\n <Name>X</Name> <!-- c -->\n <sf:Site>Y</sf:Site>\n",
            r#"Name="X" Site="Y""#,
        ),
    ];
    for (fields, expected) in cases {
        check(
            &one(fields),
            &format!("{ONE_HEAD}\n04lxx000000CaShAAK Account {expected}"),
        );
    }
    let refused = [
        (
            "<sf:Name>A</sf:Name>stray",
            "error[bad_notification]: Notification #1: text is not allowed in <sObject>",
        ),
        ("<sf:Name>A</sf:Nome>", "error[malformed_xml]"),
        ("<sf:Name>&bogus;</sf:Name>", "error[entity]"),
        ("<sf:Name>&#0;</sf:Name>", "error[entity]"),
    ];
    for (fields, expected) in refused {
        let got = render(soap::parse(&one(fields)));
        assert!(
            got.starts_with(expected),
            "{fields}\n got: {got}\nwant: {expected}"
        );
    }
    // A body that breaks off inside a field, or between fields, names what it ended in.
    let open = format!(
        r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><s:Body><notifications xmlns="http://soap.sforce.com/2005/09/outbound">{HEAD}<Notification><Id>04lxx000000CaShAAK</Id><sObject xsi:type="sf:Account" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">"#
    );
    for (rest, inside) in [
        ("<sf:Name>Acm", "Name"),
        ("<sf:Name>Acme &amp; Co", "Name"),
        ("<sf:Name>Acme</sf:Name>", "sObject"),
        (r#"<sf:Name lang="en">Acm"#, "Name"),
    ] {
        check(
            format!("{open}{rest}").as_bytes(),
            &format!(
                "error[truncated]: the body ended before </{inside}>: the message is truncated"
            ),
        );
    }
}

#[test]
fn notification_count_bounds() {
    let hundred: String = (0..100)
        .map(|i| notification(&format!("04lxx000000C{i:03}AAK"), ""))
        .collect();
    let body = envelope(&format!("{HEAD}{hundred}"));
    let parsed = soap::parse(&body).unwrap();
    assert_eq!(parsed.notifications.len(), 100);
    let more = format!("{HEAD}{hundred}{}", notification("04lxx000000CXXXAAK", ""));
    check(
        &envelope(&more),
        "error[too_many_notifications]: the message carries more than 100 notifications",
    );
    check(
        &envelope(HEAD),
        "error[missing_element]: <notifications> has no <Notification>; a message carries 1 to 100",
    );
}

/// The parser keeps its namespace resolver between the messages of a thread (for its buffers'
/// room). A prefix that one message declared is unknown to the next, whether the first was
/// accepted or refused halfway through its declarations' scope.
#[test]
fn a_prefix_declared_in_one_message_is_unknown_in_the_next() {
    let message = |declare: &str, rest: &str| {
        format!(
            r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"{declare}><s:Body><n:notifications><n:OrganizationId>00Dxx0000001gPFEAY</n:OrganizationId><n:ActionId>04kxx00000000blCAA</n:ActionId><n:Notification><n:Id>04lxx000000CaShAAK</n:Id><n:sObject xsi:type="sf:Account" xmlns:sf="urn:sobject.enterprise.soap.sforce.com"><sf:Name>A</sf:Name></n:sObject></n:Notification>{rest}"#
        )
        .into_bytes()
    };
    let declares = r#" xmlns:n="http://soap.sforce.com/2005/09/outbound""#;
    let end = "</n:notifications></s:Body></s:Envelope>";
    let unknown = "error[unexpected_element]: expected <notifications> in http://soap.sforce.com/2005/09/outbound, found <notifications> in another namespace";
    for (first, accepted) in [
        (message(declares, end), true),
        (message(declares, "<n:Notification>"), false),
    ] {
        assert_eq!(soap::parse(&first).is_ok(), accepted);
        check(&message("", end), unknown);
    }
    check(
        &message(declares, end),
        "org=00Dxx0000001gPFEAY action=04kxx00000000blCAA session=- enterprise=- partner=-\n04lxx000000CaShAAK Account Name=\"A\"",
    );
}

#[test]
fn hostile_and_malformed_bodies() {
    let cases: &[(&[u8], &str)] = &[
        (b"", "error[empty_body]: the body is empty; expected a SOAP 1.1 envelope"),
        (b"   \n", "error[empty_body]: the body is empty; expected a SOAP 1.1 envelope"),
        (b"hello", "error[unexpected_element]: text is not allowed before the SOAP envelope"),
        (b"<a>\xff</a>", "error[invalid_utf8]: the body is not valid UTF-8 (first bad byte at offset 3)"),
        (
            br#"<?xml version="1.0"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><foo>&xxe;</foo>"#,
            "error[dtd]: a DTD (<!DOCTYPE>) is not allowed in a SOAP message",
        ),
        (
            br#"<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]><lolz>&lol2;</lolz>"#,
            "error[dtd]: a DTD (<!DOCTYPE>) is not allowed in a SOAP message",
        ),
        (
            br#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body/></env:Envelope>"#,
            "error[soap12]: a SOAP 1.2 envelope is not supported; Outbound Messages use SOAP 1.1 (http://schemas.xmlsoap.org/soap/envelope/)",
        ),
        (
            br#"<Envelope><Body/></Envelope>"#,
            "error[unexpected_element]: expected a SOAP 1.1 <Envelope>, found <Envelope> in no namespace",
        ),
        (
            br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><notifications xmlns="http://soap.sforce.com/2005/09/outbound-WRONG"/></s:Body></s:Envelope>"#,
            "error[unexpected_element]: expected <notifications> in http://soap.sforce.com/2005/09/outbound, found <notifications> in another namespace",
        ),
        (
            br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><n:notifications xmlns:n="http://soap.sforce.com/2005/09/outbound"><n:OrganizationId>00Dxx0000001gPF"#,
            "error[truncated]: the body ended before </OrganizationId>: the message is truncated",
        ),
        (
            br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body></s:Envelope>"#,
            "error[malformed_xml]",
        ),
    ];
    for (input, expected) in cases {
        let got = render(soap::parse(input));
        assert!(
            got.starts_with(expected),
            "input {:?}\n got: {got}\nwant: {expected}",
            String::from_utf8_lossy(input)
        );
    }

    check(
        &one("<sf:Name>&foo;</sf:Name>"),
        "error[entity]: entity '&foo;' is not allowed: only the five predefined XML entities and character references are",
    );
    check(
        &one("<sf:Address><sf:City>Paris</sf:City></sf:Address>"),
        "error[bad_notification]: Notification #1: <Address> must contain text only, but has a child element",
    );
    check(
        &envelope(&HEAD.replace("<OrganizationId>00Dxx0000001gPFEAY</OrganizationId>", "")),
        "error[missing_element]: <notifications> has no <OrganizationId>",
    );
    check(
        &envelope(&HEAD.replace("00Dxx0000001gPFEAY", "00Dxx0000001gPFAAA")),
        "error[bad_organization_id]: OrganizationId: '00Dxx0000001gPFAAA' is not a valid 18-character Salesforce ID: its checksum suffix should be 'EAY'",
    );
    check(
        &envelope(&format!(
            "{HEAD}<Notification><sObject xsi:type=\"sf:A\" xmlns:sf=\"urn:sobject.enterprise.soap.sforce.com\"/></Notification>"
        )),
        "error[bad_notification]: Notification #1: it has no <Id>",
    );
    check(
        &envelope(&format!("{HEAD}{}", notification("not-an-id", ""))),
        "error[bad_notification]: Notification #1: <Id> 'not-an-id' is not a Salesforce ID",
    );
}

#[test]
fn nesting_is_bounded() {
    // 10,000 levels inside a header: refused at the depth limit, not by recursion.
    let deep = format!(
        r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header>{}{}</s:Header></s:Envelope>"#,
        "<a>".repeat(10_000),
        "</a>".repeat(10_000)
    );
    check(
        deep.as_bytes(),
        "error[too_deep]: elements are nested deeper than 32 levels",
    );
    // The boundary: Envelope and Header are levels 1 and 2, so 30 more reach 32 (allowed; the
    // envelope is then refused for having no Body) and 31 more reach 33 (refused).
    let nested = |n: usize| {
        format!(
            r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header>{}{}</s:Header></s:Envelope>"#,
            "<a>".repeat(n),
            "</a>".repeat(n)
        )
    };
    check(
        nested(30).as_bytes(),
        "error[unexpected_element]: expected a SOAP <Body>, found none",
    );
    check(
        nested(31).as_bytes(),
        "error[too_deep]: elements are nested deeper than 32 levels",
    );
}

#[test]
fn ack_and_fault_documents() {
    assert_eq!(
        soap::ACK,
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"#
    );
    let fault = soap::fault(soap::FaultCode::Client, "org <A> & \"B\"");
    assert!(
        fault.contains("<faultcode>soapenv:Client</faultcode>"),
        "{fault}"
    );
    assert!(
        fault.contains("<faultstring>org &lt;A&gt; &amp; &quot;B&quot;</faultstring>"),
        "{fault}"
    );
    let server = soap::fault(soap::FaultCode::Server, "x");
    assert!(server.contains("<faultcode>soapenv:Server</faultcode>"));
}
