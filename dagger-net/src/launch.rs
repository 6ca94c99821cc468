//! Starting worker processes, and recognising that this process is one.
//!
//! A worker is a copy of the driver's own executable started with either the environment
//! variables [`ENV_JOIN`] and [`ENV_IDENTITY`] (what [`LocalLauncher`] does), or the
//! command line `--dagger-worker --join ADDR --cert FILE --key FILE --ca FILE [--name N]`
//! (for launchers that copy files, such as batch systems).

use crate::{Identity, NetError};
use std::path::Path;
use std::process::{Child, Command, ExitStatus};

/// Environment variable: the driver address a worker joins.
pub const ENV_JOIN: &str = "DAGGER_WORKER_JOIN";
/// Environment variable: the worker's [`Identity`], as [`Identity::to_env_value`].
pub const ENV_IDENTITY: &str = "DAGGER_WORKER_IDENTITY";
/// Environment variable: the worker's name (optional).
pub const ENV_NAME: &str = "DAGGER_WORKER_NAME";

/// What a worker process needs to join its cluster.
#[derive(Clone, Debug)]
pub struct WorkerArgs {
    /// The driver's address.
    pub join: String,
    /// The worker's credentials.
    pub identity: Identity,
    /// A name for logs, if the launcher gave one.
    pub name: Option<String>,
}

/// Tells whether this process was started as a worker, from its environment or its
/// command line. `Ok(None)`: not a worker. `Err`: it was asked to be a worker but the
/// arguments are incomplete or unreadable. Costs a few environment lookups (and three file
/// reads for the command-line form).
pub fn worker_args_from_env() -> Result<Option<WorkerArgs>, NetError> {
    if let Some(join) = std::env::var_os(ENV_JOIN) {
        let join = join.into_string().map_err(|_| NetError::WorkerArgs {
            reason: format!("{ENV_JOIN} is not UTF-8"),
        })?;
        let encoded = std::env::var(ENV_IDENTITY).map_err(|_| NetError::WorkerArgs {
            reason: format!("{ENV_JOIN} is set but {ENV_IDENTITY} is missing or not UTF-8"),
        })?;
        let identity = Identity::from_env_value(&encoded)?;
        let name = std::env::var(ENV_NAME).ok().filter(|n| !n.is_empty());
        return Ok(Some(WorkerArgs {
            join,
            identity,
            name,
        }));
    }
    parse_worker_argv(std::env::args().skip(1))
}

/// Parses the `--dagger-worker` command-line form; `Ok(None)` if the flag is absent.
pub fn parse_worker_argv(
    args: impl IntoIterator<Item = String>,
) -> Result<Option<WorkerArgs>, NetError> {
    let args: Vec<String> = args.into_iter().collect();
    if !args.iter().any(|a| a == "--dagger-worker") {
        return Ok(None);
    }
    let value = |flag: &str| -> Result<Option<&str>, NetError> {
        match args.iter().position(|a| a == flag) {
            None => Ok(None),
            Some(i) => {
                args.get(i + 1)
                    .map(|v| Some(v.as_str()))
                    .ok_or_else(|| NetError::WorkerArgs {
                        reason: format!("{flag} needs a value"),
                    })
            }
        }
    };
    let required = |flag: &str| -> Result<&str, NetError> {
        value(flag)?.ok_or_else(|| NetError::WorkerArgs {
            reason: format!("--dagger-worker requires {flag}"),
        })
    };
    let join = required("--join")?.to_owned();
    let identity = Identity::from_files(
        Path::new(required("--cert")?),
        Path::new(required("--key")?),
        Path::new(required("--ca")?),
    )?;
    let name = value("--name")?.map(str::to_owned);
    Ok(Some(WorkerArgs {
        join,
        identity,
        name,
    }))
}

/// Starts worker processes on this host: copies of the current executable.
///
/// Each child gets [`ENV_JOIN`], [`ENV_IDENTITY`] and [`ENV_NAME`], inherits stdout and
/// stderr, and (on Linux) is killed by the kernel if this process dies. When called from a
/// test of a `cargo test` binary (the current thread is named after the test), the child
/// is told to run only that test, whose first line turns it into a worker; otherwise the
/// child gets this process's own arguments.
#[derive(Clone, Debug)]
pub struct LocalLauncher {
    join: String,
    identity: Identity,
    envs: Vec<(String, String)>,
}

impl LocalLauncher {
    /// A launcher whose workers join `join` with `identity`.
    pub fn new(join: impl Into<String>, identity: Identity) -> Self {
        LocalLauncher {
            join: join.into(),
            identity,
            envs: Vec::new(),
        }
    }

    /// Sets an extra environment variable for every worker this launcher starts (e.g.
    /// `DAGGER_THREADS` to cap each worker's thread processors).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Starts `n` workers named `worker-0` … `worker-{n-1}`. Costs one process spawn each.
    /// If one spawn fails, the ones already started are killed and the error returned.
    pub fn spawn(&self, n: usize) -> Result<Vec<WorkerProcess>, NetError> {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            out.push(self.spawn_named(&format!("worker-{i}"))?);
        }
        Ok(out)
    }

    /// Starts one worker called `name`.
    pub fn spawn_named(&self, name: &str) -> Result<WorkerProcess, NetError> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.args(child_args())
            .env(ENV_JOIN, &self.join)
            .env(ENV_IDENTITY, self.identity.to_env_value())
            .env(ENV_NAME, name)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        die_with_parent(&mut cmd);
        let child = cmd.spawn()?;
        Ok(WorkerProcess {
            child,
            name: name.to_owned(),
            reaped: None,
        })
    }
}

