//! Starting and stopping the servers under test, each with a fresh data
//! directory on its own loopback address, the same ECDSA certificate type,
//! TLS required, offline storage, carbons, stream management and the
//! message archive on, and nothing that would throttle the run. One
//! target, `confab-nomam`, is Confab with its archive turned off, to show
//! what archiving costs; another, `confab-noinbox`, Confab without its
//! journal (the inbox's unread counts), to show what that costs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha1::{Digest, Sha1};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Confab,
    /// Confab with `[mam] enabled = false`.
    ConfabNomam,
    /// Confab with `[inbox] enabled = false` (the archive on).
    ConfabNoinbox,
    /// Confab with `[links] enabled = false` (archive and journal on).
    ConfabNolinks,
    Prosody,
    Ejabberd,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Confab => "confab",
            Kind::ConfabNomam => "confab-nomam",
            Kind::ConfabNoinbox => "confab-noinbox",
            Kind::ConfabNolinks => "confab-nolinks",
            Kind::Prosody => "prosody",
            Kind::Ejabberd => "ejabberd",
        }
    }

    pub fn domain(self) -> &'static str {
        match self {
            Kind::Confab | Kind::ConfabNomam | Kind::ConfabNoinbox | Kind::ConfabNolinks => {
                "confab.test"
            }
            Kind::Prosody => "prosody.test",
            Kind::Ejabberd => "ejabberd.test",
        }
    }

    /// The group-chat service's domain (each server's default).
    pub fn muc_domain(self) -> String {
        match self {
            Kind::Confab | Kind::ConfabNomam | Kind::ConfabNoinbox | Kind::ConfabNolinks => {
                format!("rooms.{}", self.domain())
            }
            Kind::Prosody | Kind::Ejabberd => format!("conference.{}", self.domain()),
        }
    }

    fn ip(self) -> &'static str {
        match self {
            Kind::Confab | Kind::ConfabNomam | Kind::ConfabNoinbox | Kind::ConfabNolinks => {
                "127.0.0.10"
            }
            Kind::Prosody => "127.0.0.11",
            Kind::Ejabberd => "127.0.0.12",
        }
    }

    pub fn addr(self) -> SocketAddr {
        SocketAddr::new(self.ip().parse().unwrap_or([127, 0, 0, 1].into()), 5222)
    }

    /// What is on for this server in the run (for the table).
    pub fn features(self) -> Features {
        match self {
            Kind::Confab => Features {
                archive: "built in (XEP-0313), sled",
                carbons: "built in (XEP-0280)",
                stream_management: "built in (XEP-0198)",
                offline: "on",
                storage: "sled, fsync before ack",
            },
            Kind::ConfabNoinbox => Features {
                archive: "built in (XEP-0313), no journal ([inbox] enabled = false)",
                carbons: "built in (XEP-0280)",
                stream_management: "built in (XEP-0198)",
                offline: "on",
                storage: "sled, fsync before ack",
            },
            Kind::ConfabNolinks => Features {
                archive: "built in (XEP-0313), no link references ([links] enabled = false)",
                carbons: "built in (XEP-0280)",
                stream_management: "built in (XEP-0198)",
                offline: "on",
                storage: "sled, fsync before ack",
            },
            Kind::ConfabNomam => Features {
                archive: "off ([mam] enabled = false)",
                carbons: "built in (XEP-0280)",
                stream_management: "built in (XEP-0198)",
                offline: "on",
                storage: "sled, fsync before ack",
            },
            Kind::Prosody => Features {
                archive: "mod_mam (internal storage), archiving by default",
                carbons: "mod_carbons",
                stream_management: "mod_smacks",
                offline: "on",
                storage: "internal (files)",
            },
            Kind::Ejabberd => Features {
                archive: "mod_mam (Mnesia), default: always",
                carbons: "mod_carboncopy",
                stream_management: "mod_stream_mgmt",
                offline: "on",
                storage: "Mnesia",
            },
        }
    }
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Features {
    pub archive: &'static str,
    pub carbons: &'static str,
    pub stream_management: &'static str,
    pub offline: &'static str,
    pub storage: &'static str,
}

/// Users are u0 … u{n-1}, all with this password.
pub const PASSWORD: &str = "bench-password";

