//! Loading a registry of 100,000 certificates from disk, and looking one up in it.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use obm_gate::ids::Fingerprint;
use obm_gate::registry::Snapshot;
use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};

const CERTS: usize = 100_000;
const ORGS: usize = 10_000;

/// Writes `CERTS` distinct certificates spread over `ORGS` org directories. One key signs them
/// all: the registry's cost is reading, hashing and parsing, which does not depend on the key.
fn populate(dir: &std::path::Path) -> Fingerprint {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut last = None;
    for i in 0..CERTS {
        let org = format!("00D{:012}", i % ORGS); // 15 characters
        let org_dir = dir.join(&org);
        std::fs::create_dir_all(&org_dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("client {i}"));
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(org_dir.join(format!("c{i}.pem")), cert.pem()).unwrap();
        last = Some(Fingerprint::of_der(cert.der()));
    }
    last.unwrap()
}

fn registry(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let probe = populate(dir.path());
    let mut group = c.benchmark_group("registry");
    group.sample_size(10);
    group.bench_function("load_100000_certificates", |b| {
        b.iter(|| {
            let s = Snapshot::read_dir(dir.path()).unwrap();
            assert_eq!(s.len(), CERTS);
            s
        })
    });
    group.finish();
    let snapshot = Snapshot::read_dir(dir.path()).unwrap();
    c.bench_function("registry/lookup_in_100000", |b| {
        b.iter(|| snapshot.get(black_box(&probe)).is_some())
    });
}

criterion_group!(benches, registry);
criterion_main!(benches);
