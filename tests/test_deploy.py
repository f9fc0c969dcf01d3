"""The deployment artefacts, checked offline (issue 16): the Kubernetes manifests render with
kustomize, validate against a pinned Kubernetes schema version, pass a policy scan (checkov,
skips listed and justified in deploy/k8s/checkov.yaml), and give tritonserver exactly the
arguments `gsv-triton serve --print-docker` gives it; the Dockerfile lints clean and installs
what ``ops.server.container_pip`` names, pinned. Each check also sees a broken input fail.

Tools: ``kubectl`` (kustomize) from PATH; kubernetes-validate, checkov and hadolint from the
``.venv-deploy`` venv that .ci/run makes (``$GSV_DEPLOY_VENV`` overrides it); a missing tool skips
its tests with the reason.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
DOCKER = ROOT / "deploy" / "docker"
OVERLAYS = ("cpu", "gpu")
KUBERNETES_VERSION = "1.32.0"  # the schema version the manifests must validate against
VENV = Path(os.environ.get("GSV_DEPLOY_VENV", ROOT / ".venv-deploy"))
SECRET_NAMES = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)", re.I)

yaml = pytest.importorskip("yaml")
sys.path.insert(0, str(K8S))
import render_args  # noqa: E402

from ops import server  # noqa: E402


def tool(name: str) -> str:
    path = VENV / "bin" / name
    if not path.is_file():
        pytest.skip(f"{path} missing: make the deploy venv (python3 -m venv .venv-deploy && "
                    f".venv-deploy/bin/pip install -r deploy/requirements-ci.txt; .ci/run does)")
    return str(path)


def kubectl() -> str:
    found = shutil.which("kubectl")
    if not found:
        pytest.skip("kubectl not on PATH: it renders the kustomize overlays (kubectl kustomize)")
    return found


def run(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300, **kw)


_rendered: dict[str, str] = {}


def render(overlay: str) -> str:
    if overlay not in _rendered:
        out = run([kubectl(), "kustomize", K8S / "overlays" / overlay])
        assert out.returncode == 0, f"kubectl kustomize {overlay} failed:\n{out.stderr}"
        _rendered[overlay] = out.stdout
    return _rendered[overlay]


def docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def find(objs, kind, name) -> dict:
    hits = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} found"
    return hits[0]


def container(pod_spec: dict, name: str) -> dict:
    return next(c for c in pod_spec["containers"] if c["name"] == name)


@pytest.fixture(params=OVERLAYS)
def overlay(request) -> str:
    return request.param


# ---- (a) kustomize renders; (e) the args are what --print-docker runs ----

def test_generated_patch_is_current():
    """deploy/k8s/base/triton-args.yaml is exactly what render_args.py writes for its recorded params."""
    assert render_args.main(["--check"]) == 0, "run python deploy/k8s/render_args.py"


def test_overlay_renders(overlay):
    objs = docs(render(overlay))
    kinds = sorted({o["kind"] for o in objs})
    for kind in ("StatefulSet", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                 "PersistentVolumeClaim", "NetworkPolicy", "Namespace"):
        assert kind in kinds, f"{overlay}: no {kind}"
    assert all(o["metadata"].get("namespace") == "gsv-triton" for o in objs if o["kind"] != "Namespace")
    pvc = find(objs, "PersistentVolumeClaim", "gsv-triton-repo")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def _print_docker_triton_args(tmp_path: Path, models: list[str]) -> list[str]:
    """tritonserver's words in `gsv-triton serve --print-docker`, with the shell's key reference
    written the Kubernetes way."""
    repo = tmp_path / "repo"
    for name in models:
        (repo / name).mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(f'name: "{name}"\n')
    words = shlex.split(server.official_container_command(repo, models=models))
    inner = words[words.index("-c") + 1]
    triton = shlex.split(inner.split("exec tritonserver ", 1)[1])
    return [w.replace("${GSV_ADMIN_KEY:?set GSV_ADMIN_KEY}", "$(GSV_ADMIN_KEY)") for w in triton]


def test_triton_args_match_print_docker(overlay, tmp_path):
    """The pods' tritonserver args are container_triton_args(...), i.e. what --print-docker starts."""
    params = render_args.recorded_params()
    sts = find(docs(render(overlay)), "StatefulSet", "gsv-triton")
    pod = sts["spec"]["template"]["spec"]
    triton = container(pod, "tritonserver")
    assert triton["command"] == ["tritonserver"]
    assert triton["args"] == server.container_triton_args(params["models"], admin_key_ref="$(GSV_ADMIN_KEY)")
    assert triton["args"] == _print_docker_triton_args(tmp_path, params["models"])
    # $(GSV_ADMIN_KEY) is expanded by the kubelet only from the container's own env, from the Secret
    key_env = next(e for e in triton["env"] if e["name"] == "GSV_ADMIN_KEY")
    assert key_env["valueFrom"]["secretKeyRef"]["name"] == "gsv-triton-secrets"
    # ready when the recorded voice can be served
    assert triton["readinessProbe"]["httpGet"] == {"path": f"/v2/models/voice_{params['ready_voice']}/ready",
                                                   "port": "http"}


