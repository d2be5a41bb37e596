"""The two images, built and run with podman (marker `docker`):

- the grading image (sandbox/image/, built by scripts/setup-podman.sh): current
  runner, python3 + pytest, nothing else, non-root;
- the daemon image (Dockerfile, built here by scripts/build-daemon-image.sh
  FROM the locally debootstrapped base): `xgrader --help` as a non-root user;
- the Kubernetes pod as deploy/k8s/ declares it, emulated with podman: the
  course image's init container fills the handlers volume, then the daemon
  image runs as uid 10001 with the pod's securityContext turned into podman
  flags and grades submissions with bwrap.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

from xgrader.config import Settings
from xgrader.backends.docker_backend import runner_digest

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[1]
GRADING = Settings().docker_image


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


def test_grading_image_is_current_minimal_and_unprivileged(podman_engine):
    # build.sh (also run by setup and the fixture) must label with runner_digest of this checkout.
    build = subprocess.run(["bash", str(REPO / "sandbox/image/build.sh")], capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr
    label = podman("image", "inspect", "--format", '{{index .Labels "xgrader.runner"}}', GRADING)
    assert label.returncode == 0, label.stderr
    runner = runner_digest(REPO / "sandbox")
    assert label.stdout.strip() == runner, "grading image is stale: run sandbox/image/build.sh"
    script = (
        "import os, shutil, importlib.util as u\n"
        "print('uid', os.getuid())\n"
        "print('runner', os.path.isfile('/opt/xgrader/runner.py'), os.path.isfile('/opt/xgrader/pytest_side/launch.py'))\n"
        "print('pytest', u.find_spec('pytest') is not None)\n"
        "print('pip', u.find_spec('pip') is not None)\n"
        "print('tools', [t for t in ('gcc', 'cc', 'curl', 'wget', 'apt-get', 'sudo', 'su') if shutil.which(t)])\n"
    )
    r = podman("run", "--rm", "--network=none", GRADING, "python3", "-c", script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "uid 65534", "runner True True", "pytest True", "pip False",
        # apt-get/su ship with any Debian base (essential); no compiler, no downloader, no sudo.
        "tools ['apt-get', 'su']",
    ], r.stdout


def test_grading_image_runs_the_runner(podman_engine):
    """The runner answers over its channel in the image as-is (fd channel via a shell pipe)."""
    request = '{"op": "eval", "expr": "6*7", "id": 1}\n{"op": "exit", "id": 2}\n'
    r = subprocess.run(
        ["podman", "run", "--rm", "-i", "--network=none", "-e", "XGRADER_CHANNEL=fd:0,1", GRADING,
         "python3", "-I", "-S", "/opt/xgrader/runner.py"],
        input=request, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert '"id":1' in r.stdout.replace(" ", "") and "42" in r.stdout, r.stdout


@pytest.fixture(scope="module")
def daemon_image(podman_engine):
    """The daemon image, built by the script operators use (FROM the local base, offline)."""
    tag = f"xgrader:test-{os.getpid()}"   # its own: other checkouts on this host build and remove theirs
    build = subprocess.run(["bash", str(REPO / "scripts/build-daemon-image.sh"), tag],
                           capture_output=True, text=True, timeout=900, cwd=REPO)
    assert build.returncode == 0, build.stdout + build.stderr
    yield tag
    podman("rmi", "-f", tag)


@pytest.mark.slow
def test_daemon_image_runs_as_non_root(daemon_image):
    r = podman("run", "--rm", "--network=none", daemon_image, "xgrader", "--help")
    assert r.returncode == 0 and "xqueue-compatible external grader" in r.stdout, r.stderr
    r = podman("run", "--rm", "--network=none", daemon_image, "python3", "-c",
               "import os, shutil, xgrader.backends.docker_backend\n"
               "from xgrader.config import Settings\ns = Settings()\n"
               "print(os.getuid(), (s.runner_dir / 'runner.py').is_file(), s.handlers.is_dir(),\n"
               "      str(s.runner_dir).startswith('/opt/xgrader/venv/'), bool(shutil.which('bwrap')),\n"
               "      sorted(k for k in os.environ if k.startswith('XGRADER_')))")
    # The runner and the examples come from the installed wheel, no XGRADER_* workaround; bwrap is there.
    assert r.returncode == 0 and r.stdout.split() == ["10001", "True", "True", "True", "True", "[]"], \
        r.stdout + r.stderr


@pytest.mark.slow
def test_daemon_in_a_container_grades_through_the_host_engine(daemon_image, podman_engine, tmp_path_factory):
    """The compose layout: the daemon image talks to the host's engine socket and
    shares its job folder (TMPDIR) with the host at the same path, as root inside
    the container like compose's graders (the socket is root-equivalent anyway)."""
    jobs = Path(tempfile.mkdtemp(prefix="xgrader-e2e-", dir="/var/tmp"))
    sock = podman_engine.removeprefix("unix://")
    samples = REPO / "payload_handlers" / "is_prime" / "samples"
    try:
        replies = {}
        for sample in ("correct.py", "wrong_offbyone.py"):
            r = podman("run", "--rm", "--network=none", "--user", "0",
                       "-v", f"{sock}:/run/engine.sock", "-v", f"{jobs}:{jobs}", "-v", f"{samples}:/samples:ro",
                       "-e", f"TMPDIR={jobs}", "-e", "XGRADER_SANDBOX=docker",
                       "-e", "XGRADER_DOCKER_URL=unix:///run/engine.sock",
                       daemon_image, "xgrader", "grade", "--payload", "is_prime", f"/samples/{sample}",
                       timeout=300)
            assert r.returncode == 0, r.stdout + r.stderr
            replies[sample] = json.loads(r.stdout)
        right, wrong = replies["correct.py"], replies["wrong_offbyone.py"]
        assert right["correct"] is True and wrong["correct"] is False, replies
        assert right["score"] > wrong["score"], replies
        # The job folders went with their jobs (the seccomp profile file stays: shared, content-addressed).
        assert [p.name for p in jobs.iterdir() if not p.name.startswith("xgrader-seccomp-")] == []
    finally:
        shutil.rmtree(jobs, ignore_errors=True)


