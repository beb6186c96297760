use super::*;
use crate::rule::{PathManager, Scheduler};

#[test]
fn legacy_kernel_gets_the_seed_socket_options() {
    let on = Settings {
        mptcp: true,
        scheduler: Scheduler::RoundRobin,
        path_manager: PathManager::Fullmesh,
    };
    assert_eq!(
        legacy_options(&on),
        vec![
            (libc::SOL_TCP, 42, OptValue::Int(1)),
            (libc::SOL_TCP, 43, OptValue::Text("roundrobin")),
            (libc::SOL_TCP, 44, OptValue::Text("fullmesh")),
        ]
    );
    let off = Settings { mptcp: false, ..on };
    assert_eq!(
        legacy_options(&off),
        vec![(libc::SOL_TCP, 42, OptValue::Int(0))]
    );
}
