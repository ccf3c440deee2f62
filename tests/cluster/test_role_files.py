"""Static checks of the deploy files (fast, no boxes): the role's unit template renders to the
canonical systemd/mirror-neuron.service, each role's argument_specs match its defaults, the
collection builds and installs, the unit's offline exposure, and the lock file."""

from __future__ import annotations

import os
import re
import subprocess
import tarfile
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.support.tools import skip_unless_tools

ROOT = Path(__file__).resolve().parents[2]
jinja2 = pytest.importorskip("jinja2")


def defaults(role: str) -> dict[str, object]:
    return yaml.safe_load((ROOT / "roles" / role / "defaults/main.yml").read_text())


def test_unit_template_renders_the_canonical_unit() -> None:
    src = (ROOT / "roles/mirror_neuron/templates/mirror-neuron.service.j2").read_text()
    header, _, body = src.partition("\n")
    assert "ansible_managed" in header
    env = jinja2.Environment(keep_trailing_newline=True, trim_blocks=True, undefined=jinja2.StrictUndefined)
    variables = {**defaults("mirror_neuron"), "mirror_neuron_python_real": "/usr/bin/python3.11"}
    rendered = env.from_string(body).render(**variables)
    assert rendered == (ROOT / "systemd/mirror-neuron.service").read_text()


@pytest.mark.parametrize("role", ["redis", "mirror_neuron"])
def test_argument_specs_match_defaults(role: str) -> None:
    specs = yaml.safe_load((ROOT / "roles" / role / "meta/argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    want = defaults(role)
    assert set(options) == set(want), set(options) ^ set(want)
    for name, spec in options.items():
        assert spec.get("default") == want[name], name
        assert spec.get("description"), name


@pytest.mark.parametrize("role", ["redis", "mirror_neuron"])
def test_readme_lists_every_variable(role: str) -> None:
    readme = (ROOT / "roles" / role / "README.md").read_text()
    missing = [v for v in defaults(role) if f"`{v}`" not in readme and f"{v}:" not in readme]
    assert not missing, missing


def test_playbooks_use_role_fqcns_and_role_prefixed_tags() -> None:
    """Roles are referenced only as mirror_neuron.cluster.<role> (no other `redis` role can be
    picked up); every tag in a role starts with the role's name."""
    refs: list[str] = []
    playbooks = [ROOT / "site.yml", *(ROOT / "playbooks").glob("*.yml"), *(ROOT / "molecule").rglob("*.yml")]
    for pb in playbooks:
        text = pb.read_text()
        refs += re.findall(r"^\s*-?\s*role:\s*(\S+)", text, re.M)
        refs += re.findall(r"include_role:\s*\n\s+name:\s*(\S+)", text)
    assert refs and all(r.startswith("mirror_neuron.cluster.") for r in refs), refs
    for role in ("redis", "mirror_neuron"):
        for tasks in (ROOT / "roles" / role / "tasks").glob("*.yml"):
            for tag_list in re.findall(r"^\s*tags:\s*\[(.*)\]", tasks.read_text(), re.M):
                tags = [t.strip() for t in tag_list.split(",")]
                assert all(t == role or t.startswith(role + "_") for t in tags), (tasks.name, tags)


def test_galaxy_version_is_the_package_version() -> None:
    from mn_node import __version__

    assert yaml.safe_load((ROOT / "galaxy.yml").read_text())["version"] == __version__


def test_collection_builds_installs_and_runs_its_site_playbook(tmp_path: Path) -> None:
    """`ansible-galaxy collection build` + `install <tarball>` into a temp dir; the installed
    collection's site playbook parses with only that collection on the path (from outside the tree)."""
    skip_unless_tools("ansible-galaxy", "ansible-playbook")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_COLLECTIONS_PATH=str(tmp_path / "installed"), ANSIBLE_ROLES_PATH=str(tmp_path),
               ANSIBLE_NOCOLOR="1")

    def run(argv: list[str], cwd: Path) -> str:
        r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{' '.join(argv)}: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r.stdout

    run(["ansible-galaxy", "collection", "build", "--output-path", str(tmp_path / "dist"), str(ROOT)], cwd=tmp_path)
    (tarball,) = (tmp_path / "dist").glob("mirror_neuron-cluster-*.tar.gz")
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    assert "roles/redis/tasks/main.yml" in names and "roles/mirror_neuron/tasks/restart.yml" in names
    assert "playbooks/site.yml" in names and "meta/runtime.yml" in names and "LICENSE" in names
    assert not [n for n in names if n.split("/")[0] in ("mn_node", "mn_tui", "tests", "collections", ".git")], names
    run(["ansible-galaxy", "collection", "install", "--collections-path", str(tmp_path / "installed"), str(tarball)],
        cwd=tmp_path)
    installed = tmp_path / "installed/ansible_collections/mirror_neuron/cluster"
    assert (installed / "roles/mirror_neuron/templates/mirror-neuron.service.j2").is_file()
    out = run(["ansible-playbook", "-i", "localhost,", "--syntax-check", "mirror_neuron.cluster.site"], cwd=tmp_path)
    assert "playbook:" in out, out


def test_unit_offline_security_exposure_is_at_most_1_1() -> None:
    skip_unless_tools("systemd-analyze")
    help_text = subprocess.run(["systemd-analyze", "--help"], capture_output=True, text=True).stdout
    if "--offline" not in help_text:
        pytest.skip("systemd-analyze has no --offline (systemd < 250)")
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                        str(ROOT / "systemd/mirror-neuron.service")], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for mirror-neuron\.service: ([0-9.]+)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr[-2000:]
    assert float(m.group(1)) <= 1.1, r.stdout


def test_lock_pins_every_dependency_with_hashes() -> None:
    """requirements.lock (the wheelhouse's dependency set) pins every runtime dependency of
    pyproject.toml at a version its specifier allows, each with sha256 hashes."""
    requirements = pytest.importorskip("packaging.requirements")
    utils = pytest.importorskip("packaging.utils")
    text = (ROOT / "requirements.lock").read_text()
    entries = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)((?:\s*\\\n\s+--hash=sha256:[0-9a-f]{64})+)", text, re.M)
    pins = {utils.canonicalize_name(name): version for name, version, _ in entries}
    assert len(entries) == len(re.findall(r"^[A-Za-z0-9_.-]+==", text, re.M)), "a pin without a hash"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"]:
        req = requirements.Requirement(dep)
        name = utils.canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements.lock; regenerate it (docs/deploy.md)"
        assert req.specifier.contains(pins[name], prereleases=True), f"{dep} vs locked {pins[name]}"
