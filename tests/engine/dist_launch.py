"""Launch a script under torchrun on loopback only, with a free port chosen here (for `dist` tests)."""
import os
import signal
import socket
import subprocess
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout


def child_pids(pid: int) -> list[int]:
    """The direct children of a process (torchrun starts each worker in a session of its own, so killing
    the agent's process group misses them)."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry))
    return kids


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quiet_env(**extra) -> dict:
    """Environment for child processes: one thread each (2 cores shared), loopback-only gloo."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo",
               PYTHONPATH=os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def torchrun(script: str, args, nproc: int = 2, timeout: float = 120, **popen_kwargs):
    """Run `torchrun --nproc-per-node=nproc script args` bound to 127.0.0.1; returns CompletedProcess."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--nnodes=1",
           "--master-addr=127.0.0.1", f"--master-port={free_port()}", "--local-addr=127.0.0.1",
           script, *map(str, args)]
    proc = subprocess.Popen(cmd, env=popen_kwargs.pop("env", None) or quiet_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **popen_kwargs)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:  # timed out: end torchrun and its workers, never leave them running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
