//! The `confab` command: run the server, manage accounts, check the config.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use confab::admin::{self, Request};
use confab::config::Config;

#[derive(Parser)]
#[command(
    name = "confab",
    version,
    about = "Confab: an XMPP server for companies"
)]
struct Cli {
    /// Configuration file. Default: ./config/confab.toml if it exists,
    /// otherwise built-in defaults (domain localhost, data in ./data).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server until SIGTERM or Ctrl-C (then every stream is closed
    /// with <system-shutdown/> and the store flushed).
    Serve,
    /// Manage accounts. Works whether or not the server runs: through its
    /// admin socket when it does, on the store directly when it does not.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Rights (sms, av, screen_share) of accounts (JID) and groups
    /// (@NAME). Works whether or not the server runs.
    Rights {
        #[command(subcommand)]
        command: RightsCommand,
    },
    /// Groups of accounts (for rights). Works whether or not the server
    /// runs.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Authorization-level policies between groups: members of FROM grant
    /// members of TO a level. Works whether or not the server runs.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Federation: the server-to-server streams of the running server.
    S2s {
        #[command(subcommand)]
        command: S2sCommand,
    },
    /// Print the effective configuration, or what is wrong with it (exit 1).
    CheckConfig,
}

#[derive(Subcommand)]
enum RightsCommand {
    /// Grant RIGHT to an account (JID) or a group (@NAME).
    Grant { who: String, right: String },
    /// Revoke RIGHT from an account or a group.
    Revoke { who: String, right: String },
    /// Every grant, or those of one account (also through its groups) or
    /// group.
    List { who: Option<String> },
}

#[derive(Subcommand)]
enum GroupCommand {
    /// Create a group (a-z, 0-9, '.', '_', '-').
    Add { name: String },
    /// Delete a group, with its memberships and grants.
    Del { name: String },
    /// The groups and their members.
    List,
    /// Add or remove members.
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
}