pub fn user(i: usize) -> String {
    format!("u{i}")
}

pub struct Running {
    pub kind: Kind,
    pub pid: u32,
    child: Option<Child>,
    work: PathBuf,
}

fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../interop/lab")
}

fn script(kind: Kind) -> PathBuf {
    peers_dir().join(format!("{}.sh", kind.name()))
}

/// Run a peer script; returns its stdout.
fn run_script(work: &Path, kind: Kind, args: &[&str]) -> Result<String, String> {
    let out = Command::new(script(kind))
        .args(args)
        .env("INTEROP_DIR", work.join("peers"))
        .env("CERT_KEY", "ec")
        // The archive on, archiving every one-to-one message (Prosody:
        // default_archive_policy = true; ejabberd: default: always).
        .env("PROSODY_MAM", "1")
        .env("PROSODY_LOGLEVEL", "warn")
        .env("EJABBERD_MAM", "1")
        .env("EJABBERD_REGISTRATION", "1")
        .env("EJABBERD_LOGLEVEL", "warning")
        // Same listen backlog for all three (Confab listens with 4096):
        // ejabberd's default of 5 drops SYNs under a burst of logins.
        .env("EJABBERD_BACKLOG", "4096")
        .env("PROSODY_BACKLOG", "4096")
        // TCP_NODELAY, as Confab and ejabberd do: Nagle would add ~40 ms
        // per reply on loopback and make every latency figure Prosody's
        // delayed ACKs.
        .env("PROSODY_NAGLE", "false")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", script(kind).display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {}: {}{}",
            kind.name(),
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn pid_from_json(out: &str) -> Result<u32, String> {
    let line = out
        .lines()
        .find(|l| l.contains("\"pid\""))
        .ok_or_else(|| format!("no pid in: {out}"))?;
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("{e}: {line}"))?;
    v["pid"]
        .as_u64()
        .map(|p| p as u32)
        .ok_or_else(|| format!("no pid in: {line}"))
}

