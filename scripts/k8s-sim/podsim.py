"""A pod simulator: runs the pods of deploy/kubernetes/*.yaml on this host, the way a kubelet would.

Each pod is a network namespace on a bridge; each container a process tree in its own mount,
UTS and PID namespaces, on an overlay of the host's root file system (the "image"), with the
pod's volumes bind-mounted where its volumeMounts say. The containers' command, args and env
come from the YAML unchanged. What stands in for the mariadb:10.11 image is in image.py and
README.md. Needs root, iproute2, util-linux (unshare, nsenter, setpriv) and overlayfs.
"""

import os
import shutil
import signal
import subprocess
import threading
import time

import yaml

import image

NET_PREFIX = "10.99.0"
HOST_IP = NET_PREFIX + ".1"
BRIDGE = "xbsim0"
NS_PREFIX = "xbsim-"
NAMESPACE = "default"
# Kubernetes' back-off for a failing container is 10 s doubling to 5 min; scaled down here
# (XBSIM_BACKOFF_SCALE, default 0.2: 2 s doubling to 60 s) so that scenarios stay short.
BACKOFF_SCALE = float(os.environ.get("XBSIM_BACKOFF_SCALE", "0.2"))

SETUP_SH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "container-setup.sh")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, **kw)


class SimError(Exception):
    pass


def load_manifests(directory):
    """Every document of every *.yaml file, by (kind, name)."""
    objs = {}
    for f in sorted(os.listdir(directory)):
        if not f.endswith(".yaml") or f == "kustomization.yaml":
            continue
        with open(os.path.join(directory, f)) as fh:
            for doc in yaml.safe_load_all(fh):
                if doc and "kind" in doc:
                    objs[(doc["kind"], doc["metadata"]["name"])] = doc
    return objs


