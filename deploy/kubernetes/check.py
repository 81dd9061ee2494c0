#!/usr/bin/env python3
"""Checks the rendered manifests of deploy/kubernetes/ against the binary they run.

    check.py --bin BIN NAME=RENDERED.yaml ...   (scripts/check-kubernetes runs it; needs PyYAML)
    check.py --update-rules                     (writes overlays/production/prometheusrule.yaml)

kubernetes-validate checks the objects' shape against Kubernetes' schemas; this checks what
those schemas cannot know:

- Every environment variable a container sets (AWS_* excepted: the AWS SDK's, set by EKS for
  IRSA) and every flag in its args is one of `BIN serve --help`; `args` start with `serve`.
- Every container port is the port of one of the binary's `--*listen` flags as the manifest
  sets them, and each of those listening is declared; every probe (startup, readiness,
  liveness) is on the port of `--health-listen`, the plaintext health port.
- Services, the NetworkPolicy, the PodDisruptionBudget and the ServiceMonitor select the pods
  and name ports they have; the ServiceMonitor scrapes `--metrics-listen` through exactly one
  Service, named `pipeline-control`, the job deploy/prometheus/alerts.yml selects.
- The pods run as the Dockerfile's USER, non-root, with a read-only root filesystem, no
  privilege escalation, no capabilities and RuntimeDefault seccomp; every file setting is under
  a mount (a ConfigMap's file among its keys), and no ConfigMap or Secret is mounted with a
  subPath (which would never see an update); an SQLite file is on a writable volume; the
  Dockerfile EXPOSEs every port and its ENV listens where the manifests do;
  terminationGracePeriodSeconds outlasts the preStop pause and --shutdown-grace.
- The ServiceMonitor and the PrometheusRule (custom resources, which kubernetes-validate has no
  schema for): apiVersion, kind and the fields the Prometheus Operator requires; the
  PrometheusRule's spec is deploy/prometheus/alerts.yml, and the committed
  overlays/production/prometheusrule.yaml is exactly what --update-rules writes from it.

The render named `base` is checked without the database setting (base names none: an overlay
does).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE = HERE / "overlays" / "production" / "prometheusrule.yaml"
DOCKERFILE = ROOT / "Dockerfile"

RULE_HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by `scripts/check-kubernetes --update-rules`: do
# not edit this file; edit alerts.yml and run that. scripts/check-kubernetes fails when this
# file differs from what alerts.yml gives.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: pipeline-control
  labels:
    app.kubernetes.io/name: pipeline-control
spec:
"""

# The job the alerts select (`up{job="pipeline-control"}`): the Prometheus Operator names the
# job after the Service it scrapes through.
JOB = "pipeline-control"
HEALTH_FLAG = "health-listen"
# Flags whose values are files the service reads.
FILE_FLAGS = {"policy-file", "accounts-file", "identity-file", "auth-tokens-file",
              "tls-cert", "tls-key", "tls-client-ca"}
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
FROM_SECRET = object()  # a setting whose value comes from a Secret or ConfigMap reference


def rule_text():
    """The PrometheusRule: alerts.yml's text, whole, as its spec."""
    lines = ALERTS.read_text().splitlines(keepends=True)
    return RULE_HEADER + "".join("  " + line if line.strip() else line for line in lines)


# --- The binary's `serve --help` -------------------------------------------------------------

def read_help(text):
    """flag -> {"env", "default", "value"} from clap's long help."""
    options, current = {}, None
    for line in text.splitlines():
        m = re.match(r"^\s+(?:-\w, )?--([a-z0-9][a-z0-9-]*)( <[^>]+>)?\s*$", line)
        if m:
            current = options[m.group(1)] = {"env": None, "default": None,
                                             "value": bool(m.group(2))}
            continue
        if current is None:
            continue
        m = re.search(r"\[env: ([A-Za-z0-9_]+)=", line)
        if m:
            current["env"] = m.group(1)
        m = re.search(r"\[default: (.*)\]\s*$", line)
        if m:
            current["default"] = m.group(1)
    return options


