#!/usr/bin/env bash
# Starts the services the launcher tests run against, on this machine (as root; safe to
# run again, a service already up is left as it is):
#
# - sshd on 127.0.0.1:2222, key authentication only, with a fresh key pair in
#   ~/.ssh/dagger_ci_ed25519 whose public half is in ~/.ssh/authorized_keys;
# - a one-node Slurm cluster (munged, slurmctld, slurmd) whose only node is this host, in
#   partition `debug`.
#
# Needs the Debian packages openssh-server, slurm-wlm and munge. Ends with status 0 once
# `srun -n 1 true` works, non-zero if a service does not come up in time.
set -euo pipefail

SSH_PORT="${DAGGER_SSH_PORT:-2222}"
SSH_KEY="${HOME}/.ssh/dagger_ci_ed25519"
HOST="$(hostname)"
CPUS="$(nproc)"

log() { echo "services: $*" >&2; }

# Runs "$@" until it succeeds, at most $1 seconds (one try a second).
retry() {
    local limit="$1"
    shift
    local i
    for ((i = 0; i < limit; i++)); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 1
    done
    "$@"
}

# ---------------------------------------------------------------------------- sshd

start_sshd() {
    mkdir -p "${HOME}/.ssh" /run/sshd
    chmod 700 "${HOME}/.ssh"
    if [[ ! -f "${SSH_KEY}" ]]; then
        ssh-keygen -q -t ed25519 -N '' -C dagger-ci -f "${SSH_KEY}"
    fi
    touch "${HOME}/.ssh/authorized_keys"
    chmod 600 "${HOME}/.ssh/authorized_keys"
    if ! grep -qxF "$(cat "${SSH_KEY}.pub")" "${HOME}/.ssh/authorized_keys"; then
        cat "${SSH_KEY}.pub" >>"${HOME}/.ssh/authorized_keys"
    fi
    # Host keys of sshd (no-op when they exist).
    ssh-keygen -A >/dev/null
    local conf=/etc/ssh/sshd_config_dagger_ci
    cat >"${conf}" <<EOF
Port ${SSH_PORT}
ListenAddress 127.0.0.1
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AuthorizedKeysFile .ssh/authorized_keys
PidFile /run/sshd_dagger_ci.pid
MaxStartups 64:30:128
MaxSessions 64
Subsystem sftp internal-sftp
EOF
    if ssh_works 2>/dev/null; then
        log "sshd already answers on 127.0.0.1:${SSH_PORT}"
        return 0
    fi
    /usr/sbin/sshd -t -f "${conf}"
    /usr/sbin/sshd -f "${conf}"
    retry 20 ssh_works
    log "sshd up on 127.0.0.1:${SSH_PORT}"
}

ssh_works() {
    ssh -p "${SSH_PORT}" -i "${SSH_KEY}" -o BatchMode=yes -o StrictHostKeyChecking=no \
        -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=5 \
        "$(id -un)@127.0.0.1" true
}

# ---------------------------------------------------------------------------- Slurm

start_slurm() {
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
    chown munge:munge /run/munge
    chmod 755 /run/munge
    if [[ ! -f /etc/munge/munge.key ]]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key

    local conf=/etc/slurm/slurm.conf
    local want
    want="$(
        cat <<EOF
# Written by .ci/services.sh: a one-node cluster for the launcher tests.
ClusterName=local
SlurmctldHost=${HOST}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
NodeName=${HOST} CPUs=${CPUS} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
    )"
    local changed=0
    if [[ ! -f "${conf}" ]] || [[ "$(cat "${conf}")" != "${want}" ]]; then
        printf '%s\n' "${want}" >"${conf}"
        changed=1
    fi

    if ! pgrep -x munged >/dev/null; then
        runuser -u munge -- /usr/sbin/munged
        retry 10 munge -n
    fi
    log "munged up"

    if [[ ${changed} == 1 ]]; then
        # A daemon started with another configuration: restart it with this one.
        pkill_pidfile /run/slurmctld.pid
        pkill_pidfile /run/slurmd.pid
    fi
    if ! pgrep -x slurmctld >/dev/null; then
        /usr/sbin/slurmctld
    fi
    retry 30 scontrol ping
    if ! pgrep -x slurmd >/dev/null; then
        /usr/sbin/slurmd
    fi
    retry 60 node_idle
    # A node that was down (an earlier run's daemon killed) is brought back.
    scontrol update NodeName="${HOST}" State=RESUME >/dev/null 2>&1 || true
    retry 60 timeout 30 srun -n 1 true
    log "slurm up: $(sinfo -h -o '%P %t %D')"
}

# Ends the daemon whose pid file is $1 (if it runs), and waits for it to be gone.
pkill_pidfile() {
    local pid
    [[ -f "$1" ]] || return 0
    pid="$(cat "$1")"
    if [[ -n "${pid}" ]] && kill "${pid}" 2>/dev/null; then
        retry 20 bash -c "! kill -0 ${pid} 2>/dev/null"
    fi
}

node_idle() {
    sinfo -h -n "${HOST}" -o '%t' | grep -Eq '^(idle|mix|alloc)'
}

start_sshd
start_slurm
