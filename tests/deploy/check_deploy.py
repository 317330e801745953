"""Checks the deployment files (ctest `deploy_manifests`, label `deploy`):

1. every kustomization under k8s/overlays and k8s/monitoring renders with `kubectl kustomize`;
2. every rendered object validates, strictly, against the Kubernetes schemas of kubernetes-validate
   (K8S_VERSION), and LeaderWorkerSets against k8s/schemas (the LWS CRD's fields, with pod templates
   checked as Kubernetes PodTemplateSpecs); a kind without a schema fails;
3. what the schemas cannot see: every ConfigMap a pod mounts or reads exists in the same render
   (kustomize leaves a generated name unresolved when namespaces differ), and a denoiser group's
   cfg x ring x ulysses equals its LeaderWorkerSet size;
4. checkov finds no failed check in the rendered manifests and docker/Dockerfile; the only skips are
   the ones written down with their reasons (annotations in k8s/, comments in the Dockerfile).

Runs with the Python of .venv-deploy (requirements-deploy.txt): kubernetes-validate, checkov and the
kubectl wheel. Usage: check_deploy.py [--keep DIR] (write the renders there).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import jsonschema
import kubernetes_validate.utils as kv
import referencing
import yaml

K8S_VERSION = "1.31.0"
SOURCE = os.environ.get("DGRID_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.dirname(sys.executable)


def kustomizations():
    roots = [os.path.join(SOURCE, "k8s", "overlays", d)
             for d in sorted(os.listdir(os.path.join(SOURCE, "k8s", "overlays")))]
    return roots + [os.path.join(SOURCE, "k8s", "monitoring")]


def render(root):
    out = subprocess.run([os.path.join(BIN, "kubectl"), "kustomize", root], capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise SystemExit(f"FAIL kubectl kustomize {root}:\n{out.stderr}")
    return out.stdout


def lws_validator():
    schema_dir = f"kubernetes-json-schema/v{K8S_VERSION}-local-strict"
    definitions = kv.schema_contents(f"{schema_dir}/_definitions.json", K8S_VERSION)
    with open(os.path.join(SOURCE, "k8s", "schemas",
                           "leaderworkerset-leaderworkerset.x-k8s.io-v1.json")) as f:
        schema = json.load(f)
    registry = referencing.Registry().with_resources([
        (definitions["$id"], referencing.Resource.from_contents(definitions)),
        (schema["$id"], referencing.Resource.from_contents(schema)),
    ])
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(docs, name, lws):
    errors = []
    for doc in docs:
        what = f"{name}: {doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "LeaderWorkerSet":
            errors += [f"{what}: {'.'.join(map(str, e.path))}: {e.message}"
                       for e in lws.iter_errors(doc)]
            continue
        try:
            kv.validate(doc, K8S_VERSION, strict=True)
        except kv.ValidationError as e:
            errors.append(f"{what}: {'.'.join(map(str, e.path))}: {e.message}")
        except kv.SchemaNotFoundError:
            errors.append(f"{what}: no schema for {doc['apiVersion']} {doc['kind']}")
    return errors


def pod_specs(doc):
    spec = doc.get("spec", {})
    if "template" in spec:
        yield spec["template"]["spec"]
    lwt = spec.get("leaderWorkerTemplate", {})
    for key in ("leaderTemplate", "workerTemplate"):
        if key in lwt:
            yield lwt[key]["spec"]


def cross_checks(docs, name):
    errors = []
    config_maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    for doc in docs:
        what = f"{name}: {doc['kind']}/{doc['metadata']['name']}"
        for pod in pod_specs(doc):
            wanted = [v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v]
            for c in pod.get("containers", []):
                wanted += [e["valueFrom"]["configMapKeyRef"]["name"] for e in c.get("env", [])
                           if "configMapKeyRef" in e.get("valueFrom", {})]
            errors += [f"{what}: ConfigMap {m} is not in the render" for m in wanted
                       if m not in config_maps]
        if doc["kind"] == "LeaderWorkerSet":
            size = doc["spec"]["leaderWorkerTemplate"].get("size", 1)
            layouts = [c for n, c in config_maps.items() if n.startswith("dgrid-denoiser-group")]
            for layout in layouts:
                data = layout["data"]
                product = int(data["cfg"]) * int(data["ring"]) * int(data["ulysses"])
                if product != size:
                    errors.append(f"{what}: cfg x ring x ulysses = {product}, group size {size}")
    return errors


def checkov(framework, path):
    """Runs checkov offline (--skip-download: no guideline look-ups) on a file or folder."""
    cmd = [os.path.join(BIN, "checkov"), "--quiet", "--compact", "--skip-download",
           "--framework", framework, "--file" if os.path.isfile(path) else "--directory", path]
    out = subprocess.run(cmd, capture_output=True, text=True)
    print(out.stdout[-20000:])
    if out.returncode != 0:
        print(out.stderr[-5000:])
    return out.returncode


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--keep", help="write the rendered manifests to this folder")
    args = parser.parse_args()
    out_dir = args.keep or tempfile.mkdtemp(prefix="dgrid-k8s-")
    os.makedirs(out_dir, exist_ok=True)
    lws = lws_validator()
    errors = []
    for root in kustomizations():
        name = os.path.relpath(root, os.path.join(SOURCE, "k8s"))
        text = render(root)
        docs = [d for d in yaml.safe_load_all(text) if d]
        with open(os.path.join(out_dir, name.replace("/", "-") + ".yaml"), "w") as f:
            f.write(text)
        found = validate(docs, name, lws) + cross_checks(docs, name)
        print(f"{'FAIL' if found else 'ok  '} {name}: {len(docs)} objects rendered and validated")
        errors += found
    for e in errors:
        print("  " + e)
    failed = [f"checkov {framework}" for framework, path in
              [("kubernetes", out_dir), ("dockerfile", os.path.join(SOURCE, "docker", "Dockerfile"))]
              if checkov(framework, path) != 0]
    print(f"checkov: {', '.join(failed) + ' FAILED (above)' if failed else 'no failed checks'}")
    return 1 if errors or failed else 0


if __name__ == "__main__":
    sys.exit(main())
