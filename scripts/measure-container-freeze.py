#!/usr/bin/env python3
# Dump/restore of an N-process busybox container (unshare --pid --fork
# --mount-proc --uts --ipc) in a v2 cgroup of its own, with and without
# the cgroup freezer (CREST_CGROUP_FREEZE=0/1). Run as root:
#   scripts/measure-container-freeze.py CREST N RUNS 0,1 [restore]
import ctypes, json, os, statistics, subprocess, sys, time, shutil, signal
crest, n, runs, modes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(",")
do_restore = len(sys.argv) > 5
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(36, 1, 0, 0, 0)
base = f"/tmp/crest-measure-{os.getpid()}"
cg = f"/sys/fs/cgroup/unified/crest-measure-{os.getpid()}"
os.makedirs(cg)
def reap():
    while True:
        try:
            p, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if p == 0:
            return
def empty():
    for _ in range(2000):
        if not open(f"{cg}/cgroup.procs").read().strip():
            return
        reap(); time.sleep(0.005)
res = {m: {"seize": [], "frozen": [], "dump": [], "restore": []} for m in modes}
try:
    for r in range(runs):
        for m in modes:
            d = f"{base}-{m}-{r}"
            os.makedirs(d)
            inner = f"echo 0 > {cg}/cgroup.procs; i=1; while [ $i -lt {n} ]; do sleep 1000 & i=$((i+1)); done; touch {d}/ready; wait"
            u = subprocess.Popen(["sh", "-c", f'exec unshare --pid --fork --mount-proc --uts --ipc busybox sh -c "$0"', inner],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while not os.path.exists(f"{d}/ready"):
                time.sleep(0.01)
            time.sleep(0.2)
            kids = open(f"/proc/{u.pid}/task/{u.pid}/children").read().split()
            pid = kids[0]
            env = dict(os.environ, CREST_CGROUP_FREEZE=m)
            t = time.monotonic()
            o = subprocess.run([crest, "dump", "-p", pid, "-o", f"{d}/img", "--json"], env=env, capture_output=True, text=True)
            dt = time.monotonic() - t
            assert o.returncode == 0, o.stderr
            rep = json.loads(o.stdout)
            assert rep["processes"] == n, rep["processes"]
            res[m]["seize"].append(rep["seize_ms"]); res[m]["frozen"].append(rep["frozen_ms"]); res[m]["dump"].append(dt * 1000)
            u.wait(); empty()
            if do_restore:
                t = time.monotonic()
                o = subprocess.run([crest, "restore", "-i", f"{d}/img", "-d"], capture_output=True, text=True)
                dt = time.monotonic() - t
                assert o.returncode == 0, o.stderr
                res[m]["restore"].append(dt * 1000)
                os.kill(int(o.stdout.strip()), signal.SIGKILL)
                empty()
            shutil.rmtree(d)
finally:
    empty()
    os.rmdir(cg)
for m in modes:
    print(f"N={n} CREST_CGROUP_FREEZE={m} runs={runs}: " + ", ".join(
        f"{k} median {statistics.median(v):.1f} ms (min {min(v):.1f}, max {max(v):.1f})" for k, v in res[m].items() if v))
