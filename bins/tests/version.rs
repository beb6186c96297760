//! Each binary names itself in `--version`, not the package that builds it.

use std::process::Command;

#[test]
fn each_binary_prints_its_own_name_and_version() {
    for (binary, name) in [
        (env!("CARGO_BIN_EXE_mptcp-socksd"), "mptcp-socksd"),
        (env!("CARGO_BIN_EXE_mptcpctl"), "mptcpctl"),
    ] {
        let out = Command::new(binary)
            .arg("--version")
            .output()
            .expect("run --version");
        assert!(out.status.success(), "{name} --version failed");
        let printed = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            printed.trim(),
            format!("{name} {}", env!("CARGO_PKG_VERSION")),
            "{name}"
        );
    }
}
