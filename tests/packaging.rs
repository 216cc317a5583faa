//! Shipping fieldsync: the static binary, portable mode on a USB stick, the Debian package and
//! its systemd unit, backup/restore, `doctor` and `--version`, checked the way an operator
//! would: by running the real binary, dpkg and systemd-analyze.
//!
//! `.cargo/config.toml` makes every build static, so the debug binary under test has the same
//! linking as the release one. Set FIELDSYNC_RELEASE_BIN to also check a release binary (size
//! budget included). Parts that need root, dpkg or systemd-analyze are skipped with a message
//! on a developer machine and fail in CI (where `CI` is set).

mod common;

use common::{bin, parse_lines, run, Background, Instance, Output};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The release binary must fit on the smallest sticks teams carry and download over bad links.
const SIZE_BUDGET: u64 = 15 * 1024 * 1024;
/// How long an agent may take to start listening on a busy machine.
const START_LIMIT: Duration = Duration::from_secs(60);
/// The agent must exit this fast on SIGTERM: the systemd unit's `TimeoutStopSec=15`, after
/// which systemd kills it. Not less: the agent's own shutdown steps are bounded at 1 s (telling
/// peers it leaves) + 3 s (in-flight sync requests) + 2 s (mDNS goodbye) before its flush.
const STOP_LIMIT: Duration = Duration::from_secs(15);

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Skips a part of a test on a developer machine that lacks what it needs; fails it in CI.
#[track_caller]
fn unavailable(what: &str) {
    assert!(!in_ci(), "CI must be able to run this: {what}");
    eprintln!("SKIPPED (not in CI): {what}");
}

/// systemd-analyze, if installed. It comes with systemd, which is not worth installing just to
/// lint a unit file, so its checks are skipped (with a message) where it is missing, CI too.
fn systemd_analyze() -> bool {
    let there = have("systemd-analyze");
    if !there {
        eprintln!("SKIPPED: systemd-analyze is not installed (package systemd)");
    }
    there
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Reads the ELF program headers: a static executable has no interpreter and needs no shared
/// library. Returns what makes it dynamic, if anything.
fn dynamic_parts(path: &Path) -> Vec<String> {
    let b = std::fs::read(path).expect("read the binary");
    assert_eq!(&b[..4], b"\x7fELF", "{} is not an ELF file", path.display());
    assert_eq!(b[4], 2, "64-bit ELF expected");
    let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    let mut found = Vec::new();
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let (kind, offset, size) = (u32_at(ph), u64_at(ph + 8), u64_at(ph + 32));
        const PT_DYNAMIC: u32 = 2;
        const PT_INTERP: u32 = 3;
        if kind == PT_INTERP {
            let interp = String::from_utf8_lossy(&b[offset..offset + size]);
            found.push(format!("interpreter {}", interp.trim_end_matches('\0')));
        }
        if kind == PT_DYNAMIC {
            // A static-PIE keeps a dynamic section for its own relocations, but no DT_NEEDED.
            const DT_NEEDED: u64 = 1;
            for e in (offset..offset + size).step_by(16) {
                match u64_at(e) as u64 {
                    0 => break,
                    DT_NEEDED => found.push("a DT_NEEDED shared library".into()),
                    _ => {}
                }
            }
        }
    }
    found
}

#[track_caller]
fn assert_static(path: &Path) {
    let dynamic = dynamic_parts(path);
    assert!(
        dynamic.is_empty(),
        "{} is not static: {dynamic:?}",
        path.display()
    );
    if have("ldd") {
        let o = Command::new("ldd").arg(path).output().expect("ldd runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            text.contains("statically linked") || text.contains("not a dynamic executable"),
            "ldd {}: {text}",
            path.display()
        );
    }
}