def test_render_args_refuses_bad_names(tmp_path):
    out = tmp_path / "patch.yaml"
    assert render_args.main(["--out", str(out), "--models", "tts,../x"]) == 2
    assert render_args.main(["--out", str(out), "--ready-voice", "a&b=c"]) == 2
    assert not out.exists()
    assert render_args.main(["--out", str(out), "--models", "tts,voice_x", "--ready-voice", "x"]) == 0
    assert "--load-model=voice_x" in out.read_text() and "/v2/models/voice_x/ready" in out.read_text()
    # a hand edit is caught
    out.write_text(out.read_text().replace("--load-model=tts\"", "--load-model=tts\"\n            - \"--x\""))
    assert render_args.main(["--out", str(out), "--check"]) == 1


def test_broken_overlay_does_not_render(tmp_path):
    broken = tmp_path / "k8s"
    shutil.copytree(K8S, broken)
    (broken / "base" / "triton-args.yaml").unlink()
    out = run([kubectl(), "kustomize", broken / "overlays" / "cpu"])
    assert out.returncode != 0


# ---- the properties the issue asks for, read from the rendered objects ----

def pod_specs(objs):
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet"):
            yield o, o["spec"]["template"]["spec"]


def test_pods_are_locked_down(overlay):
    objs = docs(render(overlay))
    for obj, pod in pod_specs(objs):
        where = f"{overlay} {obj['kind']}/{obj['metadata']['name']}"
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod.get("automountServiceAccountToken") is False, where
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (where, c["name"])
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and {"cpu", "memory"} <= set(c["resources"]["limits"])
            assert "livenessProbe" in c and "readinessProbe" in c, (where, c["name"])
            for env in c.get("env", []):
                if SECRET_NAMES.search(env["name"]) and "value" in env:
                    assert "$(" in env["value"], f"{where} {c['name']}: {env['name']} has a literal value"
    assert not [o for o in objs if o["kind"] == "Secret"], "secrets are created with kubectl, never rendered"
    pod = find(objs, "StatefulSet", "gsv-triton")["spec"]["template"]["spec"]
    triton = container(pod, "tritonserver")
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    gpus = triton["resources"]["limits"].get("nvidia.com/gpu")
    assert (gpus == "1") if overlay == "gpu" else gpus is None
    hpa = find(objs, "HorizontalPodAutoscaler", "gsv-gateway")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "gsv-gateway"
    pdb = find(objs, "PodDisruptionBudget", "gsv-triton")
    assert pdb["spec"]["selector"]["matchLabels"] == find(objs, "StatefulSet", "gsv-triton")["spec"]["selector"]["matchLabels"]


# ---- (b) schema validation ----

def kubernetes_validate(path: Path) -> str | None:
    """None when every object validates, else what kubernetes-validate said. With --quiet it prints
    only failures and warnings; a warning counts as a failure: it is how it reports an object whose
    kind/apiVersion has no schema in that Kubernetes version (exit status 0)."""
    out = run([tool("kubernetes-validate"), "-k", KUBERNETES_VERSION, "--strict", "--quiet", path])
    said = (out.stdout + out.stderr).strip()
    return None if out.returncode == 0 and not said else f"exit {out.returncode}: {said}"


def test_manifests_validate(overlay, tmp_path):
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(render(overlay))
    problem = kubernetes_validate(path)
    assert problem is None, problem


@pytest.mark.parametrize("breakage", [
    ("  replicas: 2\n", '  replicas: "two"\n'),                       # wrong type
    ("containerPort: 8003", "containerPrt: 8003"),                   # unknown field (strict)
    ("apiVersion: autoscaling/v2", "apiVersion: autoscaling/v2beta1"),  # removed API version
])
def test_validation_rejects_a_broken_manifest(tmp_path, breakage):
    text = render("cpu")
    assert breakage[0] in text
    path = tmp_path / "broken.yaml"
    path.write_text(text.replace(breakage[0], breakage[1], 1))
    assert kubernetes_validate(path) is not None


# ---- (c) policy scan ----

def checkov(path: Path) -> subprocess.CompletedProcess:
    return run([tool("checkov"), "--config-file", K8S / "checkov.yaml", "-f", path], cwd=path.parent)


