//! Workers started by Slurm's `srun`, from inside an allocation or as jobs of their own.

use super::{program_or_current, spawn_client, stdin_worker_argv, JoinSpec, Launched, Launcher};
use crate::NetError;
use std::process::Command;

/// Starts workers with Slurm's `srun`: one `srun -n1 --overlap` client process per worker
/// (one step each, so each worker ends on its own and gets its own name), which runs
/// `[env K=V ...] PROGRAM [ARGS... --] --dagger-worker --join ADDR --identity-stdin --name
/// NAME` on a node Slurm picks. Inside an allocation (`salloc`, an `sbatch` script) the
/// steps share its nodes (`--overlap`); outside one, each `srun` asks for an allocation of
/// its own.
///
/// The identity goes into `srun`'s standard input, which `srun` forwards to its task by
/// default (`--input=all`; with one task that is the worker), and stays open for the
/// client's life: the worker reads end-of-file, and exits, when this process is gone.
/// Ending the client ([`WorkerProcess::kill`](super::WorkerProcess::kill), or dropping
/// it) closes that input and sends `srun` SIGTERM, which it forwards to the worker. The
/// private key is never on a command line or in an environment (`srun` exports this
/// process's environment to the task, which holds no key either).
///
/// The worker must reach the driver's address (`JoinSpec::join`), and the program path
/// (default: this executable's) must hold the same build on the compute nodes, as it does
/// on a shared file system.
#[derive(Clone, Debug)]
pub struct SlurmLauncher {
    srun: String,
    partition: Option<String>,
    extra: Vec<String>,
    program: Option<String>,
    args: Option<Vec<String>>,
    envs: Vec<(String, String)>,
}

impl Default for SlurmLauncher {
    fn default() -> Self {
        Self::new()
    }
}

impl SlurmLauncher {
    /// Workers through `srun` with its defaults (the default partition).
    pub fn new() -> Self {
        SlurmLauncher {
            srun: "srun".to_owned(),
            partition: None,
            extra: Vec::new(),
            program: None,
            args: None,
            envs: Vec::new(),
        }
    }

    /// The partition (`--partition`).
    pub fn partition(mut self, partition: impl Into<String>) -> Self {
        self.partition = Some(partition.into());
        self
    }

    /// An extra `srun` argument (`--time=1:00:00`, `--cpus-per-task=8`, `--gres=gpu:1`),
    /// placed after the launcher's own.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra.push(arg.into());
        self
    }

    /// The `srun` program. Default `srun`.
    pub fn srun_program(mut self, program: impl Into<String>) -> Self {
        self.srun = program.into();
        self
    }

    /// The worker program's path on the compute nodes. Default: this executable's path.
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

    /// An extra environment variable for the workers (set with `env` on the task's command
    /// line, so never a secret), after the spec's.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// The `srun` command line (program first) for worker `name` of `spec`.
    pub fn srun_argv(&self, spec: &JoinSpec, name: &str) -> Result<Vec<String>, NetError> {
        let program = program_or_current(self.program.as_deref())?;
        let envs: Vec<(String, String)> = spec.envs.iter().chain(&self.envs).cloned().collect();
        let mut argv = vec![
            self.srun.clone(),
            "--ntasks=1".to_owned(),
            "--nodes=1".to_owned(),
            "--overlap".to_owned(),
            format!("--job-name=dagger-{name}"),
        ];
        if let Some(p) = &self.partition {
            argv.push(format!("--partition={p}"));
        }
        argv.extend(self.extra.iter().cloned());
        argv.extend(stdin_worker_argv(
            &program,
            self.args.as_deref().or(spec.args.as_deref()),
            &envs,
            &spec.join,
            name,
        ));
        Ok(argv)
    }
}

impl Launcher for SlurmLauncher {
    fn kind(&self) -> &'static str {
        "slurm"
    }

    /// Starts one `srun` client per name; see [`SlurmLauncher`]. If one fails to start,
    /// the clients already started are ended.
    fn launch(&self, spec: &JoinSpec, names: &[String]) -> Result<Vec<Launched>, NetError> {
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let argv = self.srun_argv(spec, name)?;
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..]);
            let process = spawn_client(cmd, name, &spec.identity, "srun")?;
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

    #[test]
    fn one_task_step_per_worker() {
        let l = SlurmLauncher::new()
            .partition("debug")
            .arg("--time=10")
            .program("/shared/app");
        let argv = l
            .srun_argv(&JoinSpec::new("login1:7400", Identity::empty()), "worker-1")
            .unwrap();
        assert_eq!(
            argv,
            [
                "srun",
                "--ntasks=1",
                "--nodes=1",
                "--overlap",
                "--job-name=dagger-worker-1",
                "--partition=debug",
                "--time=10",
                "/shared/app",
                "--dagger-worker",
                "--join",
                "login1:7400",
                "--identity-stdin",
                "--name",
                "worker-1",
            ]
        );
    }
}