/// `--version` says version, commit and protocol.
#[track_caller]
fn check_version(out: &Output) {
    let text = out.text();
    let expected = format!("fieldsync {} (commit ", fieldsync::build_info::VERSION);
    assert!(text.starts_with(&expected), "--version printed {text:?}");
    assert!(
        text.ends_with(&format!(
            ", protocol {})",
            fieldsync::protocol::PROTOCOL_VERSION
        )),
        "--version printed {text:?}"
    );
    let head = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short",
            "HEAD",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let commit = head.unwrap_or_else(|| "unknown".into());
    assert!(
        text.contains(&format!("(commit {commit},")),
        "--version printed {text:?}, HEAD is {commit}"
    );
}

/// init, put, get and the version from an empty directory with an empty environment: no HOME,
/// no PATH, nothing but the binary.
fn bare_cycle(exe: &Path) {
    let empty = tempfile::tempdir().expect("temp dir");
    let cmd = |args: &[&str]| {
        let mut c = Command::new(exe);
        c.env_clear().current_dir(empty.path()).args(args);
        c
    };
    check_version(&run(cmd(&["--version"]), None).ok());
    // Without HOME there is no default data directory: a clear refusal, not a crash.
    run(cmd(&["status"]), None).fails(2, &["no data directory"]);
    let me = run(cmd(&["--data-dir", "data", "init", "--name", "bare"]), None).ok();
    assert_eq!(me.id().len(), 36, "init prints the instance id: {me:?}");
    let id = run(
        cmd(&[
            "--data-dir",
            "data",
            "put",
            "person",
            r#"{"name":"Amina","age":34}"#,
        ]),
        None,
    )
    .ok();
    let got = run(
        cmd(&["--data-dir", "data", "get", "person", &id.id()]),
        None,
    )
    .ok()
    .json();
    assert_eq!(got["fields"]["name"], "Amina");
    assert_eq!(got["fields"]["age"], 34);
    assert!(empty.path().join("data/db").is_dir());
}

#[test]
fn the_binary_is_static_and_works_from_an_empty_environment() {
    assert_static(&bin());
    bare_cycle(&bin());
    match std::env::var_os("FIELDSYNC_RELEASE_BIN") {
        Some(release) => {
            let release = PathBuf::from(release);
            assert_static(&release);
            let size = std::fs::metadata(&release).expect("release binary").len();
            assert!(
                size <= SIZE_BUDGET,
                "release binary is {size} bytes, budget {SIZE_BUDGET}"
            );
            bare_cycle(&release);
        }
        None => eprintln!("FIELDSYNC_RELEASE_BIN not set: checked the debug binary only"),
    }
}

