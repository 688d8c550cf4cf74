#!/usr/bin/env python3
"""An `ssh` for simulated hosts: runs a command "on" a host of a tests.multihost
cluster by entering that host's network namespace, with its own hostname
(UTS namespace) and /etc/hosts (a bind mount in a private mount namespace),
like a login there. The hosts share this kernel's PID namespace unless the
cluster asks for one PID namespace per session (`pid_ns_per_session`: as
containers that share a hostname, see test_faults_multihost.py).

    ssh_standin.py CLUSTER.json [ssh options] [user@]HOST [COMMAND...]

As with ssh, the command words are joined by spaces and run by `sh -c` in a
fresh environment (PATH and HOME only: nothing of the caller's environment
travels, as over a real ssh), in the same working directory path. When the
stand-in is killed, everything it started on the host is killed with it
(`unshare --kill-child`), as a closed ssh session ends its remote side.
Cluster files are written by tests/multihost/_hosts.py.
"""
import json
import os
import sys

# ssh options that take an argument (OpenSSH's getopt string)
_WITH_ARG = set("BbcDEeFIiJLlmOoPpQRSWw")


def parse(argv):
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        opt = argv[i]
        if opt[-1] in _WITH_ARG and len(opt) == 2:
            i += 2
        else:
            i += 1
    if i < len(argv) and argv[i] == "--":
        i += 1
    if i >= len(argv):
        sys.exit("ssh_standin: no host given")
    host = argv[i].rpartition("@")[2]
    return host, " ".join(argv[i + 1:])


def main():
    with open(sys.argv[1]) as f:
        cluster = json.load(f)
    host, command = parse(sys.argv[2:])
    spec = cluster["hosts"].get(host)
    if spec is None:
        print(f"ssh: Could not resolve hostname {host}: Name or service not known",
              file=sys.stderr)
        sys.exit(255)
    if not command:
        sys.exit("ssh_standin: an interactive login is not simulated; give a command")
    env = {"PATH": cluster["path"], "HOME": os.environ.get("HOME", "/root"),
           "LANG": os.environ.get("LANG", "C.UTF-8")}
    inner = ('hostname "$1" && mount --bind "$2" /etc/hosts && cd "$3" 2>/dev/null; '
             'shift 3; exec sh -c "$1"')
    # a PID namespace per session only where the cluster asks for one: the
    # hosts otherwise share this kernel's, so the processes of one host,
    # started by separate sessions, see each other as on a real machine
    pid = ["--pid", "--mount-proc"] if cluster.get("pid_ns_per_session") else []
    # a host with fewer cores: its sessions start on those only (as affinity)
    cpus = ["taskset", "-c", spec["cpus"]] if spec.get("cpus") else []
    argv = ["ip", "netns", "exec", spec["netns"], *cpus,
            "unshare", "--uts", "--mount", *pid, "--fork", "--kill-child",
            "--", "sh", "-c", inner, "sh", host, spec["hosts_file"], os.getcwd(), command]
    os.execvpe(argv[0], argv, env)


if __name__ == "__main__":
    main()
