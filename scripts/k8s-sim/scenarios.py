"""The scenarios of issue 14 part 2, on the pod simulator (podsim.py), with real mariadbd,
mariabackup and xbagent. What the test supplies is only what an operator supplies: Secret
values, the recipients ConfigMap, the env edits deploy/README.md describes, and the trigger of
a CronJob (`kubectl create job --from=cronjob/...`)."""

import base64
import os
import re
import shutil
import subprocess
import threading
import time

import podsim
from podsim import log

STS = "mariadb"


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)
    log(f"ok: {msg}")


def b64(n):
    return base64.b64encode(os.urandom(n)).decode()


class Env:
    """The cluster and the operator's data; state shared by the scenarios, which run in order
    on one cluster (each brings it to the state it needs when run alone)."""

    def __init__(self, repo, state, xbagent):
        self.repo = repo
        self.state = state
        self.cluster = podsim.Cluster(os.path.join(repo, "deploy", "kubernetes"), state, xbagent)
        self.xbagent = xbagent
        self.root_pw = b64(24)
        self.s3_dir = os.path.join(state, "s3")
        self.s3 = {}
        self.key_file = os.path.join(state, "age-key.txt")
        self.recipient = None
        self.seeded = False

    # --- set-up -------------------------------------------------------------------------
    def up(self, need_s3=True):
        c = self.cluster
        c.net_up()
        if need_s3:
            self.s3_up()
        subprocess.run(["age-keygen", "-o", self.key_file], check=True, capture_output=True)
        self.recipient = subprocess.run(["age-keygen", "-y", self.key_file], check=True, capture_output=True,
                                        text=True).stdout.strip()
        with open(self.key_file) as f:
            self.identity = f.read()
        # secret.yaml, backup-secret.yaml, backup-recipients.yaml, configmap.yaml, with the
        # values the operator fills in; the identity Secret is created for restores only.
        c.apply_secret("mariadb-clone", {"token": b64(32)})
        c.apply_secret("mariadb-root", {"password": self.root_pw})
        if need_s3:
            c.apply_secret("xbagent-s3", {"AWS_ACCESS_KEY_ID": self.s3["AWS_ACCESS_KEY_ID"],
                                          "AWS_SECRET_ACCESS_KEY": self.s3["AWS_SECRET_ACCESS_KEY"]})
        c.apply_configmap("mariadb")
        c.apply_configmap("xbagent-recipients", {"recipients.txt": f"# the backup key\n{self.recipient}\n"})

    def s3_up(self, extra_env=None, make_bucket=True):
        env = dict(os.environ, XBAGENT_S3_LISTEN=f"{podsim.HOST_IP}:9000", **(extra_env or {}))
        subprocess.run([os.path.join(self.repo, "scripts", "s3-server"), "start", "s3s-fs", self.s3_dir],
                       check=True, env=env)
        with open(os.path.join(self.s3_dir, "env")) as f:
            for line in f:
                m = re.match(r"export (\w+)='(.*)'$", line.strip())
                if m:
                    self.s3[m.group(1)] = m.group(2)
        self.endpoint = self.s3["XBAGENT_TEST_S3_ENDPOINT"]
        if not make_bucket:
            return
        # The operator's bucket (deploy/README.md: `mc mb minio/mariadb-backups`).
        subprocess.run(["curl", "-sf", "-X", "PUT", "--aws-sigv4", "aws:amz:us-east-1:s3",
                        "--user", f"{self.s3['AWS_ACCESS_KEY_ID']}:{self.s3['AWS_SECRET_ACCESS_KEY']}",
                        "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD",
                        f"{self.endpoint}/mariadb-backups"], check=True)

    def down(self):
        try:
            self.cluster.shutdown()
        finally:
            subprocess.run([os.path.join(self.repo, "scripts", "s3-server"), "stop", self.s3_dir],
                           check=False, capture_output=True)

    # --- SQL ----------------------------------------------------------------------------
    def pod(self, i):
        return self.cluster.pods[f"{STS}-{i}"]

    def sql(self, i, q, timeout=60):
        """`kubectl exec mariadb-N -c mariadb -- mariadb -e Q` (socket, root)."""
        r = self.pod(i).exec("mariadb", ["bash", "-c", 'exec mariadb -uroot -p"$MARIADB_ROOT_PASSWORD" -N -B -e "$1"',
                                         "sql", q], timeout=timeout)
        if r.returncode != 0:
            raise Fail(f"SQL on {STS}-{i} failed: {q}: {r.stderr.strip()}")
        return r.stdout.strip()

    def host_sql(self, ip, q):
        r = subprocess.run(["mariadb", "-h", ip, "-uroot", f"-p{self.root_pw}", "-N", "-B", "-e", q],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise Fail(f"SQL on {ip} failed: {q}: {r.stderr.strip()}")
        return r.stdout.strip()

    def checksums(self, i):
        return self.sql(i, "CHECKSUM TABLE sim.t, sim.big, sim.pitr EXTENDED")

    def slave_status(self, i):
        out = self.pod(i).exec("mariadb", ["bash", "-c", 'exec mariadb -uroot -p"$MARIADB_ROOT_PASSWORD" -e "SHOW SLAVE STATUS\\G"'],
                               timeout=30).stdout
        st = {}
        for line in out.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                st[k.strip()] = v.strip()
        return st

    def wait_caught_up(self, replicas, timeout=120):
        end = time.time() + timeout
        want = None
        while time.time() < end:
            want = self.sql(0, "SELECT @@gtid_binlog_pos")
            have = [self.sql(i, "SELECT @@gtid_slave_pos") for i in replicas]
            if all(h == want for h in have):
                return want
            time.sleep(0.5)
        raise Fail(f"replicas {replicas} did not reach the primary's GTID {want} within {timeout}s")

    def check_consistent(self, replicas):
        gtid = self.wait_caught_up(replicas)
        log(f"replicas {replicas} at the primary's GTID position {gtid}")
        want = self.checksums(0)
        for i in replicas:
            check(self.checksums(i) == want, f"{STS}-{i}: CHECKSUM TABLE equal to the primary's")
            st = self.slave_status(i)
            check(st.get("Slave_IO_Running") == "Yes" and st.get("Slave_SQL_Running") == "Yes"
                  and st.get("Last_IO_Errno") == "0" and st.get("Last_SQL_Errno") == "0"
                  and st.get("Master_Host") == "mariadb-0.mariadb",
                  f"{STS}-{i}: replicating from mariadb-0.mariadb, both threads Yes, no error "
                  f"(IO {st.get('Slave_IO_Running')}, SQL {st.get('Slave_SQL_Running')}, "
                  f"errno {st.get('Last_IO_Errno')}/{st.get('Last_SQL_Errno')})")

    def pvc(self, claim):
        return os.path.join(self.cluster.state, "pvc", claim)

    # --- bring-up -----------------------------------------------------------------------
    def seed(self):
        """Pod 0 and the test's tables: rows, and ~24 MB in sim.big so that a clone takes a
        while on a rate-limited link (scenario 2)."""
        self.cluster.scale(STS, 1)
        if not self.seeded:
            self.sql(0, "CREATE DATABASE sim; CREATE DATABASE seq;"
                        "CREATE TABLE sim.t (id INT AUTO_INCREMENT PRIMARY KEY, phase VARCHAR(16) NOT NULL, pad VARCHAR(200));"
                        "CREATE TABLE sim.big (id INT PRIMARY KEY, pad VARCHAR(1000));"
                        "CREATE TABLE sim.pitr (id INT PRIMARY KEY);"
                        "INSERT INTO sim.big SELECT seq, REPEAT(SHA2(seq, 256), 15) FROM seq.seq_1_to_24000")
            self.seeded = True

    def ensure_three(self):
        self.seed()
        self.cluster.scale(STS, 3)


class Writer:
    """Rows written on the primary from the host over the pod network, one autocommit INSERT
    every 10 ms through one client connection, tagged with the current phase."""

    def __init__(self, env, phase):
        self.env = env
        self.phase = phase
        self.counts = {}
        self.stop_ev = threading.Event()
        self.proc = subprocess.Popen(["mariadb", "-h", env.pod(0).ip, "-uroot", f"-p{env.root_pw}", "-B"],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while not self.stop_ev.is_set():
            ph = self.phase
            try:
                self.proc.stdin.write(f"INSERT INTO sim.t (phase, pad) VALUES ('{ph}', REPEAT('w', 150));\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                return
            self.counts[ph] = self.counts.get(ph, 0) + 1
            time.sleep(0.01)

    def stop(self):
        self.stop_ev.set()
        self.thread.join()
        self.proc.stdin.close()
        rc = self.proc.wait(60)
        if rc != 0:
            raise Fail(f"the writer's client failed (exit {rc}): {self.proc.stderr.read().strip()}")
        log(f"writer: {self.counts}")
        return self.counts


def scrape(ip, port, path="/metrics"):
    """GET http://IP:PORT/PATH from the host, as Prometheus would: (status, {series: value})."""
    r = subprocess.run(["curl", "-s", "--max-time", "5", "-w", "\n%{http_code}", f"http://{ip}:{port}{path}"],
                       capture_output=True, text=True)
    body, _, code = r.stdout.rpartition("\n")
    series = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                series[name] = float(value)
            except ValueError:
                pass
    return (int(code) if code.isdigit() else 0), series


def check_serve_metrics(env, i, served):
    """The serve sidecar's /readyz and /metrics (statefulset.yaml's --metrics-listen :9307)."""
    ip = env.pod(i).ip
    code, _ = scrape(ip, 9307, "/readyz")
    check(code == 200, f"{STS}-{i}: serve's /readyz is 200 (got {code})")
    code, m = scrape(ip, 9307)
    check(code == 200, f"{STS}-{i}: serve's /metrics is 200 (got {code})")
    got = {k: m.get(f"xbagent_clones_{k}_total") for k in ("served", "failed", "refused")}
    check(got == {"served": served, "failed": 0, "refused": 0},
          f"{STS}-{i}: clones served/failed/refused = {served}/0/0 (got {got})")
    sent = m.get("xbagent_clone_bytes_sent_total", 0)
    check((sent > 0) == (served > 0), f"{STS}-{i}: clone bytes sent {sent:.0f}")
    check((m.get("xbagent_last_clone_duration_seconds", 0) > 0) == (served > 0),
          f"{STS}-{i}: last clone duration {m.get('xbagent_last_clone_duration_seconds')}")


def applied_gtid(env, i):
    with open(os.path.join(env.pvc(f"data-{STS}-{i}"), "mysql", "xtrabackup_binlog_info.applied")) as f:
        return f.read().split()[2]


# --- scenario 1 -------------------------------------------------------------------------
def scenario1(env):
    """The StatefulSet scales to 3: pod 1 clones pod 0, pod 2 clones pod 1, both replicate from
    the primary; rows written before, during and after the clones are on all three."""
    env.seed()
    w = Writer(env, "before")
    time.sleep(2)
    w.phase = "during"
    env.cluster.scale(STS, 3)
    w.phase = "after"
    time.sleep(2)
    counts = w.stop()
    check(all(counts.get(p, 0) > 0 for p in ("before", "during", "after")), "rows written before, during and after the clones")
    for i, donor in ((1, 0), (2, 1)):
        p = env.pod(i)
        clone_logs = p.logs("clone-mariadb")
        check(len(clone_logs) == 1 and p.history[1].proc.returncode == 0, f"{STS}-{i}: one clone, exit 0")
        donor_log = "\n".join(t for _, t in env.pod(donor).logs("xbagent"))
        check(p.ip in donor_log, f"{STS}-{i} ({p.ip}) was served by {STS}-{donor}'s sidecar (its log names the receiver)")
        gtid = applied_gtid(env, i)
        side = "\n".join(t for _, t in p.logs("xbagent"))
        check(f"starting replication from mariadb-0.mariadb at GTID {gtid}" in side,
              f"{STS}-{i}: replication started at the clone's recorded GTID {gtid}")
        # The clone holds rows of 'before' and only part of the rest: the others came by replication.
        n_at_clone = int(gtid.split("-")[2])
        check(n_at_clone < int(env.sql(0, "SELECT @@gtid_binlog_pos").split("-")[2]),
              f"{STS}-{i}: transactions after the clone's position ({gtid}) arrived by replication")
    env.check_consistent([1, 2])
    for i, served in ((0, 1), (1, 1), (2, 0)):
        check_serve_metrics(env, i, served)
    for ph, n in counts.items():
        for i in (0, 1, 2):
            got = int(env.sql(i, f"SELECT COUNT(*) FROM sim.t WHERE phase = '{ph}'"))
            check(got >= n - 1 and got <= n, f"{STS}-{i}: {got} rows of phase {ph} (writer sent {n})")


# --- scenario 3 -------------------------------------------------------------------------
def scenario3(env):
    """A pod restarts after its clone: no second clone, no second prepare, replication resumes."""
    env.ensure_three()
    marker = os.path.join(env.pvc(f"data-{STS}-2"), "mysql", ".mariabackup-prepared")
    clone_marker = os.path.join(env.pvc(f"data-{STS}-2"), "mysql", ".xbagent-clone-complete")
    before = (os.stat(marker).st_mtime_ns, os.stat(clone_marker).st_mtime_ns)
    env.cluster.delete_pod(f"{STS}-2", graceful=True)
    w = Writer(env, "while-down")
    time.sleep(2)
    counts = w.stop()
    p = env.cluster.statefulset_pod(STS, 2)
    p.wait_ready(180)
    clone = p.logs("clone-mariadb")
    check(len(clone) == 1 and p.history[1].proc.returncode == 0, f"{STS}-2 restarted: clone-mariadb ran once, exit 0")
    log(f"clone-mariadb on restart said: {clone[0][1].strip()!r}")
    check("complete" in clone[0][1].lower(), "clone-mariadb's log says the clone is already complete")
    prep = p.logs("prepare-mariadb")
    check(prep[0][1].strip() == "", f"prepare-mariadb printed nothing (no mariabackup --prepare): {prep[0][1][:200]!r}")
    check((os.stat(marker).st_mtime_ns, os.stat(clone_marker).st_mtime_ns) == before,
          ".mariabackup-prepared and .xbagent-clone-complete untouched")
    side = "\n".join(t for _, t in p.logs("xbagent"))
    check("starting replication" not in side, "the sidecar did not set up replication again")
    env.check_consistent([1, 2])
    got = int(env.sql(2, "SELECT COUNT(*) FROM sim.t WHERE phase = 'while-down'"))
    check(got >= counts["while-down"] - 1, f"{STS}-2 has the {got} rows written while it was down")


# --- scenario 2 -------------------------------------------------------------------------
def dir_bytes(d):
    total = 0
    for root, _, files in os.walk(d):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def scenario2(env):
    """The donor pod is deleted mid-clone: the receiving initContainer fails, is restarted by
    the kubelet, and completes once the donor is back; the replica is consistent."""
    env.ensure_three()
    c = env.cluster
    # Pod 2 loses its volume (`kubectl delete pvc data-mariadb-2` with the pod): it clones anew.
    c.delete_pod(f"{STS}-2")
    shutil.rmtree(env.pvc(f"data-{STS}-2"))
    w = Writer(env, "scenario2")
    p2 = None
    veth = "xbsv" + c.ip_of(f"{STS}-2").rsplit(".", 1)[1]
    # The network of a busy cluster: 16 Mbit/s into pod 2, so that the clone lasts ~20 s.
    c.pre_start = lambda pod: subprocess.run(
        ["tc", "qdisc", "add", "dev", veth, "root", "tbf", "rate", "16mbit", "burst", "64kb", "latency", "500ms"],
        check=True) if pod.name == f"{STS}-2" else None
    try:
        p2 = c.statefulset_pod(STS, 2)
    finally:
        c.pre_start = None
    target = os.path.join(env.pvc(f"data-{STS}-2"), "mysql")
    end = time.time() + 120
    while dir_bytes(target) < 8 << 20:
        if time.time() > end or p2.init_done:
            raise Fail("the clone did not reach 8 MiB within 120 s, or finished first")
        time.sleep(0.2)
    # `kubectl delete pod mariadb-1`: SIGTERM, then SIGKILL after the grace period. With
    # XBSIM_HARD_KILL=1, SIGKILL at once (`--force --grace-period=0`, a node lost): the donor's
    # unsent data and FIN die with its network namespace, and the receiver only notices by its
    # --stall-timeout (5 min by default).
    hard = os.environ.get("XBSIM_HARD_KILL") == "1"
    log(f"{STS}-2 received {dir_bytes(target) >> 20} MiB: deleting the donor {STS}-1 ({'SIGKILL' if hard else 'graceful'})")
    t_kill = time.time()
    c.delete_pod(f"{STS}-1", graceful=not hard)
    subprocess.run(["tc", "qdisc", "del", "dev", veth, "root"], check=False)
    # The StatefulSet controller recreates the pod at once.
    p1 = c.statefulset_pod(STS, 1)
    first = p2.history[1]
    first.proc.wait(400 if hard else 120)
    log(f"the receiving clone-mariadb exited {time.time() - t_kill:.1f}s after the donor's deletion began")
    check(first.name == "clone-mariadb" and first.proc.returncode != 0,
          f"the clone attempt failed when its donor died (exit {first.proc.returncode}): {first.read_log().strip()[-300:]!r}")
    p1.wait_ready(180)
    p2.wait_ready(300)
    runs = [x for x in p2.history if x.name == "clone-mariadb"]
    check(len(runs) >= 2 and runs[-1].proc.returncode == 0,
          f"clone-mariadb restarted by the kubelet and completed ({len(runs)} runs, exits {[x.proc.returncode for x in runs]})")
    w.stop()
    env.check_consistent([1, 2])


# --- scenario 4 -------------------------------------------------------------------------
def job_log(pods, container):
    return "\n".join(f"--- {p.name}\n" + "\n".join(t for _, t in p.logs(container)) for p in pods)


def verify_server(env, claim, name):
    """A server started on a restored volume (the mariadb container of statefulset.yaml with
    the same image, env and mount; replication not started)."""
    c = env.cluster
    sts = c.objs[("StatefulSet", STS)]["spec"]["template"]["spec"]
    m = next(x for x in sts["containers"] if x["name"] == "mariadb")
    spec = {"containers": [dict(m, args=["--skip-slave-start", "--skip-log-bin"],
                                volumeMounts=[{"name": "data", "mountPath": "/var/lib/mysql", "subPath": "mysql"}])],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}
    p = c.start_pod(name, spec, "Always")
    p.wait_ready(120)
    return p


def pod_sql(p, q):
    r = p.exec("mariadb", ["bash", "-c", 'exec mariadb -uroot -p"$MARIADB_ROOT_PASSWORD" -N -B -e "$1"', "sql", q], timeout=60)
    if r.returncode != 0:
        raise Fail(f"SQL on {p.name} failed: {q}: {r.stderr}")
    return r.stdout.strip()


def backup_job(env, name, **overrides):
    ok, pods = env.cluster.run_job(env.cluster.cronjob("mariadb-backup"), name, env_override=overrides)
    text = job_log(pods, "backup")
    check(ok, f"backup Job {name} succeeded: {text.strip()[-400:]!r}")
    return text


def restore_job(env, timeout=300, **overrides):
    c = env.cluster
    # A fresh volume: `kubectl delete pvc mariadb-restore` and apply restore-job.yaml again.
    shutil.rmtree(env.pvc("mariadb-restore"), ignore_errors=True)
    c.apply_secret("xbagent-identity", {"identity.txt": env.identity})
    try:
        # restore-job.yaml's activeDeadlineSeconds is a day; the test's own bound is shorter.
        ok, pods = c.run_job(c.job("mariadb-restore"), "mariadb-restore", env_override=overrides, timeout=timeout)
    finally:
        c.secrets.pop("xbagent-identity", None)
    text = job_log(pods, "restore")
    check(ok, f"restore Job ({overrides}) succeeded: {text.strip()[-600:]!r}")
    return text


def scenario4(env):
    """The backup CronJob (encrypted, to s3s-fs), the restore Job into a fresh volume, a server
    on it: CHECKSUM TABLE equal. Then the point-in-time variant with UNTIL_GTID."""
    env.ensure_three()
    env.wait_caught_up([1, 2])
    want = env.checksums(0)
    # The Jobs' optional PUSHGATEWAY: a real Pushgateway on the node's bridge address.
    gw_url = f"http://{podsim.NET_PREFIX}.1:9091"
    gw = subprocess.Popen(["prometheus-pushgateway", f"--web.listen-address={podsim.NET_PREFIX}.1:9091"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        scenario4_backup_restore(env, want, gw_url)
    finally:
        gw.terminate()
        gw.wait(10)
    scenario4_pitr(env, want)


def pushed(gw_url, job):
    """The Pushgateway's series of one job: {metric name: value}."""
    code, m = scrape(gw_url.split("//")[1].split(":")[0], 9091)
    check(code == 200, f"Pushgateway /metrics is 200 (got {code})")
    return {k.split("{")[0]: v for k, v in m.items() if f'job="xbagent_{job}"' in k}


def scenario4_backup_restore(env, want, gw_url):
    time.sleep(0.5)
    text = backup_job(env, "backup-now", PUSHGATEWAY=gw_url)
    summary = [l for l in text.splitlines() if l.startswith("xbagent: summary: upload ")]
    check(len(summary) == 1 and " result=ok " in summary[0], f"the backup Job's summary line: {summary}")
    got = pushed(gw_url, "upload")
    bytes_ = re.search(r" bytes=(\d+)", summary[0])
    check(got.get("xbagent_backup_result") == 1 and bytes_ and got.get("xbagent_backup_bytes") == float(bytes_.group(1)),
          f"the Pushgateway holds the upload's result 1 and bytes {bytes_ and bytes_.group(1)} (got {got})")
    check(f"encrypting for: {env.recipient}" in text, "the backup was encrypted for the ConfigMap's recipient")
    ls = subprocess.run([env.xbagent, "backups", "list", "s3://mariadb-backups/mariadb", "--endpoint", env.endpoint, "--json"],
                        capture_output=True, text=True, env=dict(os.environ, **env.s3))
    check(ls.returncode == 0 and env.recipient in ls.stdout, "backups list: the backup names its recipient")
    text = restore_job(env, PUSHGATEWAY=gw_url)
    check("restored s3://mariadb-backups/mariadb@latest into /restore/mysql and prepared it" in text, "restore Job's last line")
    got = pushed(gw_url, "restore")
    check(got.get("xbagent_backup_result") == 1 and got.get("xbagent_backup_bytes", 0) > 0,
          f"the Pushgateway holds the restore's result 1 and its bytes (got {got})")
    p = verify_server(env, "mariadb-restore", "restored")
    got = pod_sql(p, "CHECKSUM TABLE sim.t, sim.big, sim.pitr EXTENDED")
    env.cluster.delete_pod("restored", graceful=True)
    check(got == want, "the restored server's CHECKSUM TABLE equals the primary's at the backup")


def scenario4_pitr(env, want):
    # Point in time: rows 1..20 after the backup, each GTID recorded; restore up to row 10's.
    gtids = []
    for i in range(1, 21):
        gtids.append(env.host_sql(env.pod(0).ip, f"INSERT INTO sim.pitr VALUES ({i}); SELECT @@last_gtid"))
    target = gtids[9]
    env.sql(0, "FLUSH BINARY LOGS")
    end = time.time() + 180
    while True:
        r = subprocess.run([env.xbagent, "binlogs", "list", "s3://mariadb-backups/mariadb", "--endpoint", env.endpoint, "--json"],
                           capture_output=True, text=True, env=dict(os.environ, **env.s3))
        if r.returncode == 0 and gtids[-1] in r.stdout:
            break
        if time.time() > end:
            raise Fail(f"the binlogs sidecar did not archive {gtids[-1]} within 180 s: {r.stdout[-500:]} {r.stderr[-500:]}")
        time.sleep(2)
    log(f"archived up to {gtids[-1]}; restoring to {target}")
    # The binlogs sidecar's metrics (statefulset.yaml's --metrics-listen :9308): its last
    # archived event is the last insert, committed within the last few seconds.
    code, m = scrape(env.pod(0).ip, 9308)
    check(code == 200, f"binlogs push /metrics is 200 (got {code})")
    last = m.get("xbagent_binlog_last_event_timestamp_seconds", 0)
    check(time.time() - 200 < last <= time.time() + 1, f"binlogs push: last archived event at {last:.0f} (now {time.time():.0f})")
    check(m.get("xbagent_binlog_segments_archived_total", 0) >= 1 and m.get("xbagent_binlog_bytes_archived_total", 0) > 0,
          f"binlogs push: segments/bytes archived {m.get('xbagent_binlog_segments_archived_total')}/{m.get('xbagent_binlog_bytes_archived_total')}")
    check(m.get("xbagent_binlog_lag_seconds", -1) == 0, f"binlogs push: caught up, lag {m.get('xbagent_binlog_lag_seconds')}")
    text = restore_job(env, UNTIL_GTID=target)
    p = verify_server(env, "mariadb-restore", "restored-pitr")
    ids = pod_sql(p, "SELECT GROUP_CONCAT(id ORDER BY id) FROM sim.pitr")
    other = pod_sql(p, "CHECKSUM TABLE sim.t, sim.big EXTENDED")
    env.cluster.delete_pod("restored-pitr", graceful=True)
    check(ids == ",".join(str(i) for i in range(1, 11)), f"point-in-time restore to {target}: rows 1..10 exactly (got {ids})")
    check(other == "\n".join(want.splitlines()[:2]), "and the other tables as at the backup")


SCENARIOS = {"1": scenario1, "3": scenario3, "2": scenario2, "4": scenario4}


# --- scenario 5 -------------------------------------------------------------------------
FAKETIME_ENV = {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
                "FAKETIME": "+8d", "DONT_FAKE_MONOTONIC": "1"}


def scenario5(env):
    """The prune CronJob, 8 days after the backups, leaves the 7 newest complete ones and
    removes the older ones and an incomplete one (a backup Job deleted mid-upload)."""
    env.ensure_three()
    c = env.cluster
    bdir = os.path.join(env.s3_dir, "data", "mariadb-backups", "mariadb")

    def ids():
        # s3s-fs leaves a deleted prefix's directories behind: a backup is there while it has objects.
        if not os.path.isdir(bdir):
            return []
        return sorted(d for d in os.listdir(bdir) if d != "binlogs" and any(f for _, _, f in os.walk(os.path.join(bdir, d))))

    def complete(i):
        return os.path.exists(os.path.join(bdir, i, "manifest.json"))

    # `kubectl delete job` while its pod uploads: SIGKILL, no retry; an incomplete backup stays.
    before = set(ids())
    spec = c.cronjob("mariadb-backup")["template"]["spec"]
    p = c.start_pod("backup-deleted-001", spec, "Never")
    end = time.time() + 120
    while not (set(ids()) - before):
        if time.time() > end or p.done.is_set():
            raise Fail("the backup pod to be deleted started no upload within 120 s (or ended first)")
        time.sleep(0.1)
    c.delete_pod(p.name)
    (killed,) = set(ids()) - before
    check(not complete(killed), f"backup {killed}, its Job deleted mid-upload, is incomplete")
    k = 0
    while sum(complete(i) for i in ids()) < 9:
        k += 1
        backup_job(env, f"backup-{k:02d}")
    done = [i for i in ids() if complete(i)]
    want = done[-7:]
    log(f"backups: {len(done)} complete, incomplete {killed}; policy keeps {want}")
    # Eight days later: the S3 server's clock and the prune pod's node clock both (s3s-fs
    # refuses requests more than 15 minutes off its own clock), through libfaketime.
    subprocess.run([os.path.join(env.repo, "scripts", "s3-server"), "stop", env.s3_dir], check=True, capture_output=True)
    env.s3_up(extra_env=dict(FAKETIME_ENV, XBAGENT_S3_KEY=f"{env.s3['AWS_ACCESS_KEY_ID']}:{env.s3['AWS_SECRET_ACCESS_KEY']}"),
              make_bucket=False)
    c.node_env = FAKETIME_ENV
    try:
        ok, pods = c.run_job(c.cronjob("mariadb-backup-prune"), "prune-now", timeout=300)
    finally:
        c.node_env = {}
    text = job_log(pods, "prune")
    check(ok, f"prune Job succeeded: {text.strip()[-500:]!r}")
    check(ids() == want, f"left exactly the 7 newest complete backups (left {ids()})")
    check(all(i in text for i in want) and "2026" in text, "the prune Job's log lists what is left")
    # The newest kept backup still restores (the restore Job on the same 8-days-later node).
    c.node_env = FAKETIME_ENV
    try:
        restore_job(env)
    finally:
        c.node_env = {}
    p = verify_server(env, "mariadb-restore", "restored-after-prune")
    got = pod_sql(p, "CHECKSUM TABLE sim.t, sim.big, sim.pitr EXTENDED")
    c.delete_pod(p.name, graceful=True)
    check(got == env.checksums(0), "the newest kept backup restores: CHECKSUM TABLE equal to the primary's")


SCENARIOS["5"] = scenario5