UNITS = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def duration_seconds(text):
    """Seconds of a duration as the binary reads them (`20s`, `1m30s`), or None."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|sec|s|min|m|h)", text)
    if not parts or re.sub(r"[\d.\s]|ms|sec|s|min|m|h", "", text):
        return None
    return sum(float(n) * UNITS[unit] for n, unit in parts)


def port_of(address):
    m = re.fullmatch(r".*:(\d+)", address or "")
    return int(m.group(1)) if m else None


# --- The Dockerfile's runtime stage ----------------------------------------------------------

def read_dockerfile():
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stage = re.split(r"(?m)^FROM\s", text)[-1]
    image = {"user": None, "workdir": "/", "expose": set(), "env": {}}
    for line in stage.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        op, rest = words[0].upper(), words[1:]
        if op == "USER":
            image["user"] = rest[0]
        elif op == "WORKDIR":
            image["workdir"] = rest[0]
        elif op == "EXPOSE":
            image["expose"] |= {int(p.split("/")[0]) for p in rest}
        elif op == "ENV":
            for pair in rest:
                name, _, value = pair.partition("=")
                image["env"][name] = value
    return image


# --- Checks of one render --------------------------------------------------------------------

class Render:
    def __init__(self, name, docs, options, image, alerts, errors):
        self.name, self.options, self.image, self.alerts = name, options, image, alerts
        self.objects = [d for d in docs if d]
        self.errors = errors
        self.env_flag = {o["env"]: flag for flag, o in options.items() if o["env"]}

    def error(self, message):
        self.errors.setdefault(message, []).append(self.name)

    def of_kind(self, kind):
        return [o for o in self.objects if o.get("kind") == kind]

    def check(self):
        deployments = self.of_kind("Deployment")
        if len(deployments) != 1:
            self.error(f"expected one Deployment, found {len(deployments)}")
            return None
        deployment = deployments[0]
        pod = deployment["spec"]["template"]
        containers = pod["spec"].get("containers") or []
        if len(containers) != 1:
            self.error(f"expected one container in the Deployment, found {len(containers)}")
            return None
        container = containers[0]
        settings = self.settings(container)
        ports = self.container_ports(container, settings)
        self.probes(container, ports, settings)
        self.security(pod["spec"], container)
        self.files(pod["spec"], container, settings)
        self.shutdown(pod["spec"], container, settings)
        self.image_agrees(ports, settings)
        labels = pod["metadata"].get("labels") or {}
        self.selectors(deployment, labels, ports)
        self.custom_resources(ports)
        return deployment, ports

    def settings(self, container):
        """flag -> value, as the container's env and args set them."""
        values = {}
        if container.get("command"):
            self.error("the container sets `command`: the image's ENTRYPOINT is the binary, "
                       "give `args` only")
        if container.get("envFrom"):
            self.error("envFrom cannot be checked against `serve --help`: set each variable")
        for entry in container.get("env") or []:
            name = entry["name"]
            if name.startswith("AWS_"):
                continue
            flag = self.env_flag.get(name)
            if flag is None:
                hint = ""
                if name == "PIPELINE_CONTROL_HEALTH_LISTEN":
                    hint = (" (--health-listen, the probes' port: this binary is older than"
                            " that flag; build one that has it)")
                self.error(f"env {name} is not a variable of `serve --help`{hint}")
                continue
            values[flag] = entry["value"] if "value" in entry else FROM_SECRET
        args = list(container.get("args") or [])
        if not args or args[0] != "serve":
            self.error(f"args should start with `serve`, not {args[:1]}")
        i = 1
        while i < len(args):
            arg = args[i]
            i += 1
            if not arg.startswith("--"):
                self.error(f"args: {arg!r} is not a flag")
                continue
            flag, eq, value = arg[2:].partition("=")
            option = self.options.get(flag)
            if option is None:
                self.error(f"args: --{flag} is not a flag of `serve --help`")
                continue
            if option["value"] and not eq:
                value = args[i] if i < len(args) else ""
                i += 1
            values[flag] = value if option["value"] else "true"
        return values

    def value(self, settings, flag):
        if flag in settings:
            return settings[flag]
        return (self.options.get(flag) or {}).get("default")

    def container_ports(self, container, settings):
        """name or number -> port, for the container's ports; checks each against the flags."""
        listening = {}
        for flag in self.options:
            if flag == "listen" or flag.endswith("-listen"):
                address = self.value(settings, flag)
                if address not in (None, "off", FROM_SECRET) and port_of(address):
                    listening[port_of(address)] = flag
        ports = {}
        for p in container.get("ports") or []:
            number = p["containerPort"]
            ports[number] = number
            if p.get("name"):
                ports[p["name"]] = number
            if number not in listening:
                self.error(f"container port {p.get('name', '')} {number} is the port of no "
                           f"--*-listen flag of `serve --help` as the manifest sets them")
        for number, flag in sorted(listening.items()):
            if number not in ports:
                self.error(f"--{flag} listens on {number}, which the container does not declare")
        return ports

    def probes(self, container, ports, settings):
        health = self.value(settings, HEALTH_FLAG)
        on = {}
        for kind in PROBES:
            probe = container.get(kind)
            if not probe:
                self.error(f"no {kind}")
                continue
            action = probe.get("grpc") or probe.get("tcpSocket") or probe.get("httpGet") or {}
            on.setdefault(ports.get(action.get("port"), action.get("port")), []).append(kind)
            if "httpGet" in probe:
                self.error(f"{kind}: the health port speaks gRPC only; use grpc or tcpSocket")
        for port, kinds in on.items():
            if HEALTH_FLAG not in self.options:
                self.error(f"{', '.join(kinds)} on port {port}: `serve --help` has no "
                           f"--{HEALTH_FLAG} (env PIPELINE_CONTROL_HEALTH_LISTEN), the plaintext "
                           "health port the probes need: this binary is older than that flag")
            elif health in (None, "off", FROM_SECRET) or port != port_of(health):
                self.error(f"{', '.join(kinds)} on port {port}, not --{HEALTH_FLAG}'s ({health})")

    def security(self, pod, container):
        uid, _, gid = (self.image["user"] or "").partition(":")
        pod_sc = pod.get("securityContext") or {}
        sc = container.get("securityContext") or {}

        def setting(key):
            return sc.get(key, pod_sc.get(key))

        want = {"runAsNonRoot": True, "runAsUser": int(uid or -1),
                "runAsGroup": int(gid or uid or -1)}
        for key, value in want.items():
            if setting(key) != value:
                self.error(f"securityContext {key} is {setting(key)}, not {value} "
                           f"(the Dockerfile's USER {self.image['user']})")
        if sc.get("readOnlyRootFilesystem") is not True:
            self.error("the container's root filesystem is not read-only")
        if sc.get("allowPrivilegeEscalation") is not False:
            self.error("allowPrivilegeEscalation is not false")
        if (sc.get("capabilities") or {}).get("drop") != ["ALL"] or \
                (sc.get("capabilities") or {}).get("add"):
            self.error("capabilities should drop ALL and add none")
        seccomp = sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}
        if seccomp.get("type") != "RuntimeDefault":
            self.error("seccompProfile is not RuntimeDefault")

    def files(self, pod, container, settings):
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        config_maps = {c["metadata"]["name"]: c for c in self.of_kind("ConfigMap")}
        mounts = []
        for m in container.get("volumeMounts") or []:
            volume = volumes.get(m["name"])
            if volume is None:
                self.error(f"volumeMount {m['mountPath']}: no volume {m['name']}")
                continue
            mounts.append((m["mountPath"].rstrip("/"), bool(m.get("readOnly")), volume))
            if m.get("subPath") and ("configMap" in volume or "secret" in volume):
                self.error(f"{m['mountPath']}: a subPath mount never sees its ConfigMap's or "
                           "Secret's updates, which the service reloads: mount the volume")

        def mount_of(path):
            found = [m for m in mounts if path == m[0] or path.startswith(m[0] + "/")]
            return max(found, key=lambda m: len(m[0])) if found else None

        for mount_path, read_only, volume in mounts:
            writable = "emptyDir" in volume or "persistentVolumeClaim" in volume
            if writable and read_only:
                self.error(f"{mount_path}: a writable volume mounted read-only")
            if not writable and not read_only:
                self.error(f"{mount_path}: mount it readOnly")
        for flag in sorted(FILE_FLAGS & set(settings)):
            path = settings[flag]
            if path is FROM_SECRET:
                continue
            mount = mount_of(path)
            if mount is None:
                self.error(f"--{flag} {path} is under no volume mount (not in the image)")
                continue
            config_map = (mount[2].get("configMap") or {}).get("name")
            if config_map is not None:
                key = path[len(mount[0]) + 1:]
                data = (config_maps.get(config_map) or {}).get("data") or {}
                if config_map not in config_maps:
                    self.error(f"--{flag}: no ConfigMap {config_map} in the render")
                elif key not in data:
                    self.error(f"--{flag} {path}: ConfigMap {config_map} has no key {key}")
        database = self.value(settings, "database-url")
        if self.name == "base" or database is FROM_SECRET or database is None \
                or re.match(r"postgres(ql)?://", database):
            return
        path = re.sub(r"^sqlite://", "", database).split("?")[0]
        if not path.startswith("/"):
            path = f"{self.image['workdir'].rstrip('/')}/{path}"
        mount = mount_of(path)
        if mount is None or mount[1] or not ("emptyDir" in mount[2]
                                             or "persistentVolumeClaim" in mount[2]):
            self.error(f"the SQLite file {path} is not on a writable volume (the root "
                       "filesystem is read-only)")

    def shutdown(self, pod, container, settings):
        grace = duration_seconds(str(self.value(settings, "shutdown-grace")))
        if grace is None:
            self.error(f"cannot read --shutdown-grace {self.value(settings, 'shutdown-grace')}")
            return
        command = (((container.get("lifecycle") or {}).get("preStop") or {}).get("exec")
                   or {}).get("command") or []
        pause = float(command[1]) if len(command) == 2 and command[0] == "sleep" else 0
        termination = pod.get("terminationGracePeriodSeconds", 30)
        if termination <= pause + grace:
            self.error(f"terminationGracePeriodSeconds {termination} is not longer than the "
                       f"preStop pause ({pause:g} s) and --shutdown-grace ({grace:g} s)")

    def image_agrees(self, ports, settings):
        for number in sorted({p for p in ports.values()} - self.image["expose"]):
            self.error(f"the Dockerfile does not EXPOSE port {number}")
        for name, value in sorted(self.image["env"].items()):
            flag = self.env_flag.get(name)
            if flag is None:
                if name == "PIPELINE_CONTROL_HEALTH_LISTEN":
                    continue  # reported once, for the manifests
                self.error(f"the Dockerfile's ENV {name} is not a variable of `serve --help`")
            elif flag.endswith("listen") and flag in settings and \
                    port_of(settings[flag]) != port_of(value):
                self.error(f"the Dockerfile's {name}={value} and the manifests' "
                           f"{settings[flag]} disagree")

    def selectors(self, deployment, labels, ports):
        def selects(selector):
            return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

        if not selects(deployment["spec"]["selector"].get("matchLabels")):
            self.error("the Deployment's selector does not match its pods")
        for service in self.of_kind("Service"):
            where = f"Service {service['metadata']['name']}"
            if not selects(service["spec"].get("selector")):
                self.error(f"{where} selects none of the pods")
            for p in service["spec"].get("ports") or []:
                if p.get("targetPort", p["port"]) not in ports:
                    self.error(f"{where}: targetPort {p.get('targetPort')} is no container port")
        for pdb in self.of_kind("PodDisruptionBudget"):
            if not selects(pdb["spec"]["selector"].get("matchLabels")):
                self.error("the PodDisruptionBudget selects none of the pods")
        for policy in self.of_kind("NetworkPolicy"):
            if not selects(policy["spec"]["podSelector"].get("matchLabels")):
                self.error("the NetworkPolicy selects none of the pods")
            for rule in policy["spec"].get("ingress") or []:
                for p in rule.get("ports") or []:
                    if p.get("port") not in ports:
                        self.error(f"NetworkPolicy ingress port {p.get('port')} is no container port")

    def custom_resources(self, ports):
        for monitor in self.of_kind("ServiceMonitor"):
            where = f"ServiceMonitor {monitor.get('metadata', {}).get('name')}"
            spec = monitor.get("spec") or {}
            if monitor.get("apiVersion") != "monitoring.coreos.com/v1":
                self.error(f"{where}: apiVersion should be monitoring.coreos.com/v1")
            if not isinstance(spec.get("selector"), dict) or not spec.get("endpoints"):
                self.error(f"{where}: spec needs a selector and endpoints")
                continue
            selector = spec["selector"].get("matchLabels") or {}
            for endpoint in spec["endpoints"]:
                services = [s for s in self.of_kind("Service")
                            if all((s["metadata"].get("labels") or {}).get(k) == v
                                   for k, v in selector.items())
                            and any(p.get("name") == endpoint.get("port")
                                    for p in s["spec"].get("ports") or [])]
                if len(services) != 1 or services[0]["metadata"]["name"] != JOB:
                    self.error(f"{where}: port {endpoint.get('port')} should be scraped through "
                               f"one Service, {JOB} (the alerts' job), not "
                               f"{[s['metadata']['name'] for s in services]}")
                    continue
                target = next(p for p in services[0]["spec"]["ports"]
                              if p.get("name") == endpoint.get("port"))
                if ports.get(target.get("targetPort")) != ports.get("metrics"):
                    self.error(f"{where}: scrapes port {target.get('targetPort')}, not metrics")
        for rule in self.of_kind("PrometheusRule"):
            where = f"PrometheusRule {rule.get('metadata', {}).get('name')}"
            if rule.get("apiVersion") != "monitoring.coreos.com/v1":
                self.error(f"{where}: apiVersion should be monitoring.coreos.com/v1")
            groups = (rule.get("spec") or {}).get("groups")
            if not isinstance(groups, list) or not all(
                    g.get("name") and all(("alert" in r or "record" in r) and r.get("expr")
                                          for r in g.get("rules") or [])
                    for g in groups):
                self.error(f"{where}: spec.groups needs named groups of rules with expr")
            if rule.get("spec") != self.alerts:
                self.error(f"{where}: its spec is not deploy/prometheus/alerts.yml")