class Cluster:
    """One node: the bridge, the S3 name, the pods, the operator's Secrets and ConfigMaps."""

    def __init__(self, manifests_dir, state, xbagent_bin):
        self.objs = load_manifests(manifests_dir)
        self.state = os.path.abspath(state)
        self.xbagent_bin = os.path.abspath(xbagent_bin)
        self.pods = {}
        self.lock = threading.RLock()
        self.next_ip = 10
        self.ips = {}
        # What the operator created: kind -> name -> {key: str}. Secrets start from the YAML's
        # stringData/data (empty values on purpose), ConfigMaps from data.
        self.secrets = {}
        self.configmaps = {}
        self.job_seq = 0
        # A hook called with each new pod once its network exists (scenario 2's rate limit).
        self.pre_start = None
        # Environment every new container gets from "the node" (scenario 5: libfaketime, the
        # node's clock some days ahead).
        self.node_env = {}
        for d in ("pvc", "pods", "logs", "image"):
            os.makedirs(os.path.join(self.state, d), exist_ok=True)
        self.image_dir = image.build(os.path.join(self.state, "image"), self.xbagent_bin)

    # --- operator actions -------------------------------------------------------------
    def apply_secret(self, name, values=None):
        """`kubectl apply -f` of the YAML's Secret, with the values the operator fills in."""
        doc = self.objs.get(("Secret", name))
        data = dict((doc or {}).get("stringData") or {})
        if values:
            data.update(values)
        self.secrets[name] = data

    def apply_configmap(self, name, values=None):
        doc = self.objs.get(("ConfigMap", name))
        data = dict((doc or {}).get("data") or {})
        if values:
            data.update(values)
        self.configmaps[name] = data

    # --- network ----------------------------------------------------------------------
    def net_up(self):
        self.net_down()
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "addr", "add", HOST_IP + "/24", "dev", BRIDGE])
        run(["ip", "link", "set", BRIDGE, "up"])

    def net_down(self):
        for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n"):
            ns = ns.split(" ")[0]
            if ns.startswith(NS_PREFIX):
                run(["ip", "netns", "delete", ns], check=False)
                shutil.rmtree("/etc/netns/" + ns, ignore_errors=True)
        run(["ip", "link", "delete", BRIDGE], check=False, stderr=subprocess.DEVNULL)

    def ip_of(self, pod):
        with self.lock:
            if pod not in self.ips:
                self.ips[pod] = f"{NET_PREFIX}.{self.next_ip}"
                self.next_ip += 1
            return self.ips[pod]

    def hosts_text(self, pod):
        """The pod's /etc/hosts: its own names (as the kubelet writes them), the Ready pods of
        the headless Service (as cluster DNS would answer), and the S3 endpoint's name."""
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        me = self.pods.get(pod)
        names = set()
        if me is not None:
            fq = [pod]
            if me.subdomain:
                fq = [f"{pod}.{me.subdomain}.{NAMESPACE}.svc.cluster.local", f"{pod}.{me.subdomain}", pod]
            lines.append(f"{me.ip}\t" + " ".join(fq))
            names.update(fq)
        for name, p in sorted(self.pods.items()):
            if name == pod or not p.subdomain or not p.ready:
                continue
            lines.append(f"{p.ip}\t{name}.{p.subdomain}.{NAMESPACE}.svc.cluster.local {name}.{p.subdomain}")
        lines.append(f"{HOST_IP}\tminio.minio.svc minio.minio.svc.cluster.local")
        return "\n".join(lines) + "\n"

    def refresh_hosts(self):
        with self.lock:
            for name, p in self.pods.items():
                if p.hosts_file and os.path.exists(p.hosts_file):
                    # In place (same inode): the containers see it through a bind mount.
                    with open(p.hosts_file, "r+") as f:
                        f.seek(0)
                        f.write(self.hosts_text(name))
                        f.truncate()

    # --- pods -------------------------------------------------------------------------
    def pvc_dir(self, claim):
        d = os.path.join(self.state, "pvc", claim)
        os.makedirs(d, exist_ok=True)
        return d

    def start_pod(self, name, spec, restart_policy, subdomain=None, claims=None):
        with self.lock:
            old = self.pods.get(name)
            if old is not None and not old.gone:
                raise SimError(f"pod {name} exists")
            inc = (old.incarnation + 1) if old is not None else 1
            p = Pod(self, name, spec, restart_policy, subdomain, claims or {}, inc)
            self.pods[name] = p
        p.start()
        return p

    def delete_pod(self, name, graceful=False):
        p = self.pods.get(name)
        if p is not None:
            p.delete(graceful)

    def shutdown(self):
        for p in list(self.pods.values()):
            p.delete(graceful=False)
        self.net_down()

    # --- StatefulSet ------------------------------------------------------------------
    def statefulset_pod(self, sts_name, ordinal):
        sts = self.objs[("StatefulSet", sts_name)]
        name = f"{sts_name}-{ordinal}"
        claims = {t["metadata"]["name"]: f"{t['metadata']['name']}-{name}"
                  for t in sts["spec"].get("volumeClaimTemplates", [])}
        return self.start_pod(name, sts["spec"]["template"]["spec"], "Always",
                              subdomain=sts["spec"]["serviceName"], claims=claims)

    def scale(self, sts_name, replicas, timeout=600):
        """OrderedReady: pod N+1 is created once pod N is Ready."""
        for i in range(replicas):
            name = f"{sts_name}-{i}"
            p = self.pods.get(name)
            if p is None or p.gone:
                p = self.statefulset_pod(sts_name, i)
            p.wait_ready(timeout)

    # --- Jobs -------------------------------------------------------------------------
    def run_job(self, job_spec, job_name, env_override=None, timeout=900, on_pod=None):
        """Runs a Job's pod template (restartPolicy Never) with backoffLimit, podFailurePolicy
        and activeDeadlineSeconds. Returns (succeeded, [pods])."""
        spec = yaml.safe_load(yaml.safe_dump(job_spec["template"]["spec"]))
        if env_override:
            for c in spec["containers"]:
                for e in c.get("env", []):
                    if e["name"] in env_override:
                        e["value"] = env_override[e["name"]]
        backoff_limit = job_spec.get("backoffLimit", 6)
        deadline = job_spec.get("activeDeadlineSeconds")
        start = time.time()
        rules = (job_spec.get("podFailurePolicy") or {}).get("rules", [])
        pods = []
        failures = 0
        while True:
            self.job_seq += 1
            pname = f"{job_name}-{self.job_seq:03d}"
            p = self.start_pod(pname, spec, "Never")
            pods.append(p)
            if on_pod:
                on_pod(p)
            limit = timeout if deadline is None else min(timeout, deadline - (time.time() - start))
            if not p.wait_done(max(limit, 0)):
                log(f"job {job_name}: pod {pname} past the deadline: deleting it")
                p.delete(graceful=True)
                return False, pods
            if p.phase == "Succeeded":
                return True, pods
            for r in rules:
                oc = r.get("onExitCodes")
                if not oc:
                    continue
                rc = p.exit_codes.get(oc.get("containerName"))
                if rc is not None and ((oc["operator"] == "In") == (rc in oc["values"])):
                    if r["action"] == "FailJob":
                        log(f"job {job_name}: podFailurePolicy FailJob on exit {rc}")
                        return False, pods
            failures += 1
            if failures > backoff_limit:
                log(f"job {job_name}: backoffLimit {backoff_limit} reached")
                return False, pods
            time.sleep(min(10 * 2 ** (failures - 1), 360) * BACKOFF_SCALE)

    def cronjob(self, name):
        return self.objs[("CronJob", name)]["spec"]["jobTemplate"]["spec"]

    def job(self, name):
        return self.objs[("Job", name)]["spec"]


