"""The config file and Terraform-outputs loaders take any bytes: a configuration, or a ConfigError that names
the setting (`--config <section>.<key>`, `--terraform-outputs <name>`, or the file itself)."""

from __future__ import annotations

import dataclasses
import json
import string

import yaml
from hypothesis import given
from hypothesis import strategies as st

from k8sgpu.runtime import config
from k8sgpu.runtime.config import TERRAFORM_OUTPUTS, ConfigError, RuntimeConfig, load_file, load_terraform_outputs

from .strategies import json_values

SECTIONS = {name: [f.name for f in dataclasses.fields(getattr(RuntimeConfig(), name))]
            for name in ("node", "local", "provider")}

yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=30),
                         st.sampled_from([".inf", "-.inf", ".nan", "10250.7", "1e400", "0x2800", "2020-01-01",
                                          "yes", "on", "~", "true"]))
config_files = st.one_of(
    st.fixed_dictionaries({}, optional={section: st.dictionaries(st.sampled_from([*keys, "unknown"]),
                                                                 yaml_scalars | json_values, max_size=4)
                                        for section, keys in SECTIONS.items()}).map(yaml.safe_dump),
    st.sampled_from([
        "node: &a [*a]",  # an alias refers to itself
        # a billion laughs, smaller: str() of node.name would be 9 * 9 * 6 * 6 * 8 items long
        "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c]\n"
        "node: {name: [*d, *d, *d, *d, *d, *d, *d, *d]}",
        "[" * 100_000, "{" * 50_000, "node: !!python/object:os.system x", "\x00\xff", "node: {name: !!binary AAAA}",
        "node:\n  kubelet_port: .inf", "node:\n  kubelet_port: 10250.7", "node: []", "- 1", "",
    ]),
    st.text(string.printable, max_size=200),
).map(lambda s: s.encode() if isinstance(s, str) else s) | st.binary(max_size=200)

output_files = st.one_of(
    st.dictionaries(st.sampled_from([*TERRAFORM_OUTPUTS, "namespace", "runtime_classes"]),
                    st.fixed_dictionaries({"value": json_values}, optional={"sensitive": st.booleans(),
                                                                             "type": st.just("string")}) | json_values,
                    max_size=5).map(json.dumps),
    st.sampled_from(["[" * 100_000, '{"node_name": {"value": ' * 50_000, "NaN", '{"bootstrap_token": {}}', "null"]),
).map(str.encode) | st.binary(max_size=200)


def _named(error: ConfigError, prefix: str) -> None:
    assert error.field.startswith(prefix) and str(error).startswith(error.field)
    assert len(str(error)) < 2000, "the message is a line for a person, not a dump of the input"


@given(content=config_files)
def test_a_config_file_is_loaded_or_refused_naming_the_field(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    path.write_bytes(content)
    try:
        load_file(RuntimeConfig(), str(path))
    except ConfigError as exc:
        _named(exc, "--config")


@given(content=output_files)
def test_terraform_outputs_are_loaded_or_refused_naming_the_output(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("outputs") / "outputs.json"
    path.write_bytes(content)
    try:
        load_terraform_outputs(RuntimeConfig(), str(path))
    except ConfigError as exc:
        _named(exc, "--terraform-outputs")


@given(flags=st.dictionaries(st.sampled_from(sorted(config.SETTINGS)), yaml_scalars, max_size=4),
       environ=st.dictionaries(st.sampled_from([env for _, _, env in config.SETTINGS.values()]),
                               st.text(string.printable, max_size=20), max_size=4))
def test_flags_and_environment_build_a_config_or_name_what_is_wrong(flags, environ):
    try:
        config.build(flags, environ)
    except ConfigError as exc:
        assert exc.field and str(exc).startswith(exc.field)