fn port_open(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = match <Hmac<Sha1> as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return Vec::new(),
    };
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Prosody's internal_hashed account files, written before it starts (one
/// `prosodyctl register` per user would take an hour for 10,000 users).
fn prosody_accounts(work: &Path, n: usize) -> Result<(), String> {
    let dir = work.join("peers/prosody/data/prosody%2etest/accounts");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let salt = "confab-bench-fixed-salt";
    let iterations = 4096;
    let mut salted = [0u8; 20];
    pbkdf2::pbkdf2_hmac::<Sha1>(
        PASSWORD.as_bytes(),
        salt.as_bytes(),
        iterations,
        &mut salted,
    );
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha1::digest(&client_key);
    let server_key = hmac(&salted, b"Server Key");
    let body = format!(
        "return {{\n\t[\"iteration_count\"] = {iterations};\n\t[\"salt\"] = \"{salt}\";\n\t\
         [\"stored_key\"] = \"{}\";\n\t[\"server_key\"] = \"{}\";\n}};\n",
        hex(&stored_key),
        hex(&server_key)
    );
    for i in 0..n {
        let p = dir.join(format!("{}.dat", user(i)));
        std::fs::write(&p, &body).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

/// Confab's accounts, written into its store before it starts: the same
/// salted keys for every user (what `confab user add` would compute, once).
async fn confab_accounts(data_dir: &Path, n: usize) -> Result<(), String> {
    let stores = confab::store::Stores::open_sled(data_dir).map_err(|e| e.0)?;
    let first = xmpp_parsers::jid::BareJid::new(&format!("{}@{}", user(0), Kind::Confab.domain()))
        .map_err(|e| e.to_string())?;
    let template = confab::auth::new_account(&first, PASSWORD).map_err(|e| e.to_string())?;
    let mut pending = Vec::new();
    for i in 0..n {
        let mut a = template.clone();
        a.jid = format!("{}@{}", user(i), Kind::Confab.domain());
        let s = stores.accounts.clone();
        pending.push(tokio::spawn(async move { s.create(a).await }));
        if pending.len() >= 2000 || i + 1 == n {
            for p in pending.drain(..) {
                p.await.map_err(|e| e.to_string())?.map_err(|e| e.0)?;
            }
        }
    }
    stores.closer.flush().await.map_err(|e| e.0)?;
    Ok(())
}

fn confab_binary() -> Result<PathBuf, String> {
    // Under `cargo run`, make sure the server binary is built and current.
    if let Ok(cargo) = std::env::var("CARGO") {
        let st = Command::new(cargo)
            .args(["build", "--release", "--quiet", "--bin", "confab"])
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
            .status()
            .map_err(|e| format!("cargo build: {e}"))?;
        if !st.success() {
            return Err("cargo build --release --bin confab failed".into());
        }
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = exe
        .parent()
        .map(|d| d.join("confab"))
        .ok_or("no directory for the confab binary")?;
    if !bin.exists() {
        return Err(format!(
            "{} not found: build it with cargo build --release",
            bin.display()
        ));
    }
    Ok(bin)
}

/// Run Confab with the configuration `cfg` (its log in `work`), once its
/// port is open.
async fn spawn_confab(
    kind: Kind,
    work: PathBuf,
    bin: PathBuf,
    cfg: &Path,
) -> Result<Running, String> {
    let log = std::fs::File::create(work.join("confab.log")).map_err(|e| e.to_string())?;
    // CONFAB_BENCH_WRAP runs the server under a profiler, e.g.
    // "heaptrack" (the figures are then the wrapper's).
    let mut cmd = match std::env::var("CONFAB_BENCH_WRAP") {
        Ok(w) if !w.is_empty() => {
            let mut c = Command::new(w);
            c.arg(bin);
            c
        }
        _ => Command::new(bin),
    };
    let child = cmd
        .arg("--config")
        .arg(cfg)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("confab: {e}"))?;
    let mut r = Running {
        kind,
        pid: child.id(),
        child: Some(child),
        work,
    };
    let t0 = Instant::now();
    while !port_open(kind.addr()) {
        if let Some(c) = r.child.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                return Err(format!("confab exited: {st}"));
            }
        }
        if t0.elapsed() > Duration::from_secs(30) {
            r.stop();
            return Err("confab did not open its port".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(r)
}

impl Running {
    /// Start `kind` with `users` accounts (for ejabberd the accounts are
    /// registered in-band afterwards, see `needs_registration`).
    pub async fn start(kind: Kind, work: &Path, users: usize) -> Result<Running, String> {
        let work = work.join(kind.name());
        std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
        if port_open(kind.addr()) {
            return Err(format!(
                "{} is already taken by another process (a server left from an earlier run?)",
                kind.addr()
            ));
        }
        match kind {
            Kind::Confab | Kind::ConfabNomam | Kind::ConfabNoinbox | Kind::ConfabNolinks => {
                let bin = confab_binary()?;
                let certs = work.join("certs");
                let out = Command::new(peers_dir().join("cert.sh"))
                    .arg(&certs)
                    .arg(kind.domain())
                    .env("INTEROP_DIR", work.join("peers"))
                    .env("CERT_KEY", "ec")
                    .output()
                    .map_err(|e| format!("cert.sh: {e}"))?;
                if !out.status.success() {
                    return Err(format!("cert.sh: {}", String::from_utf8_lossy(&out.stderr)));
                }
                let data = work.join("data");
                confab_accounts(&data, users).await?;
                let cfg = work.join("confab.toml");
                std::fs::write(
                    &cfg,
                    format!(
                        "domain = \"{domain}\"\ndata_dir = \"{data}\"\n\
                         [listen]\nc2s = [\"{addr}\"]\nc2s_direct_tls = []\ns2s = [\"{s2s}\"]\n\
                         [tls]\ncert = \"{certs}/{domain}.crt\"\nkey = \"{certs}/{domain}.key\"\n\
                         [limits]\nc2s_bytes_per_sec = 104857600\nsession_queue = 8192\nmax_connections_per_ip = 0\n\
                         auth_failures_per_ip = 1000000\nnegotiation_timeout_secs = 120\n\
                         [mam]\nenabled = {mam}\n[inbox]\nenabled = {inbox}\n[links]\nenabled = {links}\n\
                         [s2s]\ninsecure_domains = [\"prosody.test\", \"ejabberd.test\"]\n\
                         [log]\nlevel = \"warn\"\n",
                        mam = kind != Kind::ConfabNomam,
                        inbox = kind != Kind::ConfabNoinbox,
                        links = kind != Kind::ConfabNolinks,
                        domain = kind.domain(),
                        data = data.display(),
                        addr = kind.addr(),
                        // Federation as the peers have it: on their own
                        // address, dialback with the lab's self-signed
                        // certificates (each server has its own CA here).
                        s2s = std::net::SocketAddr::new(kind.addr().ip(), 5269),
                        certs = certs.display(),
                    ),
                )
                .map_err(|e| e.to_string())?;
                spawn_confab(kind, work, bin, &cfg).await
            }
            Kind::Prosody => {
                prosody_accounts(&work, users)?;
                let out = run_script(&work, kind, &["start"])?;
                Ok(Running {
                    kind,
                    pid: pid_from_json(&out)?,
                    child: None,
                    work,
                })
            }
            Kind::Ejabberd => {
                let out = run_script(&work, kind, &["start"])?;
                Ok(Running {
                    kind,
                    pid: pid_from_json(&out)?,
                    child: None,
                    work,
                })
            }
        }
    }

    /// Stop the server and start it again on the same data (what a
    /// restart leaves in memory).
    pub async fn restart(&mut self) -> Result<(), String> {
        self.stop();
        let kind = self.kind;
        let work = self.work.clone();
        match kind {
            Kind::Confab | Kind::ConfabNomam | Kind::ConfabNoinbox | Kind::ConfabNolinks => {
                let cfg = work.join("confab.toml");
                *self = spawn_confab(kind, work, confab_binary()?, &cfg).await?;
            }
            Kind::Prosody | Kind::Ejabberd => {
                let out = run_script(&work, kind, &["start"])?;
                self.pid = pid_from_json(&out)?;
            }
        }
        Ok(())
    }

    /// Where the server keeps what it stores (the archive among the
    /// rest): Confab's data directory (its database and the archive's
    /// log), Prosody's storage for the host, the Mnesia directory of
    /// ejabberd.
    pub fn storage_dir(&self) -> PathBuf {
        match self.kind {
            Kind::Confab | Kind::ConfabNomam | Kind::ConfabNoinbox | Kind::ConfabNolinks => {
                self.work.join("data")
            }
            Kind::Prosody => self.work.join("peers/prosody/data/prosody%2etest"),
            Kind::Ejabberd => self.work.join("peers/ejabberd/spool"),
        }
    }

    /// ejabberd's accounts are created in-band after start.
    pub fn needs_registration(&self) -> bool {
        self.kind == Kind::Ejabberd
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        proc_rss(self.pid)
    }

    /// CPU time used so far (user + system), in milliseconds.
    pub fn cpu_ms(&self) -> u64 {
        proc_cpu_ms(&self.pid.to_string())
    }

    /// Stop by PID: SIGTERM (the peers' scripts do the same), then SIGKILL
    /// if it lingers.
    pub fn stop(&mut self) {
        if self.pid == 0 {
            return;
        }
        match self.child.take() {
            Some(mut c) => {
                let _ = Command::new("kill")
                    .args(["-TERM", &c.id().to_string()])
                    .status();
                let t0 = Instant::now();
                let mut exited = false;
                while t0.elapsed() < Duration::from_secs(15) {
                    if let Ok(Some(_)) = c.try_wait() {
                        exited = true;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                if !exited {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
            None => {
                let _ = run_script(&self.work, self.kind, &["stop"]);
            }
        }
        self.pid = 0;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn proc_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100)
    })
}

/// CPU time (user + system) of a process ("self" for this one), in ms.
pub fn proc_cpu_ms(pid: &str) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some(after) = s.rfind(')').map(|i| &s[i + 1..]) else {
        return 0;
    };
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks * 1000 / clock_ticks()
}

/// Bytes a directory tree takes on disk (allocated blocks; 0 if absent).
pub fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for e in entries.flatten() {
        let Ok(md) = e.metadata() else { continue };
        if md.is_dir() {
            total += disk_bytes(&e.path());
        } else {
            total += md.blocks() * 512;
        }
    }
    total
}