def test_policy_scan(overlay, tmp_path):
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(render(overlay))
    out = checkov(path)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "Failed checks: 0" in out.stdout


def test_policy_scan_skips_are_justified():
    config = yaml.safe_load((K8S / "checkov.yaml").read_text())
    lines = (K8S / "checkov.yaml").read_text().splitlines()
    for check in config.get("skip-check", []):
        line = next(x for x in lines if re.match(rf"\s*-\s*{check}\b", x))
        assert re.search(r"#\s*\S.{20,}", line), f"{check}: no one-line justification"


def test_policy_scan_catches_a_privileged_pod(tmp_path):
    objs = docs(render("cpu"))
    pod = find(objs, "StatefulSet", "gsv-triton")["spec"]["template"]["spec"]
    sc = container(pod, "tritonserver")["securityContext"]
    sc.update(privileged=True, allowPrivilegeEscalation=True, readOnlyRootFilesystem=False)
    path = tmp_path / "privileged.yaml"
    path.write_text(yaml.safe_dump_all(objs))
    out = checkov(path)
    assert out.returncode != 0 and "CKV_K8S_16" in out.stdout  # "Container should not be privileged"


# ---- (d) the Dockerfile ----

def hadolint(path: Path) -> subprocess.CompletedProcess:
    return run([tool("hadolint"), "--no-color", "--config", DOCKER / "hadolint.yaml", path])


def test_dockerfile_lints_clean():
    out = hadolint(DOCKER / "Dockerfile")
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text((DOCKER / "Dockerfile").read_text().replace(server.CONTAINER_IMAGE, "nvcr.io/nvidia/tritonserver:latest")
                   + "RUN apt-get update && apt-get install -y curl\n")
    out = hadolint(bad)
    assert out.returncode != 0 and "DL3007" in out.stdout


def _requirement_name(spec: str) -> str:
    return re.split(r"[\[<>=!~; ]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_dockerfile_installs_what_print_docker_installs():
    """FROM the release --print-docker names; requirements.txt = container_pip + the serve extra's
    clients (not nvidia-pytriton: the container has its tritonserver), each pinned, each allowed
    by pyproject.toml; a non-root user; no secret in the image."""
    import tomllib

    from packaging.requirements import Requirement

    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(rf"^FROM {re.escape(server.CONTAINER_IMAGE)}$", text, re.M)
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and not users[-1].startswith(("0", "root")) and users[-1].split(":")[0].isdigit()
    for line in re.findall(r"^(?:ENV|ARG) .*$", text, re.M):
        assert not SECRET_NAMES.search(line), f"secret-like setting baked into the image: {line}"

    pins = {}
    for line in (DOCKER / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            spec = list(req.specifier)
            assert len(spec) == 1 and spec[0].operator == "==", f"not pinned: {line}"
            pins[_requirement_name(line)] = (req, spec[0].version)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_requirement_name(w): Requirement(w) for w in shlex.split(server.container_pip(ROOT))}
    wanted |= {_requirement_name(w): Requirement(w) for w in project["optional-dependencies"]["serve"]
               if not w.startswith("nvidia-pytriton")}
    assert set(pins) == set(wanted), f"missing {set(wanted) - set(pins)}, extra {set(pins) - set(wanted)}"
    for name, want in wanted.items():
        req, version = pins[name]
        assert want.specifier.contains(version, prereleases=True), f"{name}=={version} is outside {want.specifier}"
        assert req.extras == want.extras, f"{name}: extras {req.extras} != {want.extras}"
    assert "onnxruntime" not in pins  # never both onnxruntime and onnxruntime-gpu


def test_sidecar_and_gateway_args_parse(overlay):
    """The control sidecar's and the gateways' arguments are ones `gsv-triton` accepts (a renamed
    option would otherwise surface only as a crash-looping pod)."""
    import argparse

    from ops import control, gateway

    objs = docs(render(overlay))
    for obj_kind, name, cname, add in (("StatefulSet", "gsv-triton", "control", control.add_control_parser),
                                       ("Deployment", "gsv-gateway", "gateway", gateway.add_gateway_parser)):
        c = container(find(objs, obj_kind, name)["spec"]["template"]["spec"], cname)
        assert c["command"][0] == "gsv-triton"
        parser = argparse.ArgumentParser(prog="gsv-triton", exit_on_error=False)
        add(parser.add_subparsers(dest="cmd"))
        args = parser.parse_args([*c["command"][1:], *c["args"]])
        assert args.cmd == c["command"][1]
        assert args.host == "0.0.0.0"
        secret_env = {e["name"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
        assert {"GSV_ADMIN_KEY", "GSV_CONTROL_TOKEN"} <= secret_env  # read from the environment, not argv
