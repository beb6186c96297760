//! What one REST change costs against the number of rules in the file: the API's
//! PUT/POST and DELETE call [`RuleStore::upsert`] and [`RuleStore::remove`], which return
//! once the file is written atomically and fsynced and the new policy is in force.
//!
//! The file lives in a temporary directory (`TMPDIR`; point it at a tmpfs such as
//! `/dev/shm` to leave out the disk's fsync latency).

use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use mptcp_policy::{Destination, Rule};
use mptcp_socks::PolicyHandle;
use mptcp_socksd::RuleStore;

/// A rule file with `n` seed-form rules for distinct addresses (n < 2^24).
fn rule_file(n: u32) -> String {
    let mut text = String::with_capacity(n as usize * 32);
    for i in 0..n {
        let [_, b, c, d] = i.to_be_bytes();
        let path_manager = if i % 3 == 0 { "fullmesh" } else { "default" };
        text.push_str(&format!("10.{b}.{c}.{d},1,default,{path_manager},\n"));
    }
    text.push_str(".\n");
    text
}

fn rule(line: &str) -> Rule {
    line.parse().expect("rule")
}

fn open(dir: &Path, n: u32) -> RuleStore {
    let path = dir.join("rules");
    std::fs::write(&path, rule_file(n)).expect("write rule file");
    let store = RuleStore::open(&path, PolicyHandle::default()).expect("open store");
    assert_eq!(store.policy().len(), n as usize);
    store
}

fn rest_write(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("rule_store");
    group.sample_size(20);
    for n in [1_000u32, 10_000, 100_000] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), n);
        // A rule in the middle of the file, switched between two settings: every call
        // changes the file.
        let [_, b, c, d] = (n / 2).to_be_bytes();
        let replaced = [
            rule(&format!("10.{b}.{c}.{d},0,default,default,")),
            rule(&format!("10.{b}.{c}.{d},1,default,fullmesh,")),
        ];
        let mut turn = 0;
        group.bench_with_input(BenchmarkId::new("replace_one", n), &n, |bench, _| {
            bench.iter(|| {
                turn ^= 1;
                let old = runtime
                    .block_on(store.upsert(replaced[turn].clone()))
                    .expect("replace");
                black_box(old).expect("a rule was replaced")
            })
        });

        // A new rule, then its removal: two writes, the file back as it was.
        let added = rule("192.0.2.1,1,default,fullmesh,");
        let destination: Destination = added.destination.clone();
        group.bench_with_input(BenchmarkId::new("add_then_delete", n), &n, |bench, _| {
            bench.iter(|| {
                runtime
                    .block_on(async {
                        let before = store.upsert(added.clone()).await?;
                        assert!(before.is_none());
                        store.remove(&destination).await
                    })
                    .expect("add and delete")
                    .expect("a rule was removed")
            })
        });
        assert_eq!(store.policy().len(), n as usize);
    }
    group.finish();
}

criterion_group!(benches, rest_write);
criterion_main!(benches);