# -- the Kubernetes pod, emulated -------------------------------------------------------
K8S = REPO / "deploy" / "k8s"
POD_SC = {"runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup"}
CONTAINER_SC = {"allowPrivilegeEscalation", "readOnlyRootFilesystem", "runAsNonRoot", "runAsUser", "runAsGroup",
                "capabilities", "seccompProfile", "appArmorProfile", "procMount"}
USERNS_BASE = 400000 + (os.getpid() % 50) * 65536   # hostUsers: false -> a 65536-id range of its own


def manifest(kind: str) -> dict:
    docs = [d for path in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def security_flags(pod: dict, container: dict) -> list[str]:
    """The pod's and the container's securityContext as podman flags. A field
    without its emulation here fails the test rather than being skipped."""
    psc, csc = pod.get("securityContext", {}), container.get("securityContext", {})
    assert set(psc) <= POD_SC and set(csc) <= CONTAINER_SC, (set(psc) - POD_SC, set(csc) - CONTAINER_SC)
    user, group = csc.get("runAsUser", psc.get("runAsUser")), csc.get("runAsGroup", psc.get("runAsGroup"))
    assert user and group and (psc.get("runAsNonRoot") or csc.get("runAsNonRoot"))
    flags = ["--user", f"{user}:{group}"]
    if psc.get("fsGroup"):
        flags += ["--group-add", str(psc["fsGroup"])]
    if pod.get("hostUsers") is False:
        flags += ["--uidmap", f"0:{USERNS_BASE}:65536", "--gidmap", f"0:{USERNS_BASE}:65536"]
    caps = csc.get("capabilities", {})
    assert caps.get("drop") == ["ALL"]
    flags += ["--cap-drop=ALL", *[f"--cap-add={c}" for c in caps.get("add", [])]]
    if csc.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    if csc.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    seccomp = csc.get("seccompProfile") or {"type": "RuntimeDefault"}
    if seccomp["type"] == "Localhost":
        profile = K8S / "seccomp" / Path(seccomp["localhostProfile"]).name
        assert profile.is_file(), profile
        flags += ["--security-opt", f"seccomp={profile}"]
    elif seccomp["type"] == "Unconfined":
        flags += ["--security-opt", "seccomp=unconfined"]
    else:
        assert seccomp["type"] == "RuntimeDefault"   # podman's own default profile
    if (csc.get("appArmorProfile") or {}).get("type") == "Unconfined":
        flags += ["--security-opt", "apparmor=unconfined"]
    if csc.get("procMount") == "Unmasked":
        flags += ["--security-opt", "unmask=ALL"]
    limits = (container.get("resources") or {}).get("limits", {})
    if "memory" in limits:
        flags += ["--memory", limits["memory"].replace("Gi", "g").replace("Mi", "m")]
    if "cpu" in limits:
        cpu = str(limits["cpu"])
        flags += ["--cpus", str(int(cpu[:-1]) / 1000) if cpu.endswith("m") else cpu]
    return flags


def volume_flags(pod: dict, container: dict, dirs: dict[str, Path]) -> list[str]:
    """emptyDir (Memory: a tmpfs, else a host folder of mode 0777 like the
    kubelet's, shared between the pod's containers) and the secret (files of
    its defaultMode, group fsGroup) as podman mounts."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    flags = []
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        ro = ",ro" if mount.get("readOnly") else ""
        if "emptyDir" in volume and volume["emptyDir"].get("medium") == "Memory":
            size = volume["emptyDir"]["sizeLimit"].replace("Mi", "m").replace("Gi", "g")
            flags += ["--mount", f"type=tmpfs,destination={mount['mountPath']},tmpfs-size={size},tmpfs-mode=1777"]
        elif "emptyDir" in volume or "secret" in volume:
            flags += ["--mount", f"type=bind,source={dirs[mount['name']]},destination={mount['mountPath']}{ro}"]
        else:
            raise AssertionError(f"no emulation for volume {volume}")
    return flags


def config_env(container: dict, overrides: dict[str, str]) -> list[str]:
    env = {}
    for source in container.get("envFrom", []):
        assert source["configMapRef"]["name"] == manifest("ConfigMap")["metadata"]["name"]
        env.update(manifest("ConfigMap")["data"])
    for item in container.get("env", []):
        assert item["valueFrom"]["secretKeyRef"].get("optional"), item   # the hints key: not set here
    env.update(overrides)
    return [f"--env={k}={v}" for k, v in env.items()]


@pytest.fixture(scope="module")
def course_image(podman_engine):
    """deploy/k8s/course/Containerfile over the example assignments, FROM the local base (offline)."""
    tag = f"xgrader-course:test-{os.getpid()}"
    build = podman("build", "-q", "--network=host", "--build-arg", "BASE=xgrader-base:bookworm", "-t", tag,
                   "-f", str(K8S / "course" / "Containerfile"), str(REPO / "payload_handlers"), timeout=600)
    assert build.returncode == 0, build.stderr
    yield tag
    podman("rmi", "-f", tag)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_pod_as_declared_grades_with_bwrap(daemon_image, course_image, tmp_path):
    """deploy/k8s/deployment.yaml's pod under podman: the init container copies
    the course image's assignments, then the daemon image runs as uid 10001 in
    a user namespace of its own, no capability, read-only root, the Localhost
    seccomp profile, an unmasked /proc - and grades real submissions with bwrap
    from a queue on loopback."""
    from xgrader.daemon.demo_harness import CallbackReceiver, Sample, free_port, login, submit, wait_http

    dep = manifest("Deployment")
    pod = dep["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (grader,) = pod["containers"]
    config = manifest("ConfigMap")["data"]
    assert config["XGRADER_SANDBOX"] == "bwrap"
    work = Path(tempfile.mkdtemp(prefix="xgpod-", dir="/var/tmp"))
    name = f"xgpod-{os.getpid()}"
    queue = receiver = None
    try:
        dirs = {"handlers": work / "handlers", "cache": work / "cache", "secrets": work / "secrets"}
        for path in dirs.values():
            path.mkdir(mode=0o777)
            path.chmod(0o777)                       # the kubelet's emptyDir mode
        secret = next(v for v in pod["volumes"] if v["name"] == "secrets")["secret"]
        password = os.urandom(8).hex()
        for item in secret["items"]:
            target = dirs["secrets"] / item["path"]
            target.write_text(password)
            os.chown(target, USERNS_BASE, USERNS_BASE + pod["securityContext"]["fsGroup"])
            target.chmod(secret["defaultMode"])
        dirs["secrets"].chmod(0o755)

        # The init container, as the pod runs it.
        r = podman("run", "--rm", "--name", f"{name}-init", "--network=none",
                   *security_flags(pod, init), *volume_flags(pod, init, dirs),
                   course_image, *init["command"], timeout=300)
        assert r.returncode == 0, r.stderr
        assert (dirs["handlers"] / "is_prime" / "assignment.toml").is_file()

        port, metrics = free_port(), free_port()
        queue_url = f"http://127.0.0.1:{port}/xqueue/"
        (work / "queue_pw").write_text(password)
        queue = subprocess.Popen(["python3", "-m", "xgrader", "queue", "serve", "--port", str(port),
                                  "--db", str(work / "queue.db"), "--queue", config["XGRADER_QUEUE_NAMES"],
                                  "--user-file", f"{config['XGRADER_QUEUE_USER']}:{work / 'queue_pw'}",
                                  "--user-file", f"lms:{work / 'queue_pw'}"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
        wait_http(queue_url + "status/", 30, queue)
        # The pod's network is its own; here the host's loopback stands in for the queue's Service.
        overrides = {"XGRADER_QUEUE_URL": queue_url, "XGRADER_METRICS_HOST": "127.0.0.1",
                     "XGRADER_METRICS_PORT": str(metrics)}
        r = podman("run", "-d", "--name", name, "--network=host", "--stop-timeout",
                   str(pod["terminationGracePeriodSeconds"]), *security_flags(pod, grader),
                   *volume_flags(pod, grader, dirs), *config_env(grader, overrides),
                   daemon_image, *grader["command"])
        assert r.returncode == 0, r.stderr

        probe = grader["readinessProbe"]["httpGet"]["path"]

        def ready() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{metrics}{probe}", timeout=3).status_code == 200
            except requests.RequestException:
                return False
        end = time.monotonic() + 120
        while not ready():
            state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            if state != "running" or time.monotonic() > end:
                why = ""
                try:
                    why = requests.get(f"http://127.0.0.1:{metrics}{probe}", timeout=3).text
                except requests.RequestException:
                    pass
                pytest.fail(f"the pod never got ready ({state}; {probe}: {why!r}):\n"
                            + podman("logs", name).stderr[-4000:])
            time.sleep(1)

        receiver = CallbackReceiver()
        session = requests.Session()
        login(session, queue_url, "lms", password)
        handlers = REPO / "payload_handlers"
        picks = [("is_prime", "correct.py"), ("is_prime", "wrong_offbyone.py"), ("sum_digits", "correct.py"),
                 ("sum_digits", "wrong_infinite_loop.py")]
        samples = [Sample(key=f"{a}--{f}", assignment=a, name=f,
                          student_response=(handlers / a / "samples" / f).read_text()) for a, f in picks]
        for sample in samples:
            submit(session, queue_url, sample, receiver.url, queue=config["XGRADER_QUEUE_NAMES"])
        end = time.monotonic() + 300
        while receiver.count() < len(samples) and time.monotonic() < end:
            time.sleep(0.5)
        results = {k: v[0] for k, v in receiver.results.items()}
        assert len(results) == len(samples), (results.keys(), podman("logs", name).stderr[-4000:])
        wrong = {s.key: results[s.key] for s in samples if results[s.key]["correct"] is not s.name.startswith("correct")}
        assert not wrong, (wrong, podman("logs", name).stderr[-4000:])

        stop = podman("stop", name, timeout=120)
        assert stop.returncode == 0, stop.stderr
        code = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        logs = podman("logs", name).stderr
        events = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
        assert code == "0", logs[-3000:]   # SIGTERM: drained and stopped cleanly
        assert any(e.get("event") == "daemon_started" and e.get("backend") == "bwrap" for e in events)
        assert not [e for e in events if e.get("level") in ("error", "critical")], logs[-3000:]
    finally:
        podman("rm", "-f", name, f"{name}-init")
        if receiver is not None:
            receiver.stop()
        if queue is not None:
            queue.terminate()
            queue.wait(10)
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.slow
def test_bwrap_in_the_pod_needs_its_unmasked_proc(daemon_image):
    """Why the Deployment sets procMount: Unmasked (and so hostUsers: false):
    with the runtime's masked /proc the kernel refuses bwrap a fresh one."""
    pod = manifest("Deployment")["spec"]["template"]["spec"]
    (grader,) = pod["containers"]
    flags = security_flags(pod, grader)
    assert flags[flags.index("unmask=ALL") - 1] == "--security-opt"
    masked = flags[:flags.index("unmask=ALL") - 1] + flags[flags.index("unmask=ALL") + 1:]
    bwrap = ["bwrap", "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--die-with-parent",
             "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "true"]
    r = podman("run", "--rm", "--network=none", *flags, daemon_image, *bwrap)
    assert r.returncode == 0, r.stderr
    r = podman("run", "--rm", "--network=none", *masked, daemon_image, *bwrap)
    assert r.returncode != 0 and "Can't mount proc on /newroot/proc: Operation not permitted" in r.stderr, r.stderr
