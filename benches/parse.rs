//! SOAP parse throughput for messages of 1, 10 and 100 notifications.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
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

criterion_group!(benches, parse);
criterion_main!(benches);
