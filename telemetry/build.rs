//! Records the git commit for `taskboard_build_info` (`GIT_SHA` in the environment wins).
fn main() {
    let sha = std::env::var("GIT_SHA").ok().or_else(|| {
        std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
    });
    println!(
        "cargo:rustc-env=TASKBOARD_GIT_SHA={}",
        sha.unwrap_or_else(|| "unknown".into())
    );
    println!("cargo:rerun-if-env-changed=GIT_SHA");
}