class Container:
    """One run of one container: a process tree in its own namespaces."""

    def __init__(self, pod, spec, attempt, init):
        self.pod = pod
        self.spec = spec
        self.name = spec["name"]
        self.attempt = attempt
        self.init = init
        self.proc = None
        self.init_pid = None
        self.log_path = os.path.join(pod.log_dir, f"{self.name}.{attempt}.log")
        self.started_file = os.path.join(pod.dir, "ctr", f"{self.name}.{attempt}.started")
        self.uid, self.gid = pod.user_of(spec)
        self.env = pod.container_env(spec, self.uid)

    def argv(self):
        """command/args as the kubelet combines them with the image's ENTRYPOINT/CMD."""
        cmd = self.spec.get("command")
        args = self.spec.get("args")
        if cmd is None:
            # The image's ENTRYPOINT ["docker-entrypoint.sh"], CMD ["mariadbd"].
            cmd = [image.ENTRYPOINT]
            if args is None:
                args = ["mariadbd"]
        return list(cmd) + list(args or [])

    def start(self):
        p = self.pod
        rootdir = os.path.join(p.dir, "ctr", f"{self.name}.{self.attempt}")
        os.makedirs(rootdir, exist_ok=True)
        mounts = []
        for vm in self.spec.get("volumeMounts", []):
            src, ro = p.volume_source(vm)
            mounts.append(f"{src}\t{vm['mountPath']}\t{'ro' if ro else 'rw'}")
        mount_file = rootdir + ".mounts"
        with open(mount_file, "w") as f:
            f.write("\n".join(mounts) + ("\n" if mounts else ""))
        sc = self.spec.get("securityContext") or {}
        ro_root = "1" if sc.get("readOnlyRootFilesystem") else "0"
        opts = []
        if sc.get("allowPrivilegeEscalation") is False:
            opts.append("--no-new-privs")
        if "ALL" in ((sc.get("capabilities") or {}).get("drop") or []):
            opts += ["--inh-caps=-all", "--bounding-set=-all"]
        workdir = self.spec.get("workingDir", "/")
        argv = ["ip", "netns", "exec", p.netns, "unshare", "--mount", "--uts", "--pid", "--fork",
                "--propagation", "private", "--mount-proc", "--kill-child=SIGKILL",
                "bash", SETUP_SH, rootdir, p.cluster.image_dir, p.hosts_file, p.name, mount_file,
                ro_root, str(self.uid), str(self.gid), " ".join(opts), workdir, self.started_file, "--"] + self.argv()
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.env, start_new_session=True)
        logf.close()
        log(f"{p.name}: started {'init ' if self.init else ''}container {self.name} (attempt {self.attempt}, log {self.log_path})")

    def ns_pid(self, timeout=10):
        """The pid (in the host's namespace) of the container's PID 1."""
        if self.init_pid:
            return self.init_pid
        end = time.time() + timeout
        while time.time() < end and self.proc.poll() is None:
            try:
                with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                    kids = f.read().split()
                # PID 1 must be past its set-up (mounts, chroot) before it is entered.
                if kids and os.path.exists(self.started_file):
                    self.init_pid = int(kids[0])
                    return self.init_pid
            except OSError:
                pass
            time.sleep(0.05)
        return None

    def signal(self, sig):
        pid = self.ns_pid(timeout=0.5) if self.proc and self.proc.poll() is None else None
        if pid:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def kill(self):
        """SIGKILL to the container's PID 1: the kernel kills every process of its PID namespace."""
        if self.proc is None:
            return
        self.signal(signal.SIGKILL)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def exec(self, cmd, timeout=None, input=None, capture=True):
        """`kubectl exec`: a new process in the container's namespaces, root dir and env."""
        pid = self.ns_pid()
        if pid is None:
            raise SimError(f"{self.pod.name}/{self.name} is not running")
        argv = ["nsenter", "-t", str(pid), "-m", "-u", "-n", "-p", "-r", "-w",
                "-S", str(self.uid), "-G", str(self.gid), "--"] + cmd
        env = dict(self.env)
        return subprocess.run(argv, env=env, timeout=timeout, input=input, capture_output=capture, text=True)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def read_log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()