#[derive(Subcommand)]
enum MemberCommand {
    /// Add the account JID to group NAME.
    Add { name: String, jid: String },
    /// Remove the account JID from group NAME.
    Del { name: String, jid: String },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Members of group FROM grant members of group TO LEVEL (blocked,
    /// public, business, team, private).
    Set {
        from: String,
        to: String,
        level: String,
    },
    /// Remove the policy from FROM to TO.
    Unset { from: String, to: String },
    /// The group policies.
    List,
    /// The level OWNER grants CONTACT, and where it comes from.
    Show { owner: String, contact: String },
}

#[derive(Subcommand)]
enum S2sCommand {
    /// Show the open streams: remote domain, direction, authentication,
    /// TLS, idle time (one line per authenticated domain pair).
    List {
        /// Print JSON (an array of objects) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account. The password is read from stdin when not given.
    Add {
        jid: String,
        password: Option<String>,
    },
    /// Delete an account and everything stored for it; its sessions end.
    Del { jid: String },
    /// Set a new password. Read from stdin when not given.
    Passwd {
        jid: String,
        password: Option<String>,
    },
    /// List accounts, optionally of one domain.
    List { domain: Option<String> },
    /// Disable an account: it cannot log in, and its sessions end.
    Disable { jid: String },
    /// Re-enable a disabled account.
    Enable { jid: String },
}

fn init_logging(config: &Config) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| config.log.level.clone());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Logging for the admin commands: warnings only.
fn quiet_logging(config: &Config) {
    init_logging(&Config {
        log: confab::config::Log {
            level: "warn".into(),
        },
        ..config.clone()
    });
}

fn load_config(path: Option<&std::path::Path>) -> Result<(Config, Option<PathBuf>), ExitCode> {
    Config::load(path).map_err(|errs| {
        for e in errs {
            eprintln!("config error: {e}");
        }
        ExitCode::from(1)
    })
}

fn read_password() -> Result<String, String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Password: ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password: {e}"))?;
    let p = line.trim_end_matches(['\r', '\n']).to_string();
    if p.is_empty() {
        return Err("no password given".into());
    }
    Ok(p)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let (config, source) = match load_config(cli.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cli.command {
        Command::CheckConfig => {
            match &source {
                Some(p) => println!("# configuration from {}", p.display()),
                None => println!("# no configuration file: built-in defaults"),
            }
            print!("{}", config.to_toml());
            ExitCode::SUCCESS
        }
        Command::Serve => {
            init_logging(&config);
            serve(config).await
        }
        Command::S2s {
            command: S2sCommand::List { json },
        } => s2s_list(&config, json).await,
        Command::Rights { command } => {
            let req = match command {
                RightsCommand::Grant { who, right } => Request::RightSet {
                    who,
                    right,
                    on: true,
                },
                RightsCommand::Revoke { who, right } => Request::RightSet {
                    who,
                    right,
                    on: false,
                },
                RightsCommand::List { who } => Request::RightList { who },
            };
            quiet_logging(&config);
            user_command(&config, req).await
        }
        Command::Policy { command } => {
            let req = match command {
                PolicyCommand::Set { from, to, level } => Request::PolicySet {
                    from,
                    to,
                    level: Some(level),
                },
                PolicyCommand::Unset { from, to } => Request::PolicySet {
                    from,
                    to,
                    level: None,
                },
                PolicyCommand::List => Request::PolicyList,
                PolicyCommand::Show { owner, contact } => Request::LevelOf {
                    owner,
                    contact,
                    authz: Some(config.authz.clone()),
                },
            };
            quiet_logging(&config);
            user_command(&config, req).await
        }
        Command::Group { command } => {
            let req = match command {
                GroupCommand::Add { name } => Request::GroupSet { name, on: true },
                GroupCommand::Del { name } => Request::GroupSet { name, on: false },
                GroupCommand::List => Request::GroupList,
                GroupCommand::Member {
                    command: MemberCommand::Add { name, jid },
                } => Request::GroupMember {
                    group: name,
                    jid,
                    on: true,
                },
                GroupCommand::Member {
                    command: MemberCommand::Del { name, jid },
                } => Request::GroupMember {
                    group: name,
                    jid,
                    on: false,
                },
            };
            quiet_logging(&config);
            user_command(&config, req).await
        }
        Command::User { command } => {
            quiet_logging(&config);
            let req = match command {
                UserCommand::Add { jid, password } => {
                    match password.map(Ok).unwrap_or_else(read_password) {
                        Ok(password) => Request::UserAdd { jid, password },
                        Err(e) => return fail(&e),
                    }
                }
                UserCommand::Del { jid } => Request::UserDel { jid },
                UserCommand::Passwd { jid, password } => {
                    match password.map(Ok).unwrap_or_else(read_password) {
                        Ok(password) => Request::UserPasswd { jid, password },
                        Err(e) => return fail(&e),
                    }
                }
                UserCommand::List { domain } => Request::UserList { domain },
                UserCommand::Disable { jid } => Request::UserDisable {
                    jid,
                    disabled: true,
                },
                UserCommand::Enable { jid } => Request::UserDisable {
                    jid,
                    disabled: false,
                },
            };
            user_command(&config, req).await
        }
    }
}

async fn s2s_list(config: &Config, json: bool) -> ExitCode {
    let resp = match admin::send(&config.data_dir, &Request::S2sList).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return fail("the server is not running (no admin socket in the data directory)")
        }
        Err(e) => return fail(&format!("cannot reach the running server: {e}")),
    };
    if !resp.ok {
        return fail(resp.error.as_deref().unwrap_or("failed"));
    }
    if json {
        match serde_json::to_string_pretty(&resp.streams) {
            Ok(s) => println!("{s}"),
            Err(e) => return fail(&e.to_string()),
        }
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<30} {:<9} {:<24} {:<9} {:<8} {:<4} {:>6}",
        "REMOTE", "DIRECTION", "LOCAL", "AUTH", "TLS", "BIDI", "IDLE_S"
    );
    for r in resp.streams {
        println!(
            "{:<30} {:<9} {:<24} {:<9} {:<8} {:<4} {:>6}",
            r.remote,
            r.direction,
            r.local,
            r.auth,
            r.tls.as_deref().unwrap_or("none"),
            if r.bidi { "yes" } else { "no" },
            r.idle_s
        );
    }
    ExitCode::SUCCESS
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(1)
}

