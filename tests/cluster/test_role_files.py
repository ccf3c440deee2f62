"""Static checks of the deploy files (fast, no boxes): the role's unit template renders to the
canonical systemd/mirror-neuron.service, and each role's argument_specs match its defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

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
