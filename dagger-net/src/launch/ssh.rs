//! Workers started on other hosts through `ssh`.

use super::{
    program_or_current, shell_quote, spawn_client, stdin_worker_argv, JoinSpec, Launched, Launcher,
};
use crate::NetError;
use std::path::PathBuf;
use std::process::Command;

/// Starts workers on a host through `ssh`: one `ssh` client process per worker, which runs
/// `[env K=V ...] PROGRAM [ARGS... --] --dagger-worker --join ADDR --identity-stdin --name
/// NAME` there. The identity goes into the client's standard input, which `ssh` forwards
/// to the worker; the launcher keeps it open for the client's life, so the worker reads
/// end-of-file, and exits, when this process is gone or the client ends. The private key
/// is never on a command line or in an environment. The worker must be able to reach the
/// driver's address (`JoinSpec::join`), and its program must be the same build as the
/// driver's (by default, this executable's path, for hosts that share its file system).
///
/// The `ssh` command is built from settings
/// (`SshLauncher::new("node7").port(2222).identity_file(key).option("StrictHostKeyChecking=no")`
/// runs `ssh -T -o BatchMode=yes -p 2222 -i KEY -o StrictHostKeyChecking=no node7 COMMAND`),
/// or given as a template ([`SshLauncher::template`]) such as
/// `ssh -p 2222 root@{host} {command}`. Authentication must not prompt (key or agent).
///
/// Ending the client ([`WorkerProcess::kill`](super::WorkerProcess::kill), or dropping it)
/// closes its standard input and the connection, which ends the remote worker.
#[derive(Clone, Debug)]
pub struct SshLauncher {
    host: String,
    client: Client,
    program: Option<String>,
    args: Option<Vec<String>>,
    envs: Vec<(String, String)>,
}

/// How the `ssh` client's own command line is made.
#[derive(Clone, Debug)]
enum Client {
    Settings {
        ssh: String,
        port: Option<u16>,
        user: Option<String>,
        identity_file: Option<PathBuf>,
        options: Vec<String>,
    },
    /// Whitespace-separated words; `{host}` replaced inside any word, the word `{command}`
    /// replaced by the remote command.
    Template(Vec<String>),
}

impl SshLauncher {
    /// Workers on `host` (a name or address `ssh` accepts, optionally `user@host`), through
    /// `ssh` with batch mode on (no password prompts).
    pub fn new(host: impl Into<String>) -> Self {
        SshLauncher {
            host: host.into(),
            client: Client::Settings {
                ssh: "ssh".to_owned(),
                port: None,
                user: None,
                identity_file: None,
                options: Vec::new(),
            },
            program: None,
            args: None,
            envs: Vec::new(),
        }
    }

    /// Workers on `host` through the client command `template`: words separated by
    /// whitespace, where `{host}` is replaced by `host` and the word `{command}` by the
    /// remote command (one word, quoted for the remote shell), e.g.
    /// `ssh -p 2222 root@{host} {command}`. Fails with [`NetError::WorkerArgs`] when the
    /// template is empty or has no `{command}` word.
    pub fn template(host: impl Into<String>, template: &str) -> Result<Self, NetError> {
        let words: Vec<String> = template.split_whitespace().map(str::to_owned).collect();
        if words.is_empty() || words[0] == "{command}" {
            return Err(NetError::WorkerArgs {
                reason: format!("the ssh template `{template}` names no program"),
            });
        }
        if words.iter().filter(|w| *w == "{command}").count() != 1 {
            return Err(NetError::WorkerArgs {
                reason: format!("the ssh template `{template}` needs one `{{command}}` word"),
            });
        }
        let mut launcher = SshLauncher::new(host);
        launcher.client = Client::Template(words);
        Ok(launcher)
    }

    fn settings(&mut self) -> Option<&mut Client> {
        match &mut self.client {
            c @ Client::Settings { .. } => Some(c),
            Client::Template(_) => None,
        }
    }

    /// The port of the remote sshd (`-p`). Ignored with a template.
    pub fn port(mut self, port: u16) -> Self {
        if let Some(Client::Settings { port: p, .. }) = self.settings() {
            *p = Some(port);
        }
        self
    }