async fn user_command(config: &Config, req: Request) -> ExitCode {
    let resp = match admin::send(&config.data_dir, &req).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            // No server running: use the store directly.
            let stores = match confab::store::Stores::open_sled(&config.data_dir) {
                Ok(s) => s,
                Err(e) => return fail(&e.0),
            };
            let r = admin::execute(&stores, &config.domain, None, req.clone()).await;
            let _ = stores.closer.flush().await;
            r
        }
        Err(e) => return fail(&format!("cannot reach the running server: {e}")),
    };
    if !resp.ok {
        return fail(resp.error.as_deref().unwrap_or("failed"));
    }
    match req {
        Request::UserList { .. } => {
            for u in resp.users {
                println!("{u}");
            }
        }
        Request::UserAdd { jid, .. } => println!("created {jid}"),
        Request::UserDel { jid } => println!("deleted {jid}"),
        Request::UserPasswd { jid, .. } => println!("password changed for {jid}"),
        Request::UserDisable {
            jid,
            disabled: true,
        } => println!("disabled {jid}"),
        Request::UserDisable {
            jid,
            disabled: false,
        } => println!("re-enabled {jid}"),
        Request::RightSet { who, right, on } => {
            println!(
                "{} {right} {} {who}",
                if on { "granted" } else { "revoked" },
                if on { "to" } else { "from" }
            )
        }
        Request::RightList { .. } => {
            println!("{:<40} {:<14} VIA", "WHO", "RIGHT");
            for g in resp.grants {
                println!(
                    "{:<40} {:<14} {}",
                    g.who,
                    g.right,
                    g.via.as_deref().unwrap_or("-")
                );
            }
        }
        Request::GroupSet { name, on } => {
            println!("{} group {name}", if on { "created" } else { "deleted" })
        }
        Request::GroupList => {
            println!("{:<24} {:>7} MEMBERS", "GROUP", "COUNT");
            for g in resp.groups {
                println!(
                    "{:<24} {:>7} {}",
                    g.name,
                    g.members.len(),
                    g.members.join(" ")
                );
            }
        }
        Request::GroupMember { group, jid, on } => {
            println!(
                "{} {jid} {} {group}",
                if on { "added" } else { "removed" },
                if on { "to" } else { "from" }
            )
        }
        Request::PolicySet { from, to, level } => match level {
            Some(l) => println!("members of {from} grant members of {to} {l}"),
            None => println!("removed the policy from {from} to {to}"),
        },
        Request::PolicyList => {
            println!("{:<24} {:<24} LEVEL", "FROM", "TO");
            for p in resp.policies {
                println!("{:<24} {:<24} {}", p.from, p.to, p.level);
            }
        }
        Request::LevelOf { owner, contact, .. } => {
            if let Some((level, source)) = resp.level {
                let from = match source {
                    confab::policy::Source::Group { from, to } => {
                        format!("group policy {from} -> {to}")
                    }
                    confab::policy::Source::Override => "the user's own override".into(),
                    confab::policy::Source::Blocklist { item } => {
                        format!("the user's block list item {item}")
                    }
                    confab::policy::Source::DefaultLocal => "authz.default_local".into(),
                    confab::policy::Source::DefaultRemote => "authz.default_remote".into(),
                };
                println!("{owner} grants {contact} {} ({from})", level.name());
            }
        }
        Request::S2sList => {}
    }
    ExitCode::SUCCESS
}

async fn serve(config: Config) -> ExitCode {
    // jemalloc returns freed memory to the system only when an arena is
    // used again; with background threads it does so on its own, so the
    // memory of connections that ended comes back even when their worker
    // thread's arena goes quiet.
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!("jemalloc background threads not started: {e}");
    }
    let handle = match confab::server::ServerHandle::start(config).await {
        Ok(h) => h,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    wait_for_signal().await;
    handle.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