fn send_signal(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

/// Waits for the agent's "listening" line and returns its sync address.
#[track_caller]
fn listening(agent: &Background) -> String {
    let line = agent
        .wait_for_line(START_LIMIT, |l| l.contains("\"listening\""))
        .expect("the agent starts listening");
    let v: Value = serde_json::from_str(&line).expect("JSON line");
    v["listen"].as_str().expect("listen address").to_string()
}

/// Stops an agent with SIGTERM and checks it exits 0 in time.
#[track_caller]
fn stop_agent(agent: Background) {
    send_signal(agent.id(), "TERM");
    let started = Instant::now();
    let (code, stderr) = agent
        .wait(STOP_LIMIT)
        .unwrap_or_else(|| panic!("the agent did not exit within {STOP_LIMIT:?} of SIGTERM"));
    assert_eq!(code, 0, "exit code after SIGTERM; stderr: {stderr}");
    assert!(started.elapsed() <= STOP_LIMIT);
}

fn entries(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Every place that tells how to join the system service removes the copy of the credential
/// it had the admin put into /var/lib/fieldsync, once `init --mesh` succeeded.
#[test]
fn the_join_steps_remove_the_copied_credential() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in [
        "README.md",
        "packaging/deb/postinst",
        "packaging/systemd/fieldsync.service",
    ] {
        let text = std::fs::read_to_string(root.join(f)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.contains("init --mesh /var/lib/fieldsync/join.fsmesh"))
            .unwrap_or_else(|| panic!("{f} has no join step"));
        assert!(
            lines[at..(at + 2).min(lines.len())]
                .iter()
                .any(|l| l.contains("rm /var/lib/fieldsync/join.fsmesh")),
            "{f}: the join step leaves join.fsmesh behind:\n{}",
            lines[at]
        );
    }
}

/// The stick laid out as README says (`cp -r` of packaging/usb, which leaves `fieldsync-data/`
/// 0755): fieldsync makes the folder private on first use, and `doctor` passes every check
/// about the stick itself (joining and the network are another matter).
#[test]
fn doctor_passes_on_a_freshly_laid_out_stick() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().expect("temp dir");
    let stick = root.path().join("stick");
    let home = root.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let layout = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/usb");
    let cp = Command::new("cp")
        .arg("-r")
        .arg(&layout)
        .arg(&stick)
        .status()
        .unwrap();
    assert!(cp.success());
    std::fs::set_permissions(
        stick.join("fieldsync-data"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let exe = stick.join("fieldsync");
    if std::fs::hard_link(bin(), &exe).is_err() {
        std::fs::copy(bin(), &exe).unwrap();
    }
    let cmd = |args: &[&str]| {
        let mut c = Command::new(&exe);
        c.env_clear()
            .env("HOME", &home)
            .current_dir(&home)
            .args(args);
        c
    };
    run(cmd(&["init", "--name", "stick7"]), None).ok();
    let mode = std::fs::metadata(stick.join("fieldsync-data"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o700,
        "the data folder is private after first use"
    );
    let doctor = run(cmd(&["doctor"]), None);
    let checks = parse_lines(&doctor.stdout);
    for c in &checks {
        if !["credential", "multicast", "port"].contains(&c["check"].as_str().unwrap_or("")) {
            assert_eq!(c["ok"], true, "doctor on the stick: {c}");
        }
    }
    assert!(
        checks.iter().any(|c| c["check"] == "data_dir_permissions"),
        "{checks:?}"
    );
}

#[test]
fn portable_mode_keeps_everything_on_the_stick() {
    let root = tempfile::tempdir().expect("temp dir");
    let (stick, home, tmp, cwd) = (
        root.path().join("stick"),
        root.path().join("home"),
        root.path().join("tmp"),
        root.path().join("cwd"),
    );
    for d in [&stick, &home, &tmp, &cwd] {
        std::fs::create_dir(d).unwrap();
    }
    // The layout of packaging/usb, with the binary put in.
    let layout = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/usb");
    std::fs::create_dir(stick.join("fieldsync-data")).unwrap();
    for f in ["README-USB.txt", "start.sh", "fieldsync-data/.keep"] {
        std::fs::copy(layout.join(f), stick.join(f)).unwrap();
    }
    let exe = stick.join("fieldsync");
    if std::fs::hard_link(bin(), &exe).is_err() {
        std::fs::copy(bin(), &exe).unwrap();
    }
    let cmd = |args: &[&str]| {
        let mut c = Command::new(&exe);
        c.env_clear()
            .env("HOME", &home)
            .env("TMPDIR", &tmp)
            .current_dir(&cwd)
            .args(args);
        c
    };
    let ok = |args: &[&str]| run(cmd(args), None).ok();

    let id = ok(&["init", "--name", "stick7"]).id();
    let rec = ok(&["put", "person", r#"{"name":"Amina"}"#]).id();
    assert_eq!(
        ok(&["get", "person", &rec]).json()["fields"]["name"],
        "Amina"
    );
    let status = ok(&["status"]).json();
    assert_eq!(status["instance"], id.as_str());
    let data = stick.join("fieldsync-data");
    assert_eq!(
        Path::new(status["data_dir"].as_str().unwrap()),
        data,
        "portable mode uses the folder beside the binary"
    );

    // The agent, started by start.sh, and commands forwarded to it meanwhile.
    let mut start = Command::new("/bin/sh");
    start
        .env_clear()
        .env("HOME", &home)
        .env("TMPDIR", &tmp)
        .current_dir(&cwd)
        .arg(stick.join("start.sh"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--no-discovery",
            "--insecure-plaintext",
        ]);
    let agent = Background::spawn(start);
    listening(&agent);
    assert_eq!(ok(&["status"]).json()["agent"]["running"], true);
    let second = ok(&["put", "person", r#"{"name":"Bea"}"#]).id();
    stop_agent(agent);
    assert_eq!(
        ok(&["get", "person", &second]).json()["fields"]["name"],
        "Bea"
    );

    for (what, dir) in [
        ("HOME", &home),
        ("TMPDIR", &tmp),
        ("working directory", &cwd),
    ] {
        assert!(
            entries(dir).is_empty(),
            "fieldsync wrote into {what}: {:?}",
            entries(dir)
        );
    }
    assert_eq!(
        entries(&stick),
        ["README-USB.txt", "fieldsync", "fieldsync-data", "start.sh"]
            .map(String::from)
            .into(),
        "nothing beside the layout on the stick"
    );
    let inside = entries(&data);
    assert!(inside.contains("db"), "{inside:?}");
    assert!(
        !inside.contains("agent.json"),
        "agent.json removed on stop: {inside:?}"
    );
}

#[test]
fn systemd_unit_is_hardened_and_valid() {
    let unit_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/systemd/fieldsync.service");
    let unit = std::fs::read_to_string(&unit_path).expect("unit file");
    let lines: BTreeSet<&str> = unit.lines().map(str::trim).collect();
    for want in [
        "User=fieldsync",
        "ExecStart=/usr/bin/fieldsync run --data-dir /var/lib/fieldsync",
        "ConditionPathExists=/var/lib/fieldsync/credential.fsmesh",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/fieldsync",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
    ] {
        assert!(lines.contains(want), "the unit lacks {want:?}");
    }
    if !systemd_analyze() {
        return;
    }
    // Verify a copy that starts the binary under test (verify checks that ExecStart exists).
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("fieldsync.service");
    let exec = format!("ExecStart={} run", bin().display());
    let text = unit.replace("ExecStart=/usr/bin/fieldsync run", &exec);
    std::fs::write(&copy, text).unwrap();
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze runs");
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn sh(script: &str) -> Output {
    let mut c = Command::new("sh");
    c.args(["-c", script]);
    run(c, None)
}

#[test]
fn debian_package_builds_installs_and_purges() {
    if !have("dpkg-deb") || !have("dpkg") {
        return unavailable("dpkg and dpkg-deb to build and install the package");
    }
    let out = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut build = Command::new(root.join("packaging/deb/build.sh"));
    // The debug binary is static too; this avoids a 10-minute release build in the test.
    build
        .env("FIELDSYNC_BIN", bin())
        .env("OUT_DIR", out.path())
        .env("DPKG_DEB_COMPRESSOR_TYPE", "gzip")
        .env("DPKG_DEB_COMPRESSOR_LEVEL", "1");
    let built = run(build, None).ok();
    let deb = PathBuf::from(
        built
            .stdout
            .lines()
            .last()
            .expect("build.sh prints the .deb"),
    );
    assert!(deb.is_file(), "{built:?}");
    let info = run(
        {
            let mut c = Command::new("dpkg-deb");
            c.arg("--info").arg(&deb);
            c
        },
        None,
    )
    .ok();
    assert!(
        info.stdout.contains("Package: fieldsync"),
        "{}",
        info.stdout
    );
    // Every command the maintainer scripts run comes from a declared dependency (or from an
    // Essential package: sh, coreutils, libc-bin's getent).
    let depends = info
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends:"))
        .unwrap_or_default()
        .to_string();
    let scripts: String = ["postinst", "prerm", "postrm"]
        .iter()
        .map(|f| std::fs::read_to_string(root.join("packaging/deb").join(f)).unwrap())
        .collect();
    for (command, package) in [
        ("useradd", "passwd"),
        ("adduser", "adduser"),
        ("deb-systemd-helper", "init-system-helpers"),
        ("deb-systemd-invoke", "init-system-helpers"),
    ] {
        if scripts.contains(command) {
            assert!(
                depends.split(',').any(|d| d.trim().starts_with(package)),
                "the scripts run {command} but Depends ({depends}) lacks {package}"
            );
        }
    }
    let contents = run(
        {
            let mut c = Command::new("dpkg-deb");
            c.arg("--contents").arg(&deb);
            c
        },
        None,
    )
    .ok();
    for f in [
        "./usr/bin/fieldsync",
        "./usr/lib/systemd/system/fieldsync.service",
    ] {
        assert!(
            contents.stdout.contains(f),
            "{f} missing: {}",
            contents.stdout
        );
    }

    if !is_root() {
        return unavailable("root, to install the package with dpkg -i");
    }
    if sh("dpkg -s fieldsync").code == 0 && !in_ci() {
        eprintln!("SKIPPED: a fieldsync package is installed on this machine; not replacing it");
        return;
    }
    // Leave the machine as found: the package keeps its user and data on purge, by design.
    let had_user = sh("getent passwd fieldsync").code == 0;
    let had_dir = Path::new("/var/lib/fieldsync").exists();
    let cleanup = || {
        let _ = sh("dpkg --purge fieldsync");
        if !had_dir {
            let _ = std::fs::remove_dir_all("/var/lib/fieldsync");
        }
        if !had_user {
            let _ = sh("userdel fieldsync");
        }
    };
    struct Guard<F: Fn()>(F);
    impl<F: Fn()> Drop for Guard<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    let _guard = Guard(cleanup);

    let installed = sh(&format!("dpkg -i '{}'", deb.display()));
    assert_eq!(installed.code, 0, "dpkg -i: {installed:?}");
    check_version(&sh("/usr/bin/fieldsync --version").ok());
    let user = sh("getent passwd fieldsync").ok();
    assert!(
        user.stdout.contains(":/var/lib/fieldsync:"),
        "{}",
        user.stdout
    );
    let dir = sh("stat -c '%U %a' /var/lib/fieldsync").ok();
    assert_eq!(dir.text(), "fieldsync 700");
    let wants = Path::new("/etc/systemd/system/multi-user.target.wants/fieldsync.service");
    assert!(wants.exists(), "postinst enables the service");
    let unit = "/usr/lib/systemd/system/fieldsync.service";
    if systemd_analyze() {
        let v = sh(&format!("systemd-analyze verify {unit}"));
        assert!(v.code == 0 && v.stderr.is_empty(), "verify: {v:?}");
        // Installed but not joined: the unit's condition keeps it from running.
        let text = std::fs::read_to_string(unit).unwrap();
        let condition = text
            .lines()
            .find(|l| l.starts_with("ConditionPathExists="))
            .expect("condition");
        let before = sh(&format!("systemd-analyze condition '{condition}'"));
        assert_ne!(before.code, 0, "the service must not start before joining");
        if !had_dir {
            // Joining (as the service user, as the unit's comment says) lifts it.
            sh("runuser -u fieldsync -- /usr/bin/fieldsync --data-dir /var/lib/fieldsync init --name pkgtest").ok();
            sh("runuser -u fieldsync -- /usr/bin/fieldsync --data-dir /var/lib/fieldsync mesh create --name pkgtest").ok();
            sh(&format!("systemd-analyze condition '{condition}'")).ok();
            let doctor = sh(
                "runuser -u fieldsync -- /usr/bin/fieldsync --data-dir /var/lib/fieldsync doctor",
            );
            let checks = parse_lines(&doctor.stdout);
            for c in &checks {
                if c["check"] != "multicast" && c["check"] != "port" {
                    assert_eq!(c["ok"], true, "doctor as the service user: {c}");
                }
            }
        }
    }

    sh("dpkg --purge fieldsync").ok();
    assert!(!Path::new("/usr/bin/fieldsync").exists());
    assert!(!Path::new(unit).exists());
    assert!(!wants.exists(), "purge removes the enablement");
    assert!(
        Path::new("/var/lib/fieldsync").exists(),
        "the records survive a purge"
    );
}

/// Writes `batches` op files of `size` puts of new records each, one `apply` per file, until
/// `stop` is set. Every batch is all or nothing, so a consistent snapshot holds a multiple of
/// `size` records.
fn writer(inst: Arc<Instance>, size: usize, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let ops: String = (0..size)
                .map(|i| {
                    format!(
                        "{{\"op\":\"put\",\"table\":\"person\",\"id\":\"{}\",\"fields\":{{\"batch\":{n},\"i\":{i}}}}}\n",
                        uuid::Uuid::new_v4()
                    )
                })
                .collect();
            inst.run_stdin(&["apply", "-"], ops).ok();
            n += 1;
        }
        n
    })
}

#[test]
fn backup_while_the_agent_takes_writes_restores_on_another_laptop() {
    const BATCH: usize = 7;
    let a = Arc::new(Instance::new());
    let a_id = a.ok(&["init", "--name", "source"]).id();
    let agent = a.spawn(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--no-discovery",
        "--insecure-plaintext",
    ]);
    let addr = listening(&agent);
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(a.clone(), BATCH, stop.clone());
    assert!(
        common::wait_until(Duration::from_secs(60), || a.digest(&[]).0
            >= 3 * BATCH as u64),
        "writes reach the agent"
    );

    let file = a.scratch("source.fsbackup");
    let b = a.ok(&["backup", file.to_str().unwrap()]).json();
    let (count, sha) = (
        b["count"].as_u64().unwrap(),
        b["sha256"].as_str().unwrap().to_string(),
    );
    assert_eq!(b["instance"], a_id.as_str());
    assert!(count >= 3 * BATCH as u64);
    assert_eq!(
        count % BATCH as u64,
        0,
        "a batch was half in the snapshot: {b}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "backups hold every record: owner only");
    // Writes go on after the snapshot; then stop them.
    assert!(common::wait_until(Duration::from_secs(60), || {
        a.digest(&[]).0 > count
    }));
    stop.store(true, Ordering::Relaxed);
    let batches = w.join().expect("writer thread");
    assert!(batches as usize * BATCH > count as usize);
    // A restore under the running agent is refused, and changes nothing.
    a.run(&["restore", file.to_str().unwrap(), "--force"])
        .fails(3, &["stop"]);

    // Another laptop, with its own identity, restores it.
    let other = Instance::new();
    let other_id = other.ok(&["init", "--name", "replacement"]).id();
    let r = other.ok(&["restore", file.to_str().unwrap()]).json();
    assert_eq!(
        (r["count"].as_u64().unwrap(), r["sha256"].as_str().unwrap()),
        (count, sha.as_str())
    );
    assert_eq!(
        other.digest(&[]),
        (count, sha.clone()),
        "the restored data is the snapshot"
    );
    assert_eq!(other.status()["instance"], other_id.as_str(), "own id kept");
    assert_eq!(other.status()["name"], "replacement");
    assert_eq!(r["backup_instance"], a_id.as_str());
    // A second restore would overwrite data: refused without --force.
    other
        .run(&["restore", file.to_str().unwrap()])
        .fails(2, &["--force"]);

    // The next sync is a full one and brings the rest; both sides end up equal.
    let sync = other.ok(&["sync", &addr, "--insecure-plaintext"]).lines();
    assert_eq!(sync.len(), 2, "{sync:?}");
    other.ok(&["verify", &addr, "--insecure-plaintext"]);
    assert_eq!(other.digest(&[]), a.digest(&[]));
    let peers = other.ok(&["peers"]).lines();
    assert!(
        peers.iter().any(|p| p["instance"] == a_id.as_str()),
        "{peers:?}"
    );
    // --force replaces everything again, back to the snapshot.
    other.ok(&["restore", file.to_str().unwrap(), "--force"]);
    assert_eq!(other.digest(&[]), (count, sha.clone()));
    // A change made after that restore reaches the source, which had synced with this laptop
    // before: feed positions it already received are not reused.
    let fresh = other.put("person", r#"{"name":"after restore"}"#);
    other.ok(&["sync", &addr, "--insecure-plaintext"]);
    assert_eq!(
        a.ok(&["get", "person", &fresh]).json()["fields"]["name"],
        "after restore"
    );
    other.ok(&["verify", &addr, "--insecure-plaintext"]);

    // With --take-over-identity the restored laptop becomes the source instance.
    let heir = Instance::new();
    let t = heir
        .ok(&["restore", file.to_str().unwrap(), "--take-over-identity"])
        .json();
    assert_eq!(t["instance"], a_id.as_str());
    // Said while it can still be acted on: the old disk must never run again (trial 10).
    assert!(
        t["warnings"].as_array().unwrap().iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("old disk must never run fieldsync again")),
        "{t}"
    );
    assert_eq!(heir.status()["instance"], a_id.as_str());
    assert_eq!(heir.digest(&[]), (count, sha.clone()));

    // A damaged file is refused and leaves the target untouched.
    let bytes = std::fs::read(&file).unwrap();
    let cut = a.file("cut.fsbackup", &bytes[..bytes.len() / 2]);
    let victim = Instance::new();
    victim.ok(&["init"]);
    victim
        .run(&["restore", cut.to_str().unwrap()])
        .fails(2, &["damaged"]);
    assert_eq!(victim.digest(&[]).0, 0);

    stop_agent(agent);
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `doctor` output as check name → line, with its exit code.
#[track_caller]
fn doctor(inst: &Instance) -> (i32, std::collections::BTreeMap<String, Value>) {
    let o = inst.run(&["doctor"]);
    let mut checks = std::collections::BTreeMap::new();
    for c in o.lines() {
        let keys: BTreeSet<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["check", "detail", "fix", "ok"].into(), "{c}");
        assert_eq!(
            c["fix"].is_null(),
            c["ok"] == true,
            "a fix exactly for failures: {c}"
        );
        checks.insert(c["check"].as_str().unwrap().to_string(), c);
    }
    (o.code, checks)
}

#[track_caller]
fn failed(checks: &std::collections::BTreeMap<String, Value>) -> Vec<&str> {
    checks
        .iter()
        .filter(|(_, c)| c["ok"] != true)
        .map(|(k, _)| k.as_str())
        .collect()
}

#[test]
fn doctor_passes_on_a_healthy_laptop_and_names_what_is_wrong() {
    let inst = Instance::new();
    let port = free_port();
    let mut config = format!("[sync]\nlisten = \"127.0.0.1:{port}\"\n");
    if fieldsync::discovery::multicast_interfaces().is_empty() {
        // Nothing to find on this machine; a laptop configured for static peers is healthy.
        config.push_str("[discovery]\nenabled = false\n");
    }
    inst.config(&config);
    // The test helper made the directory with the default umask; fieldsync makes it 0700.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(inst.dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    inst.ok(&["init", "--name", "doc"]);

    // Not joined yet: exactly the credential fails, with the way to join.
    let (code, checks) = doctor(&inst);
    assert_eq!(code, 1);
    assert_eq!(failed(&checks), ["credential"]);
    assert!(checks["credential"]["fix"]
        .as_str()
        .unwrap()
        .contains("init --mesh"));

    inst.ok(&["mesh", "create", "--name", "Doctor test"]);
    let (code, checks) = doctor(&inst);
    assert_eq!((code, failed(&checks)), (0, vec![]), "{checks:?}");
    let names: BTreeSet<&str> = checks.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "clock",
            "config",
            "credential",
            "data_dir",
            "data_dir_permissions",
            "database",
            "identity",
            "multicast",
            "port",
            "revocation"
        ]
        .into()
    );

    // Someone else holds the sync port.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (code, checks) = doctor(&inst);
    assert_eq!((code, failed(&checks)), (1, vec!["port"]));
    assert!(checks["port"]["detail"]
        .as_str()
        .unwrap()
        .contains(&port.to_string()));
    drop(squatter);

    // Our own agent holds the port and the database: doctor asks it, and all is well.
    let agent = inst.spawn(&["run", "--no-discovery"]);
    listening(&agent);
    let (code, checks) = doctor(&inst);
    assert_eq!((code, failed(&checks)), (0, vec![]), "{checks:?}");
    assert!(checks["database"]["detail"]
        .as_str()
        .unwrap()
        .contains("running agent"));
    assert!(checks["port"]["detail"]
        .as_str()
        .unwrap()
        .contains("running agent"));
    stop_agent(agent);

    // A data directory others can read.
    std::fs::set_permissions(inst.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, checks) = doctor(&inst);
    assert_eq!((code, failed(&checks)), (1, vec!["data_dir_permissions"]));
    assert!(checks["data_dir_permissions"]["fix"]
        .as_str()
        .unwrap()
        .contains("chmod 700"));
}

#[test]
fn doctor_on_a_laptop_without_data_says_to_init() {
    let inst = Instance::new();
    let (code, checks) = doctor(&inst);
    assert_eq!(code, 1);
    assert_eq!(checks["data_dir"]["ok"], false);
    assert!(checks["database"]["fix"]
        .as_str()
        .unwrap()
        .contains("fieldsync init"));
    assert!(!inst.dir().exists(), "doctor creates nothing");
}

#[test]
fn a_hangup_stops_the_agent_cleanly_unless_it_was_started_with_nohup() {
    let args = [
        "run",
        "--listen",
        "127.0.0.1:0",
        "--no-discovery",
        "--insecure-plaintext",
    ];
    // Closing the terminal window (start.sh on a stick) sends SIGHUP: a clean stop. The agent
    // starts with SIGHUP at its default, whatever this test was started under: a suite run
    // under `nohup` passes SIGHUP ignored on to every process it starts, and the agent then
    // rightly keeps running, as below.
    use std::os::unix::process::CommandExt;
    let inst = Instance::new();
    let mut c = inst.cmd(&args);
    // SAFETY: only resets one signal's disposition in the child between fork and exec;
    // `signal` is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_DFL);
            Ok(())
        });
    }
    let agent = Background::spawn(c);
    listening(&agent);
    send_signal(agent.id(), "HUP");
    let (code, stderr) = agent.wait(STOP_LIMIT).expect("stops within the limit");
    assert_eq!(code, 0, "{stderr}");
    assert!(!inst.dir().join("agent.json").exists(), "a clean stop");

    // `nohup fieldsync run` asks to survive the terminal: SIGHUP is left ignored.
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(r#"trap "" HUP; exec "$0" "$@""#)
        .arg(bin())
        .arg("--data-dir")
        .arg(inst.dir())
        .args(args)
        .env("HOME", inst.scratch("home"));
    let mut agent = Background::spawn(c);
    listening(&agent);
    send_signal(agent.id(), "HUP");
    std::thread::sleep(Duration::from_millis(500));
    assert!(agent.running(), "an ignored SIGHUP does not stop the agent");
    stop_agent(agent);
}
