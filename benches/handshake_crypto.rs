//! The machine's limit for full mutual-TLS handshakes: the public-key work the server side of
//! one TLS 1.3 handshake needs with an ECDSA P-256 server certificate and an RSA-2048 client
//! certificate (Salesforce's): one X25519 key pair and agreement, one ECDSA P-256 signature
//! (CertificateVerify), one RSA-2048 PSS verification (the client's CertificateVerify).
//! `ceiling = 1 / (sum of the four)` handshakes per second per core; `bench/compare.sh` reports
//! scenario (a) as a share of it. Same library (aws-lc) rustls uses here.

use std::hint::black_box;

use aws_lc_rs::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    self, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair, RSA_PSS_SHA256, RsaKeyPair,
};
use criterion::{Criterion, criterion_group, criterion_main};

fn handshake_crypto(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let transcript = [7u8; 32 + 64 + 34]; // a TLS 1.3 CertificateVerify input
    let mut g = c.benchmark_group("handshake_crypto");

    let peer = EphemeralPrivateKey::generate(&X25519, &rng).unwrap();
    let peer_public = peer.compute_public_key().unwrap();
    g.bench_function("x25519_keygen_and_agree", |b| {
        b.iter(|| {
            let mine = EphemeralPrivateKey::generate(&X25519, &rng).unwrap();
            let _public = mine.compute_public_key().unwrap();
            agreement::agree_ephemeral(
                mine,
                UnparsedPublicKey::new(&X25519, black_box(peer_public.as_ref())),
                (),
                |k| Ok(k.len()),
            )
            .unwrap()
        })
    });

    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let ecdsa = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
    g.bench_function("ecdsa_p256_sign", |b| {
        b.iter(|| ecdsa.sign(&rng, black_box(&transcript)).unwrap())
    });

    let rsa = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
    let mut sig = vec![0; rsa.public_modulus_len()];
    rsa.sign(&RSA_PSS_SHA256, &rng, &transcript, &mut sig)
        .unwrap();
    let public = signature::UnparsedPublicKey::new(
        &signature::RSA_PSS_2048_8192_SHA256,
        rsa.public_key().as_ref().to_vec(),
    );
    g.bench_function("rsa2048_pss_verify", |b| {
        b.iter(|| public.verify(black_box(&transcript), &sig).unwrap())
    });
    // Not the server's: what every *client* pays per full handshake (its CertificateVerify).
    // On a machine shared by client and server it bounds scenario (a) long before the server.
    g.bench_function("client_rsa2048_pss_sign", |b| {
        b.iter(|| {
            rsa.sign(&RSA_PSS_SHA256, &rng, black_box(&transcript), &mut sig)
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, handshake_crypto);
criterion_main!(benches);