def main(argv):
    if argv[1:] == ["--update-rules"]:
        RULE.write_text(rule_text())
        print(f"wrote {RULE.relative_to(ROOT)} from {ALERTS.relative_to(ROOT)}")
        return 0
    if len(argv) < 4 or argv[1] != "--bin":
        print(__doc__, file=sys.stderr)
        return 2
    import yaml  # only here: --update-rules needs nothing beyond the standard library

    binary, renders = argv[2], [a.partition("=") for a in argv[3:]]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}  # no setting leaks into the help
    help_text = subprocess.run([binary, "serve", "--help"], env=env, check=True,
                               capture_output=True, text=True).stdout
    options = read_help(help_text)
    if "listen" not in options:
        print(f"check.py: cannot read the flags of `{binary} serve --help`", file=sys.stderr)
        return 1
    image = read_dockerfile()
    alerts = yaml.safe_load(ALERTS.read_text())
    errors = {}
    summaries = []
    if not RULE.exists() or RULE.read_text() != rule_text():
        errors.setdefault(f"{RULE.relative_to(ROOT)} is not what "
                          f"{ALERTS.relative_to(ROOT)} gives: run "
                          "`scripts/check-kubernetes --update-rules` and commit it", [])
    for name, _, path in renders:
        docs = list(yaml.safe_load_all(Path(path).read_text()))
        render = Render(name, docs, options, image, alerts, errors)
        found = render.check()
        kinds = ", ".join(sorted({o["kind"] for o in render.objects}))
        if found:
            deployment, ports = found
            named = ", ".join(f"{k} {v}" for k, v in ports.items() if isinstance(k, str))
            summaries.append(f"{name}: {len(render.objects)} objects ({kinds}); "
                             f"{deployment['spec'].get('replicas')} replica(s); ports {named}")
        if render.of_kind("PrometheusRule"):
            rules = sum(len(g.get("rules") or []) for g in alerts["groups"])
            summaries.append(f"{name}: the PrometheusRule holds alerts.yml's {rules} rules")
    for line in summaries:
        print(f"check.py: {line}")
    if errors:
        for message, where in errors.items():
            print(f"check.py: {', '.join(where) + ': ' if where else ''}{message}",
                  file=sys.stderr)
        print(f"check.py: {len(errors)} problem(s) (flags and variables as `{binary} serve "
              "--help` lists them)", file=sys.stderr)
        return 1
    print(f"check.py: ok: every variable, flag, port and probe is one `{binary} serve --help` "
          "has")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