    /// The remote user (`-l`). Ignored with a template.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        if let Some(Client::Settings { user: u, .. }) = self.settings() {
            *u = Some(user.into());
        }
        self
    }

    /// The private key file `ssh` authenticates with (`-i`). Ignored with a template.
    pub fn identity_file(mut self, path: impl Into<PathBuf>) -> Self {
        if let Some(Client::Settings { identity_file, .. }) = self.settings() {
            *identity_file = Some(path.into());
        }
        self
    }

    /// An `ssh` option (`-o OPTION`, e.g. `StrictHostKeyChecking=no`). Ignored with a
    /// template.
    pub fn option(mut self, option: impl Into<String>) -> Self {
        if let Some(Client::Settings { options, .. }) = self.settings() {
            options.push(option.into());
        }
        self
    }

    /// The `ssh` client program. Default `ssh`. Ignored with a template.
    pub fn ssh_program(mut self, program: impl Into<String>) -> Self {
        if let Some(Client::Settings { ssh, .. }) = self.settings() {
            *ssh = program.into();
        }
        self
    }

    /// The worker program's path on the remote host. Default: this executable's path.
    pub fn program(mut self, path: impl Into<String>) -> Self {
        self.program = Some(path.into());
        self
    }

    /// The worker program's own arguments, before the worker flags (a `--` separates
    /// them). Default: the spec's ([`JoinSpec::args`]), else none.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// An extra environment variable for the remote workers (set with `env` on the remote
    /// command line, so never a secret), after the spec's.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// The remote command for worker `name` of `spec`, as one string for the remote shell.
    pub fn remote_command(&self, spec: &JoinSpec, name: &str) -> Result<String, NetError> {
        let program = program_or_current(self.program.as_deref())?;
        let envs: Vec<(String, String)> = spec.envs.iter().chain(&self.envs).cloned().collect();
        let argv = stdin_worker_argv(
            &program,
            self.args.as_deref().or(spec.args.as_deref()),
            &envs,
            &spec.join,
            name,
        );
        Ok(argv
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" "))
    }

    /// The client's whole command line (program first) for worker `name` of `spec`.
    pub fn client_argv(&self, spec: &JoinSpec, name: &str) -> Result<Vec<String>, NetError> {
        let command = self.remote_command(spec, name)?;
        Ok(match &self.client {
            Client::Template(words) => words
                .iter()
                .map(|w| {
                    if w == "{command}" {
                        command.clone()
                    } else {
                        w.replace("{host}", &self.host)
                    }
                })
                .collect(),
            Client::Settings {
                ssh,
                port,
                user,
                identity_file,
                options,
            } => {
                let mut argv = vec![
                    ssh.clone(),
                    "-T".to_owned(),
                    "-o".to_owned(),
                    "BatchMode=yes".to_owned(),
                ];
                if let Some(port) = port {
                    argv.extend(["-p".to_owned(), port.to_string()]);
                }
                if let Some(file) = identity_file {
                    argv.push("-i".to_owned());
                    argv.push(file.to_string_lossy().into_owned());
                }
                if let Some(user) = user {
                    argv.extend(["-l".to_owned(), user.clone()]);
                }
                for o in options {
                    argv.extend(["-o".to_owned(), o.clone()]);
                }
                argv.push(self.host.clone());
                argv.push(command);
                argv
            }
        })
    }
}

impl Launcher for SshLauncher {
    fn kind(&self) -> &'static str {
        "ssh"
    }

    /// Starts one `ssh` client per name; see [`SshLauncher`]. If one fails to start, the
    /// clients already started are ended.
    fn launch(&self, spec: &JoinSpec, names: &[String]) -> Result<Vec<Launched>, NetError> {
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let argv = self.client_argv(spec, name)?;
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..]);
            let process = spawn_client(cmd, name, &spec.identity, "ssh")?;
            out.push(Launched {
                name: name.clone(),
                process: Some(process),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    fn spec() -> JoinSpec {
        let mut spec = JoinSpec::new("vm:7400", Identity::empty());
        spec.envs.push(("DAGGER_THREADS".into(), "2".into()));
        spec
    }

    #[test]
    fn settings_make_a_batch_mode_client_and_a_quoted_command() {
        let l = SshLauncher::new("node7")
            .port(2222)
            .identity_file("/k/id")
            .user("me")
            .option("StrictHostKeyChecking=no")
            .program("/opt/my app")
            .args(["t", "--exact"]);
        let argv = l.client_argv(&spec(), "worker-3").unwrap();
        assert_eq!(
            argv,
            [
                "ssh",
                "-T",
                "-o",
                "BatchMode=yes",
                "-p",
                "2222",
                "-i",
                "/k/id",
                "-l",
                "me",
                "-o",
                "StrictHostKeyChecking=no",
                "node7",
                "env DAGGER_THREADS=2 '/opt/my app' t --exact -- --dagger-worker --join vm:7400 --identity-stdin --name worker-3",
            ]
        );
    }

    #[test]
    fn a_template_places_host_and_command() {
        let l = SshLauncher::template("127.0.0.1", "ssh -p 2222 root@{host} {command}")
            .unwrap()
            .program("/bin/w");
        let argv = l
            .client_argv(&JoinSpec::new("a:1", Identity::empty()), "n")
            .unwrap();
        assert_eq!(
            argv,
            [
                "ssh",
                "-p",
                "2222",
                "root@127.0.0.1",
                "/bin/w --dagger-worker --join a:1 --identity-stdin --name n"
            ]
        );
        assert!(SshLauncher::template("h", "ssh {host}").is_err());
        assert!(SshLauncher::template("h", "").is_err());
    }
}
