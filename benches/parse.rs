//! SOAP parse throughput for messages of 1, 10 and 100 notifications (`soap_parse`); the same
//! plus turning each notification into what the store takes (`soap_ingest`: the request path's
//! CPU before the writer); and quick-xml's own reader over the same messages with nothing else
//! (`quick_xml_floor`), the least any parser built on it can cost. The parser uses the plain
//! `Reader` (namespace scopes are kept only for tags with attributes), so the floor does too.
//! `roxmltree_document` is another maintained safe-Rust parser, with its own tokenizer, that
//! resolves namespaces and by default refuses a DTD: its document, built and walked once, over
//! the same messages. It shows whether a well-kept parser not built on quick-xml's reader would
//! be faster than ours.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use obm_gate::store::NewNotification;
use quick_xml::events::Event;
use quick_xml::reader::Reader;
use std::hint::black_box;

fn message(notifications: usize) -> Vec<u8> {
    let body: String = (0..notifications)
        .map(|i| {
            format!(
                r#"<Notification><Id>04l{i:015}</Id><sObject xsi:type="sf:Contact" xmlns:sf="urn:sobject.enterprise.soap.sforce.com"><sf:Id>003xx000004TmiQAAS</sf:Id><sf:CreatedDate>2026-08-26T23:25:15.000Z</sf:CreatedDate><sf:Email>someone@example.com</sf:Email><sf:FirstName>Jeraldine</sf:FirstName><sf:LastModifiedDate>2026-09-09T00:41:57.000Z</sf:LastModifiedDate><sf:LastName>Black &amp; White</sf:LastName><sf:Title>Supreme Being</sf:Title></sObject></Notification>"#
            )
        })
        .collect();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>00Dxx0000001gPFEAY</OrganizationId><ActionId>04kxx00000000blBAA</ActionId><SessionId xsi:nil="true"/><EnterpriseUrl>https://x.my.salesforce.com/services/Soap/c/60.0/00Dxx0000001gPF</EnterpriseUrl><PartnerUrl>https://x.my.salesforce.com/services/Soap/u/60.0/00Dxx0000001gPF</PartnerUrl>{body}</notifications></soapenv:Body></soapenv:Envelope>"#
    )
    .into_bytes()
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("soap_parse");
    for n in [1, 10, 100] {
        let body = message(n);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("{n}_notifications_{}B", body.len()), |b| {
            b.iter(|| {
                obm_gate::soap::parse(black_box(&body))
                    .unwrap()
                    .notifications
                    .len()
            })
        });
    }
    group.finish();
}

fn ingest(c: &mut Criterion) {
    let mut group = c.benchmark_group("soap_ingest");
    for n in [1, 100] {
        let body = message(n);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("{n}_notifications_{}B", body.len()), |b| {
            b.iter(|| {
                let message = obm_gate::soap::parse(black_box(&body)).unwrap();
                let stored: Vec<NewNotification> = message
                    .notifications
                    .iter()
                    .map(|n| NewNotification::new(&n.id, &n.object_type, &n.fields))
                    .collect();
                stored.len()
            })
        });
    }
    group.finish();
}

/// A group over the 1- and 100-notification messages as text, each run of `read` on one.
fn over_text(c: &mut Criterion, name: &str, read: impl Fn(&str) -> usize) {
    let mut group = c.benchmark_group(name);
    for n in [1, 100] {
        let body = message(n);
        let text = std::str::from_utf8(&body).unwrap();
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("{n}_notifications_{}B", body.len()), |b| {
            b.iter(|| read(black_box(text)))
        });
    }
    group.finish();
}

fn floor(c: &mut Criterion) {
    over_text(c, "quick_xml_floor", |text| {
        let mut reader = Reader::from_str(text);
        reader.config_mut().check_end_names = true;
        let mut events = 0;
        while !matches!(reader.read_event().unwrap(), Event::Eof) {
            events += 1;
        }
        events
    });
}

fn roxmltree(c: &mut Criterion) {
    over_text(c, "roxmltree_document", |text| {
        roxmltree::Document::parse(text)
            .unwrap()
            .descendants()
            .count()
    });
}

criterion_group!(benches, parse, ingest, floor, roxmltree);
criterion_main!(benches);