class Pod:
    def __init__(self, cluster, name, spec, restart_policy, subdomain, claims, incarnation):
        self.cluster = cluster
        self.name = name
        self.spec = spec
        self.restart_policy = spec.get("restartPolicy", restart_policy)
        self.subdomain = subdomain
        self.claims = claims
        self.incarnation = incarnation
        self.netns = NS_PREFIX + name
        self.ip = cluster.ip_of(name)
        self.dir = os.path.join(cluster.state, "pods", f"{name}.{incarnation}")
        self.log_dir = os.path.join(cluster.state, "logs", f"{name}.{incarnation}")
        self.hosts_file = None
        self.containers = {}
        self.history = []  # every Container run, in order
        self.ready = False
        self.gone = False
        self.stopping = threading.Event()
        self.phase = "Pending"
        self.exit_codes = {}
        self.init_done = False
        self.done = threading.Event()
        self.ready_since = None
        self.veth = None

    # --- environment --------------------------------------------------------------------
    def container_env(self, c, uid):
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOSTNAME": self.name,
            # The runtime sets HOME from the image's passwd entry of the container's user.
            "HOME": image.home_of(uid),
            "KUBERNETES_SERVICE_HOST": "10.96.0.1",
            "KUBERNETES_SERVICE_PORT": "443",
        }
        env.update(image.ENV)
        env.update(self.cluster.node_env)
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = str(e["value"])
            elif "valueFrom" in e and "secretKeyRef" in e["valueFrom"]:
                ref = e["valueFrom"]["secretKeyRef"]
                sec = self.cluster.secrets.get(ref["name"])
                if sec is None or ref["key"] not in sec:
                    if ref.get("optional"):
                        continue
                    raise SimError(f"{self.name}/{c['name']}: CreateContainerConfigError: secret "
                                   f"{ref['name']} key {ref['key']} not found")
                env[e["name"]] = sec[ref["key"]]
            else:
                raise SimError(f"{self.name}/{c['name']}: unsupported env source {e}")
        return env

    def user_of(self, c):
        """runAsUser/runAsGroup (container over pod); the image's default user is root. The
        mariadb image's mysql user is 999:999; here that is the host's mysql user."""
        psc = self.spec.get("securityContext") or {}
        csc = c.get("securityContext") or {}
        uid = csc.get("runAsUser", psc.get("runAsUser", 0))
        gid = csc.get("runAsGroup", psc.get("runAsGroup", uid if uid != 0 else 0))
        uid, gid = image.map_ids(uid, gid)
        if (csc.get("runAsNonRoot") or psc.get("runAsNonRoot")) and uid == 0:
            raise SimError(f"{self.name}/{c['name']}: runAsNonRoot and uid 0")
        return uid, gid

    # --- volumes ------------------------------------------------------------------------
    def setup_volumes(self):
        self.vols = {}
        for v in self.spec.get("volumes", []):
            name = v["name"]
            if "emptyDir" in v:
                d = os.path.join(self.dir, "empty", name)
                os.makedirs(d)
                os.chmod(d, 0o777)
                self.vols[name] = (d, False)
            elif "persistentVolumeClaim" in v:
                pvc = v["persistentVolumeClaim"]
                self.vols[name] = (self.cluster.pvc_dir(pvc["claimName"]), bool(pvc.get("readOnly")))
            elif "configMap" in v or "secret" in v:
                src = v.get("configMap") or v.get("secret")
                is_secret = "secret" in v
                obj_name = src.get("secretName") if is_secret else src.get("name")
                store = self.cluster.secrets if is_secret else self.cluster.configmaps
                data = store.get(obj_name)
                if data is None and not src.get("optional"):
                    raise SimError(f"{self.name}: ContainerCreating: {'secret' if is_secret else 'configmap'} {obj_name} not found")
                d = os.path.join(self.dir, "vol", name)
                os.makedirs(d)
                self.write_atomic_volume(d, data or {}, src)
                self.vols[name] = (d, True)
            else:
                raise SimError(f"{self.name}: unsupported volume {v}")
        for tmpl, claim in self.claims.items():
            self.vols[tmpl] = (self.cluster.pvc_dir(claim), False)

    @staticmethod
    def write_atomic_volume(d, data, src):
        """The kubelet's AtomicWriter layout: ..TIMESTAMP/ with the files, ..data -> it, and one
        symlink per key -> ..data/KEY. Files root-owned, mode defaultMode (0644) or the item's."""
        mode = src.get("defaultMode", 0o644)
        items = src.get("items")
        files = {}
        if items is None:
            files = {k: (v, mode) for k, v in data.items()}
        else:
            for it in items:
                if it["key"] in data:
                    files[it["path"]] = (data[it["key"]], it.get("mode", mode))
                elif not src.get("optional"):
                    raise SimError(f"volume key {it['key']} not found")
        ts = "..2026_12_07_00_00_00.000000001"
        os.makedirs(os.path.join(d, ts))
        for path, (content, m) in files.items():
            f = os.path.join(d, ts, path)
            os.makedirs(os.path.dirname(f), exist_ok=True)
            with open(f, "w") as fh:
                fh.write(content)
            os.chown(f, 0, 0)
            os.chmod(f, m)
        os.chmod(os.path.join(d, ts), 0o755)
        os.symlink(ts, os.path.join(d, "..data"))
        for path in files:
            top = path.split("/")[0]
            if not os.path.lexists(os.path.join(d, top)):
                os.symlink(os.path.join("..data", top), os.path.join(d, top))

    def volume_source(self, vm):
        src, ro = self.vols[vm["name"]]
        if vm.get("subPath"):
            src = os.path.join(src, vm["subPath"])
            # The kubelet creates a missing subPath directory.
            os.makedirs(src, exist_ok=True)
        return src, ro or bool(vm.get("readOnly"))

    # --- network ------------------------------------------------------------------------
    def net_up(self):
        idx = self.ip.rsplit(".", 1)[1]
        self.veth = f"xbsv{idx}"
        # The kernel may still be tearing down an earlier pod of this name's namespace.
        run(["ip", "link", "delete", self.veth], check=False, stderr=subprocess.DEVNULL)
        run(["ip", "netns", "add", self.netns])
        run(["ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns])
        run(["ip", "link", "set", self.veth, "master", BRIDGE, "up"])
        ns = ["ip", "-n", self.netns]
        run(ns + ["addr", "add", self.ip + "/24", "dev", "eth0"])
        run(ns + ["link", "set", "eth0", "up"])
        run(ns + ["link", "set", "lo", "up"])
        run(ns + ["route", "add", "default", "via", HOST_IP])
        etc = "/etc/netns/" + self.netns
        os.makedirs(etc, exist_ok=True)
        self.hosts_file = os.path.join(etc, "hosts")
        with open(self.hosts_file, "w") as f:
            f.write("")
        # No cluster DNS: a name not in the hosts file fails at once, as NXDOMAIN would.
        with open(os.path.join(etc, "resolv.conf"), "w") as f:
            f.write("nameserver 127.0.0.53\noptions timeout:1 attempts:1\n")
        self.cluster.refresh_hosts()

    def net_down(self):
        if self.veth:
            run(["ip", "link", "delete", self.veth], check=False, stderr=subprocess.DEVNULL)
        run(["ip", "netns", "delete", self.netns], check=False)
        shutil.rmtree("/etc/netns/" + self.netns, ignore_errors=True)
        self.hosts_file = None

    # --- lifecycle ----------------------------------------------------------------------
    def start(self):
        try:
            os.makedirs(self.dir)
            os.makedirs(self.log_dir)
            self.setup_volumes()
            self.net_up()
            if self.cluster.pre_start:
                self.cluster.pre_start(self)
        except BaseException:
            self.phase = "Failed"
            self.done.set()
            raise
        self.thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self.thread.start()

    def backoff(self, n):
        return min(10 * 2 ** n, 300) * BACKOFF_SCALE

    def run(self):
        try:
            self.run_inits() and self.run_containers()
        except Exception as e:  # noqa: BLE001 - the pod fails, the scenario reports it
            log(f"{self.name}: kubelet error: {e!r}")
            self.phase = "Failed"
        finally:
            self.done.set()

    def run_inits(self):
        for c in self.spec.get("initContainers", []):
            n = 0
            while True:
                if self.stopping.is_set():
                    return False
                ctr = Container(self, c, n + 1, init=True)
                self.containers[c["name"]] = ctr
                self.history.append(ctr)
                ctr.start()
                rc = ctr.proc.wait()
                log(f"{self.name}: init container {c['name']} exited {rc}")
                if self.stopping.is_set():
                    return False
                if rc == 0:
                    break
                if self.restart_policy == "Never":
                    self.exit_codes[c["name"]] = rc
                    self.phase = "Failed"
                    return False
                d = self.backoff(n)
                log(f"{self.name}: back-off {d:.0f}s restarting failed init container {c['name']}")
                if self.stopping.wait(d):
                    return False
                n += 1
        self.init_done = True
        return True

    def run_containers(self):
        self.phase = "Running"
        threads = []
        for c in self.spec["containers"]:
            t = threading.Thread(target=self.supervise, args=(c,), daemon=True)
            t.start()
            threads.append(t)
        prober = threading.Thread(target=self.probe_loop, daemon=True)
        prober.start()
        for t in threads:
            t.join()
        if not self.stopping.is_set() and self.restart_policy == "Never":
            self.phase = "Succeeded" if all(v == 0 for v in self.exit_codes.values()) else "Failed"
        return True

    def supervise(self, c):
        n = 0
        while not self.stopping.is_set():
            ctr = Container(self, c, n + 1, init=False)
            ctr.started_at = time.time()
            ctr.probe_ok = None
            self.containers[c["name"]] = ctr
            self.history.append(ctr)
            ctr.start()
            rc = ctr.proc.wait()
            self.exit_codes[c["name"]] = rc
            if self.stopping.is_set():
                return
            log(f"{self.name}: container {c['name']} exited {rc}")
            self.update_ready()
            if self.restart_policy == "Never" or (self.restart_policy == "OnFailure" and rc == 0):
                return
            d = self.backoff(n)
            if self.stopping.wait(d):
                return
            n += 1

    def run_probe(self, ctr, probe):
        t = probe.get("timeoutSeconds", 1)
        if "exec" in probe:
            try:
                r = ctr.exec(probe["exec"]["command"], timeout=t + 5)
                return r.returncode == 0
            except (subprocess.TimeoutExpired, SimError):
                return False
        if "httpGet" in probe:
            hg = probe["httpGet"]
            port = hg["port"]
            if isinstance(port, str):
                port = next(p["containerPort"] for p in ctr.spec.get("ports", []) if p.get("name") == port)
            url = f"http://{self.ip}:{port}{hg.get('path', '/')}"
            r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", str(t), url],
                               capture_output=True, text=True)
            return r.stdout.strip().isdigit() and 200 <= int(r.stdout.strip()) < 400
        if "tcpSocket" in probe:
            r = subprocess.run(["ip", "netns", "exec", self.netns, "bash", "-c",
                                f"exec 3<>/dev/tcp/127.0.0.1/{probe['tcpSocket']['port']}"], capture_output=True)
            return r.returncode == 0
        raise SimError(f"unsupported probe {probe}")

    def probe_loop(self):
        """Readiness and liveness probes of every container, with their delays, periods and
        failure thresholds; a liveness failure restarts the container (SIGKILL here, at once)."""
        state = {}
        while not self.stopping.is_set():
            now = time.time()
            for c in self.spec["containers"]:
                ctr = self.containers.get(c["name"])
                if ctr is None or not ctr.running():
                    continue
                for kind in ("readinessProbe", "livenessProbe"):
                    probe = c.get(kind)
                    if probe is None:
                        if kind == "readinessProbe":
                            ctr.probe_ok = True
                        continue
                    key = (c["name"], ctr.attempt, kind)
                    st = state.setdefault(key, {"next": ctr.started_at + probe.get("initialDelaySeconds", 0), "fails": 0, "ok": 0})
                    if now < st["next"]:
                        continue
                    ok = self.run_probe(ctr, probe)
                    st["next"] = time.time() + probe.get("periodSeconds", 10)
                    if ok:
                        st["fails"] = 0
                        st["ok"] += 1
                        if kind == "readinessProbe" and st["ok"] >= probe.get("successThreshold", 1):
                            ctr.probe_ok = True
                    else:
                        st["ok"] = 0
                        st["fails"] += 1
                        if st["fails"] >= probe.get("failureThreshold", 3):
                            if kind == "readinessProbe":
                                ctr.probe_ok = False
                            else:
                                log(f"{self.name}: liveness probe of {c['name']} failed {st['fails']} times: restarting it")
                                ctr.kill()
            self.update_ready()
            self.stopping.wait(0.5)

    def update_ready(self):
        ready = (not self.stopping.is_set() and self.init_done and
                 all((ctr := self.containers.get(c["name"])) is not None and ctr.running() and ctr.probe_ok
                     for c in self.spec["containers"]))
        if ready != self.ready:
            self.ready = ready
            log(f"{self.name}: {'Ready' if ready else 'not Ready'}")
            self.cluster.refresh_hosts()

    def wait_ready(self, timeout):
        end = time.time() + timeout
        while time.time() < end:
            if self.ready:
                return
            if self.done.is_set():
                raise SimError(f"pod {self.name} ended ({self.phase}) before it was Ready")
            time.sleep(0.2)
        raise SimError(f"pod {self.name} not Ready within {timeout}s")

    def wait_done(self, timeout):
        return self.done.wait(timeout)

    def delete(self, graceful=False):
        """Graceful: SIGTERM to each container's PID 1, terminationGracePeriodSeconds, then
        SIGKILL. Otherwise SIGKILL at once (a crashed node, `kubectl delete --force`)."""
        if self.gone:
            return
        self.stopping.set()
        self.ready = False
        self.cluster.refresh_hosts()
        running = [c for c in list(self.containers.values()) if c.running()]
        if graceful and running:
            for c in running:
                c.signal(signal.SIGTERM)
            end = time.time() + self.spec.get("terminationGracePeriodSeconds", 30)
            while time.time() < end and any(c.running() for c in running):
                time.sleep(0.2)
            late = [c.name for c in running if c.running()]
            if late:
                log(f"{self.name}: still running after the grace period, killed: {' '.join(late)}")
        for c in list(self.containers.values()):
            c.kill()
        self.done.wait(30)
        self.net_down()
        self.gone = True
        self.cluster.refresh_hosts()
        log(f"{self.name}: deleted ({'graceful' if graceful else 'killed'})")

    # --- helpers for the scenarios ------------------------------------------------------
    def exec(self, container, cmd, **kw):
        return self.containers[container].exec(cmd, **kw)

    def logs(self, container):
        """Every run of the container, in order: [(attempt, text)]."""
        return [(c.attempt, c.read_log()) for c in self.history if c.name == container]
