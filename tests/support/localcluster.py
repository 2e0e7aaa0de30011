"""A real one-node Kubernetes cluster in a network namespace of its own, for the cluster tier.

Everything runs from the tools cache (tests/cluster/build.sh builds it): etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, containerd with runc and the CNI bridge (Debian's),
the kubelet, kube-proxy in iptables mode and CoreDNS. Inside the namespace:

- the node's address 10.99.0.1 is on ``lo``: the API server (6443), the kubelet and CoreDNS (53,
  the pods' resolver) listen there;
- pods get addresses on the CNI bridge ``cni0`` (10.88.0.0/24), Services on 10.96.0.0/24, which
  kube-proxy routes;
- a veth pair joins it to this namespace (10.99.1.1 here, 10.99.1.2 there), so the tests'
  Kubernetes client reaches the API server; HTTP to pods and Services is made from inside the
  namespace (``Netns.http``), as from the node.

containerd keeps its images in the cache (imported once per image tag); its containers, the
kubelet's pods and every mount are removed at stop. One cluster at a time: a second start
fails on containerd's lock with a clear error.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from infergraph.predictors.processes import ServerProcess
from infergraph.testing.cluster import Cluster, kubeconfig
from infergraph.testing.netns import Netns
from infergraph.testing.paths import CACHE

KUBE_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
COREDNS_VERSION = "v1.14.7"
NETNS = "igcluster"
NODE_IP = "10.99.0.1"
HOST_SIDE, NETNS_SIDE = "10.99.1.1", "10.99.1.2"
POD_CIDR, SERVICE_CIDR = "10.88.0.0/24", "10.96.0.0/24"
NODE_NAME = "node-1"
ADMIN_TOKEN = "admin-token"
BIN = CACHE / "bin"
CONTAINERD_ROOT = CACHE / "cluster" / "containerd"
ARCHIVES = CACHE / "cluster" / "images"


def binary(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make cluster` (tests/cluster/build.sh)")
    return path


class Node:
    """The cluster's processes, started in order and stopped in reverse."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.netns = Netns.named(NETNS)
        self.processes: list[tuple[str, ServerProcess]] = []
        self.timings: dict[str, float] = {}
        self.url = f"https://{NETNS_SIDE}:6443"
        self.inner_kubeconfig = kubeconfig(
            work / "admin.kubeconfig", f"https://{NODE_IP}:6443", ADMIN_TOKEN
        )
        self.kubeconfig = kubeconfig(work / "outside.kubeconfig", self.url, ADMIN_TOKEN)
        self.socket = work / "containerd" / "containerd.sock"
        self._lock: IO[bytes] | None = None
        self._pod_netns_before: set[str] = set()

    # -- probes, run from inside the namespace -------------------------------------------------

    def answers(self, url: str) -> bool:
        done = self.netns.run(["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", url], 5)
        return done.stdout.strip() == "200"

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        done = subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    # -- start ----------------------------------------------------------------------------------

    def start(self) -> None:
        started = time.monotonic()
        self._take_lock()
        self._pod_netns_before = _pod_netns()
        self._network()
        self._certificates()
        self._run("etcd", self._etcd(), "http://127.0.0.1:2379/health")
        self._run("kube-apiserver", self._apiserver(), "https://127.0.0.1:6443/readyz", 90)
        self._run("containerd", self._containerd(), "", 30, probe=self._containerd_up)
        self._clean_containers()
        self._import_images()
        kube = self.inner_kubeconfig
        self._run(
            "kube-controller-manager",
            [
                str(binary(f"kube-controller-manager-{KUBE_VERSION}")),
                f"--kubeconfig={kube}",
                f"--authentication-kubeconfig={kube}",
                f"--authorization-kubeconfig={kube}",
                f"--service-account-private-key-file={self.work / 'sa.key'}",
                f"--root-ca-file={self.work / 'certs' / 'apiserver.crt'}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--controllers=*,-nodeipam,-cloud-node-lifecycle",
            ],
            "https://127.0.0.1:10257/healthz",
            60,
        )
        self._run(
            "kube-scheduler",
            [
                str(binary(f"kube-scheduler-{KUBE_VERSION}")),
                f"--kubeconfig={kube}",
                f"--authentication-kubeconfig={kube}",
                f"--authorization-kubeconfig={kube}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
            ],
            "https://127.0.0.1:10259/healthz",
            60,
        )
        self._run("kubelet", self._kubelet(), "http://127.0.0.1:10248/healthz", 60)
        self._run("kube-proxy", self._kube_proxy(), "http://127.0.0.1:10256/healthz", 60)
        self._run("coredns", self._coredns(), "http://127.0.0.1:18080/health", 30)
        self.check_alive()
        self.timings["node"] = time.monotonic() - started

    def check_alive(self) -> None:
        """Every process still runs (one that answered its probe may have exited since)."""
        for name, process in self.processes:
            if process.process is not None and process.process.poll() is not None:
                raise RuntimeError(f"{name} exited; the end of its log:\n{self.logs(name)}")

    def _take_lock(self) -> None:
        CONTAINERD_ROOT.mkdir(parents=True, exist_ok=True)
        self._lock = open(CONTAINERD_ROOT / ".lock", "wb")  # noqa: SIM115
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"another cluster of the tests is running (it holds {CONTAINERD_ROOT}/.lock)"
            ) from None

    def _network(self) -> None:
        # A namespace left by an interrupted run: its processes first, then the namespace.
        if Path(self.netns.path).exists():
            _kill_everything_in(NETNS)
            time.sleep(0.5)
            subprocess.run(["ip", "netns", "delete", NETNS], check=False)
        self.netns.__enter__()
        host, peer = "igc-host", "igc-node"
        script = [
            ["ip", "-n", NETNS, "addr", "add", f"{NODE_IP}/32", "dev", "lo"],
            ["ip", "link", "add", host, "type", "veth", "peer", "name", peer, "netns", NETNS],
            ["ip", "addr", "add", f"{HOST_SIDE}/30", "dev", host],
            ["ip", "link", "set", host, "up"],
            ["ip", "-n", NETNS, "addr", "add", f"{NETNS_SIDE}/30", "dev", peer],
            ["ip", "-n", NETNS, "link", "set", peer, "up"],
            # Service addresses need a route from the node itself before kube-proxy's DNAT.
            ["ip", "-n", NETNS, "route", "add", SERVICE_CIDR, "dev", peer],
            # Pods reach the node and Services through the bridge's gateway.
            self.netns.argv(["sysctl", "-qw", "net.ipv4.ip_forward=1"]),
            self.netns.argv(["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"]),
        ]
        for command in script:
            subprocess.run(command, check=True, capture_output=True)

    def _certificates(self) -> None:
        key, pub = self.work / "sa.key", self.work / "sa.pub"
        subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True,
                       capture_output=True)  # fmt: skip
        subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pub)],
                       check=True, capture_output=True)  # fmt: skip
        (self.work / "tokens.csv").write_text(f'{ADMIN_TOKEN},admin,admin,"system:masters"\n')

    def _run(
        self,
        name: str,
        argv: list[str],
        ready: str,
        timeout: float = 30,
        *,
        probe: Callable[[str], bool] | None = None,
    ) -> None:
        started = time.monotonic()
        process = ServerProcess(
            self.netns.argv(argv),
            ready,
            log_path=self.work / f"{name}.log",
            probe=probe or self.answers,
        )
        print(f"cluster: starting {name} (log {self.work / name}.log)", file=sys.stderr)
        process.start(timeout=timeout)
        self.processes.append((name, process))
        self.timings[name] = time.monotonic() - started

    def _etcd(self) -> list[str]:
        return [
            str(binary(f"etcd-{ETCD_VERSION}")),
            *("--data-dir", str(self.work / "etcd"), "--unsafe-no-fsync"),
            *("--listen-client-urls", "http://127.0.0.1:2379"),
            *("--advertise-client-urls", "http://127.0.0.1:2379"),
            *("--listen-peer-urls", "http://127.0.0.1:2380"),
            *("--initial-advertise-peer-urls", "http://127.0.0.1:2380"),
            *("--initial-cluster", "default=http://127.0.0.1:2380"),
        ]

    def _apiserver(self) -> list[str]:
        return [
            str(binary(f"kube-apiserver-{KUBE_VERSION}")),
            "--etcd-servers=http://127.0.0.1:2379",
            "--bind-address=0.0.0.0",
            f"--advertise-address={NODE_IP}",
            "--secure-port=6443",
            f"--cert-dir={self.work / 'certs'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={self.work / 'sa.pub'}",
            f"--service-account-signing-key-file={self.work / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--token-auth-file={self.work / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            # Webhooks behind a Service are dialled at their endpoints (pod addresses), as the
            # API server has no kube-proxy of its own.
            "--enable-aggregator-routing=true",
            "--kubelet-preferred-address-types=InternalIP",
        ]

    def _containerd(self) -> list[str]:
        state = self.work / "containerd"
        cni = self.work / "cni"
        (cni / "net.d").mkdir(parents=True, exist_ok=True)
        (cni / "net.d" / "10-bridge.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "igcluster",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": "cni0",
                            "isGateway": True,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_CIDR}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(cni / "ipam"),
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                }
            )
        )
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = state / "config.toml"
        state.mkdir(parents=True, exist_ok=True)
        config.write_text(
            f"""version = 2
root = "{CONTAINERD_ROOT / "root"}"
state = "{state / "state"}"
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[{cri}]
  sandbox_image = "localhost/infergraph/pause:{KUBE_VERSION}"
  # The kubelet asks for oom_score_adj -998; root here lacks CAP_SYS_RESOURCE.
  restrict_oom_score_adj = true
  [{cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni / "net.d"}"
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
"""
        )
        return ["containerd", "--config", str(config)]

    def _containerd_up(self, _url: str) -> bool:
        if not self.socket.exists():
            return False
        done = subprocess.run(
            ["ctr", "--address", str(self.socket), "version"], capture_output=True, check=False
        )
        return done.returncode == 0

    def _clean_containers(self) -> None:
        """Remove what an interrupted run left in containerd's (persistent) metadata."""
        for task in self.ctr("tasks", "list", "-q").split():
            self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
            self.ctr("tasks", "delete", "-f", task, check=False)
        for container in self.ctr("containers", "list", "-q").split():
            self.ctr("containers", "delete", container, check=False)

    def _import_images(self) -> None:
        started = time.monotonic()
        have = set(self.ctr("images", "list", "-q").split())
        for archive in sorted(ARCHIVES.glob("*.tar")):
            with open(archive, "rb") as stream:
                names = _archive_names(stream)
            if names and all(name in have for name in names):
                continue
            print(f"cluster: importing {archive.name} into containerd", file=sys.stderr)
            self.ctr("images", "import", str(archive))
        self.timings["image import"] = time.monotonic() - started

    def _kubelet(self) -> list[str]:
        root = self.work / "kubelet"
        (root / "logs").mkdir(parents=True, exist_ok=True)
        (self.work / "resolv.conf").write_text(f"nameserver {NODE_IP}\n")
        config = self.work / "kubelet.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    # This machine's cgroups are v1 (hybrid).
                    "failCgroupV1": False,
                    "cgroupDriver": "cgroupfs",
                    "containerRuntimeEndpoint": f"unix://{self.socket}",
                    "failSwapOn": False,
                    "authentication": {
                        "anonymous": {"enabled": True},
                        "webhook": {"enabled": False},
                    },
                    "authorization": {"mode": "AlwaysAllow"},
                    "address": NODE_IP,
                    "healthzBindAddress": "127.0.0.1",
                    "healthzPort": 10248,
                    "readOnlyPort": 0,
                    "clusterDNS": [NODE_IP],
                    "clusterDomain": "cluster.local",
                    "resolvConf": str(self.work / "resolv.conf"),
                    "podLogsDir": str(root / "logs"),
                    "serializeImagePulls": False,
                    "evictionHard": {
                        "memory.available": "200Mi",
                        "nodefs.available": "1%",
                        "imagefs.available": "1%",
                    },
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                }
            )
        )
        return [
            str(binary(f"kubelet-{KUBE_VERSION}")),
            f"--config={config}",
            f"--kubeconfig={self.inner_kubeconfig}",
            f"--root-dir={root / 'root'}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={NODE_IP}",
        ]

    def _kube_proxy(self) -> list[str]:
        config = self.work / "kube-proxy.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "mode": "iptables",
                    "clientConnection": {"kubeconfig": str(self.inner_kubeconfig)},
                    "hostnameOverride": NODE_NAME,
                    "clusterCIDR": POD_CIDR,
                    # Service traffic leaves with the node's address, so that a reply from a pod
                    # on the same bridge comes back through the node's connection tracking.
                    "iptables": {"masqueradeAll": True, "localhostNodePorts": False},
                    "conntrack": {"maxPerCore": 0},
                    "healthzBindAddress": "127.0.0.1:10256",
                    "metricsBindAddress": "127.0.0.1:10249",
                }
            )
        )
        return [str(binary(f"kube-proxy-{KUBE_VERSION}")), f"--config={config}"]

    def _coredns(self) -> list[str]:
        corefile = self.work / "Corefile"
        corefile.write_text(
            f""".:53 {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:18080
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {self.inner_kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
}}
"""
        )
        return [str(binary(f"coredns-{COREDNS_VERSION}")), "-conf", str(corefile)]

    # -- stop -----------------------------------------------------------------------------------

    def stop(self) -> None:
        names = dict(self.processes)
        # The kubelet first, so that it restarts nothing; then every container it ran.
        if "kubelet" in names:
            names["kubelet"].stop()
        if "containerd" in names:
            with contextlib.suppress(Exception):
                self._clean_containers()
        for name, process in reversed(self.processes):
            if name != "kubelet":
                process.stop()
        # containerd's shims outlive it: whatever is left in the namespace.
        _kill_everything_in(NETNS)
        self._unmount()
        # containerd pins each pod's network namespace in /run/netns/cni-*; killed sandboxes
        # are never stopped through CRI, so those are removed here.
        for name in _pod_netns() - self._pod_netns_before:
            subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)
        self.netns.__exit__()
        if self._lock is not None:
            self._lock.close()

    def _unmount(self) -> None:
        prefixes = (str(self.work), str(CONTAINERD_ROOT))
        mounts = [
            line.split()[1]
            for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[1].startswith(prefixes)
        ]
        for mount in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], check=False, capture_output=True)

    def logs(self, name: str, lines: int = 40) -> str:
        path = self.work / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _kill_everything_in(netns: str) -> None:
    pids = subprocess.run(
        ["ip", "netns", "pids", netns], capture_output=True, text=True, check=False
    ).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def _pod_netns() -> set[str]:
    netns = Path("/run/netns")
    return {p.name for p in netns.glob("cni-*")} if netns.is_dir() else set()


def _archive_names(stream: IO[bytes]) -> list[str]:
    """The image names an OCI archive (``podman save --format oci-archive``) carries."""
    with tarfile.open(fileobj=stream) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            return []
        index: dict[str, Any] = json.load(member)
    return [
        manifest.get("annotations", {}).get("org.opencontainers.image.ref.name", "")
        for manifest in index.get("manifests", [])
    ]


@dataclass
class Tier:
    """What the cluster tests get: the node, a client of its API server, the images' tag."""

    node: Node
    kube: Cluster
    image_tag: str
    timings: dict[str, float]

    def image(self, part: str) -> str:
        return f"localhost/infergraph/{part}:{self.image_tag}"


@contextlib.contextmanager
def running(work: Path) -> Iterator[Node]:
    node = Node(work)
    try:
        node.start()
        yield node
    finally:
        node.stop()
