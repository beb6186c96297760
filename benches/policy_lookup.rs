//! Lookup cost against the number of rules: a connection must not pay for a scan of
//! the rule file (the original C proxy re-read and scanned it on every connection).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use mptcp_policy::Policy;

/// A rule file with `n` rules of every kind: addresses, prefixes of several lengths,
/// names and wildcards.
fn rule_file(n: u32) -> String {
    let mut text = String::new();
    for i in 0..n {
        // The k-th rule of its family: each family is injective in k (for n < 240 000),
        // so no duplicates.
        let [_, b, c, d] = (i / 5).to_be_bytes();
        let line = match i % 5 {
            0 => format!("10.{b}.{c}.{d},1,default,default,\n"),
            1 => format!("11.{c}.{d}.0/24,0,default,default,\n"),
            2 => format!("{}.{d}.0.0/16,1,default,fullmesh,\n", 64 + c),
            3 => format!("host{i}.example.com,1,roundrobin,default,\n"),
            _ => format!("*.zone{i}.example.net,0,default,default,\n"),
        };
        text.push_str(&line);
    }
    text.push_str("*,1,default,default,\n.\n");
    text
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy_lookup");
    for n in [10u32, 1_000, 10_000, 100_000] {
        let policy: Policy = rule_file(n).parse().expect("generated file parses");
        let miss = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 77));
        let exact = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        group.bench_with_input(
            BenchmarkId::new("address_miss_to_catch_all", n),
            &n,
            |b, _| b.iter(|| black_box(policy.lookup(None, black_box(miss))).settings),
        );
        group.bench_with_input(BenchmarkId::new("address_exact", n), &n, |b, _| {
            b.iter(|| black_box(policy.lookup(None, black_box(exact))).settings)
        });
        group.bench_with_input(BenchmarkId::new("deep_name_to_wildcard", n), &n, |b, _| {
            let name = format!("a.b.c.zone{}.example.net", n.saturating_sub(1) / 5 * 5 + 4);
            b.iter(|| black_box(policy.lookup(Some(black_box(&name)), miss)).settings)
        });
    }
    group.finish();
    c.bench_function("parse_10000_rules", |b| {
        let text = rule_file(10_000);
        b.iter(|| black_box(text.parse::<Policy>()).map(|p| p.len()))
    });
}

criterion_group!(benches, lookup);
criterion_main!(benches);
