//! CPU cost of the clone handshake (protocol version 2, SPAKE2 on Ed25519), per side.
//!
//! `cargo bench --bench handshake`
//!
//! What a peer that has not authenticated can make the donor spend: `donor answer` is the
//! donor's whole work for one HELLO (its SPAKE2 message, the key, both confirmations), and
//! the gate bounds how many run at once. `receiver` is the receiver's side (start and finish).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use xbagent::clone::protocol::{DonorPake, ReceiverPake, Token};

fn handshake(c: &mut Criterion) {
    let token = Token::new(b"5f2c8e1a9b7d4c3e6a0f1b2d3c4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6a");
    let hello = ReceiverPake::start(Some(&token)).hello().clone();
    c.bench_function("donor answer (one HELLO)", |b| {
        b.iter(|| DonorPake::answer(Some(&token), black_box(&hello)).map(|d| d.challenge))
    });
    let reply = DonorPake::answer(Some(&token), &hello)
        .map(|d| d.challenge)
        .expect("a valid HELLO");
    c.bench_function("receiver start and finish", |b| {
        b.iter(|| {
            // A fresh receiver each time; the finish fails its confirmation (other HELLO),
            // which costs the same as a success.
            ReceiverPake::start(Some(&token)).finish(black_box(&reply))
        })
    });
}

criterion_group!(benches, handshake);
criterion_main!(benches);
