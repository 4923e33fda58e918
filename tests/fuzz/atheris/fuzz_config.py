"""Any bytes as the config file and as `terraform output -json`: loaded, or a ConfigError naming the field."""

import os
import sys
import tempfile

import _common  # noqa: F401
import atheris

with atheris.instrument_imports(include=["k8sgpu"]):
    from k8sgpu.runtime.config import ConfigError, RuntimeConfig, load_file, load_terraform_outputs


def one(data: bytes) -> None:
    with tempfile.NamedTemporaryFile(delete=False) as file:
        file.write(data)
    try:
        for load, prefix in ((load_file, "--config"), (load_terraform_outputs, "--terraform-outputs")):
            try:
                load(RuntimeConfig(), file.name)
            except ConfigError as exc:
                assert exc.field.startswith(prefix) and len(str(exc)) < 2000, exc
    finally:
        os.unlink(file.name)


if __name__ == "__main__":
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