/// The arguments a re-executed copy of this process needs to become a worker.
fn child_args() -> Vec<String> {
    match std::thread::current().name() {
        Some(test) if test != "main" => vec![
            test.to_owned(),
            "--exact".to_owned(),
            "--nocapture".to_owned(),
            "--test-threads=1".to_owned(),
            "--quiet".to_owned(),
        ],
        _ => std::env::args().skip(1).collect(),
    }
}

#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // async-signal-safe functions (prctl, getppid).
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() == 1 {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

/// A running worker process started by [`LocalLauncher`]. Dropping it kills and reaps the
/// process.
#[derive(Debug)]
pub struct WorkerProcess {
    child: Child,
    name: String,
    reaped: Option<ExitStatus>,
}

impl WorkerProcess {
    /// The operating-system process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The name the worker was started with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Kills the process (SIGKILL on Unix). Does nothing if it already exited; does not wait.
    pub fn kill(&mut self) -> Result<(), NetError> {
        if self.reaped.is_some() {
            return Ok(());
        }
        match self.child.kill() {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits for the process to exit (blocks the calling thread).
    pub fn wait(&mut self) -> Result<ExitStatus, NetError> {
        if let Some(s) = self.reaped {
            return Ok(s);
        }
        let s = self.child.wait()?;
        self.reaped = Some(s);
        Ok(s)
    }

    /// Returns the exit status if the process has exited, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, NetError> {
        if let Some(s) = self.reaped {
            return Ok(Some(s));
        }
        let s = self.child.try_wait()?;
        self.reaped = s;
        Ok(s)
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_without_flag_is_not_a_worker() {
        let r = parse_worker_argv(["--exact".to_owned(), "x".to_owned()]).unwrap();
        assert!(r.is_none());
    }

    #[test]
    fn argv_missing_join_is_an_error() {
        let r = parse_worker_argv(["--dagger-worker".to_owned(), "--cert".to_owned()]);
        assert!(matches!(r, Err(NetError::WorkerArgs { .. })));
    }

    #[test]
    fn argv_form_reads_files() {
        let id = Identity {
            cert_pem: "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n".into(),
            key_pem: "-----BEGIN PRIVATE KEY-----\nB\n-----END PRIVATE KEY-----\n".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\nC\n-----END CERTIFICATE-----\n".into(),
        };
        let dir = std::env::temp_dir().join(format!("dagger-net-argv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c, k, a) = id.write_files(&dir).unwrap();
        let args: Vec<String> = vec![
            "--dagger-worker".into(),
            "--join".into(),
            "127.0.0.1:9".into(),
            "--cert".into(),
            c.display().to_string(),
            "--key".into(),
            k.display().to_string(),
            "--ca".into(),
            a.display().to_string(),
            "--name".into(),
            "w7".into(),
        ];
        let w = parse_worker_argv(args).unwrap().unwrap();
        assert_eq!(w.join, "127.0.0.1:9");
        assert_eq!(w.identity, id);
        assert_eq!(w.name.as_deref(), Some("w7"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Re-executes this test binary as a worker of this very test: the child sees the
    /// environment variables, prints nothing and exits 0 (a real runtime would join).
    #[test]
    fn local_launcher_reexecutes_this_test() {
        if let Some(args) = worker_args_from_env().unwrap() {
            assert_eq!(args.join, "127.0.0.1:1");
            assert_eq!(args.name.as_deref(), Some("worker-0"));
            std::process::exit(0);
        }
        let id = Identity {
            cert_pem: "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n".into(),
            key_pem: "-----BEGIN PRIVATE KEY-----\nB\n-----END PRIVATE KEY-----\n".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\nC\n-----END CERTIFICATE-----\n".into(),
        };
        let mut procs = LocalLauncher::new("127.0.0.1:1", id).spawn(1).unwrap();
        assert!(procs[0].pid() > 0);
        let status = procs[0].wait().unwrap();
        assert!(status.success(), "worker exited with {status}");
        assert!(procs[0].try_wait().unwrap().is_some());
    }

    #[test]
    fn dropping_a_worker_kills_it() {
        if std::env::var_os(ENV_JOIN).is_some() {
            // The re-executed copy: stay alive until killed.
            std::thread::sleep(std::time::Duration::from_secs(60));
            std::process::exit(3);
        }
        let id = Identity {
            cert_pem: String::new(),
            key_pem: String::new(),
            ca_pem: String::new(),
        };
        let mut p = LocalLauncher::new("x", id).spawn_named("w").unwrap();
        p.kill().unwrap();
        let status = p.wait().unwrap();
        assert!(!status.success(), "a killed worker must not report success");
        // Killing an exited, reaped process is a no-op.
        p.kill().unwrap();
    }
}
